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
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::identity::UserId;
use crate::launcher::process::Resizer;
use crate::launcher::TermSize;
use crate::ops::LiveSession;

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
    sink: Sink,
    /// Cancelled when this client is replaced or the session ends.
    gone: CancellationToken,
}

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
    /// The terminal model; absent when the session cannot be reattached (no detach timeout),
    /// which spares every byte of output the parsing.
    screen: Option<Mutex<vt100::Parser>>,
    client: tokio::sync::Mutex<Option<Client>>,
    attached: watch::Sender<bool>,
    outcome: watch::Sender<Option<Outcome>>,
    last_output_ms: std::sync::atomic::AtomicU64,
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
#[derive(Debug)]
pub struct Attachment {
    /// Cancelled when another client takes the session over, or the session ends.
    pub gone: CancellationToken,
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
    ) -> Arc<Running> {
        Arc::new(Running {
            id: new_id(),
            user,
            command,
            started: SystemTime::now(),
            live,
            pty,
            screen: scrollback.map(|n| Mutex::new(vt100::Parser::new(size.rows, size.cols, n))),
            client: tokio::sync::Mutex::new(None),
            attached: watch::channel(false).0,
            outcome: watch::channel(None).0,
            last_output_ms: Default::default(),
        })
    }

    /// Attaches `sink` as the session's client (taking it over from any other), sized `size`:
    /// the client first receives the screen as it stands, then live output.
    pub async fn attach(&self, mut sink: Sink, size: Option<TermSize>) -> Attachment {
        let mut client = self.client.lock().await;
        if let Some(old) = client.take() {
            old.gone.cancel();
        }
        let snapshot = match &self.screen {
            Some(m) => restore_bytes(m.lock().unwrap_or_else(|p| p.into_inner()).screen()),
            None => Vec::new(),
        };
        if let Some(size) = size {
            self.resize(size);
        }
        let gone = CancellationToken::new();
        if sink.write_all(&snapshot).await.is_ok() {
            *client = Some(Client {
                sink,
                gone: gone.clone(),
            });
            self.attached.send_replace(true);
        } else {
            gone.cancel();
        }
        Attachment { gone }
    }

    /// Attaches the first client of a new session: nothing to restore yet, so its terminal is
    /// left as it is.
    pub async fn attach_fresh(&self, sink: Sink) -> Attachment {
        let mut client = self.client.lock().await;
        let gone = CancellationToken::new();
        *client = Some(Client {
            sink,
            gone: gone.clone(),
        });
        self.attached.send_replace(true);
        Attachment { gone }
    }

    /// The client of `attachment` went away: the session is detached (if it was still theirs).
    pub async fn detach(&self, attachment: &Attachment) {
        let mut client = self.client.lock().await;
        if client
            .as_ref()
            .is_some_and(|c| c.gone == attachment.gone || c.gone.is_cancelled())
        {
            *client = None;
            self.attached.send_replace(false);
        }
    }

    /// A writer into the program, for a client's keystrokes.
    pub fn input(&self) -> Sink {
        self.pty.writer()
    }

    /// The PTY takes `size` (the most recently active client's).
    pub fn resize(&self, size: TermSize) {
        let _ = self.pty.resize(size);
        if let Some(m) = &self.screen {
            let mut screen = m.lock().unwrap_or_else(|p| p.into_inner());
            screen.screen_mut().set_size(size.rows, size.cols);
        }
    }

    /// Program output: into the terminal model, then to the client if there is one. Waiting
    /// for the client is the backpressure; a client that fails is detached, never waited for.
    pub async fn output(&self, chunk: &[u8]) {
        self.last_output_ms
            .store(crate::ops::now_ms(), std::sync::atomic::Ordering::Relaxed);
        let mut client = self.client.lock().await;
        if let Some(m) = &self.screen {
            m.lock().unwrap_or_else(|p| p.into_inner()).process(chunk);
        }
        if let Some(c) = client.as_mut() {
            // Whoever would replace or drop this client waits for the lock this write holds,
            // so there is nothing to race against here.
            if c.sink.write_all(chunk).await.is_err() {
                if let Some(c) = client.take() {
                    c.gone.cancel();
                }
                self.attached.send_replace(false);
            }
        }
    }

    /// A line from the gateway for the attached client (lost when nobody is attached).
    pub async fn notice(&self, text: &str) {
        let mut client = self.client.lock().await;
        if let Some(c) = client.as_mut() {
            let line = format!("\r\n[hermes-ssh-gateway] {text}\r\n");
            let _ = c.sink.write_all(line.as_bytes()).await;
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

    /// Milliseconds since the epoch of the program's last output (0: none yet).
    pub fn last_output_ms(&self) -> u64 {
        self.last_output_ms
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The session is over: its client (if any) is let go with `outcome`.
    pub async fn finish(&self, outcome: Outcome) {
        let mut client = self.client.lock().await;
        self.outcome.send_replace(Some(outcome));
        if let Some(c) = client.take() {
            c.gone.cancel();
        }
        self.attached.send_replace(false);
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
        serde_json::json!({
            "id": self.id,
            "state": if self.is_attached() { "attached" } else { "detached" },
            "started": secs(self.started),
            "last_output": self.last_output_ms() / 1000,
            "command": self.command,
        })
    }
}

/// Bytes read from the program per chunk.
const OUTPUT_CHUNK: usize = 32 * 1024;

/// Program output → `session` (its terminal model, its client if one is attached) and the
/// recording, until the program closes its side of the PTY.
pub async fn pump(
    mut from: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    session: Arc<Running>,
    mut recorder: Option<crate::ops::recording::Recorder>,
) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        if let Some(r) = &recorder {
            if !r.output(&buf[..n]).await {
                recorder = None;
            }
        }
        session.output(&buf[..n]).await;
        session.live.output(n);
    }
}

/// Escape sequences that put a fresh terminal into the state `screen` describes: the right
/// screen (main or alternate), its contents with colours and attributes, the cursor, and the
/// input modes the program set (keypad, cursor keys, bracketed paste, mouse).
fn restore_bytes(screen: &vt100::Screen) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(if screen.alternate_screen() {
        b"\x1b[?1049h"
    } else {
        b"\x1b[?1049l"
    });
    out.extend_from_slice(&screen.state_formatted());
    out.extend_from_slice(&screen.cursor_state_formatted());
    out
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
        v.sort_by_key(|r| std::cmp::Reverse(r.last_output_ms().max(r.live.started_ms)));
        v
    }

    /// `user`'s session `id`; never anyone else's.
    pub fn own(&self, user: &UserId, id: &str) -> Option<Arc<Running>> {
        self.by_id
            .get(id)
            .filter(|r| &r.user == user)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restored_screen_matches_the_original() {
        let mut a = vt100::Parser::new(10, 40, 100);
        a.process(
            b"\x1b[31mred\x1b[0m plain\r\n\x1b[?1049h\x1b[1;44mALT\x1b[0m\x1b[?2004h\x1b[5;7H",
        );
        let mut b = vt100::Parser::new(10, 40, 100);
        b.process(b"garbage that was on the new terminal\r\n");
        b.process(&restore_bytes(a.screen()));
        assert_eq!(
            a.screen().contents_formatted(),
            b.screen().contents_formatted()
        );
        assert!(b.screen().alternate_screen());
        assert!(b.screen().bracketed_paste());
        assert_eq!(a.screen().cursor_position(), b.screen().cursor_position());
        assert_eq!(
            b.screen().cell(0, 0).unwrap().bgcolor(),
            vt100::Color::Idx(4)
        );
    }
}
