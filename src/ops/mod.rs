//! Operations: audit log, metrics and the live-session registry, fed by [`Event`]s.
//!
//! Fronts report what happened once, as an event; this module decides what it means for the
//! audit log and for the metrics, so neither is sprinkled through the protocol code.

pub mod admin;
pub mod audit;
pub mod memory;
pub mod metrics;
pub mod recording;
pub mod sessions;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

pub use audit::AuditLog;
pub use metrics::Metrics;
pub use sessions::{now_ms, LiveSession, SessionGuard, SessionRegistry};

/// Something worth auditing or counting.
#[derive(Debug, Clone)]
pub enum Event {
    /// A TCP connection was accepted (`true`) or ended (`false`).
    Connection {
        /// Opened or closed.
        opened: bool,
    },
    /// A connection was refused before the SSH handshake.
    ConnectionRefused {
        /// Source address.
        remote: String,
        /// Why (limit, ban).
        reason: String,
    },
    /// An authentication attempt finished.
    Auth {
        /// The user, when known.
        user: Option<String>,
        /// `key`, `enrolled-key`, `device-flow`, `keyboard-interactive`, `web`, `link`.
        method: String,
        /// `SHA256:…` of the key involved.
        key: Option<String>,
        /// Source address.
        remote: String,
        /// Success or failure.
        ok: bool,
        /// Why it failed (empty on success).
        reason: String,
    },
    /// A program started.
    SessionStart {
        /// Session id.
        id: u64,
        /// User.
        user: String,
        /// `ssh` or `web`.
        front: &'static str,
        /// Command line.
        command: String,
        /// PTY size (`None` without a PTY).
        pty: Option<(u16, u16)>,
        /// Source address.
        remote: String,
        /// The Unix account the program runs as.
        account: String,
        /// That account's uid.
        uid: u32,
    },
    /// A program ended.
    SessionEnd {
        /// Session id.
        id: u64,
        /// User.
        user: String,
        /// How long it ran.
        duration: Duration,
        /// Bytes from the client to the program.
        bytes_in: u64,
        /// Bytes from the program to the client.
        bytes_out: u64,
        /// Exit status (`None` when the client left first).
        exit_status: Option<u32>,
        /// The resource limit that stopped the program, if one did (`memory`, `processes`,
        /// `cpu_time`).
        limit: Option<&'static str>,
    },
    /// A request was refused (forwarding, env override, exec, limits).
    Refused {
        /// The user, when known.
        user: Option<String>,
        /// Source address.
        remote: String,
        /// What was refused.
        what: String,
    },
    /// A key was bound to a user after a device sign-in.
    Enrolled {
        /// User.
        user: String,
        /// Key.
        key: String,
    },
    /// A key binding was removed with `logout`.
    Logout {
        /// User.
        user: String,
        /// Key.
        key: String,
    },
    /// An enrolled key was revoked by its user (`keys revoke`), the operator, or the re-check
    /// with the identity provider.
    Revoked {
        /// User.
        user: String,
        /// Key.
        key: String,
        /// `user`, `operator` or `identity provider`.
        by: &'static str,
    },
    /// A client attached a running session (`attached`), or left it running (`detached`).
    Attachment {
        /// The session's owner.
        owner: String,
        /// Who attached or left (the owner, for now).
        actor: String,
        /// The session's id (`ssh host sessions`).
        session: String,
        /// The client's address.
        remote: String,
        /// `attach` or `detach`.
        what: &'static str,
    },
    /// A session lost its last client (`detached: true`) or got one back, or ended detached.
    Detached {
        /// The new state.
        detached: bool,
    },
    /// Read-only watchers came (`delta` > 0) or went.
    Watchers {
        /// The change.
        delta: i64,
    },
    /// A ticket was minted or consumed.
    Ticket {
        /// `mint` or `consume`.
        op: &'static str,
        /// Purpose.
        purpose: &'static str,
        /// Success.
        ok: bool,
    },
    /// Device flows in progress went up (`true`) or down.
    DeviceFlow {
        /// Started or finished.
        started: bool,
    },
}

impl Event {
    /// The audit record, or `None` for events that only count.
    fn audit_record(&self) -> Option<Value> {
        Some(match self {
            Event::Connection { .. }
            | Event::Ticket { .. }
            | Event::DeviceFlow { .. }
            | Event::Detached { .. }
            | Event::Watchers { .. } => return None,
            Event::ConnectionRefused { remote, reason } => {
                json!({"event": "connection_refused", "remote": remote, "reason": reason})
            }
            Event::Auth {
                user,
                method,
                key,
                remote,
                ok,
                reason,
            } => json!({
                "event": if *ok { "auth_success" } else { "auth_failure" },
                "user_id": user, "method": method, "key_fingerprint": key,
                "remote": remote, "reason": if reason.is_empty() { Value::Null } else { json!(reason) },
            }),
            Event::SessionStart {
                id,
                user,
                front,
                command,
                pty,
                remote,
                account,
                uid,
            } => json!({
                "event": "session_start", "session_id": id, "user_id": user, "front": front,
                "command": command, "remote": remote, "account": account, "uid": uid,
                "pty": pty.map(|(c, r)| json!({"cols": c, "rows": r})),
            }),
            Event::SessionEnd {
                id,
                user,
                duration,
                bytes_in,
                bytes_out,
                exit_status,
                limit,
            } => json!({
                "event": "session_end", "session_id": id, "user_id": user,
                "duration_ms": duration.as_millis() as u64, "bytes_in": bytes_in,
                "bytes_out": bytes_out, "exit_status": exit_status, "limit": limit,
            }),
            Event::Refused { user, remote, what } => {
                json!({"event": "refused", "user_id": user, "remote": remote, "what": what})
            }
            Event::Enrolled { user, key } => {
                json!({"event": "enrolled", "user_id": user, "key_fingerprint": key})
            }
            Event::Logout { user, key } => {
                json!({"event": "logout", "user_id": user, "key_fingerprint": key})
            }
            Event::Revoked { user, key, by } => {
                json!({"event": "revoked", "user_id": user, "key_fingerprint": key, "by": by})
            }
            Event::Attachment {
                owner,
                actor,
                session,
                remote,
                what,
            } => {
                json!({"event": what, "user_id": actor, "owner": owner, "session": session, "remote": remote})
            }
        })
    }
}

/// The two stages of a graceful shutdown, shared by every front.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop accepting; sessions tell their users the gateway is going down.
    pub draining: tokio_util::sync::CancellationToken,
    /// End every session now (programs get SIGHUP, then SIGKILL) and close connections.
    pub terminate: tokio_util::sync::CancellationToken,
}

/// Where events go.
pub struct Ops {
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The audit log, when configured.
    pub audit: Option<AuditLog>,
    /// Live sessions of this gateway.
    pub sessions: Arc<SessionRegistry>,
    /// Connection closes, for the memory trimmer.
    pub closes: Arc<memory::CloseCounter>,
}

impl Ops {
    /// Metrics and sessions; no audit log.
    pub fn new(audit: Option<AuditLog>) -> Arc<Ops> {
        Arc::new(Ops {
            metrics: Metrics::new(),
            audit,
            sessions: Arc::new(SessionRegistry::default()),
            closes: Arc::default(),
        })
    }

    /// Reports an event.
    pub fn emit(&self, event: Event) {
        if let Event::Connection { opened: false } = event {
            self.closes.closed();
        }
        self.metrics.observe(&event);
        if let (Some(audit), Some(record)) = (&self.audit, event.audit_record()) {
            audit.write(record);
        }
    }
}
