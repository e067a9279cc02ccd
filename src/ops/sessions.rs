//! The live sessions of this gateway: what the admin console lists, what per-user limits count,
//! and how an operator (or shutdown) ends one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

use super::directory::SessionDirectory;
use super::{Front, Method};
use crate::identity::UserId;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds on a monotonic clock (tokio's, so paused-clock tests drive it): idle and quiet
/// times are measured with it, so a step of the wall clock can neither end nor extend a session.
pub fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(tokio::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// The wall-clock time (Unix ms) of the monotonic instant `mono`, for display.
pub fn wall_ms(mono: u64) -> u64 {
    now_ms().saturating_sub(mono_ms().saturating_sub(mono))
}

fn mono_as_wall<S: serde::Serializer>(mono: &AtomicU64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(wall_ms(mono.load(Ordering::Relaxed)))
}

/// The admin console's rows have always carried a string: "" when the address is unknown.
fn remote_or_empty<S: serde::Serializer>(
    remote: &Option<std::net::IpAddr>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match remote {
        Some(r) => s.collect_str(r),
        None => s.serialize_str(""),
    }
}

fn account_or_empty<S: serde::Serializer>(
    account: &std::sync::OnceLock<String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(account.get().map(String::as_str).unwrap_or(""))
}

/// One running session.
#[derive(Debug, Serialize)]
pub struct LiveSession {
    /// Gateway-unique id.
    pub id: u64,
    /// User id.
    pub user: UserId,
    /// How they authenticated.
    pub method: Method,
    /// The front it came through.
    pub front: Front,
    /// Source address, when known.
    #[serde(serialize_with = "remote_or_empty")]
    pub remote: Option<std::net::IpAddr>,
    /// Command line.
    pub command: String,
    /// The Unix account the program runs as, known once it has started ("" before).
    #[serde(serialize_with = "account_or_empty")]
    pub account: std::sync::OnceLock<String>,
    /// Unix ms.
    pub started_ms: u64,
    /// The last input from a client ([`mono_ms`]; listed as Unix ms).
    #[serde(rename = "last_input_ms", serialize_with = "mono_as_wall")]
    last_input: AtomicU64,
    /// Client → program.
    pub bytes_in: AtomicU64,
    /// Program → client.
    pub bytes_out: AtomicU64,
    /// The program's last output ([`mono_ms`]; listed as Unix ms).
    #[serde(rename = "last_output_ms", serialize_with = "mono_as_wall")]
    last_output: AtomicU64,
    /// Clients attached now (terminals and browsers; 0: detached).
    pub clients: std::sync::atomic::AtomicU32,
    /// Read-only watchers now.
    pub watchers: std::sync::atomic::AtomicU32,
    /// Cancelled to end the session (admin console, shutdown).
    #[serde(skip)]
    pub end: CancellationToken,
    /// Why it was ended through `end`, when not by the operator.
    #[serde(skip)]
    pub end_reason: std::sync::OnceLock<String>,
}

impl LiveSession {
    /// The `session_end` event for this session, both fronts alike.
    pub fn end_event(
        &self,
        started: std::time::Instant,
        exit_status: Option<u32>,
        limit: Option<crate::launcher::LimitHit>,
    ) -> super::Event {
        super::Event::SessionEnd {
            id: self.id,
            user: self.user.clone(),
            duration: started.elapsed(),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            exit_status,
            limit,
        }
    }

    /// The program started: records the Unix account it runs as (once; a session runs one
    /// program) and returns the `session_start` event, both fronts alike.
    pub fn started(&self, pty: Option<(u16, u16)>, account: &str, uid: u32) -> super::Event {
        let _ = self.account.set(account.to_owned());
        super::Event::SessionStart {
            id: self.id,
            user: self.user.clone(),
            front: self.front,
            command: self.command.clone(),
            pty,
            remote: self.remote,
            account: account.to_owned(),
            uid,
        }
    }

    /// Notes input from the client.
    pub fn input(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        self.last_input.store(mono_ms(), Ordering::Relaxed);
    }

    /// Notes output to the client.
    pub fn output(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        self.last_output.store(mono_ms(), Ordering::Relaxed);
    }

    /// Ends the session, saying why.
    pub fn end_with(&self, reason: &str) {
        let _ = self.end_reason.set(reason.to_owned());
        self.end.cancel();
    }

    /// Milliseconds with neither input nor output: an agent that is writing is not idle.
    pub fn quiet_ms(&self) -> u64 {
        let last = self
            .last_input
            .load(Ordering::Relaxed)
            .max(self.last_output.load(Ordering::Relaxed));
        mono_ms().saturating_sub(last)
    }

    /// Milliseconds since the last input.
    pub fn idle_ms(&self) -> u64 {
        mono_ms().saturating_sub(self.last_input.load(Ordering::Relaxed))
    }

    /// When the program last wrote (Unix ms, for display).
    pub fn last_output_unix_ms(&self) -> u64 {
        wall_ms(self.last_output.load(Ordering::Relaxed))
    }

    /// Milliseconds since the program's last output (since the start, before any).
    pub fn since_output_ms(&self) -> u64 {
        mono_ms().saturating_sub(self.last_output.load(Ordering::Relaxed))
    }
}

/// Why a session could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{user} already has {limit} sessions (the most allowed per user)")]
pub struct TooManySessions {
    /// Whose sessions.
    pub user: UserId,
    /// The limit.
    pub limit: usize,
}

/// All live sessions of this node, published to a shared directory when there is one.
#[derive(Default)]
pub struct SessionRegistry {
    map: DashMap<u64, Arc<LiveSession>>,
    next: AtomicU64,
    directory: std::sync::OnceLock<Arc<SessionDirectory>>,
    changed: tokio::sync::Notify,
    /// Woken when the last session goes (shutdown waits on it).
    emptied: tokio::sync::Notify,
}

impl std::fmt::Debug for SessionRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRegistry")
            .field("sessions", &self.map.len())
            .finish()
    }
}

/// Keeps a session registered; dropping it unregisters.
pub struct SessionGuard {
    registry: Arc<SessionRegistry>,
    /// The session.
    pub session: Arc<LiveSession>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.registry.map.remove(&self.session.id);
        self.registry.changed.notify_one();
        if self.registry.map.is_empty() {
            self.registry.emptied.notify_waiters();
        }
    }
}

/// What describes a new session.
pub struct NewSession {
    /// Whose it is.
    pub user: UserId,
    /// How they authenticated.
    pub method: Method,
    /// The front it comes through.
    pub front: Front,
    /// Source address, when known.
    pub remote: Option<std::net::IpAddr>,
    /// Command line.
    pub command: String,
}

impl NewSession {
    /// A session of `identity` coming through `front` from `remote`, running `command`.
    pub fn of(
        identity: &crate::identity::Identity,
        front: Front,
        remote: Option<std::net::IpAddr>,
        command: String,
    ) -> NewSession {
        NewSession {
            user: identity.user_id.clone(),
            method: identity.method.into(),
            front,
            remote,
            command,
        }
    }
}

impl SessionRegistry {
    /// Publishes this node's sessions to `directory` (shared by every node) from now on.
    pub fn attach_directory(&self, directory: Arc<SessionDirectory>) {
        let _ = self.directory.set(directory);
    }

    /// Sessions of `user` on the other nodes (0 without a directory, or when it is unreachable:
    /// a fairness limit falls back to this node's own count rather than refusing everyone).
    async fn remote_count(&self, user: &UserId) -> usize {
        let Some(dir) = self.directory.get() else {
            return 0;
        };
        match dir.all().await {
            Ok(all) => all
                .iter()
                .filter(|(node, s)| node != dir.node() && s["user"] == user.as_str())
                .count(),
            Err(e) => {
                tracing::error!(error = %e, "session directory unreachable; counting this node's sessions only");
                0
            }
        }
    }

    /// Registers a session unless the user already has `max_per_user` on all nodes together
    /// (0: no limit).
    pub async fn register(
        self: &Arc<Self>,
        s: NewSession,
        max_per_user: usize,
    ) -> Result<SessionGuard, TooManySessions> {
        // Counting and inserting are not one atomic step; a burst can pass the limit by the
        // number of simultaneous starts, which is acceptable for a fairness limit.
        if max_per_user > 0 {
            let local = self.map.iter().filter(|e| e.user == s.user).count();
            let n = local + self.remote_count(&s.user).await;
            if n >= max_per_user {
                return Err(TooManySessions {
                    user: s.user,
                    limit: max_per_user,
                });
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mono = mono_ms();
        let session = Arc::new(LiveSession {
            id,
            user: s.user,
            method: s.method,
            front: s.front,
            remote: s.remote,
            command: s.command,
            account: std::sync::OnceLock::new(),
            started_ms: now_ms(),
            last_input: AtomicU64::new(mono),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            last_output: AtomicU64::new(mono),
            clients: std::sync::atomic::AtomicU32::new(1),
            watchers: std::sync::atomic::AtomicU32::new(0),
            end: CancellationToken::new(),
            end_reason: std::sync::OnceLock::new(),
        });
        self.map.insert(id, session.clone());
        self.changed.notify_one();
        Ok(SessionGuard {
            registry: self.clone(),
            session,
        })
    }

    /// Waits until no session is left or `deadline` passes; whether none is left.
    pub async fn wait_empty(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            // Registered before looking, so a last session leaving in between is not missed.
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.map.is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, emptied).await.is_err() {
                return self.map.is_empty();
            }
        }
    }

    /// A snapshot, oldest first.
    pub fn list(&self) -> Vec<Arc<LiveSession>> {
        let mut v: Vec<_> = self.map.iter().map(|e| e.value().clone()).collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Ends a session; false when there is no such session.
    pub fn end(&self, id: u64) -> bool {
        match self.map.get(&id) {
            Some(s) => {
                s.end.cancel();
                true
            }
            None => false,
        }
    }

    /// Every node's sessions as JSON objects with a `node` field (this node's first); without a
    /// directory, or when it is unreachable, this node's only.
    pub async fn list_all(&self) -> Vec<serde_json::Value> {
        let own = self
            .directory
            .get()
            .map(|d| d.node().to_owned())
            .unwrap_or_default();
        let mut out: Vec<serde_json::Value> = self
            .list()
            .iter()
            .filter_map(|s| serde_json::to_value(&**s).ok())
            .map(|mut v| {
                v["node"] = own.clone().into();
                v
            })
            .collect();
        if let Some(dir) = self.directory.get() {
            match dir.all().await {
                Ok(all) => out.extend(all.into_iter().filter(|(n, _)| *n != own).map(
                    |(n, mut v)| {
                        v["node"] = n.into();
                        v
                    },
                )),
                Err(e) => {
                    tracing::error!(error = %e, "session directory unreachable; listing this node only")
                }
            }
        }
        out
    }

    /// Publishes this node's list now, on every change, and every 2 s, until `stop`;
    /// `on_total` gets the number of sessions on all nodes after each publish.
    pub fn spawn_heartbeat(
        self: &Arc<Self>,
        stop: CancellationToken,
        on_total: impl Fn(usize) + Send + 'static,
    ) {
        let Some(dir) = self.directory.get().cloned() else {
            return;
        };
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                let json = serde_json::to_string(&me.list()).unwrap_or_else(|_| "[]".into());
                match dir.publish(json).await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("session directory reachable again");
                    }
                    Ok(()) => {
                        if let Ok(all) = dir.all().await {
                            on_total(all.len());
                        }
                    }
                    Err(e) if !failing => {
                        failing = true;
                        tracing::error!(error = %e, "publishing sessions to the shared directory failed");
                    }
                    Err(_) => {}
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = me.changed.notified() => {}
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                }
            }
        });
    }

    /// How many sessions run.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
