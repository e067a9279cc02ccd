//! Graceful shutdown in two stages, shared by every front: first *draining* (no new
//! connections; sessions tell their users the gateway is going down and get the drain time to
//! finish), then *terminate* (every program gets SIGHUP, then SIGKILL after its grace).

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::SessionRegistry;

/// How long after the kill grace the gateway still waits for programs to be reaped and their
/// cgroups to empty before it exits anyway. A bound, not a pause: the wait ends as soon as the
/// last session is gone.
const REAP_SLACK: Duration = Duration::from_secs(3);

/// The two stages.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop accepting; sessions tell their users the gateway is going down.
    pub draining: CancellationToken,
    /// End every session now (programs get SIGHUP, then SIGKILL) and close connections.
    pub terminate: CancellationToken,
}

impl Shutdown {
    /// Drains: tells sessions, waits until they are gone or `drain` has passed, then
    /// terminates the rest.
    pub async fn drain(&self, sessions: &SessionRegistry, drain: Duration) {
        tracing::info!(sessions = sessions.len(), drain = ?drain, "shutting down: no new connections; telling sessions");
        self.draining.cancel();
        sessions.wait_empty(Instant::now() + drain).await;
        tracing::info!(sessions = sessions.len(), "ending remaining sessions");
        self.terminate.cancel();
    }

    /// After the connections are gone: waits for their programs to be ended (`kill_grace`
    /// between SIGHUP and SIGKILL, plus the reaping), then stops the background work.
    pub async fn finish(&self, sessions: &SessionRegistry, kill_grace: Duration) {
        sessions
            .wait_empty(Instant::now() + kill_grace + REAP_SLACK)
            .await;
        self.terminate.cancel();
    }
}
