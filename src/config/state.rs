//! `[state]`: where state shared by gateway nodes lives.

use std::path::PathBuf;

use serde::Deserialize;

use super::LimitsConfig;

/// `[state] backend` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum BackendName {
    #[default]
    Memory,
    Redis,
}

/// Where shared state lives. A Redis backend always has its URL: the type cannot say otherwise.
#[derive(Debug, Clone)]
pub enum StateBackend {
    /// This process (tickets, limits) and a file under `dir` (enrollments).
    Memory,
    /// Redis, shared by several gateway nodes.
    Redis {
        /// `redis://[:password@]host:port[/db]`, or `rediss://` for TLS. Never logged.
        url: secrecy::SecretString,
    },
}

/// `[state]`
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawState")]
pub struct StateConfig {
    /// Directory for the embedded state (created, mode 0700).
    pub dir: PathBuf,
    /// `memory` (default) or `redis` (with `redis_url`).
    pub backend: StateBackend,
    /// This node's name in the shared session directory (default: host name and pid).
    pub node_id: Option<String>,
}

/// `[state]` as written, before the backend and its URL are checked together.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawState {
    dir: PathBuf,
    backend: BackendName,
    redis_url: Option<secrecy::SecretString>,
    node_id: Option<String>,
}

impl Default for RawState {
    fn default() -> Self {
        RawState {
            dir: PathBuf::from("state"),
            backend: BackendName::Memory,
            redis_url: None,
            node_id: None,
        }
    }
}

impl TryFrom<RawState> for StateConfig {
    type Error = String;
    fn try_from(raw: RawState) -> Result<Self, String> {
        let backend = match (raw.backend, raw.redis_url) {
            (BackendName::Memory, _) => StateBackend::Memory,
            (BackendName::Redis, Some(url)) => StateBackend::Redis { url },
            (BackendName::Redis, None) => {
                return Err("redis_url: required with backend = \"redis\"".into())
            }
        };
        Ok(StateConfig {
            dir: raw.dir,
            backend,
            node_id: raw.node_id,
        })
    }
}

impl<'a> From<&'a StateConfig> for crate::identity::shared::Backing<'a> {
    fn from(state: &'a StateConfig) -> Self {
        match &state.backend {
            StateBackend::Memory => crate::identity::shared::Backing::Local { dir: &state.dir },
            StateBackend::Redis { url } => crate::identity::shared::Backing::Redis { url },
        }
    }
}

impl From<&LimitsConfig> for crate::identity::shared::BanPolicy {
    fn from(l: &LimitsConfig) -> Self {
        crate::identity::shared::BanPolicy {
            failures: l.auth_failures_before_ban,
            duration: l.ban_duration,
            ipv6_prefix: l.ipv6_prefix,
        }
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("state"),
            backend: StateBackend::Memory,
            node_id: None,
        }
    }
}
