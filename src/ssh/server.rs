//! The listener: accepts connections on an already-bound socket until shutdown, one tracing span
//! per connection.

use std::sync::Arc;
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::server::Config as RusshConfig;
use russh::MethodKind;
use std::sync::atomic::{AtomicBool, Ordering};

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::identity::limits::Bans;
use crate::ops::{ConnRefusal, Event, Shutdown};
use tracing::Instrument;

use super::handler::ConnectionHandler;
use super::proxy::Sniff;
use super::quickack::QuickAck;
use super::SshContext;

/// Protocol settings of the SSH front.
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// Close a connection after this long without any traffic.
    pub inactivity_timeout: Duration,
    /// Keepalive interval (`None` disables).
    pub keepalive_interval: Option<Duration>,
}

/// The SSH server: a host key, the shared context and protocol settings.
pub struct SshServer {
    config: Arc<RusshConfig>,
    ctx: Arc<SshContext>,
}

impl SshServer {
    /// Builds the server.
    pub fn new(host_key: PrivateKey, ctx: SshContext, settings: &SshSettings) -> SshServer {
        let config = RusshConfig {
            server_id: russh::SshId::Standard(
                format!("SSH-2.0-hermes-ssh-gateway_{}", env!("CARGO_PKG_VERSION")).into(),
            ),
            methods: if ctx.oidc.is_some() {
                (&[MethodKind::PublicKey, MethodKind::KeyboardInteractive][..]).into()
            } else {
                (&[MethodKind::PublicKey][..]).into()
            },
            // OpenSSH opens with a "none" probe; padding its rejection only slows every login.
            auth_rejection_time_initial: Some(Duration::ZERO),
            // Refusing an offered key is a map lookup with no secret-dependent timing; a short
            // pad keeps multi-key clients fast (sshd does not pad key probes either).
            auth_rejection_time: Duration::from_millis(5),
            keys: vec![host_key],
            inactivity_timeout: Some(settings.inactivity_timeout),
            keepalive_interval: settings.keepalive_interval,
            keepalive_max: 3,
            nodelay: true,
            // What a client may send on a channel before a program reads it (the patched russh
            // re-opens a window only as data is read): enough for keys typed during a sign-in
            // or while the program starts, and 10 channels of it (twice, with the one queued
            // chunk) stay under 64 KB. A channel
            // whose program runs gets PROGRAM_WINDOW (session.rs).
            window_size: super::session::PRE_PROGRAM_WINDOW,
            channel_buffer_size: 16,
            ..Default::default()
        };
        SshServer {
            config: Arc::new(config),
            ctx: Arc::new(ctx),
        }
    }

    /// Accepts connections on `listener` until `shutdown.draining`; after `shutdown.terminate`
    /// every client is disconnected, and this returns once their tasks are gone.
    pub async fn serve(self, listener: TcpListener, limits: ConnectionLimits, shutdown: Shutdown) {
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let bans = limits.bans.clone();
        loop {
            let (socket, peer) = tokio::select! {
                _ = shutdown.draining.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Refusals before any SSH work: an excess client costs an accept and a close.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, limit = limits.max_connections, "refused: too many connections");
                self.ctx.ops.emit(Event::ConnectionRefused {
                    remote: peer.ip(),
                    reason: ConnRefusal::MaxConnections,
                });
                continue;
            };
            let span = tracing::info_span!(
                "conn",
                peer = %peer,
                client = tracing::field::Empty,
                user = tracing::field::Empty
            );
            let conn = Connection {
                config: self.config.clone(),
                ctx: self.ctx.clone(),
                bans: bans.clone(),
                login_grace: limits.login_grace,
                terminate: shutdown.terminate.clone(),
                proxy: limits.proxy.clone(),
            };
            tracker.spawn(
                async move {
                    let _slot = slot;
                    conn.run(socket, peer).await;
                }
                .instrument(span),
            );
        }
        tracing::info!("stopped accepting SSH connections");
        tracker.close();
        tracker.wait().await;
    }
}

/// Limits applied before and around authentication.
#[derive(Clone)]
pub struct ConnectionLimits {
    /// Most concurrent connections.
    pub max_connections: usize,
    /// Unauthenticated connections are closed after this.
    pub login_grace: Duration,
    /// Per-address failures and bans.
    pub bans: Arc<dyn Bans>,
    /// PROXY protocol from load balancers.
    pub proxy: super::proxy::ProxyPolicy,
}

/// How far a connection has come; the listener task acts on every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Accepted, not yet authenticated: `login_grace` runs.
    Connecting,
    /// Admitted to device sign-in only: `pending_timeout` runs.
    Pending,
    /// Authenticated as a user.
    SignedIn,
    /// A sign-in failed, was denied, expired or was cancelled: the connection ends now.
    Failed(String),
}

/// What a connection's authentication has reached, shared with its listener task.
#[derive(Debug)]
pub struct AuthProgress {
    attempted: AtomicBool,
    stage: watch::Sender<Stage>,
}

impl Default for AuthProgress {
    fn default() -> Self {
        AuthProgress {
            attempted: AtomicBool::new(false),
            stage: watch::Sender::new(Stage::Connecting),
        }
    }
}

impl AuthProgress {
    /// The client tried a credential.
    pub fn attempt(&self) {
        self.attempted.store(true, Ordering::Relaxed);
    }
    /// Whether a credential was tried.
    pub fn attempted(&self) -> bool {
        self.attempted.load(Ordering::Relaxed)
    }
    /// Moves the connection to `stage` (a failed connection stays failed).
    pub fn set(&self, stage: Stage) {
        self.stage.send_if_modified(|s| {
            if matches!(s, Stage::Failed(_)) || *s == stage {
                return false;
            }
            *s = stage;
            true
        });
    }
    /// Where the connection is now.
    pub fn stage(&self) -> Stage {
        self.stage.borrow().clone()
    }
    /// Whether the connection is signed in as a user.
    pub fn signed_in(&self) -> bool {
        *self.stage.borrow() == Stage::SignedIn
    }
}

/// One accepted connection and what it needs from the listener.
struct Connection {
    config: Arc<RusshConfig>,
    ctx: Arc<SshContext>,
    bans: Arc<dyn Bans>,
    login_grace: Duration,
    terminate: CancellationToken,
    proxy: super::proxy::ProxyPolicy,
}

/// How long a disconnect may take before the socket is shut under the session.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

impl Connection {
    /// The client's address: the peer's, or the one a trusted proxy's header names.
    async fn client(&self, socket: &mut TcpStream, peer: SocketAddr) -> Option<SocketAddr> {
        if !self.proxy.trusts(peer.ip()) {
            return Some(peer);
        }
        match self.proxy.read_header(socket, peer).await {
            Ok(client) => {
                tracing::Span::current().record("client", tracing::field::display(client));
                Some(client)
            }
            Err(e) => {
                tracing::warn!(error = %e, "refused: PROXY header");
                self.ctx.ops.emit(Event::ConnectionRefused {
                    remote: peer.ip(),
                    reason: ConnRefusal::ProxyHeader,
                });
                None
            }
        }
    }

    async fn run(self, mut socket: TcpStream, peer: SocketAddr) {
        let ctx = &self.ctx;
        let Some(client) = self.client(&mut socket, peer).await else {
            return;
        };
        // From here on the client's address is the connection's (bans, limits, logs, audit).
        let peer = client;
        // A banned address gets no SSH work at all (checked here, not in the accept loop, so a
        // shared store's round trip never holds up other accepts).
        if self.bans.is_banned(peer.ip()).await {
            tracing::debug!("refused: address is banned");
            ctx.ops.emit(Event::ConnectionRefused {
                remote: peer.ip(),
                reason: ConnRefusal::Banned,
            });
            return;
        }
        let _ = socket.set_nodelay(true);
        // A second handle on the socket, so the connection can be cut whatever state the SSH
        // session is in (russh only reads its queue between packets, and a client that stops
        // mid-handshake never sends the next one).
        let cut = socket.as_fd().try_clone_to_owned().ok();
        let progress = Arc::new(AuthProgress::default());
        let handler = ConnectionHandler::new(
            ctx.clone(),
            Some(peer.ip()),
            progress.clone(),
            tracing::Span::current(),
        );
        ctx.ops.emit(Event::Connection { opened: true });
        tracing::debug!("connected");
        // The grace time starts at accept: a client that never even sends its version line is
        // dropped too (russh waits for it inside run_stream).
        let deadline = tokio::time::Instant::now() + self.login_grace;
        // Only a listed proxy may say who the client is; anyone else starting with a header
        // is cut as soon as russh reads it.
        let caught = Arc::new(AtomicBool::new(false));
        let watch = self.proxy.enabled() && client == peer && !self.proxy.trusts(peer.ip());
        let stream = QuickAck(Sniff::new(socket, watch, caught.clone()));
        let started = tokio::time::timeout_at(
            deadline,
            russh::server::run_stream(self.config.clone(), stream, handler),
        )
        .await;
        match started {
            Ok(Ok(session)) => self.supervise(session, &progress, deadline, cut).await,
            Ok(Err(_)) if caught.load(Ordering::Relaxed) => {
                tracing::warn!("refused: a PROXY header from an address not in trusted_proxies");
                ctx.ops.emit(Event::ConnectionRefused {
                    remote: peer.ip(),
                    reason: ConnRefusal::UntrustedProxyHeader,
                });
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "handshake failed"),
            Err(_) => tracing::info!("login grace time over before the handshake; disconnecting"),
        }
        if !progress.signed_in() && progress.attempted() && self.bans.failure(peer.ip()).await {
            tracing::warn!(ip = %peer.ip(), "address banned after repeated failed logins");
        }
        ctx.ops.emit(Event::Connection { opened: false });
        tracing::debug!("disconnected");
    }

    /// Runs the session until it ends or one of the connection's timers or stages ends it.
    async fn supervise(
        &self,
        session: russh::server::RunningSession<ConnectionHandler>,
        progress: &AuthProgress,
        grace_deadline: tokio::time::Instant,
        cut: Option<OwnedFd>,
    ) {
        let handle = session.handle();
        let mut session = std::pin::pin!(session);
        let mut stage = progress.stage.subscribe();
        let grace = tokio::time::sleep_until(grace_deadline);
        tokio::pin!(grace);
        let pending = tokio::time::sleep(Duration::from_secs(365 * 86400));
        tokio::pin!(pending);
        let mut pending_armed = false;
        let reason = loop {
            let now = stage.borrow_and_update().clone();
            if let Stage::Failed(reason) = now {
                // The client has the reason line and the channel's close: an OpenSSH client
                // hangs up by itself then, and keeps the exit status it was sent.
                if tokio::time::timeout(DISCONNECT_GRACE, &mut session)
                    .await
                    .is_ok()
                {
                    return;
                }
                break reason;
            }
            let connecting = now == Stage::Connecting;
            let waiting = now == Stage::Pending;
            if waiting && !pending_armed {
                pending_armed = true;
                pending
                    .as_mut()
                    .reset(tokio::time::Instant::now() + self.ctx.pending_timeout);
            }
            tokio::select! {
                r = &mut session => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = &mut grace, if connecting => {
                    tracing::info!("login grace time over; disconnecting");
                    break "login grace time exceeded".into();
                }
                _ = &mut pending, if pending_armed && !progress.signed_in() => {
                    tracing::info!(timeout = ?self.ctx.pending_timeout, "still not signed in; disconnecting");
                    break "sign-in took too long".into();
                }
                r = stage.changed() => if r.is_err() { return },
                _ = self.terminate.cancelled() => break "the gateway is shutting down".into(),
            }
        };
        // Ask politely (the client learns why), then cut the socket under a session that does
        // not get to it: one stalled mid-handshake never reads its queue.
        let polite = async {
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, reason, "en".into())
                .await;
            (&mut session).await
        };
        if tokio::time::timeout(DISCONNECT_GRACE, polite)
            .await
            .is_err()
        {
            tracing::debug!("session did not close; cutting the connection");
            if let Some(fd) = &cut {
                let _ = socket2::SockRef::from(fd).shutdown(std::net::Shutdown::Both);
            }
            let _ = tokio::time::timeout(DISCONNECT_GRACE, &mut session).await;
        }
    }
}
