//! The listener: accepts connections on an already-bound socket until shutdown, one tracing span
//! per connection.

use std::sync::Arc;
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::server::Config as RusshConfig;
use russh::MethodKind;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::identity::limits::Bans;
use crate::ops::{Event, Shutdown};
use tracing::Instrument;

use super::handler::ConnectionHandler;
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
                    remote: peer.ip().to_string(),
                    reason: "max_connections".into(),
                });
                continue;
            };
            let span = tracing::info_span!("conn", peer = %peer, user = tracing::field::Empty);
            let config = self.config.clone();
            let ctx = self.ctx.clone();
            let terminate = shutdown.terminate.clone();
            let bans = bans.clone();
            let login_grace = limits.login_grace;
            tracker.spawn(
                async move {
                    let _slot = slot;
                    // A banned address gets no SSH work at all (checked here, not in the accept
                    // loop, so a shared store's round trip never holds up other accepts).
                    if bans.is_banned(peer.ip()).await {
                        tracing::debug!("refused: address is banned");
                        ctx.ops.emit(Event::ConnectionRefused { remote: peer.ip().to_string(), reason: "banned".into() });
                        return;
                    }
                    let _ = socket.set_nodelay(true);
                    let progress = Arc::new(AuthProgress::default());
                    let handler = ConnectionHandler::new(ctx.clone(), Some(peer.ip()), progress.clone(), tracing::Span::current());
                    ctx.ops.emit(Event::Connection { opened: true });
                    tracing::debug!("connected");
                    // The grace time starts at accept: a client that never even sends its version
                    // line is dropped too (russh waits for it inside run_stream).
                    let deadline = tokio::time::Instant::now() + login_grace;
                    let started = tokio::time::timeout_at(deadline, russh::server::run_stream(config, super::quickack::QuickAck(socket), handler)).await;
                    if started.is_err() {
                        tracing::info!("login grace time over before the handshake; disconnecting");
                    }
                    if let Ok(Ok(session)) = started {
                        let handle = session.handle();
                        let grace = tokio::time::sleep_until(deadline);
                        tokio::pin!(grace);
                        let mut session = std::pin::pin!(session);
                        let mut grace_armed = true;
                        let reason = loop {
                            tokio::select! {
                                r = &mut session => {
                                    if let Err(e) = r {
                                        tracing::debug!(error = %e, "connection ended with an error");
                                    }
                                    break None;
                                }
                                _ = &mut grace, if grace_armed => {
                                    grace_armed = false;
                                    // Checked when the timer fires, not when the wait began.
                                    if !progress.authenticated() {
                                        tracing::info!("login grace time over; disconnecting");
                                        break Some("login grace time exceeded");
                                    }
                                }
                                _ = terminate.cancelled() => break Some("the gateway is shutting down"),
                            }
                        };
                        if let Some(reason) = reason {
                            let _ = handle
                                .disconnect(russh::Disconnect::ByApplication, reason.into(), "en".into())
                                .await;
                        }
                    } else {
                        tracing::debug!("handshake failed");
                    }
                    if !progress.authenticated() && progress.attempted() && bans.failure(peer.ip()).await {
                        tracing::warn!(ip = %peer.ip(), "address banned after repeated failed logins");
                    }
                    ctx.ops.emit(Event::Connection { opened: false });
                    tracing::debug!("disconnected");
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
}

/// What a connection's authentication has reached, shared with its listener task.
#[derive(Debug, Default)]
pub struct AuthProgress {
    attempted: AtomicBool,
    authenticated: AtomicBool,
}

impl AuthProgress {
    /// The client tried a credential.
    pub fn attempt(&self) {
        self.attempted.store(true, Ordering::Relaxed);
    }
    /// The connection is authenticated (or admitted to sign in).
    pub fn succeed(&self) {
        self.authenticated.store(true, Ordering::Relaxed);
    }
    /// Whether it is.
    pub fn authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }
    /// Whether a credential was tried.
    pub fn attempted(&self) -> bool {
        self.attempted.load(Ordering::Relaxed)
    }
}
