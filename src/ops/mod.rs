//! Operations: audit log, metrics and the live-session registry, fed by [`Event`]s.
//!
//! Fronts report what happened once, as an event; this module decides what it means for the
//! audit log and for the metrics, so neither is sprinkled through the protocol code.

pub mod admin;
pub mod audit;
pub mod directory;
pub mod memory;
pub mod metrics;
pub mod recording;
pub mod sessions;
pub mod shutdown;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::identity::certs::CertificateInfo;
use crate::identity::tickets::Purpose;
use crate::identity::{AuthMethod, UserId};
use crate::launcher::LimitHit;

pub use audit::AuditLog;
pub use metrics::Metrics;
pub use sessions::{now_ms, LiveSession, SessionGuard, SessionRegistry};
pub use shutdown::Shutdown;

/// How an authentication attempt was made: the methods an identity can have, plus
/// `keyboard-interactive`, the SSH step that admits a connection to a device sign-in. One
/// vocabulary for the audit log, the metrics and `whoami`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// A public key: one mapped in a key file, or (on failure) any key offered.
    Key,
    /// A key bound by an earlier device sign-in.
    EnrolledKey,
    /// The OIDC device flow.
    DeviceFlow,
    /// Admission to a device sign-in.
    KeyboardInteractive,
    /// A browser login.
    Web,
    /// An OpenSSH user certificate.
    Certificate,
}

impl Method {
    /// The label and audit value.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Key => "key",
            Method::EnrolledKey => "enrolled-key",
            Method::DeviceFlow => "device-flow",
            Method::KeyboardInteractive => "keyboard-interactive",
            Method::Web => "web",
            Method::Certificate => "certificate",
        }
    }
}

impl From<AuthMethod> for Method {
    fn from(m: AuthMethod) -> Method {
        match m {
            AuthMethod::Key => Method::Key,
            AuthMethod::EnrolledKey => Method::EnrolledKey,
            AuthMethod::DeviceFlow => Method::DeviceFlow,
            AuthMethod::Web => Method::Web,
            AuthMethod::Certificate => Method::Certificate,
        }
    }
}

/// The front a session came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Front {
    /// An SSH channel.
    Ssh,
    /// A browser's WebSocket.
    Web,
}

impl Front {
    /// As the admin console and the audit log show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Front::Ssh => "ssh",
            Front::Web => "web",
        }
    }
}

/// Why a connection was refused before the SSH handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnRefusal {
    /// `[limits] max_connections` reached.
    MaxConnections,
    /// The address is banned after repeated failures.
    Banned,
    /// A trusted proxy's connection without a valid PROXY header.
    ProxyHeader,
    /// A PROXY header from an address not in `trusted_proxies`.
    UntrustedProxyHeader,
}

impl ConnRefusal {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnRefusal::MaxConnections => "max_connections",
            ConnRefusal::Banned => "banned",
            ConnRefusal::ProxyHeader => "proxy_header",
            ConnRefusal::UntrustedProxyHeader => "untrusted_proxy_header",
        }
    }
}

/// What was done with a ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TicketOp {
    /// Minted.
    Mint,
    /// Redeemed (or an attempt to).
    Consume,
}

/// Who revoked an enrolled key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RevokedBy {
    /// Its user, with `keys revoke`.
    #[serde(rename = "user")]
    User,
    /// The operator, over the admin socket.
    #[serde(rename = "operator")]
    Operator,
    /// The identity provider's answer to the periodic re-check.
    #[serde(rename = "identity provider")]
    IdentityProvider,
}

/// A client joining or leaving a running session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachmentKind {
    /// The owner attached (a reattach, a second terminal, a browser).
    Attach,
    /// The owner's last client left; the session runs on.
    Detach,
    /// Someone started watching read-only.
    WatchStart,
    /// A watcher left.
    WatchEnd,
}

/// Who attached or watched: a signed-in user, or the operator at the admin console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A signed-in user.
    User(UserId),
    /// The operator (`hermes-ssh-gateway sessions`).
    Operator,
    /// A user named an operator in `[admin] users`/`groups`, from their own session.
    Admin(UserId),
}

impl Serialize for Actor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Actor::User(u) => u.serialize(s),
            Actor::Operator => s.serialize_str("operator"),
            Actor::Admin(u) => s.serialize_str(&format!("operator:{u}")),
        }
    }
}

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
        remote: IpAddr,
        /// Why.
        reason: ConnRefusal,
    },
    /// An authentication attempt finished.
    Auth {
        /// The user, when known.
        user: Option<UserId>,
        /// How.
        method: Method,
        /// `SHA256:…` of the key involved.
        key: Option<String>,
        /// Source address, when known.
        remote: Option<IpAddr>,
        /// Why it failed (`None` on success).
        failure: Option<String>,
        /// The certificate involved, for certificate logins.
        certificate: Option<CertificateInfo>,
    },
    /// A program started.
    SessionStart {
        /// Session id.
        id: u64,
        /// User.
        user: UserId,
        /// The front it came through.
        front: Front,
        /// Command line.
        command: String,
        /// PTY size (`None` without a PTY).
        pty: Option<(u16, u16)>,
        /// Source address.
        remote: Option<IpAddr>,
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
        user: UserId,
        /// How long it ran.
        duration: Duration,
        /// Bytes from the client to the program.
        bytes_in: u64,
        /// Bytes from the program to the client.
        bytes_out: u64,
        /// Exit status (`None` when the client left first).
        exit_status: Option<u32>,
        /// The resource limit that stopped the program, if one did.
        limit: Option<LimitHit>,
    },
    /// A request was refused (forwarding, env override, exec, limits).
    Refused {
        /// The user, when known.
        user: Option<UserId>,
        /// Source address, when known.
        remote: Option<IpAddr>,
        /// What was refused, as the log line says it.
        what: String,
    },
    /// A user asked for the operator's views (`ssh host admin …`), allowed or refused.
    Admin {
        /// Who asked.
        user: UserId,
        /// Source address, when known.
        remote: Option<IpAddr>,
        /// What they asked for (`console`, `sessions`, `end 7`, `watch 7`).
        command: String,
        /// Why it was refused (`None`: allowed).
        refused: Option<String>,
    },
    /// A key was bound to a user after a device sign-in.
    Enrolled {
        /// Whose key it now is.
        user: UserId,
        /// Its fingerprint.
        key: String,
    },
    /// A key binding was removed with `logout`.
    Logout {
        /// Whose key it was.
        user: UserId,
        /// Its fingerprint.
        key: String,
    },
    /// An enrolled key was revoked.
    Revoked {
        /// Whose key it was.
        user: UserId,
        /// Its fingerprint.
        key: String,
        /// Who revoked it.
        by: RevokedBy,
    },
    /// A client attached, detached, started or stopped watching a running session.
    Attachment {
        /// The session's owner.
        owner: UserId,
        /// Who attached, left or watched.
        actor: Actor,
        /// The session's id (`ssh host sessions`).
        session: String,
        /// The client's address, when it has one (not the admin console).
        remote: Option<IpAddr>,
        /// What happened.
        what: AttachmentKind,
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
        /// Minted or consumed.
        op: TicketOp,
        /// What it is for.
        purpose: Purpose,
        /// Success.
        ok: bool,
    },
    /// Device flows in progress went up (`true`) or down.
    DeviceFlow {
        /// Started or finished.
        started: bool,
    },
}

/// One line of the audit log (JSON Lines, `"event"` first).
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Record<'a> {
    ConnectionRefused {
        remote: &'a IpAddr,
        reason: ConnRefusal,
    },
    AuthSuccess(AuthRecord<'a>),
    AuthFailure(AuthRecord<'a>),
    SessionStart {
        session_id: u64,
        user_id: &'a UserId,
        front: Front,
        command: &'a str,
        remote: &'a Option<IpAddr>,
        account: &'a str,
        uid: u32,
        pty: Option<PtySize>,
    },
    SessionEnd {
        session_id: u64,
        user_id: &'a UserId,
        duration_ms: u64,
        bytes_in: u64,
        bytes_out: u64,
        exit_status: Option<u32>,
        limit: Option<LimitHit>,
    },
    Refused {
        user_id: &'a Option<UserId>,
        remote: &'a Option<IpAddr>,
        what: &'a str,
    },
    Admin {
        user_id: &'a UserId,
        remote: &'a Option<IpAddr>,
        command: &'a str,
        allowed: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: &'a Option<String>,
    },
    Enrolled(KeyRecord<'a>),
    Logout(KeyRecord<'a>),
    Revoked {
        user_id: &'a UserId,
        key_fingerprint: &'a str,
        by: RevokedBy,
    },
    Attach(AttachRecord<'a>),
    Detach(AttachRecord<'a>),
    WatchStart(AttachRecord<'a>),
    WatchEnd(AttachRecord<'a>),
}

#[derive(Serialize)]
struct AuthRecord<'a> {
    user_id: &'a Option<UserId>,
    method: Method,
    key_fingerprint: &'a Option<String>,
    remote: &'a Option<IpAddr>,
    reason: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: &'a Option<CertificateInfo>,
}

#[derive(Serialize)]
struct KeyRecord<'a> {
    user_id: &'a UserId,
    key_fingerprint: &'a str,
}

#[derive(Serialize)]
struct AttachRecord<'a> {
    /// Who attached or watched.
    user_id: &'a Actor,
    owner: &'a UserId,
    session: &'a str,
    remote: &'a Option<IpAddr>,
}

#[derive(Serialize)]
struct PtySize {
    cols: u16,
    rows: u16,
}

impl Event {
    /// The audit record, or `None` for events that only count.
    fn audit_record(&self) -> Option<Record<'_>> {
        Some(match self {
            Event::Connection { .. }
            | Event::Ticket { .. }
            | Event::DeviceFlow { .. }
            | Event::Detached { .. }
            | Event::Watchers { .. } => return None,
            Event::ConnectionRefused { remote, reason } => Record::ConnectionRefused {
                remote,
                reason: *reason,
            },
            Event::Auth {
                user,
                method,
                key,
                remote,
                failure,
                certificate,
            } => {
                let r = AuthRecord {
                    user_id: user,
                    method: *method,
                    key_fingerprint: key,
                    remote,
                    reason: failure,
                    certificate,
                };
                match failure {
                    None => Record::AuthSuccess(r),
                    Some(_) => Record::AuthFailure(r),
                }
            }
            Event::SessionStart {
                id,
                user,
                front,
                command,
                pty,
                remote,
                account,
                uid,
            } => Record::SessionStart {
                session_id: *id,
                user_id: user,
                front: *front,
                command,
                remote,
                account,
                uid: *uid,
                pty: pty.map(|(cols, rows)| PtySize { cols, rows }),
            },
            Event::SessionEnd {
                id,
                user,
                duration,
                bytes_in,
                bytes_out,
                exit_status,
                limit,
            } => Record::SessionEnd {
                session_id: *id,
                user_id: user,
                duration_ms: duration.as_millis() as u64,
                bytes_in: *bytes_in,
                bytes_out: *bytes_out,
                exit_status: *exit_status,
                limit: *limit,
            },
            Event::Refused { user, remote, what } => Record::Refused {
                user_id: user,
                remote,
                what,
            },
            Event::Admin {
                user,
                remote,
                command,
                refused,
            } => Record::Admin {
                user_id: user,
                remote,
                command,
                allowed: refused.is_none(),
                reason: refused,
            },
            Event::Enrolled { user, key } => Record::Enrolled(KeyRecord {
                user_id: user,
                key_fingerprint: key,
            }),
            Event::Logout { user, key } => Record::Logout(KeyRecord {
                user_id: user,
                key_fingerprint: key,
            }),
            Event::Revoked { user, key, by } => Record::Revoked {
                user_id: user,
                key_fingerprint: key,
                by: *by,
            },
            Event::Attachment {
                owner,
                actor,
                session,
                remote,
                what,
            } => {
                let r = AttachRecord {
                    user_id: actor,
                    owner,
                    session,
                    remote,
                };
                match what {
                    AttachmentKind::Attach => Record::Attach(r),
                    AttachmentKind::Detach => Record::Detach(r),
                    AttachmentKind::WatchStart => Record::WatchStart(r),
                    AttachmentKind::WatchEnd => Record::WatchEnd(r),
                }
            }
        })
    }
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
    /// Metrics, an empty session registry, and the audit log when one is configured.
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
            match serde_json::to_value(&record) {
                Ok(v) => audit.write(v),
                Err(e) => tracing::error!(error = %e, "an audit record could not be encoded"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(e: Event) -> serde_json::Value {
        serde_json::to_value(e.audit_record().expect("audited")).unwrap()
    }

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    #[test]
    fn audit_records_keep_the_readme_schema() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            record(Event::Auth {
                user: None,
                method: Method::Key,
                key: Some("SHA256:x".into()),
                remote: Some(local),
                failure: Some("key is not mapped to any user".into()),
                certificate: None,
            }),
            json!({"event": "auth_failure", "user_id": null, "method": "key",
                   "key_fingerprint": "SHA256:x", "remote": "127.0.0.1",
                   "reason": "key is not mapped to any user"})
        );
        assert_eq!(
            record(Event::Auth {
                user: Some(alice()),
                method: AuthMethod::EnrolledKey.into(),
                key: None,
                remote: None,
                failure: None,
                certificate: None,
            })["event"],
            "auth_success"
        );
        assert_eq!(
            record(Event::Revoked {
                user: alice(),
                key: "SHA256:x".into(),
                by: RevokedBy::IdentityProvider,
            }),
            json!({"event": "revoked", "user_id": "alice", "key_fingerprint": "SHA256:x",
                   "by": "identity provider"})
        );
        assert_eq!(
            record(Event::Attachment {
                owner: alice(),
                actor: Actor::Operator,
                session: "k3f9ab".into(),
                remote: None,
                what: AttachmentKind::WatchStart,
            }),
            json!({"event": "watch_start", "user_id": "operator", "owner": "alice",
                   "session": "k3f9ab", "remote": null})
        );
        let end = record(Event::SessionEnd {
            id: 7,
            user: alice(),
            duration: Duration::from_millis(1500),
            bytes_in: 1,
            bytes_out: 2,
            exit_status: None,
            limit: Some(LimitHit::CpuTime),
        });
        assert_eq!(
            (&end["event"], &end["duration_ms"], &end["limit"]),
            (&json!("session_end"), &json!(1500), &json!("cpu_time"))
        );
        assert_eq!(
            record(Event::ConnectionRefused {
                remote: local,
                reason: ConnRefusal::MaxConnections,
            }),
            json!({"event": "connection_refused", "remote": "127.0.0.1", "reason": "max_connections"})
        );
        assert!(Event::Detached { detached: true }.audit_record().is_none());
    }
}
