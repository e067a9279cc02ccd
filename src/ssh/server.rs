//! The listener: accepts connections on an already-bound socket until shutdown, one tracing span
//! per connection.

use std::sync::Arc;
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::server::Config as RusshConfig;
use russh::MethodKind;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
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

    /// Accepts connections on `listener` until `shutdown` is cancelled, then disconnects every
    /// client and returns once their tasks are gone.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        loop {
            let (socket, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
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
            let span = tracing::info_span!("conn", peer = %peer, user = tracing::field::Empty);
            let config = self.config.clone();
            let ctx = self.ctx.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(
                async move {
                    let _ = socket.set_nodelay(true);
                    let handler = ConnectionHandler::new(ctx, Some(peer.ip()), tracing::Span::current());
                    tracing::debug!("connected");
                    let session = match russh::server::run_stream(config, socket, handler).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(error = %e, "handshake failed");
                            return;
                        }
                    };
                    let handle = session.handle();
                    tokio::select! {
                        r = session => {
                            if let Err(e) = r {
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                        }
                        _ = shutdown.cancelled() => {
                            let _ = handle
                                .disconnect(russh::Disconnect::ByApplication, "the gateway is shutting down".into(), "en".into())
                                .await;
                        }
                    }
                    tracing::debug!("disconnected");
                }
                .instrument(span),
            );
        }
        tracker.close();
        tracker.wait().await;
    }
}
