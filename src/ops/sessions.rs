//! The live sessions of this gateway: what the admin console lists, what per-user limits count,
//! and how an operator (or shutdown) ends one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One running session.
#[derive(Debug, Serialize)]
pub struct LiveSession {
    /// Gateway-unique id.
    pub id: u64,
    /// User id.
    pub user: String,
    /// How they authenticated.
    pub method: String,
    /// `ssh` or `web`.
    pub front: &'static str,
    /// Source address.
    pub remote: String,
    /// Command line.
    pub command: String,
    /// Unix ms.
    pub started_ms: u64,
    /// Unix ms of the last input from the client.
    pub last_input_ms: AtomicU64,
    /// Client → program.
    pub bytes_in: AtomicU64,
    /// Program → client.
    pub bytes_out: AtomicU64,
    /// Cancelled to end the session (admin console, shutdown).
    #[serde(skip)]
    pub end: CancellationToken,
}

impl LiveSession {
    /// Notes input from the client.
    pub fn input(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        self.last_input_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Notes output to the client.
    pub fn output(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Milliseconds since the last input.
    pub fn idle_ms(&self) -> u64 {
        now_ms().saturating_sub(self.last_input_ms.load(Ordering::Relaxed))
    }
}

/// Why a session could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{user} already has {limit} sessions (the most allowed per user)")]
pub struct TooManySessions {
    /// User.
    pub user: String,
    /// The limit.
    pub limit: usize,
}

/// All live sessions.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    map: DashMap<u64, Arc<LiveSession>>,
    next: AtomicU64,
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
    }
}

/// What describes a new session.
pub struct NewSession {
    /// User id.
    pub user: String,
    /// Method.
    pub method: String,
    /// Front.
    pub front: &'static str,
    /// Source address.
    pub remote: String,
    /// Command line.
    pub command: String,
}

impl SessionRegistry {
    /// Registers a session unless the user already has `max_per_user` (0: no limit).
    pub fn register(
        self: &Arc<Self>,
        s: NewSession,
        max_per_user: usize,
    ) -> Result<SessionGuard, TooManySessions> {
        // Counting and inserting are not one atomic step; a burst can pass the limit by the
        // number of simultaneous starts, which is acceptable for a fairness limit.
        if max_per_user > 0 {
            let n = self.map.iter().filter(|e| e.user == s.user).count();
            if n >= max_per_user {
                return Err(TooManySessions {
                    user: s.user,
                    limit: max_per_user,
                });
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ms();
        let session = Arc::new(LiveSession {
            id,
            user: s.user,
            method: s.method,
            front: s.front,
            remote: s.remote,
            command: s.command,
            started_ms: now,
            last_input_ms: AtomicU64::new(now),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            end: CancellationToken::new(),
        });
        self.map.insert(id, session.clone());
        Ok(SessionGuard {
            registry: self.clone(),
            session,
        })
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

    /// How many sessions run.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
