//! Sessions that outlive connections: a program in a PTY that clients attach to and detach from.
//!
//! The session owns what the connection used to: the program's output is always read (so the
//! program never blocks on a full PTY while nobody watches) and fed to a terminal model
//! (`vt100`) holding the screen, its modes and the scrollback. A client that attaches first
//! receives that screen as it stands, then the live output; its keystrokes go straight into the
//! PTY. When the client goes away the session is *detached* and waits for the next one, up to
//! `[session] detach_timeout`. This module knows no front: SSH channels (and later WebSockets)
//! are clients of the same type.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use tokio::io::AsyncWrite;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::identity::UserId;
use crate::launcher::process::Resizer;
use crate::launcher::TermSize;
use crate::ops::LiveSession;

mod client;
mod model;
pub mod supervise;

/// Where a client's output goes.
pub type Sink = Box<dyn AsyncWrite + Send + Unpin>;

/// How a session ended, for the client attached at the end (or the next login's report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The exit status to give the client (`None`: the client left first).
    pub code: Option<u32>,
    /// A line for the user, when the gateway ended it.
    pub notice: Option<String>,
    /// When it ended.
    pub at: SystemTime,
}

struct Client {
    out: client::Outbox,
    /// Cancelled when this client is dropped or the session ends.
    gone: CancellationToken,
    /// "alice from 192.0.2.7", for the other clients' notices.
    who: String,
    /// Watchers see the output; their keystrokes are never delivered, and they do not keep a
    /// session attached.
    watcher: bool,
}

/// A client's terminal size, shared between the session and the client's input.
type ClientSize = Arc<Mutex<Option<TermSize>>>;

/// A running program that clients attach to.
pub struct Running {
    /// Short id users type (`attach k3f9`).
    pub id: String,
    /// Whose it is.
    pub user: UserId,
    /// The configured command, for listings.
    pub command: String,
    /// When it started.
    pub started: SystemTime,
    /// The admin/metrics record.
    pub live: Arc<LiveSession>,
    pty: Resizer,
    /// The PTY's size now.
    size: Mutex<TermSize>,
    /// The terminal model; absent when the session cannot be reattached (no detach timeout),
    /// which spares every byte of output the parsing.
    model: Option<model::Model>,
    clients: tokio::sync::Mutex<Vec<Client>>,
    /// Whether a client that is not a watcher is attached.
    attached: watch::Sender<bool>,
    outcome: watch::Sender<Option<Outcome>>,
    /// For the detached and watcher gauges.
    ops: Arc<crate::ops::Ops>,
    /// The session's one recording, across all its attachments (attach/detach are markers).
    recorder: Mutex<Option<crate::ops::recording::Recorder>>,
    /// Whether the gauges count this session as detached now.
    counted_detached: std::sync::atomic::AtomicBool,
    ended: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("id", &self.id)
            .field("user", &self.user)
            .finish()
    }
}

/// One client's hold on a session.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// Cancelled when the session lets this client go (it ended, or the client failed).
    pub gone: CancellationToken,
    size: ClientSize,
    watcher: bool,
    flush: client::Flush,
}

/// How long a front waits for a client's queued output to be written before it ends the
/// client's connection anyway (a stalled client must not hold its connection task forever).
pub const FLUSH_GRACE: Duration = Duration::from_secs(5);

impl Attachment {
    /// Whether this client only watches.
    pub fn is_watcher(&self) -> bool {
        self.watcher
    }

    /// After the session let this client go: waits (up to [`FLUSH_GRACE`]) until the output
    /// queued for it is written, so the program's last words arrive before the exit status;
    /// then stops its writer either way.
    pub async fn flushed(&self) {
        let _ = tokio::time::timeout(FLUSH_GRACE, self.flush.done.cancelled()).await;
        self.flush.stop.cancel();
    }
}

/// Who is attaching, and how.
#[derive(Debug, Clone)]
pub struct Joining {
    /// "alice from 192.0.2.7": what the other clients are told.
    pub who: String,
    /// The client's terminal size, when it has one.
    pub size: Option<TermSize>,
    /// Read-only: output only, keystrokes dropped.
    pub watcher: bool,
    /// Send the screen as it stands first (false only for a new session's first client).
    pub restore: bool,
}

impl Running {
    /// A session for a program already started in a PTY of `size`; `scrollback`: `None` when
    /// nobody can ever reattach it (no terminal model is kept).
    pub fn new(
        user: UserId,
        command: String,
        live: Arc<LiveSession>,
        pty: Resizer,
        size: TermSize,
        scrollback: Option<usize>,
        ops: Arc<crate::ops::Ops>,
    ) -> Arc<Running> {
        Arc::new(Running {
            id: new_id(),
            user,
            command,
            started: SystemTime::now(),
            live,
            pty,
            size: Mutex::new(size),
            model: scrollback.map(|n| model::Model::start(size, n)),
            clients: tokio::sync::Mutex::new(Vec::new()),
            attached: watch::channel(false).0,
            outcome: watch::channel(None).0,
            ops,
            recorder: Mutex::new(None),
            counted_detached: Default::default(),
            ended: Default::default(),
        })
    }

    /// Attaches a client beside any others. With `restore` it first receives the screen as it
    /// stands; then live output. A client that is not a watcher gives the PTY its size.
    pub async fn attach(self: &Arc<Self>, sink: Sink, joining: Joining) -> Attachment {
        let mut clients = self.clients.lock().await;
        let gone = CancellationToken::new();
        let size: ClientSize = Arc::new(Mutex::new(joining.size));
        // Asked for under the clients lock: no output falls between the screen and the live
        // stream.
        let first = joining
            .restore
            .then(|| self.model.as_ref().map(model::Model::screen))
            .flatten();
        let (out, flush) = client::Outbox::start(
            sink,
            first,
            Arc::downgrade(self),
            gone.clone(),
            self.model.is_some(),
            joining.watcher,
        );
        let attachment = Attachment {
            gone: gone.clone(),
            size: size.clone(),
            watcher: joining.watcher,
            flush,
        };
        if let (Some(s), false) = (joining.size, joining.watcher) {
            self.set_size(s);
        }
        let role = if joining.watcher {
            "watching"
        } else {
            "attached"
        };
        let line = notice_line(&format!(
            "{} is {role} too ({} clients)",
            joining.who,
            clients.len() + 1
        ));
        for c in clients.iter_mut() {
            c.out.notice(&line).await;
        }
        if joining.restore {
            self.mark(&format!("{} {role}", joining.who));
        }
        clients.push(Client {
            out,
            gone,
            who: joining.who,
            watcher: joining.watcher,
        });
        self.recount(&clients);
        attachment
    }

    /// Drops clients that could not be written to (their fronts were told through `gone`).
    async fn drop_failed(&self) {
        let mut clients = self.clients.lock().await;
        clients.retain(|c| !c.gone.is_cancelled());
        self.recount(&clients);
    }

    /// The screen as it stands, for a client that missed output; from now on it gets output
    /// again (`lagging` is cleared under the clients lock, so nothing falls in between).
    async fn resync(&self, lagging: &std::sync::atomic::AtomicBool) -> Vec<u8> {
        let screen = {
            let _clients = self.clients.lock().await;
            lagging.store(false, std::sync::atomic::Ordering::Release);
            self.model.as_ref().map(model::Model::screen)
        };
        match screen {
            Some(s) => s.await.unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Marks attach/detach in `recorder`, the session's recording.
    pub fn record_into(&self, recorder: Option<crate::ops::recording::Recorder>) {
        *lock(&self.recorder) = recorder;
    }

    fn mark(&self, label: &str) {
        if let Some(r) = lock(&self.recorder).as_ref() {
            r.marker(label);
        }
    }

    /// The client of `attachment` went away; the others are told. With no client left that is
    /// not a watcher, the session is detached.
    pub async fn detach(&self, attachment: &Attachment) {
        let mut clients = self.clients.lock().await;
        let Some(i) = clients.iter().position(|c| c.gone == attachment.gone) else {
            return;
        };
        let left = clients.remove(i);
        // Its connection is gone: nothing queued for it is worth writing.
        attachment.flush.stop.cancel();
        self.mark(&format!("{} left", left.who));
        let line = notice_line(&format!("{} left ({} clients)", left.who, clients.len()));
        for c in clients.iter_mut() {
            c.out.notice(&line).await;
        }
        self.recount(&clients);
    }

    fn recount(&self, clients: &[Client]) {
        use std::sync::atomic::Ordering::SeqCst;
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        let watchers = clients.iter().filter(|c| c.watcher).count();
        // The session's record (admin console, listings) holds the counts.
        self.live
            .clients
            .store((clients.len() - watchers) as u32, relaxed);
        let before = self.live.watchers.swap(watchers as u32, relaxed) as usize;
        if before != watchers {
            self.ops.emit(crate::ops::Event::Watchers {
                delta: watchers as i64 - before as i64,
            });
        }
        let detached = !self.ended.load(SeqCst) && clients.len() == watchers;
        if self.counted_detached.swap(detached, SeqCst) != detached {
            self.ops.emit(crate::ops::Event::Detached { detached });
        }
        self.attached.send_replace(clients.len() > watchers);
    }

    /// A writer into the program for `attachment`'s keystrokes: typing makes that client the
    /// active one (the PTY takes its size). A watcher's writer drops everything.
    pub fn input_for(self: &Arc<Self>, attachment: &Attachment) -> Sink {
        if attachment.watcher {
            return Box::new(tokio::io::sink());
        }
        Box::new(ClientInput {
            session: self.clone(),
            size: attachment.size.clone(),
            inner: self.pty.writer(),
        })
    }

    /// `attachment`'s terminal was resized: the PTY follows (that client is the active one).
    pub fn resize_from(&self, attachment: &Attachment, size: TermSize) {
        *lock(&attachment.size) = Some(size);
        if !attachment.watcher {
            self.set_size(size);
        }
    }

    /// The PTY and the terminal model take `size`.
    fn set_size(&self, size: TermSize) {
        let mut now = lock(&self.size);
        if *now == size {
            return;
        }
        *now = size;
        let _ = self.pty.resize(size);
        if let Some(m) = &self.model {
            m.resize(size);
        }
    }

    /// Program output: into the terminal model, then into every client's queue (see
    /// `client`: a client that keeps up paces the program, one that stalls is cut loose and
    /// later given the screen). A client that failed is dropped.
    pub async fn output(&self, chunk: &[u8]) {
        let mut clients = self.clients.lock().await;
        // One copy, shared by the model and every queued client.
        let shared = self
            .model
            .as_ref()
            .map(|_| bytes::Bytes::copy_from_slice(chunk));
        if let (Some(m), Some(b)) = (&self.model, &shared) {
            m.output(b.clone()).await;
        }
        let mut failed = false;
        for c in clients.iter_mut() {
            failed |= !c.out.output(chunk, shared.as_ref()).await;
        }
        if failed {
            clients.retain(|c| !c.gone.is_cancelled());
            self.recount(&clients);
        }
    }

    /// A line from the gateway for the attached clients (lost when nobody is attached).
    pub async fn notice(&self, text: &str) {
        let line = notice_line(text);
        for c in self.clients.lock().await.iter_mut() {
            c.out.notice(&line).await;
        }
    }

    /// Whether a client is attached now.
    pub fn is_attached(&self) -> bool {
        *self.attached.borrow()
    }

    /// Watches attachment changes.
    pub fn attached(&self) -> watch::Receiver<bool> {
        self.attached.subscribe()
    }

    /// The session is over: its client (if any) is let go with `outcome`.
    pub async fn finish(&self, outcome: Outcome) {
        let mut clients = self.clients.lock().await;
        self.ended.store(true, std::sync::atomic::Ordering::SeqCst);
        self.outcome.send_replace(Some(outcome));
        for c in clients.drain(..) {
            c.gone.cancel();
        }
        self.recount(&clients);
    }

    /// Watches for the end.
    pub fn outcome(&self) -> watch::Receiver<Option<Outcome>> {
        self.outcome.subscribe()
    }

    /// One JSON object describing the session, for `ssh host sessions`.
    pub fn describe(&self) -> serde_json::Value {
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        let (clients, watchers) = (
            self.live.clients.load(relaxed),
            self.live.watchers.load(relaxed),
        );
        serde_json::json!({
            "id": self.id,
            "state": if self.is_attached() { "attached" } else { "detached" },
            "clients": clients,
            "watchers": watchers,
            "started": secs(self.started),
            "last_output": self.live.last_output_unix_ms() / 1000,
            "command": self.command,
        })
    }
}

/// A std mutex's guard, whether or not a panicking holder poisoned it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn notice_line(text: &str) -> Vec<u8> {
    format!("\r\n[hermes-ssh-gateway] {text}\r\n").into_bytes()
}

/// A client's keystrokes into the PTY; the client that types is the active one, whose size
/// the PTY takes.
struct ClientInput {
    session: Arc<Running>,
    size: ClientSize,
    inner: Sink,
}

impl AsyncWrite for ClientInput {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Some(size) = *lock(&self.size) {
            self.session.set_size(size);
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Bytes read from the program per chunk while it writes a lot.
pub(super) const OUTPUT_CHUNK: usize = 16 * 1024;

/// Bytes read per chunk while it writes little. A session waits for output most of its life,
/// detached or not, with its read buffer held all that time: a small one while the program is
/// quiet, a big one only during a burst, keeps thousands of idle sessions small.
const QUIET_CHUNK: usize = 1024;

/// Program output → `session` (its terminal model, its client if one is attached) and the
/// recording, until the program closes its side of the PTY.
pub async fn pump(
    mut from: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    session: Arc<Running>,
    mut recorder: Option<crate::ops::recording::Recorder>,
) {
    use tokio::io::AsyncReadExt as _;
    let mut quiet = [0u8; QUIET_CHUNK];
    let mut burst: Option<Vec<u8>> = None;
    loop {
        let buf: &mut [u8] = match burst.as_mut() {
            Some(b) => b,
            None => &mut quiet,
        };
        let n = match from.read(buf).await {
            Ok(n @ 1..) => n,
            _ => break,
        };
        let chunk = &buf[..n];
        if let Some(r) = &recorder {
            if !r.output(chunk).await {
                recorder = None;
            }
        }
        session.output(chunk).await;
        session.live.output(n);
        // A full read means more is waiting; a short one that the burst is over.
        if n == QUIET_CHUNK && burst.is_none() {
            burst = Some(vec![0u8; OUTPUT_CHUNK]);
        } else if n < QUIET_CHUNK {
            burst = None;
        }
    }
}

/// Takes over a PTY program whose first client is already attached to `session` (so no output
/// reaches nobody): reads its output, lists the session in `hub` when it can outlive its
/// clients (`detach_after` > 0), and supervises it to its end, letting its clients go and
/// reporting an end nobody saw at the owner's next login. `started` gets the output pump.
pub fn take_over(
    hub: &Arc<Hub>,
    session: &Arc<Running>,
    output: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    recorder: Option<crate::ops::recording::Recorder>,
    started: impl FnOnce(tokio::task::JoinHandle<()>) -> supervise::Started,
    rules: supervise::Rules,
    detach_after: Duration,
) {
    session.record_into(recorder.clone());
    let out = tokio::spawn(pump(output, session.clone(), recorder));
    if !detach_after.is_zero() {
        hub.insert(session.clone());
    }
    let presence = supervise::Presence::Clients {
        session: session.clone(),
        after: detach_after,
    };
    let (hub, session, started) = (hub.clone(), session.clone(), started(out));
    tokio::spawn(async move {
        let outcome = supervise::supervise(started, rules, presence, session.as_ref()).await;
        let unseen = !session.is_attached();
        session.finish(outcome.clone()).await;
        hub.remove(&session, unseen.then_some(&outcome));
    });
}

/// A short id users can type: 6 characters of lowercase base32.
fn new_id() -> String {
    use rand::Rng as _;
    // 32 symbols: a byte modulo 32 is uniform.
    const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut bytes = [0u8; 6];
    rand::rng().fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[(*b % 32) as usize] as char)
        .collect()
}

/// Every session of this node that can be attached, by id.
#[derive(Debug, Default)]
pub struct Hub {
    by_id: DashMap<String, Arc<Running>>,
    /// Sessions that ended while detached, reported once at the owner's next login.
    ended: DashMap<UserId, Vec<(String, Outcome)>>,
}

impl Hub {
    /// Adds a session.
    pub fn insert(&self, r: Arc<Running>) {
        self.by_id.insert(r.id.clone(), r);
    }

    /// Removes a session that ended; `unseen`: nobody was attached to see how.
    pub fn remove(&self, r: &Running, outcome: Option<&Outcome>) {
        self.by_id.remove(&r.id);
        if let Some(o) = outcome {
            self.ended
                .entry(r.user.clone())
                .or_default()
                .push((r.id.clone(), o.clone()));
        }
    }

    /// `user`'s sessions, the most recently active first.
    pub fn of_user(&self, user: &UserId) -> Vec<Arc<Running>> {
        let mut v: Vec<_> = self
            .by_id
            .iter()
            .filter(|e| &e.user == user)
            .map(|e| e.value().clone())
            .collect();
        v.sort_by_key(|r| r.live.since_output_ms());
        v
    }

    /// `user`'s sessions that no client is attached to, the most recently active first.
    pub fn detached_of(&self, user: &UserId) -> Vec<Arc<Running>> {
        let mut v = self.of_user(user);
        v.retain(|s| !s.is_attached());
        v
    }

    /// Ends `user`'s longest-detached sessions beyond `max` (each reported at the next login).
    /// Both fronts call it when a client leaves, so the cap holds however a session was left.
    pub fn cap_detached(&self, user: &UserId, max: usize) {
        for old in self.detached_of(user).iter().skip(max) {
            old.live
                .end_with(&format!("more than {max} detached sessions"));
        }
    }

    /// `user`'s session `id`; never anyone else's.
    pub fn own(&self, user: &UserId, id: &str) -> Option<Arc<Running>> {
        self.by_id
            .get(id)
            .filter(|r| &r.user == user)
            .map(|r| r.value().clone())
    }

    /// The session whose admin record (`hermes-ssh-gateway sessions`) has id `record`.
    pub fn by_record(&self, record: u64) -> Option<Arc<Running>> {
        self.by_id
            .iter()
            .find(|r| r.live.id == record)
            .map(|r| r.value().clone())
    }

    /// Lines about `user`'s sessions that ended while detached, once.
    pub fn take_reports(&self, user: &UserId) -> Vec<String> {
        let Some((_, ended)) = self.ended.remove(user) else {
            return Vec::new();
        };
        ended
            .into_iter()
            .map(|(id, o)| {
                let at = chrono::DateTime::<chrono::Utc>::from(o.at).format("%H:%M UTC");
                match (o.code, o.notice) {
                    (_, Some(n)) => format!("your session {id} ended at {at}: {n}"),
                    (Some(c), None) => format!("your session {id} ended at {at}, exit status {c}"),
                    (None, None) => format!("your session {id} ended at {at}"),
                }
            })
            .collect()
    }

    /// How many sessions there are.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// How long a detached session waits for a client, and how much it remembers.
#[derive(Debug, Clone, Copy, Default)]
pub struct DetachPolicy {
    /// Zero: a session ends with its last client.
    pub timeout: Duration,
    /// Lines of scrollback the terminal model keeps.
    pub scrollback: usize,
    /// Most detached sessions per user; the longest-detached beyond it end.
    pub max_per_user: usize,
}
