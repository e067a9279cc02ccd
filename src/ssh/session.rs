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

use super::auth::Principal;
use super::server::{AuthProgress, Stage};
use super::SshContext;
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
use crate::tui::picker::{Choice, Entry as PickerEntry, Picker};
use secrecy::ExposeSecret;

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
    /// The key's line says `no-pty` (or `restrict`): no PTY, and no browser terminal either.
    no_pty: bool,
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
            no_pty: false,
            state: SharedState::default(),
            remote,
            progress,
            span,
        }
    }

    /// The key that signed in may not have a PTY.
    pub fn forbid_pty(&mut self) {
        self.no_pty = true;
    }

    /// Whether PTYs are refused on this connection.
    pub fn pty_forbidden(&self) -> bool {
        self.no_pty
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
        if self.no_pty {
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
                (ConnState::Identity(identity), Request::Shell) => {
                    Start::Work(identity.clone(), Work::Program(Vec::new()))
                }
                (ConnState::Identity(identity), Request::Exec(cmd)) => {
                    match classify_exec(cmd, self.ctx.exec_policy) {
                        // A browser terminal is a PTY by another road.
                        Work::Link(_) if self.no_pty => Start::Refuse(
                            "hermes-ssh-gateway: this key may not open a terminal (no-pty or restrict in its key file), in a browser either".into(),
                        ),
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

/// What an `exec` request turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Print the identity as JSON.
    Whoami,
    /// List the user's enrolled keys.
    Keys,
    /// Remove one of the user's enrolled keys.
    Revoke(String),
    /// Remove the enrollment of the key this connection used.
    Logout,
    /// Print a one-use link that logs a browser in as this user (and opens this session).
    Link(Option<String>),
    /// Run the configured program with these extra arguments.
    Program(Vec<String>),
    /// List the user's sessions, one JSON line each.
    Sessions,
    /// Attach one of the user's sessions.
    Attach(String),
    /// Start a new session even though one is detached.
    New,
    /// End one of the user's sessions.
    End(String),
    /// Mint a single-use link that lets someone watch a session read-only.
    Share(String),
    /// Watch a session shared with this token (read-only).
    Watch(String),
    /// Refuse with this message.
    Refuse(String),
}

/// Decides what `ssh host <command>` does.
pub fn classify_exec(command: &str, policy: ExecPolicy) -> Work {
    let words: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
    match words.first().map(String::as_str) {
        Some("whoami") if words.len() == 1 => Work::Whoami,
        Some("logout") if words.len() == 1 => Work::Logout,
        Some("keys") if words.len() == 1 => Work::Keys,
        Some("keys") if words.len() == 3 && words[1] == "revoke" => Work::Revoke(words[2].clone()),
        Some("link") if words.len() <= 2 => Work::Link(words.get(1).cloned()),
        Some("sessions") if words.len() == 1 => Work::Sessions,
        Some("attach") if words.len() == 2 => Work::Attach(words[1].clone()),
        Some("new") if words.len() == 1 => Work::New,
        Some("end") if words.len() == 2 => Work::End(words[1].clone()),
        Some("share") if words.len() == 2 => Work::Share(words[1].clone()),
        Some("watch") if words.len() == 2 => Work::Watch(words[1].clone()),
        None => Work::Program(Vec::new()),
        Some(_) => match policy {
            ExecPolicy::Args => Work::Program(words),
            ExecPolicy::Refuse => Work::Refuse(format!(
                "hermes-ssh-gateway: command {:?} is not available here; built-ins: whoami, link, logout, keys, keys revoke SHA256:…, sessions, attach ID, new, end ID, share ID, watch TOKEN (or connect without a command)",
                command.trim()
            )),
        },
    }
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

impl Job {
    async fn run(self, start: Start) {
        match start {
            Start::Work(identity, work) => self.work(identity, work).await,
            Start::SignIn(pending) => self.sign_in(pending).await,
            Start::Refuse(msg) => {
                tracing::info!("refused: {msg}");
                self.refuse(&msg).await;
            }
        }
    }

    async fn refuse(&self, msg: &str) {
        let _ = self
            .writer
            .extended_data_bytes(1, Bytes::from(format!("{msg}\r\n")))
            .await;
        finish(&self.writer, 1).await;
    }

    async fn print(&self, text: String) {
        let _ = self.writer.data_bytes(Bytes::from(text)).await;
    }

    async fn work(self, identity: Identity, work: Work) {
        match work {
            Work::Whoami => {
                // The identity, plus the Unix account programs run as (as configured; the
                // account itself is resolved, or created, when a program starts).
                let account = self.ctx.launch.load().account_name(&identity.user_id);
                let mut json = serde_json::to_value(&identity).unwrap_or_default();
                if let (Some(obj), Some(a)) = (json.as_object_mut(), account) {
                    obj.insert("account".into(), a.into());
                }
                self.print(format!("{json}\n")).await;
                finish(&self.writer, 0).await;
            }
            Work::Logout => self.logout(&identity).await,
            Work::Keys => self.keys(&identity).await,
            Work::Revoke(fp) => self.revoke(&identity, &fp).await,
            Work::Link(session) => self.link(&identity, session.as_deref()).await,
            Work::Refuse(msg) => {
                tracing::info!(user = %identity.user_id, "refused exec: {msg}");
                self.refuse(&msg).await;
            }
            Work::Program(args) if args.is_empty() => self.resume_or_start(identity).await,
            Work::Program(args) => self.run_program(identity, args).await,
            Work::New => self.run_program(identity, Vec::new()).await,
            Work::Sessions => {
                let lines: String = self
                    .ctx
                    .hub
                    .of_user(&identity.user_id)
                    .iter()
                    .map(|s| format!("{}\n", s.describe()))
                    .collect();
                self.print(lines).await;
                finish(&self.writer, 0).await;
            }
            Work::Attach(id) => match self.ctx.hub.own(&identity.user_id, &id) {
                Some(session) if self.pty.is_some() => self.attach_to(session).await,
                Some(_) => {
                    self.refuse(
                        "hermes-ssh-gateway: attach needs a terminal (ssh -t host attach ID)",
                    )
                    .await
                }
                None => self.refuse(&not_yours(&id)).await,
            },
            Work::Share(id) => self.share(&identity, &id).await,
            Work::Watch(token) => self.watch(&identity, &token).await,
            Work::End(id) => match self.ctx.hub.own(&identity.user_id, &id) {
                Some(session) => {
                    session.live.end_with("ended by its user");
                    self.print(format!("ended session {id}\n")).await;
                    finish(&self.writer, 0).await;
                }
                None => self.refuse(&not_yours(&id)).await,
            },
        }
    }

    /// `share ID`: a single-use, short-lived ticket that lets any signed-in user watch.
    async fn share(&self, identity: &Identity, id: &str) {
        if self.ctx.hub.own(&identity.user_id, id).is_none() {
            return self.refuse(&not_yours(id)).await;
        }
        match self
            .ctx
            .tickets
            .mint(identity, Purpose::Watch, Some(id), WATCH_TTL)
            .await
        {
            Ok(t) => {
                let token = t.expose_secret().to_owned();
                self.ctx.ops.emit(Event::Ticket {
                    op: TicketOp::Mint,
                    purpose: Purpose::Watch,
                    ok: true,
                });
                tracing::info!(user = %identity.user_id, session = id, "watch ticket minted");
                self.print(format!(
                    "Anyone signed in to this gateway can watch session {id} (read-only) once, within {}:\n  ssh -t <this host> watch {token}\n",
                    humantime::format_duration(WATCH_TTL)
                ))
                .await;
                finish(&self.writer, 0).await;
            }
            Err(e) => {
                tracing::error!(reason = %e, "minting a watch ticket failed");
                self.refuse("hermes-ssh-gateway: cannot share right now")
                    .await;
            }
        }
    }

    /// `watch TOKEN`: this user watches the shared session, read-only.
    async fn watch(self, identity: &Identity, token: &str) {
        let consumed = self.ctx.tickets.consume(token, Purpose::Watch).await;
        self.ctx.ops.emit(Event::Ticket {
            op: TicketOp::Consume,
            purpose: Purpose::Watch,
            ok: consumed.is_ok(),
        });
        let session = match consumed {
            // Still the owner's: a session handed over is not watchable with an old link.
            Ok(r) => r
                .session
                .and_then(|id| self.ctx.hub.own(&r.identity.user_id, &id)),
            Err(reason) => {
                tracing::warn!(user = %identity.user_id, %reason, "refused: watch ticket");
                None
            }
        };
        let (Some(session), true) = (session, self.pty.is_some()) else {
            return self
                .refuse("hermes-ssh-gateway: this watch link is not valid (used, expired, or its session ended); watching needs ssh -t")
                .await;
        };
        let joining = Joining {
            who: format!(
                "{} from {} (watching)",
                identity.user_id,
                self.shown_remote()
            ),
            size: current_size(&self.resize).or(self.pty.as_ref().map(|p| p.size)),
            watcher: true,
            restore: true,
        };
        let sink: crate::sessions::Sink = Box::new(self.writer.make_writer());
        let attachment = session.attach(sink, joining).await;
        let audit = |what| Event::Attachment {
            owner: session.user.clone(),
            actor: Actor::User(identity.user_id.clone()),
            session: session.id.clone(),
            remote: self.remote,
            what,
        };
        self.ctx.ops.emit(audit(AttachmentKind::WatchStart));
        tracing::info!(user = %identity.user_id, owner = %session.user, session = session.id, "watching");
        let end = audit(AttachmentKind::WatchEnd);
        let ops = self.ctx.ops.clone();
        self.serve_client(session, attachment).await;
        ops.emit(end);
    }

    /// A plain login: sessions that ended while the user was away are reported, then the most
    /// recently active detached session is resumed, or a new program starts.
    async fn resume_or_start(mut self, identity: Identity) {
        for line in self.ctx.hub.take_reports(&identity.user_id) {
            ChannelNotice(&self.writer).notice(&line).await;
        }
        let detached: Vec<_> = self
            .ctx
            .hub
            .of_user(&identity.user_id)
            .into_iter()
            .filter(|s| !s.is_attached())
            .collect();
        if self.pty.is_none() || detached.is_empty() {
            return self.run_program(identity, Vec::new()).await;
        }
        let choice = if detached.len() == 1 {
            Choice::Attach(0)
        } else {
            self.pick(&detached).await
        };
        match choice {
            Choice::Attach(i) => {
                let session = detached[i].clone();
                tracing::info!(user = %identity.user_id, session = session.id, "reattaching");
                self.attach_to(session).await
            }
            Choice::New => self.run_program(identity, Vec::new()).await,
            Choice::Quit => finish(&self.writer, 0).await,
        }
    }

    /// Several detached sessions: the user picks one (or a new one) on a ratatui screen.
    async fn pick(&mut self, sessions: &[Arc<Running>]) -> Choice {
        let entries = sessions
            .iter()
            .map(|s| {
                let started = chrono::DateTime::<chrono::Utc>::from(s.started);
                let quiet = s.live.since_output_ms() / 1000;
                PickerEntry {
                    id: s.id.clone(),
                    started: started.format("%H:%M UTC").to_string(),
                    last_output: match quiet {
                        0..60 => format!("{quiet}s ago"),
                        60..3600 => format!("{}m ago", quiet / 60),
                        _ => format!("{}h ago", quiet / 3600),
                    },
                    command: s.command.clone(),
                }
            })
            .collect();
        let mut picker = Picker::new(entries);
        let draw = |p: &Picker, resize: &SharedResize, initial: TermSize| {
            let size = current_size(resize).unwrap_or(initial);
            Bytes::from(p.render(size.cols, size.rows))
        };
        let initial = self.pty.as_ref().map(|p| p.size).unwrap_or_default();
        let _ = self
            .writer
            .data_bytes(draw(&picker, &self.resize, initial))
            .await;
        let choice = loop {
            tokio::select! {
                data = self.input.recv() => match data {
                    Some(d) => match picker.key(&d) {
                        Some(c) => break c,
                        None => {
                            let _ = self.writer.data_bytes(draw(&picker, &self.resize, initial)).await;
                        }
                    },
                    None => break Choice::Quit,
                },
                _ = self.closed.cancelled() => break Choice::Quit,
            }
        };
        let _ = self
            .writer
            .data_bytes(Bytes::from_static(crate::tui::picker::LEAVE))
            .await;
        choice
    }

    async fn logout(&self, identity: &Identity) {
        let fp = identity.key_fingerprint.clone().unwrap_or_default();
        match identity.method {
            AuthMethod::EnrolledKey => match self.ctx.enrollments.remove(&fp).await {
                Ok(_) => {
                    tracing::info!(user = %identity.user_id, key = %fp, "logout: key enrollment removed");
                    self.ctx.ops.emit(Event::Logout {
                        user: identity.user_id.clone(),
                        key: fp.clone(),
                    });
                    self.print(format!(
                        "Signed out: key {fp} is no longer linked to {}. The next connection signs in again.\n",
                        identity.user_id
                    ))
                    .await;
                    finish(&self.writer, 0).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "logout failed");
                    self.refuse("hermes-ssh-gateway: logout failed: the gateway's state store is unavailable").await;
                }
            },
            AuthMethod::Key => {
                self.refuse(&format!(
                    "hermes-ssh-gateway: key {fp} is mapped to {} by the operator; ask them to remove it from the users directory",
                    identity.user_id
                ))
                .await
            }
            _ => self.refuse("hermes-ssh-gateway: this connection used no linked key; nothing to sign out").await,
        }
    }

    /// `keys`: the user's enrolled keys, one line each.
    async fn keys(&self, identity: &Identity) {
        let list = match self.ctx.enrollments.list(Some(&identity.user_id)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "listing enrollments failed");
                return self
                    .refuse("hermes-ssh-gateway: the gateway's state store is unavailable")
                    .await;
            }
        };
        let mut out = String::new();
        if list.is_empty() {
            out.push_str(&format!("No keys are enrolled for {}.\n", identity.user_id));
        }
        let day = |t: u64| {
            chrono::DateTime::from_timestamp(t as i64, 0)
                .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_default()
        };
        for (fp, e) in list {
            let this = identity.key_fingerprint.as_deref() == Some(fp.as_str());
            out.push_str(&format!(
                "{fp}  added {}  expires {}  last used {}{}\n",
                day(e.enrolled_at),
                day(e.expires_at),
                e.last_used.map(day).unwrap_or_else(|| "never".into()),
                if this { "  (this key)" } else { "" }
            ));
        }
        self.print(out).await;
        finish(&self.writer, 0).await;
    }

    /// `keys revoke FP`: removes one of this user's enrolled keys.
    async fn revoke(&self, identity: &Identity, fp: &str) {
        let store = &self.ctx.enrollments;
        let theirs = matches!(store.lookup(fp).await, Ok(Some(e)) if e.user_id == identity.user_id);
        if !theirs {
            return self
                .refuse(&format!(
                    "hermes-ssh-gateway: no enrolled key {fp} of {}",
                    identity.user_id
                ))
                .await;
        }
        match store.remove(fp).await {
            Ok(_) => {
                tracing::info!(user = %identity.user_id, key = fp, "enrolled key revoked by its user");
                self.ctx.ops.emit(Event::Revoked {
                    user: identity.user_id.clone(),
                    key: fp.to_owned(),
                    by: RevokedBy::User,
                });
                self.print(format!(
                    "Revoked {fp}: it no longer logs in as {}.\n",
                    identity.user_id
                ))
                .await;
                finish(&self.writer, 0).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "revoking an enrollment failed");
                self.refuse("hermes-ssh-gateway: the gateway's state store is unavailable")
                    .await;
            }
        }
    }

    /// `link`: a 60-second, single-use URL that logs a browser in as this user.
    async fn link(&self, identity: &Identity, session: Option<&str>) {
        let Some(web) = &self.ctx.web_link else {
            return self
                .refuse("hermes-ssh-gateway: the web front is not enabled on this gateway")
                .await;
        };
        if let Some(id) = session.filter(|id| self.ctx.hub.own(&identity.user_id, id).is_none()) {
            return self.refuse(&not_yours(id)).await;
        }
        // The session travels inside the ticket: the URL stays one opaque token.
        match web
            .tickets
            .mint(identity, Purpose::WebLogin, session, LINK_TTL)
            .await
        {
            Ok(t) => {
                tracing::info!(user = %identity.user_id, "web login link minted");
                self.ctx.ops.emit(Event::Ticket {
                    op: TicketOp::Mint,
                    purpose: Purpose::WebLogin,
                    ok: true,
                });
                self.print(format!(
                    "{}/auth/ticket?t={}\n",
                    web.public_url,
                    t.expose_secret()
                ))
                .await;
                finish(&self.writer, 0).await;
            }
            Err(e) => {
                tracing::error!(reason = %e, "minting a web login ticket failed");
                self.refuse("hermes-ssh-gateway: cannot create a link right now")
                    .await;
            }
        }
    }

    /// Device sign-in for a pending connection, then the program.
    async fn sign_in(mut self, pending: Pending) {
        let Some(oidc) = self.ctx.oidc.clone() else {
            return self
                .refuse("hermes-ssh-gateway: sign-in is not configured")
                .await;
        };
        let resize = self.resize.clone();
        let size: Option<Box<dyn Fn() -> TermSize + Send>> = self.pty.as_ref().map(|p| {
            let initial = p.size;
            Box::new(move || current_size(&resize).unwrap_or(initial))
                as Box<dyn Fn() -> TermSize + Send>
        });
        // Say up front which key this sign-in binds, and for how long (`keys` lists it later),
        // and why the key no longer logs in by itself when a re-check just ended it.
        let remembers = pending
            .proven_key
            .as_ref()
            .filter(|_| !self.ctx.enroll_ttl.is_zero())
            .map(|k| {
                let until = chrono::Utc::now()
                    + chrono::Duration::from_std(self.ctx.enroll_ttl).unwrap_or_default();
                format!(
                    "Remembers key {} until {}",
                    k.fingerprint,
                    until.format("%Y-%m-%d")
                )
            });
        let revoked = pending
            .revoked
            .as_ref()
            .map(|why| format!("This key's enrollment ended: {why}. Sign in again."));
        let note = match (revoked, remembers) {
            (Some(a), Some(b)) => Some(format!("{a}\n{b}")),
            (a, b) => a.or(b),
        };
        let io = super::signin::SigninIo {
            writer: &self.writer,
            input: &mut self.input,
            closed: &self.closed,
            size,
            note,
        };
        self.ctx.ops.emit(Event::DeviceFlow { started: true });
        let result = super::signin::run(io, &oidc).await;
        // An IdP user never gets a key-file user's id by choosing a claim value.
        let result = result.and_then(|approved| {
            self.ctx.namespaces.admit(&approved.identity)?;
            Ok(approved)
        });
        let (result, refresh_token) = match result {
            Ok(a) => (Ok(a.identity), a.refresh_token),
            Err(e) => (Err(e), None),
        };
        self.ctx.ops.emit(Event::DeviceFlow { started: false });
        self.ctx.ops.emit(Event::Auth {
            user: result.as_ref().ok().map(|i| i.user_id.clone()),
            method: Method::DeviceFlow,
            key: pending.proven_key.as_ref().map(|k| k.fingerprint.clone()),
            remote: self.remote,
            failure: result.as_ref().err().map(|e| e.to_string()),
        });
        let mut identity = match result {
            Ok(id) => id,
            Err(e) => {
                if let Ok(mut st) = self.state.lock() {
                    *st = ConnState::Unauthenticated;
                }
                if self.closed.is_cancelled() {
                    tracing::info!("client left during sign-in; polling stopped");
                } else {
                    tracing::info!(reason = %e, "device sign-in failed");
                    if let crate::identity::oidc::FlowError::InvalidToken(detail) = &e {
                        tracing::warn!(
                            detail = detail as &dyn std::error::Error,
                            "ID token refused"
                        );
                    }
                    self.refuse(&format!("hermes-ssh-gateway: {e}")).await;
                }
                // The connection ends here (after the one-line reason, queued before this):
                // a failed sign-in must not leave a connection that can open more channels
                // or be kept alive by keepalives.
                self.progress
                    .set(Stage::Failed(format!("sign-in failed: {e}")));
                return;
            }
        };
        if let Some(key) = &pending.proven_key {
            identity.key_fingerprint = Some(key.fingerprint.clone());
            if !self.ctx.enroll_ttl.is_zero() {
                let mut e = Enrollment::new(&identity, self.ctx.enroll_ttl);
                e.refresh_token =
                    refresh_token.map(|t| RefreshToken::new(t.expose_secret().to_owned()));
                match self.ctx.enrollments.bind(&key.fingerprint, e).await {
                    Ok(()) => {
                        tracing::info!(user = %identity.user_id, key = %key.fingerprint, ttl = ?self.ctx.enroll_ttl, "key enrolled");
                        // The README's audit schema always listed it; nothing emitted it.
                        self.ctx.ops.emit(Event::Enrolled {
                            user: identity.user_id.clone(),
                            key: key.fingerprint.clone(),
                        });
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "enrolling the key failed; the user will sign in again next time")
                    }
                }
            }
        }
        // The pending slot is freed here; the connection is now this identity.
        drop(pending);
        if let Ok(mut st) = self.state.lock() {
            *st = ConnState::Identity(identity.clone());
        }
        self.progress.set(Stage::SignedIn);
        self.ctx.bans_success(self.remote).await;
        tracing::Span::current().record("user", identity.user_id.as_str());
        tracing::info!(user = %identity.user_id, method = %identity.method, provider = %identity.provider, key = identity.key_fingerprint.as_deref().unwrap_or("-"), "authenticated");
        let who = match &identity.email {
            Some(e) => format!("{} ({e})", identity.user_id),
            None => identity.user_id.to_string(),
        };
        self.print(format!("Signed in as {who}.\r\n")).await;
        self.run_program(identity, Vec::new()).await;
    }

    async fn run_program(mut self, identity: Identity, extra_args: Vec<String>) {
        let mut started = match self.start_program(&identity, extra_args).await {
            Ok(s) => s,
            Err(NotStarted::Refused) => return,
            Err(NotStarted::Failed(e)) => return self.show_failure(&identity, &e).await,
        };
        let user = started.live.user.clone();
        let rules = Rules {
            ops: self.ctx.ops.clone(),
            shutdown: self.ctx.shutdown.clone(),
            idle: self.ctx.limits.idle_timeout,
        };
        let io = started.io;
        let (Some(pty), Some(resizer)) = (self.pty.as_ref(), started.resizer) else {
            // Pipes: the session is this connection's and ends with it.
            let out = tokio::spawn(pump_out(
                io.output,
                self.writer.make_writer(),
                started.live.clone(),
            ));
            let err = io.stderr.map(|e| {
                tokio::spawn(pump_out(
                    e,
                    self.writer.make_writer_ext(Some(1)),
                    started.live.clone(),
                ))
            });
            self.feed_input(io.input, &started.live);
            let supervised = Started {
                process: started.process,
                live: started.live,
                guard: started.guard,
                out,
                err,
                started: started.started,
            };
            let presence = Presence::Connection(self.closed.clone());
            let outcome =
                supervise(supervised, rules, presence, &ChannelNotice(&self.writer)).await;
            if let Some(n) = &outcome.notice {
                ChannelNotice(&self.writer).notice(n).await;
            }
            if let Some(code) = outcome.code {
                finish(&self.writer, code).await;
            }
            return;
        };
        // A PTY: the session belongs to the gateway, and this connection is its first client.
        let size = current_size(&self.resize).unwrap_or(pty.size);
        let session = Running::new(
            identity.user_id.clone(),
            started.live.command.clone(),
            started.live.clone(),
            resizer,
            size,
            (!self.ctx.detach.timeout.is_zero()).then_some(self.ctx.detach.scrollback),
            self.ctx.ops.clone(),
        );
        let recorder = started.recorder.take();
        if let Ok(mut slot) = self.resize.lock() {
            slot.recorder = recorder.clone();
        }
        // The first client is attached before any output is read: a program that prints and
        // exits at once must not print to nobody. Its size is the latest (a window-change may
        // have arrived while the program was starting).
        let attachment = self.join(&session, false).await;
        drop(io.input);
        crate::sessions::take_over(
            &self.ctx.hub,
            &session,
            io.output,
            recorder,
            |out| Started {
                process: started.process,
                live: started.live,
                guard: started.guard,
                out,
                err: None,
                started: started.started,
            },
            rules,
            self.ctx.detach.timeout,
        );
        tracing::debug!(user = %user, session = session.id, "session core took the program");
        self.serve_client(session, attachment).await;
    }

    /// Reattaches `session`: this client gets its screen as it stands, then live output.
    async fn attach_to(self, session: Arc<Running>) {
        let attachment = self.join(&session, true).await;
        self.audit_attachment(&session, AttachmentKind::Attach);
        self.serve_client(session, attachment).await
    }

    /// This channel becomes a client of `session`, beside any others.
    async fn join(&self, session: &Arc<Running>, restore: bool) -> Attachment {
        let sink: crate::sessions::Sink = Box::new(self.writer.make_writer());
        let joining = Joining {
            who: format!("{} from {}", session.user, self.shown_remote()),
            size: current_size(&self.resize).or(self.pty.as_ref().map(|p| p.size)),
            watcher: false,
            restore,
        };
        let attachment = session.attach(sink, joining).await;
        if let Ok(mut slot) = self.resize.lock() {
            slot.session = Some((session.clone(), attachment.clone()));
        }
        attachment
    }

    /// `attach` / `detach` in the audit log.
    fn audit_attachment(&self, session: &Running, what: AttachmentKind) {
        self.ctx.ops.emit(Event::Attachment {
            owner: session.user.clone(),
            actor: Actor::User(session.user.clone()),
            session: session.id.clone(),
            remote: self.remote,
            what,
        });
    }

    /// Stays this session's client until the client leaves (the session is then detached),
    /// another client takes it over, or it ends.
    async fn serve_client(mut self, session: Arc<Running>, attachment: Attachment) {
        let user = session.user.to_string();
        self.feed_input(session.input_for(&attachment), &session.live);
        let mut outcome = session.outcome();
        tokio::select! {
            _ = self.closed.cancelled() => {
                session.detach(&attachment).await;
                if !self.ctx.detach.timeout.is_zero() && !attachment.is_watcher() {
                    tracing::info!(user, session = session.id, "client left; session detached");
                    self.audit_attachment(&session, AttachmentKind::Detach);
                    // Over the cap, the longest-detached sessions end (reported at next login).
                    let detached: Vec<_> = self
                        .ctx
                        .hub
                        .of_user(&session.user)
                        .into_iter()
                        .filter(|s| !s.is_attached())
                        .collect();
                    for old in detached.iter().skip(self.ctx.detach.max_per_user) {
                        old.live.end_with(&format!(
                            "more than {} detached sessions",
                            self.ctx.detach.max_per_user
                        ));
                    }
                }
            }
            _ = attachment.gone.cancelled() => {
                // The program's last output before its exit status.
                attachment.flushed().await;
                let ended = outcome.borrow_and_update().clone();
                match ended {
                    Some(o) => {
                        if let Some(n) = &o.notice {
                            ChannelNotice(&self.writer).notice(n).await;
                        }
                        if let Some(code) = o.code {
                            finish(&self.writer, code).await;
                        }
                    }
                    // The session dropped this client (it could not be written to).
                    None => finish(&self.writer, 255).await,
                }
            }
        }
    }

    /// From now on the channel reader writes client input straight into `to` (no extra task
    /// hop per keystroke), after what was queued before the program started.
    fn feed_input(&mut self, to: Box<dyn AsyncWrite + Send + Unpin>, live: &Arc<LiveSession>) {
        let queued = std::mem::replace(&mut self.input, mpsc::channel(1).1);
        if let Some(attach) = self.attach.take() {
            let _ = attach.send(Attach {
                queued,
                to,
                live: live.clone(),
            });
        }
    }

    /// Registers, prepares and starts the program, and starts its recording; on failure the
    /// user has been told and `None` comes back.
    async fn start_program(
        &mut self,
        identity: &Identity,
        extra_args: Vec<String>,
    ) -> Result<StartedProgram, NotStarted> {
        let user = identity.user_id.to_string();
        let launch = self.ctx.launch.load_full();
        let command = launch.command.join(" ");
        let guard = match self
            .ctx
            .ops
            .sessions
            .register(
                NewSession {
                    user: identity.user_id.clone(),
                    method: identity.method.into(),
                    front: Front::Ssh,
                    remote: self.remote,
                    command: command.clone(),
                },
                self.ctx.limits.max_sessions_per_user,
            )
            .await
        {
            Ok(g) => g,
            Err(e) => {
                self.ctx.ops.emit(Event::Refused {
                    user: Some(identity.user_id.clone()),
                    remote: self.remote,
                    what: e.to_string(),
                });
                tracing::warn!(user, "refused: {e}");
                self.refuse(&format!("hermes-ssh-gateway: {e}")).await;
                return Err(NotStarted::Refused);
            }
        };
        let live = guard.session.clone();
        let session_env = SessionEnv {
            term: self.pty.as_ref().map(|p| p.term.clone()),
            client: std::mem::take(&mut self.env),
        };
        let id = identity.clone();
        let spec = launch.clone();
        let prepared =
            tokio::task::spawn_blocking(move || spec.prepare(&id, &session_env, &extra_args))
                .await
                .unwrap_or_else(|e| Err(LaunchError::Other(e.to_string())));
        let size = self
            .pty
            .as_ref()
            .map(|pty| current_size(&self.resize).unwrap_or(pty.size));
        let spawned = match prepared {
            Ok(p) => match (&self.pty, size) {
                (Some(pty), Some(size)) => launcher::spawn_pty(p, size, pty.modes.clone())
                    .await
                    .map(|(s, r)| (s, Some(r))),
                _ => launcher::spawn_pipes(p).map(|s| (s, None)),
            },
            Err(e) => Err(e),
        };
        let (launcher::Spawned { process, io }, resizer) = match spawned {
            Ok(s) => s,
            Err(e) => {
                if let LaunchError::Account(a) = &e {
                    // No usable account is a security decision: it goes to the audit log too.
                    self.ctx.ops.emit(Event::Refused {
                        user: Some(identity.user_id.clone()),
                        remote: self.remote,
                        what: a.to_string(),
                    });
                }
                return Err(NotStarted::Failed(e));
            }
        };
        tracing::info!(
            user,
            pid = process.pid(),
            session_id = live.id,
            pty = self.pty.is_some(),
            account = process.account().name,
            "program started"
        );
        self.ctx.ops.emit(live.started(
            size.map(|s| (s.cols, s.rows)),
            &process.account().name,
            process.account().uid,
        ));
        let recorder = match (&self.ctx.recording_dir, &self.pty, size) {
            (Some(dir), Some(pty), Some(size)) => {
                match Recorder::start(dir, &user, live.id, size.cols, size.rows, &pty.term).await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the session recording; the session goes on");
                        None
                    }
                }
            }
            _ => None,
        };
        Ok(StartedProgram {
            process,
            io,
            resizer,
            live,
            guard,
            recorder,
            started: std::time::Instant::now(),
        })
    }

    /// The client's address as the other clients of a session are told it.
    fn shown_remote(&self) -> String {
        self.remote
            .map(|r| r.to_string())
            .unwrap_or_else(|| "an unknown address".into())
    }

    /// The program could not start: tell the user clearly instead of disconnecting.
    async fn show_failure(mut self, identity: &Identity, error: &LaunchError) {
        tracing::error!(user = %identity.user_id, error = %error, "cannot start the session program");
        let code = match error {
            LaunchError::NotFound { .. } => 127,
            LaunchError::NotExecutable { .. } => 126,
            _ => 1,
        };
        let command = self.ctx.launch.load().command.join(" ");
        match &self.pty {
            Some(pty) => {
                let size = current_size(&self.resize).unwrap_or(pty.size);
                let screen =
                    crate::tui::fallback::render(identity, &command, error, size.cols, size.rows);
                let _ = self.writer.data_bytes(Bytes::from(screen)).await;
                // Wait for a key (or a timeout) so the user can read it, then restore the screen.
                let _ = tokio::time::timeout(Duration::from_secs(120), async {
                    tokio::select! {
                        _ = self.input.recv() => {},
                        _ = self.closed.cancelled() => {},
                    }
                })
                .await;
                let _ = self
                    .writer
                    .data_bytes(Bytes::from_static(crate::tui::fallback::LEAVE))
                    .await;
            }
            None => {
                let text = crate::tui::fallback::plain(identity, &command, error);
                let _ = self.writer.extended_data_bytes(1, Bytes::from(text)).await;
            }
        }
        finish(&self.writer, code).await;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_classification() {
        assert_eq!(classify_exec("whoami", ExecPolicy::Refuse), Work::Whoami);
        assert_eq!(classify_exec("  whoami ", ExecPolicy::Args), Work::Whoami);
        assert!(matches!(
            classify_exec("rm -rf /", ExecPolicy::Refuse),
            Work::Refuse(_)
        ));
        assert_eq!(
            classify_exec("--model x; echo", ExecPolicy::Args),
            Work::Program(vec!["--model".into(), "x;".into(), "echo".into()])
        );
    }
}
