//! Shared state for several gateway nodes, in Redis: tickets, enrollments, bans, device-flow
//! counters and the directory of every node's sessions.
//!
//! Each operation has a short timeout. When Redis is unreachable, operations that need shared
//! state fail with [`StoreError`] and log; the connection manager reconnects by itself when
//! Redis returns. What fails closed and what fails open is decided by the callers: tickets and
//! enrollments refuse, fairness limits fall back to this node's own counts.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::store::{unix_now, Enrollment, EnrollmentStore, StoreError};
use super::tickets::{random_token, token_hash, Purpose, Redeemed, TicketRefusal, TicketStore};
use super::{Identity, UserId};

/// How long one Redis operation may take before it counts as unreachable.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys live under this prefix.
const PREFIX: &str = "hermes:";

/// A lazily connected, self-reconnecting Redis client.
pub struct Redis {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.write_str("Redis(<url>)")
    }
}

fn unreachable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        path: "redis".into(),
        detail: e.to_string(),
    }
}

/// `[state] redis_url` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("[state] redis_url is not a valid Redis URL ({kind})")]
pub struct BadRedisUrl {
    /// What kind of mistake: the library's error text may quote the URL and its password, so
    /// only its kind is kept.
    kind: String,
}

impl Redis {
    /// Parses the URL (`redis://`, `rediss://` for TLS; `redis://:password@host:port/db`).
    /// Connects on first use, so a gateway starts even while Redis is down.
    pub fn open(url: &SecretString) -> Result<Arc<Redis>, BadRedisUrl> {
        let client = redis::Client::open(url.expose_secret()).map_err(|e| BadRedisUrl {
            kind: format!("{:?}", e.kind()),
        })?;
        Ok(Arc::new(Redis {
            client,
            conn: tokio::sync::Mutex::new(None),
        }))
    }

    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let c = tokio::time::timeout(
            OP_TIMEOUT * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| unreachable("connect timed out"))?
        .map_err(unreachable)?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Runs one command with the timeout.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut c = self.conn().await?;
        match tokio::time::timeout(OP_TIMEOUT, cmd.query_async::<T>(&mut c)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unreachable(e)),
            Err(_) => Err(unreachable("timed out")),
        }
    }

    /// Runs a script with the timeout.
    pub async fn script<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StoreError> {
        let mut c = self.conn().await?;
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(a);
        }
        match tokio::time::timeout(OP_TIMEOUT, inv.invoke_async::<T>(&mut c)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unreachable(e)),
            Err(_) => Err(unreachable("timed out")),
        }
    }
}

/// A key of ours: `hermes:<kind>:<id>`.
pub(crate) fn key(kind: &str, id: &str) -> String {
    format!("{PREFIX}{kind}:{id}")
}

#[derive(Serialize, Deserialize)]
struct StoredTicket {
    identity: Identity,
    purpose: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    /// Unix ms.
    expires_ms: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Tickets in Redis: `SET hermes:ticket:<sha256> … PX` and an atomic `GETDEL` to consume, so
/// of any number of nodes racing on one ticket exactly one wins.
pub struct RedisTickets(pub Arc<Redis>);

/// Entries outlive their TTL by this much, so "expired" can be told apart from "unknown".
const TICKET_GRACE_MS: u64 = 60_000;

#[async_trait::async_trait]
impl TicketStore for RedisTickets {
    async fn mint(
        &self,
        identity: &Identity,
        purpose: Purpose,
        session: Option<&str>,
        ttl: Duration,
    ) -> Result<SecretString, TicketRefusal> {
        let token = random_token();
        let stored = StoredTicket {
            identity: identity.clone(),
            purpose: purpose.as_str().into(),
            session: session.map(str::to_owned),
            expires_ms: now_ms() + ttl.as_millis() as u64,
        };
        let value = serde_json::to_string(&stored).map_err(|_| TicketRefusal::Unavailable)?;
        let k = key("ticket", &token_hash(token.expose_secret()));
        let px = ttl.as_millis() as u64 + TICKET_GRACE_MS;
        self.0
            .query::<()>(redis::cmd("SET").arg(&k).arg(value).arg("PX").arg(px))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "minting a ticket in Redis failed");
                TicketRefusal::Unavailable
            })?;
        Ok(token)
    }

    async fn consume(&self, token: &str, purpose: Purpose) -> Result<Redeemed, TicketRefusal> {
        if token.len() != 43 {
            return Err(TicketRefusal::Unknown);
        }
        let hash = token_hash(token);
        let got: Option<String> = self
            .0
            .query(redis::cmd("GETDEL").arg(key("ticket", &hash)))
            .await
            .map_err(|e| {
                // Fail closed: no shared store, no ticket.
                tracing::error!(error = %e, "consuming a ticket in Redis failed");
                TicketRefusal::Unavailable
            })?;
        let Some(value) = got else {
            let used: bool = self
                .0
                .query(redis::cmd("EXISTS").arg(key("ticket-used", &hash)))
                .await
                .unwrap_or(false);
            return Err(if used {
                TicketRefusal::Used
            } else {
                TicketRefusal::Unknown
            });
        };
        let stored: StoredTicket =
            serde_json::from_str(&value).map_err(|_| TicketRefusal::Unknown)?;
        // A tombstone until the ticket's own expiry tells a replay from a guess in the log.
        let left = stored.expires_ms.saturating_sub(now_ms()).max(1);
        let _ = self
            .0
            .query::<()>(
                redis::cmd("SET")
                    .arg(key("ticket-used", &hash))
                    .arg(1)
                    .arg("PX")
                    .arg(left + TICKET_GRACE_MS),
            )
            .await;
        redeemable(&value, purpose).map(|s| Redeemed {
            identity: s.identity,
            session: s.session,
        })
    }

    async fn peek(&self, token: &str, purpose: Purpose) -> Result<Identity, TicketRefusal> {
        if token.len() != 43 {
            return Err(TicketRefusal::Unknown);
        }
        let hash = token_hash(token);
        let got: Option<String> = self
            .0
            .query(redis::cmd("GET").arg(key("ticket", &hash)))
            .await
            .map_err(|_| TicketRefusal::Unavailable)?;
        let Some(value) = got else {
            return Err(TicketRefusal::Unknown);
        };
        redeemable(&value, purpose).map(|s| s.identity)
    }
}

/// A stored ticket, when it is live and for `purpose`.
fn redeemable(value: &str, purpose: Purpose) -> Result<StoredTicket, TicketRefusal> {
    let stored: StoredTicket = serde_json::from_str(value).map_err(|_| TicketRefusal::Unknown)?;
    if stored.expires_ms <= now_ms() {
        return Err(TicketRefusal::Expired);
    }
    if stored.purpose != purpose.as_str() {
        return Err(TicketRefusal::WrongPurpose);
    }
    Ok(stored)
}

/// Enrollments in Redis: `hermes:enroll:<fingerprint>` expiring at the binding's own expiry, so
/// a logout on one node takes effect on all at once.
pub struct RedisEnrollments(pub Arc<Redis>);

#[async_trait::async_trait]
impl EnrollmentStore for RedisEnrollments {
    async fn bind(&self, fingerprint: &str, enrollment: Enrollment) -> Result<(), StoreError> {
        let value = serde_json::to_string(&enrollment).map_err(unreachable)?;
        self.0
            .query::<()>(
                redis::cmd("SET")
                    .arg(key("enroll", fingerprint))
                    .arg(value)
                    .arg("EXAT")
                    .arg(enrollment.expires_at.max(unix_now() + 1)),
            )
            .await
    }

    async fn lookup(&self, fingerprint: &str) -> Result<Option<Enrollment>, StoreError> {
        let (v, used): (Option<String>, Option<u64>) = self
            .0
            .query(
                redis::cmd("MGET")
                    .arg(key("enroll", fingerprint))
                    .arg(key("enroll-used", fingerprint)),
            )
            .await?;
        Ok(v.and_then(|s| serde_json::from_str::<Enrollment>(&s).ok())
            .filter(Enrollment::is_live)
            .map(|mut e| {
                e.last_used = used.or(e.last_used);
                e
            }))
    }

    async fn touch(&self, fingerprint: &str) -> Result<(), StoreError> {
        // A key of its own (no authority in it): the binding itself is never rewritten, so a
        // revocation racing this cannot be undone.
        if let Some(e) = self.lookup(fingerprint).await? {
            self.0
                .query::<()>(
                    redis::cmd("SET")
                        .arg(key("enroll-used", fingerprint))
                        .arg(unix_now())
                        .arg("EXAT")
                        .arg(e.expires_at.max(unix_now() + 1)),
                )
                .await?;
        }
        Ok(())
    }

    async fn remove(&self, fingerprint: &str) -> Result<bool, StoreError> {
        let n: u64 = self
            .0
            .query(redis::cmd("DEL").arg(key("enroll", fingerprint)))
            .await?;
        Ok(n > 0)
    }

    async fn list(&self, user: Option<&UserId>) -> Result<Vec<(String, Enrollment)>, StoreError> {
        // A scan: listing is for a user's own `keys` command and the operator, not a hot path.
        let prefix = key("enroll", "");
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .0
                .query(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(format!("{prefix}*"))
                        .arg("COUNT")
                        .arg(500),
                )
                .await?;
            for k in keys {
                let fp = k.trim_start_matches(&prefix).to_owned();
                if let Some(e) = self.lookup(&fp).await? {
                    if user.is_none_or(|u| *u == e.user_id) {
                        out.push((fp, e));
                    }
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        out.sort_by_key(|(fp, e)| (e.enrolled_at, fp.clone()));
        Ok(out)
    }
}

/// Failed-login counts and bans shared by every node.
pub struct RedisBans {
    redis: Arc<Redis>,
    max_failures: u32,
    ban: Duration,
}

impl RedisBans {
    /// `max_failures == 0` disables banning.
    pub fn new(redis: Arc<Redis>, max_failures: u32, ban: Duration) -> RedisBans {
        RedisBans {
            redis,
            max_failures,
            ban,
        }
    }

    /// Whether `ip` is banned (an unreachable Redis bans nobody, and is logged).
    pub async fn is_banned(&self, ip: IpAddr) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        match self
            .redis
            .query::<bool>(redis::cmd("EXISTS").arg(key("ban", &ip.to_string())))
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "ban check in Redis failed; not banning");
                false
            }
        }
    }

    /// Counts a failure; true when it bans the address now.
    pub async fn failure(&self, ip: IpAddr) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let script = redis::Script::new(
            r"local n = redis.call('INCR', KEYS[1])
              if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
              if n >= tonumber(ARGV[2]) and redis.call('EXISTS', KEYS[2]) == 0 then
                redis.call('SET', KEYS[2], 1, 'EX', ARGV[1])
                return 1
              end
              return 0",
        );
        let ipk = ip.to_string();
        match self
            .redis
            .script::<i64>(
                &script,
                &[key("fail", &ipk), key("ban", &ipk)],
                &[
                    self.ban.as_secs().max(1).to_string(),
                    self.max_failures.to_string(),
                ],
            )
            .await
        {
            Ok(n) => n == 1,
            Err(e) => {
                tracing::error!(error = %e, "counting a failed login in Redis failed");
                false
            }
        }
    }

    /// A success clears the address's failures.
    pub async fn success(&self, ip: IpAddr) {
        let _ = self
            .redis
            .query::<()>(redis::cmd("DEL").arg(key("fail", &ip.to_string())))
            .await;
    }
}

/// Pending sign-ins counted across nodes. Each pending connection is one entry, with its own
/// expiry, in two sorted sets (`hermes:pending:all`, `hermes:pending:ip:<ip>`) scored by when it
/// expires: a node that dies leaves entries that stop counting after `ttl`, however busy the
/// others keep the sets, and a release removes exactly its own entry (no counter can go
/// negative). When Redis is unreachable, this node's own limiter still bounds what it lets
/// through.
pub struct RedisPending {
    redis: Arc<Redis>,
    max_total: usize,
    max_per_ip: usize,
    ttl: Duration,
    local: super::limits::PendingLimiter,
}

impl RedisPending {
    /// Caps across nodes, and the same caps per node as a fallback.
    pub fn new(
        redis: Arc<Redis>,
        max_total: usize,
        max_per_ip: usize,
        ttl: Duration,
    ) -> RedisPending {
        RedisPending {
            redis,
            max_total,
            max_per_ip,
            ttl,
            local: super::limits::PendingLimiter::new(max_total, max_per_ip),
        }
    }
}

#[async_trait::async_trait]
impl super::limits::PendingSlots for RedisPending {
    async fn acquire(
        &self,
        ip: Option<IpAddr>,
    ) -> Result<super::limits::PendingPermit, super::limits::LimitError> {
        use super::limits::LimitError;
        // Server time, so nodes with skewed clocks agree on what has expired.
        let script = redis::Script::new(
            r"local t = redis.call('TIME')
              local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
              local ttl = tonumber(ARGV[3])
              redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
              redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
              if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 1 end
              if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return 2 end
              redis.call('ZADD', KEYS[1], now + ttl, ARGV[4])
              redis.call('ZADD', KEYS[2], now + ttl, ARGV[4])
              redis.call('PEXPIRE', KEYS[1], ttl)
              redis.call('PEXPIRE', KEYS[2], ttl)
              return 0",
        );
        let ip_key = key(
            "pending:ip",
            &ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
        );
        let keys = vec![key("pending", "all"), ip_key];
        let member = random_token().expose_secret().to_owned();
        let args = vec![
            self.max_total.to_string(),
            self.max_per_ip.to_string(),
            // A little past the pending timeout: the connection is closed by then.
            (self.ttl + (self.ttl / 2).min(Duration::from_secs(5)))
                .as_millis()
                .to_string(),
            member.clone(),
        ];
        match self.redis.script::<i64>(&script, &keys, &args).await {
            Ok(0) => {
                let redis = self.redis.clone();
                Ok(super::limits::PendingPermit::new(move || {
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        rt.spawn(async move {
                            for k in keys {
                                let _ = redis
                                    .query::<i64>(redis::cmd("ZREM").arg(k).arg(&member))
                                    .await;
                            }
                        });
                    }
                }))
            }
            Ok(1) => Err(LimitError::Global(self.max_total)),
            Ok(_) => Err(LimitError::PerAddress(self.max_per_ip)),
            Err(e) => {
                tracing::error!(error = %e, "counting pending sign-ins in Redis failed; using this node's limits");
                self.local.try_acquire(ip)
            }
        }
    }
}
