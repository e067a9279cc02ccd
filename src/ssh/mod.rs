//! The SSH front: accepts connections, authenticates them and runs sessions.
//!
//! Depends on the identity core and the launcher; knows nothing of any other front.

pub mod auth;
pub mod handler;
pub mod hostkey;
pub mod server;
pub mod session;

use std::sync::Arc;

use crate::config::{EnvPattern, ExecPolicy};
use crate::identity::KeyRegistry;
use crate::launcher::LaunchSpec;

pub use server::{SshServer, SshSettings};

/// What every connection shares.
pub struct SshContext {
    /// Mapped keys.
    pub registry: Arc<KeyRegistry>,
    /// What to run.
    pub launch: Arc<LaunchSpec>,
    /// Variables a client may set.
    pub accept_env: Vec<EnvPattern>,
    /// What non-built-in exec commands do.
    pub exec_policy: ExecPolicy,
}
