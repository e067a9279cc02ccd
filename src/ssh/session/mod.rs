//! Session channels: PTY and env requests, shell and exec, and the pump between a channel and a
//! launched program.
//!
//! Everything here is called by the thin russh handler with plain values; the handler only turns
//! the boolean answers into `channel_success` / `channel_failure`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::server::Msg;
use russh::{Channel, ChannelId, ChannelMsg, ChannelWriteHalf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

use crate::config::ExecPolicy;
use crate::identity::store::{Enrollment, RefreshToken};
use crate::identity::tickets::Purpose;
use crate::identity::UserId;
use crate::identity::{AuthMethod, Identity, Pending};
use crate::launcher::{self, LaunchError, SessionEnv, TermSize, TerminalModes};
use crate::ops::recording::Recorder;
use crate::ops::sessions::NewSession;
use crate::ops::{Actor, AttachmentKind, Event, Front, LiveSession, Method, RevokedBy, TicketOp};
use crate::sessions::supervise::{supervise, Notify, Presence, Rules, Started};
use crate::sessions::{Attachment, Joining, Running};
use crate::ssh::auth::Principal;
use crate::ssh::server::{AuthProgress, Stage};
use crate::ssh::SshContext;
use crate::tui::picker::{Choice, Entry as PickerEntry, Picker};
use secrecy::ExposeSecret;

mod admin;
mod commands;
mod job;

pub use commands::{classify_exec, Work};

/// Input chunks queued for the sign-in screen or a prompt before the client is slowed down
/// (the channel's window then stays closed until they are read).
const INPUT_QUEUE: usize = 1;
/// The receive window of a channel no program reads yet: at most this and one queued chunk
/// of it are held per channel.
pub const PRE_PROGRAM_WINDOW: u32 = 2 * 1024;
/// The receive window of a channel whose program runs (as upstream russh's default): it is
/// re-opened only as the program reads, so a program that stops reading stops its client.
const PROGRAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Bytes read from the program per write to the channel.
const OUTPUT_CHUNK: usize = 32 * 1024;
/// Lifetime of an `ssh host share` watch ticket.
const WATCH_TTL: Duration = Duration::from_secs(300);
/// Lifetime of an `ssh host link` URL.
const LINK_TTL: Duration = Duration::from_secs(60);
/// Most client variables accepted per channel.
const MAX_CLIENT_ENV: usize = 64;

/// The client's PTY request.
#[derive(Debug, Clone)]
pub struct PtyParams {
    /// `TERM`.
    pub term: String,
    /// Initial size.
    pub size: TermSize,
    /// Terminal modes.
    pub modes: TerminalModes,
}

/// The current size and, once the program runs, the handle to resize its PTY.
#[derive(Default)]
struct ResizeSlot {
    size: Option<TermSize>,
    /// The session this channel is a client of, and its hold on it (the PTY follows its size).
    session: Option<(Arc<Running>, Attachment)>,
    recorder: Option<Recorder>,
}

type SharedResize = Arc<Mutex<ResizeSlot>>;

struct Slot {
    writer: Option<ChannelWriteHalf<Msg>>,
    input: Option<mpsc::Receiver<Bytes>>,
    attach: Option<oneshot::Sender<Attach>>,
    /// Cancelled when the client closes the channel or the connection goes away.
    closed: CancellationToken,
    pty: Option<PtyParams>,
    env: Vec<(String, String)>,
    resize: SharedResize,
}

/// Who the connection is, as its channels see it.
#[derive(Debug, Default)]
enum ConnState {
    /// Not authenticated (channels are refused before this changes).
    #[default]
    Unauthenticated,
    /// Authenticated.
    Identity(Identity),
    /// May only sign in.
    Pending(Pending),
    /// A channel is running the sign-in now.
    SigningIn,
}

type SharedState = Arc<Mutex<ConnState>>;

/// What the client asked a channel to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `shell`: the configured program.
    Shell,
    /// `exec`: a built-in, or the program with extra words (per `[session] exec`).
    Exec(String),
}

/// The session channels of one connection.
pub struct Channels {
    ctx: Arc<SshContext>,
    slots: HashMap<ChannelId, Slot>,
    /// Session channels opened so far, closed ones included.
    opened: usize,
    /// Why the key that signed in may have no PTY (and no browser terminal either).
    no_pty: Option<&'static str>,
    /// Every session request is refused with this line (a certificate's `force-command`).
    refusal: Option<String>,
    state: SharedState,
    remote: Option<std::net::IpAddr>,
    progress: Arc<AuthProgress>,
    span: Span,
}

impl Channels {
    /// No channels yet; `span` is the connection's.
    pub fn new(
        ctx: Arc<SshContext>,
        remote: Option<std::net::IpAddr>,
        progress: Arc<AuthProgress>,
        span: Span,
    ) -> Channels {
        Channels {
            ctx,
            slots: HashMap::new(),
            opened: 0,
            no_pty: None,
            refusal: None,
            state: SharedState::default(),
            remote,
            progress,
            span,
        }
    }

    /// The key that signed in may not have a PTY, for `reason`.
    pub fn forbid_pty(&mut self, reason: &'static str) {
        self.no_pty = Some(reason);
    }

    /// Why PTYs are refused on this connection, if they are.
    pub fn pty_forbidden(&self) -> Option<&'static str> {
        self.no_pty
    }

    /// Every `shell` and `exec` on this connection is answered with `line` and exit status 1.
    pub fn refuse_sessions(&mut self, line: String) {
        self.refusal = Some(line);
    }

    /// Authentication finished (the listener task times out a pending connection).
    pub fn set_principal(&mut self, principal: Principal) {
        if let Ok(mut st) = self.state.lock() {
            *st = match principal {
                Principal::Identity(id) => ConnState::Identity(id),
                Principal::Pending(p) => ConnState::Pending(p),
            };
        }
    }

    /// Whether one more session channel may open. Every channel costs a task and buffers, so a
    /// connection holds at most `max_channels_per_connection` (sshd's MaxSessions), and a
    /// connection that may only sign in holds one, once.
    pub fn may_open(&self, stage: &Stage) -> Result<(), String> {
        match stage {
            Stage::SignedIn => {
                let max = self.ctx.limits.max_channels_per_connection;
                if self.slots.len() >= max {
                    return Err(format!("more than {max} open on one connection"));
                }
                Ok(())
            }
            Stage::Pending if self.opened == 0 => Ok(()),
            Stage::Pending => Err("a connection signing in may open only one".into()),
            Stage::Connecting | Stage::Failed(_) => Err("not signed in".into()),
        }
    }

    /// A session channel was accepted: start draining it so the connection never stalls on it.
    pub fn open(&mut self, channel: Channel<Msg>) {
        let id = channel.id();
        self.opened += 1;
        let (read, write) = channel.split();
        let (tx, rx) = mpsc::channel::<Bytes>(INPUT_QUEUE);
        let (attach_tx, attach_rx) = oneshot::channel::<Attach>();
        let closed = CancellationToken::new();
        tokio::spawn(read_channel(read, tx, attach_rx, closed.clone()));
        self.slots.insert(
            id,
            Slot {
                writer: Some(write),
                input: Some(rx),
                attach: Some(attach_tx),
                closed,
                pty: None,
                env: Vec::new(),
                resize: SharedResize::default(),
            },
        );
    }

    /// The client closed the channel.
    pub fn close(&mut self, id: ChannelId) {
        if let Some(slot) = self.slots.remove(&id) {
            slot.closed.cancel();
        }
    }

    /// `pty-req`: remembered for the program that starts later. Refused once it runs.
    pub fn pty_request(&mut self, id: ChannelId, pty: PtyParams) -> bool {
        if self.no_pty.is_some() {
            return false;
        }
        match self.slots.get_mut(&id) {
            Some(slot) if slot.writer.is_some() => {
                if let Ok(mut r) = slot.resize.lock() {
                    r.size = Some(pty.size);
                }
                slot.pty = Some(pty);
                true
            }
            _ => false,
        }
    }

    /// `window-change`: resizes the running program's PTY (or the one it will get).
    pub fn window_change(&mut self, id: ChannelId, size: TermSize) -> bool {
        let Some(slot) = self.slots.get(&id) else {
            return false;
        };
        let Ok(mut r) = slot.resize.lock() else {
            return false;
        };
        r.size = Some(size);
        if let Some(rec) = r.recorder.clone() {
            // Recording is best effort and must not block the connection's handler.
            tokio::spawn(async move { rec.resize(size.cols, size.rows).await });
        }
        if let Some((session, attachment)) = &r.session {
            session.resize_from(attachment, size);
        }
        true
    }

    /// `env`: accepted only for names in `[session] accept_env`, and never for identity or
    /// gateway-set variables (refusals of those are logged: someone tried to pass as another).
    pub fn env_request(
        &mut self,
        id: ChannelId,
        name: &str,
        value: &str,
        user: Option<UserId>,
    ) -> bool {
        let Some(slot) = self.slots.get_mut(&id) else {
            return false;
        };
        let launch = self.ctx.launch.load();
        if launch.is_reserved(name) {
            tracing::warn!(parent: &self.span, user = user.as_ref().map(UserId::as_str), variable = name, "refused client env: reserved variable (identity or gateway-set)");
            self.ctx.ops.emit(Event::Refused {
                user,
                remote: self.remote,
                what: format!("env {name}"),
            });
            return false;
        }
        let accepted = self.ctx.accept_env.iter().any(|p| p.matches(name));
        if !accepted || value.contains('\0') || slot.env.len() >= MAX_CLIENT_ENV {
            tracing::debug!(parent: &self.span, user = user.as_ref().map(UserId::as_str), variable = name, "refused client env: not in accept_env");
            return false;
        }
        slot.env.retain(|(k, _)| k != name);
        slot.env.push((name.to_owned(), value.to_owned()));
        true
    }

    /// `shell` or `exec`: starts the work for this channel. Returns false when the channel
    /// cannot start anything (unknown, or already started).
    pub fn start(&mut self, id: ChannelId, request: Request) -> bool {
        let Some(slot) = self.slots.get_mut(&id) else {
            return false;
        };
        let start = {
            let Ok(mut st) = self.state.lock() else {
                return false;
            };
            match (&*st, &request) {
                (ConnState::Identity(_), _) if self.refusal.is_some() => {
                    Start::Refuse(self.refusal.clone().unwrap_or_default())
                }
                (ConnState::Identity(identity), Request::Shell) => {
                    Start::Work(identity.clone(), Work::Program(Vec::new()))
                }
                (ConnState::Identity(identity), Request::Exec(cmd)) => {
                    match classify_exec(cmd, self.ctx.exec_policy) {
                        // A browser terminal is a PTY by another road.
                        Work::Link(_) if self.no_pty.is_some() => Start::Refuse(format!(
                            "hermes-ssh-gateway: this key may not open a terminal ({}), in a browser either",
                            self.no_pty.unwrap_or_default()
                        )),
                        work => Start::Work(identity.clone(), work),
                    }
                }
                (ConnState::Pending(_), Request::Shell) => {
                    match std::mem::replace(&mut *st, ConnState::SigningIn) {
                        ConnState::Pending(p) => Start::SignIn(p),
                        _ => return false,
                    }
                }
                (ConnState::Pending(_), Request::Exec(_)) => Start::Refuse(
                    "hermes-ssh-gateway: sign in first: connect without a command to sign in with your identity provider".into(),
                ),
                (ConnState::SigningIn, _) => Start::Refuse(
                    "hermes-ssh-gateway: a sign-in is already in progress on this connection".into(),
                ),
                (ConnState::Unauthenticated, _) => return false,
            }
        };
        let (Some(writer), Some(input), Some(attach)) =
            (slot.writer.take(), slot.input.take(), slot.attach.take())
        else {
            return false;
        };
        let job = Job {
            ctx: self.ctx.clone(),
            writer,
            input,
            attach: Some(attach),
            closed: slot.closed.clone(),
            pty: slot.pty.clone(),
            env: std::mem::take(&mut slot.env),
            resize: slot.resize.clone(),
            state: self.state.clone(),
            remote: self.remote,
            progress: self.progress.clone(),
        };
        tokio::spawn(job.run(start).instrument(self.span.clone()));
        true
    }
}

/// How a channel's job begins.
enum Start {
    /// Authenticated: do this.
    Work(Identity, Work),
    /// Pending: sign in first, then run the program.
    SignIn(Pending),
    /// Refuse with this line.
    Refuse(String),
}

/// Everything one channel's work needs, moved into its task.
struct Job {
    ctx: Arc<SshContext>,
    writer: ChannelWriteHalf<Msg>,
    /// Client input while no program runs (sign-in screen, "press a key" prompts).
    input: mpsc::Receiver<Bytes>,
    /// Hands the program's stdin to the channel reader once it starts.
    attach: Option<oneshot::Sender<Attach>>,
    closed: CancellationToken,
    pty: Option<PtyParams>,
    env: Vec<(String, String)>,
    resize: SharedResize,
    state: SharedState,
    remote: Option<std::net::IpAddr>,
    progress: Arc<AuthProgress>,
}

fn current_size(resize: &SharedResize) -> Option<TermSize> {
    resize.lock().ok().and_then(|r| r.size)
}

/// Sends exit-status, EOF and close.
async fn finish(writer: &ChannelWriteHalf<Msg>, code: u32) {
    let _ = writer.exit_status(code).await;
    let _ = writer.eof().await;
    let _ = writer.close().await;
}

/// Pipe output → channel (pipe sessions are not recorded). The channel writer waits for the
/// client's window, and this loop waits for the writer, so a slow client pauses the program
/// instead of growing a buffer.
async fn pump_out(
    mut from: Box<dyn AsyncRead + Send + Unpin>,
    mut to: impl AsyncWrite + Unpin,
    live: Arc<LiveSession>,
) {
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        live.output(n);
    }
    let _ = to.flush().await;
}

/// A started program, before a session takes it.
struct StartedProgram {
    process: launcher::Process,
    io: launcher::ProcessIo,
    resizer: Option<launcher::Resizer>,
    live: Arc<LiveSession>,
    guard: crate::ops::SessionGuard,
    recorder: Option<Recorder>,
    started: std::time::Instant,
}

/// The one answer to a session id that is not the user's, whether it exists or not.
fn not_yours(id: &str) -> String {
    format!("hermes-ssh-gateway: no session {id:?} of yours")
}

/// Why no program started.
enum NotStarted {
    /// Refused before launching (the user was told).
    Refused,
    /// The launch failed (the caller shows why).
    Failed(LaunchError),
}

/// The gateway's lines on a channel.
struct ChannelNotice<'a>(&'a ChannelWriteHalf<Msg>);

impl Notify for ChannelNotice<'_> {
    fn notice<'a>(
        &'a self,
        text: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let _ = self
                .0
                .data_bytes(Bytes::from(format!("\r\n[hermes-ssh-gateway] {text}\r\n")))
                .await;
        })
    }
}

/// The program's stdin, handed to the channel reader when the program starts.
struct Attach {
    /// Input that arrived before the program started, in order.
    queued: mpsc::Receiver<Bytes>,
    to: Box<dyn AsyncWrite + Send + Unpin>,
    live: Arc<LiveSession>,
}

/// Drains one channel for its whole life, so the connection never stalls on it. Before a
/// program runs, input is queued for whoever reads it (sign-in screen, prompts); once the
/// program's stdin is attached, input goes straight into it.
async fn read_channel(
    mut read: russh::ChannelReadHalf,
    tx: mpsc::Sender<Bytes>,
    mut attach: oneshot::Receiver<Attach>,
    closed: CancellationToken,
) {
    let mut tx = Some(tx);
    let mut attached = false;
    let mut eof = false;
    let mut sink: Option<(Box<dyn AsyncWrite + Send + Unpin>, Arc<LiveSession>)> = None;
    loop {
        tokio::select! {
            a = &mut attach, if !attached => {
                attached = true;
                let Ok(mut a) = a else { continue };
                read.set_receive_window(PROGRAM_WINDOW);
                // Nothing else can queue now: this task is the only sender.
                tx = None;
                let mut ok = true;
                while let Ok(chunk) = a.queued.try_recv() {
                    a.live.input(chunk.len());
                    if a.to.write_all(&chunk).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                if eof {
                    let _ = a.to.shutdown().await;
                } else if ok {
                    sink = Some((a.to, a.live));
                }
            }
            (room, msg) = next_message(&mut read, tx.as_ref().filter(|_| sink.is_none())) => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some((to, live)) = &mut sink {
                        live.input(data.len());
                        // Waiting here is the backpressure: a program that does not read
                        // leaves its channel's window closed, so the client stops sending.
                        tokio::select! {
                            r = to.write_all(&data) => if r.is_err() { sink = None },
                            _ = closed.cancelled() => break,
                        }
                    } else if let Some(room) = room {
                        room.send(data);
                    }
                }
                // Client EOF: the program's stdin closes (pipes) once queued input is written.
                Some(ChannelMsg::Eof) => {
                    eof = true;
                    tx = None;
                    if let Some((mut to, _)) = sink.take() {
                        let _ = to.shutdown().await;
                    }
                }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
        }
    }
    closed.cancel();
}

/// The channel's next message. Before a program runs, it is read only once `queue` has room
/// for its data: what nobody has read stays unacknowledged in the channel's window instead of
/// in a buffer here.
async fn next_message(
    read: &mut russh::ChannelReadHalf,
    queue: Option<&mpsc::Sender<Bytes>>,
) -> (Option<mpsc::OwnedPermit<Bytes>>, Option<ChannelMsg>) {
    let room = match queue {
        Some(q) => q.clone().reserve_owned().await.ok(),
        None => None,
    };
    (room, read.wait().await)
}
