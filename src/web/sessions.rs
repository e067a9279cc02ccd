//! Browser sessions and logins in flight: in this process, or in Redis with `[state] backend =
//! "redis"` so that behind a load balancer a browser signed in through one node is signed in
//! on all of them, a login's callback may land on any node, and a logout anywhere ends it
//! everywhere.
//!
//! Sessions are keyed by the SHA-256 of the cookie value, logins by that of their `state`: a
//! reader of Redis (or of a dump) learns no cookie it could replay.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::identity::redis::{key, Redis};
use crate::identity::store::StoreError;
use crate::identity::tickets::{random_token, token_hash};
use crate::identity::Identity;

/// A browser login sent to the IdP and not back yet.
pub(super) struct LoginAttempt {
    pub nonce: String,
    pub verifier: SecretString,
    pub expires: Instant,
    /// Hash of the login cookie of the browser that started it.
    pub browser: String,
    /// The address group it came from (counted in `SessionStore::logins_by_group`).
    pub group: IpAddr,
}

/// A login as Redis keeps it (an `Instant` means nothing to another process).
#[derive(Serialize, Deserialize)]
struct StoredLogin {
    nonce: String,
    verifier: String,
    expires_unix_ms: u64,
    browser: String,
    group: IpAddr,
}

struct WebSession {
    identity: Identity,
    expires: Instant,
}

/// Server-side browser sessions and logins in flight.
#[derive(Default)]
pub struct SessionStore {
    sessions: DashMap<String, WebSession>,
    /// This node's logins in flight, for its caps (with Redis, the login itself is there).
    logins: DashMap<String, LoginAttempt>,
    logins_by_group: DashMap<IpAddr, usize>,
    redis: Option<Arc<Redis>>,
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl SessionStore {
    /// Sessions in this process only.
    pub fn new() -> Arc<SessionStore> {
        Arc::new(SessionStore::default())
    }

    /// Sessions and logins in Redis, shared by every node.
    pub fn shared(redis: Arc<Redis>) -> Arc<SessionStore> {
        Arc::new(SessionStore {
            redis: Some(redis),
            ..SessionStore::default()
        })
    }

    /// Drops expired sessions and logins (Redis expires its own).
    pub fn sweep(&self) {
        let now = Instant::now();
        self.sessions.retain(|_, s| s.expires > now);
        let expired: Vec<String> = self
            .logins
            .iter()
            .filter(|l| l.expires <= now)
            .map(|l| l.key().clone())
            .collect();
        for state in expired {
            self.forget_login(&state);
        }
    }

    /// Logins in flight on this node.
    pub(super) fn logins_in_flight(&self) -> usize {
        self.logins.len()
    }

    /// Remembers a login in flight, unless its address group has `max_per_group` already
    /// (`Ok(false)`).
    pub(super) async fn begin_login(
        &self,
        state: String,
        attempt: LoginAttempt,
        max_per_group: usize,
    ) -> Result<bool, StoreError> {
        {
            let mut n = self.logins_by_group.entry(attempt.group).or_insert(0);
            if *n >= max_per_group {
                return Ok(false);
            }
            *n += 1;
        }
        if let Some(redis) = &self.redis {
            let ttl = attempt.expires.saturating_duration_since(Instant::now());
            let stored = StoredLogin {
                nonce: attempt.nonce.clone(),
                verifier: attempt.verifier.expose_secret().to_owned(),
                expires_unix_ms: unix_ms(SystemTime::now() + ttl),
                browser: attempt.browser.clone(),
                group: attempt.group,
            };
            let json = serde_json::to_string(&stored).unwrap_or_default();
            let set = redis
                .query::<()>(
                    redis::cmd("SET")
                        .arg(key("weblogin", &token_hash(&state)))
                        .arg(json)
                        .arg("PX")
                        .arg(ttl.as_millis().max(1) as u64),
                )
                .await;
            if let Err(e) = set {
                self.uncount(attempt.group);
                return Err(e);
            }
        }
        self.logins.insert(state, attempt);
        Ok(true)
    }

    fn uncount(&self, group: IpAddr) {
        self.logins_by_group.remove_if_mut(&group, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }

    fn forget_login(&self, state: &str) -> Option<LoginAttempt> {
        let (_, attempt) = self.logins.remove(state)?;
        self.uncount(attempt.group);
        Some(attempt)
    }

    /// Takes a login in flight out: its `state` is single use, on every node (`GETDEL`: of
    /// two nodes racing on one callback, one gets it).
    pub(super) async fn take_login(&self, state: &str) -> Option<LoginAttempt> {
        let local = self.forget_login(state);
        let Some(redis) = &self.redis else {
            return local;
        };
        let got: Option<String> = redis
            .query(redis::cmd("GETDEL").arg(key("weblogin", &token_hash(state))))
            .await
            .map_err(|e| tracing::warn!("browser login lookup failed: {e}"))
            .ok()
            .flatten();
        let stored: StoredLogin = serde_json::from_str(&got?).ok()?;
        let left = Duration::from_millis(
            stored
                .expires_unix_ms
                .saturating_sub(unix_ms(SystemTime::now())),
        );
        Some(LoginAttempt {
            nonce: stored.nonce,
            verifier: SecretString::from(stored.verifier),
            expires: Instant::now() + left,
            browser: stored.browser,
            group: stored.group,
        })
    }

    /// A new session for `identity`; the cookie value to hand the browser.
    pub(super) async fn create(
        &self,
        identity: Identity,
        ttl: Duration,
    ) -> Result<SecretString, StoreError> {
        let token = random_token();
        let id = token_hash(token.expose_secret());
        match &self.redis {
            Some(redis) => {
                let json = serde_json::to_string(&identity).unwrap_or_default();
                redis
                    .query::<()>(
                        redis::cmd("SET")
                            .arg(key("websession", &id))
                            .arg(json)
                            .arg("PX")
                            .arg(ttl.as_millis().max(1) as u64),
                    )
                    .await?;
            }
            None => {
                self.sessions.insert(
                    id,
                    WebSession {
                        identity,
                        expires: Instant::now() + ttl,
                    },
                );
            }
        }
        Ok(token)
    }

    /// The identity of the session of cookie value `cookie`; none when it is unknown, expired,
    /// logged out, or Redis cannot say (a browser then looks signed out, never signed in as
    /// someone else).
    pub(super) async fn get(&self, cookie: &str) -> Option<Identity> {
        let id = token_hash(cookie);
        let Some(redis) = &self.redis else {
            let s = self.sessions.get(&id)?;
            return (s.expires > Instant::now()).then(|| s.identity.clone());
        };
        let json: Option<String> = redis
            .query(redis::cmd("GET").arg(key("websession", &id)))
            .await
            .map_err(|e| tracing::warn!("browser session lookup failed: {e}"))
            .ok()
            .flatten();
        serde_json::from_str(&json?).ok()
    }

    /// Ends the session of cookie value `cookie` on every node.
    pub(super) async fn remove(&self, cookie: &str) -> Result<(), StoreError> {
        let id = token_hash(cookie);
        self.sessions.remove(&id);
        match &self.redis {
            Some(redis) => {
                redis
                    .query::<()>(redis::cmd("DEL").arg(key("websession", &id)))
                    .await
            }
            None => Ok(()),
        }
    }
}
