//! The SSH front: accepts connections, authenticates them and runs sessions.
//!
//! Depends on the identity core and the launcher; knows nothing of any other front.

pub mod auth;
pub mod handler;
pub mod hostkey;
pub mod proxy;
pub mod quickack;
pub mod server;
pub mod session;
pub mod signin;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{EnvPattern, ExecPolicy};
use crate::identity::oidc::Oidc;
use crate::identity::store::EnrollmentStore;
use crate::identity::tickets::TicketStore;
use crate::identity::KeyRegistry;
use crate::launcher::LaunchSpec;
use crate::ops::{Ops, Shutdown};
use arc_swap::ArcSwap;

pub use server::{ConnectionLimits, SshServer, SshSettings};

/// Session limits the SSH front enforces.
#[derive(Debug, Clone, Default)]
pub struct SessionLimits {
    /// Most sessions per user (0: no limit).
    pub max_sessions_per_user: usize,
    /// End sessions without input for this long (zero: never).
    pub idle_timeout: Duration,
    /// Most session channels open at once on one connection.
    pub max_channels_per_connection: usize,
}

/// What every connection shares.
pub struct SshContext {
    /// Mapped keys.
    pub registry: Arc<KeyRegistry>,
    /// Revocation, certificates, security keys.
    pub key_policy: Arc<crate::identity::key_policy::KeyPolicy>,
    /// The operator's views, for operators by identity (`ssh host admin`).
    pub admin: Arc<AdminAccess>,
    /// Which ids identity-provider users may not hold.
    pub namespaces: Arc<crate::identity::namespace::Namespaces>,
    /// What to run (swapped whole on a config reload).
    pub launch: Arc<ArcSwap<LaunchSpec>>,
    /// Audit, metrics, live sessions.
    pub ops: Arc<Ops>,
    /// Session limits.
    pub limits: SessionLimits,
    /// Graceful shutdown stages.
    pub shutdown: Shutdown,
    /// Where session recordings go (none: off).
    pub recording_dir: Option<std::path::PathBuf>,
    /// Per-address failures and bans (shared with the listener).
    pub bans: Arc<dyn crate::identity::limits::Bans>,
    /// Variables a client may set.
    pub accept_env: Vec<EnvPattern>,
    /// What non-built-in exec commands do.
    pub exec_policy: ExecPolicy,
    /// Keys bound by device sign-ins.
    pub enrollments: Arc<dyn EnrollmentStore>,
    /// Device sign-in, when `[oidc]` is configured.
    pub oidc: Option<Arc<Oidc>>,
    /// Caps on connections waiting to sign in (present with `oidc`).
    pub limiter: Option<Arc<dyn crate::identity::limits::PendingSlots>>,
    /// How long a key proven during a sign-in stays bound (zero: never bound).
    pub enroll_ttl: Duration,
    /// How old the IdP's last word on an enrolled key's user may be before a login asks again.
    pub recheck_interval: Duration,
    /// This node's sessions that clients attach to.
    pub hub: Arc<crate::sessions::Hub>,
    /// Tickets (watch links), shared with the other fronts and nodes.
    pub tickets: Arc<dyn crate::identity::tickets::TicketStore>,
    /// How long a session waits for a client, and its scrollback.
    pub detach: crate::sessions::DetachPolicy,
    /// A pending connection is closed after this long.
    pub pending_timeout: Duration,
    /// `ssh host link`: tickets and the web front's URL, when the web front runs.
    pub web_link: Option<WebLink>,
}

impl SshContext {
    /// A user signed in from `remote`: its address's failed attempts are forgiven.
    pub async fn bans_success(&self, remote: Option<std::net::IpAddr>) {
        if let Some(ip) = remote {
            self.bans.success(ip).await;
        }
    }
}

/// What `ssh host admin` needs: the admin socket's requests, and who may make them.
pub struct AdminAccess {
    /// The same state the admin socket serves.
    pub state: crate::ops::admin::AdminState,
    /// `[admin] users` and `groups`.
    pub operators: crate::ops::admin::Operators,
}

/// What `ssh host link` needs: the shared ticket store and where the browser goes.
pub struct WebLink {
    /// Tickets shared with the web front.
    pub tickets: Arc<dyn TicketStore>,
    /// The web front's public URL.
    pub public_url: String,
}
