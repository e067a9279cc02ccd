//! Single-use, short-lived tickets bound to an identity: the hand-off between fronts.
//!
//! `mint` returns an opaque 256-bit random token (base64url); only its SHA-256 is stored, so a
//! leaked store reveals no usable ticket. `consume` removes the entry atomically before checking
//! it, so a ticket is honoured at most once even when two requests race, and it is burnt even
//! when presented for the wrong purpose (a ticket used in the wrong place is suspect). Every
//! failure has its own internal reason, for the log, and one indistinguishable answer for the
//! caller.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use dashmap::DashMap;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::Identity;

/// Default lifetime of a ticket.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// What a ticket may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Open a terminal over the WebSocket (`/api/pty`).
    Pty,
    /// Log a browser in (`/auth/ticket`), minted by `ssh host link`.
    WebLogin,
    /// Watch a session read-only (`ssh host watch TOKEN`), minted by `ssh host share ID`.
    Watch,
}

impl Purpose {
    /// The name used in logs and shared stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Pty => "pty",
            Purpose::WebLogin => "web-login",
            Purpose::Watch => "watch",
        }
    }
}

/// Why a ticket was refused (for the log; callers show one generic answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TicketRefusal {
    /// Never minted (or swept long ago), or malformed.
    #[error("unknown ticket")]
    Unknown,
    /// Already consumed.
    #[error("ticket already used")]
    Used,
    /// Past its TTL.
    #[error("ticket expired")]
    Expired,
    /// Minted for another purpose.
    #[error("ticket minted for another purpose")]
    WrongPurpose,
    /// The store could not be reached (fail closed).
    #[error("ticket store unavailable")]
    Unavailable,
}

/// A random token of 256 bits, base64url without padding.
pub fn random_token() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored key of a token: hex SHA-256 of its text.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a redeemed ticket grants: whose it is and, for a ticket minted for one session (a
/// browser opening a running session, a watch link), that session's id. The binding travels in
/// the ticket itself, so nothing outside the store has to remember it or sweep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeemed {
    /// The identity the ticket was minted for.
    pub identity: Identity,
    /// The session the ticket is bound to, if any.
    pub session: Option<String>,
}

/// Where tickets live.
#[async_trait::async_trait]
pub trait TicketStore: Send + Sync {
    /// Stores a new ticket, bound to `session` when one is given, and returns its token.
    async fn mint(
        &self,
        identity: &Identity,
        purpose: Purpose,
        session: Option<&str>,
        ttl: Duration,
    ) -> Result<SecretString, TicketRefusal>;
    /// Redeems a ticket exactly once.
    async fn consume(&self, token: &str, purpose: Purpose) -> Result<Redeemed, TicketRefusal>;
    /// Whom a ticket would log in, without redeeming it (to ask before using it).
    async fn peek(&self, token: &str, purpose: Purpose) -> Result<Identity, TicketRefusal>;
}

#[derive(Debug)]
enum Entry {
    Live {
        identity: Box<Identity>,
        purpose: Purpose,
        session: Option<String>,
        expires: Instant,
    },
    /// Kept until the ticket's own expiry, so a replay is told apart from a guess in the log.
    Used { expires: Instant },
}

/// The in-memory store (one gateway process).
#[derive(Debug, Default)]
pub struct MemoryTicketStore {
    map: DashMap<String, Entry>,
}

impl MemoryTicketStore {
    /// An empty store; call [`MemoryTicketStore::spawn_sweeper`] to drop expired entries.
    pub fn new() -> Arc<MemoryTicketStore> {
        Arc::new(MemoryTicketStore::default())
    }

    /// Removes expired entries every `every` until `shutdown`.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let me = Arc::clone(self);
        crate::periodic::every(every, shutdown, move || me.sweep());
    }

    /// Drops every expired entry now.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.map.retain(|_, e| match e {
            Entry::Live { expires, .. } | Entry::Used { expires } => *expires > now,
        });
    }

    /// Entries held (live and used), for tests and metrics.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[async_trait::async_trait]
impl TicketStore for MemoryTicketStore {
    async fn mint(
        &self,
        identity: &Identity,
        purpose: Purpose,
        session: Option<&str>,
        ttl: Duration,
    ) -> Result<SecretString, TicketRefusal> {
        let token = random_token();
        self.map.insert(
            token_hash(token.expose_secret()),
            Entry::Live {
                identity: Box::new(identity.clone()),
                purpose,
                session: session.map(str::to_owned),
                expires: Instant::now() + ttl,
            },
        );
        Ok(token)
    }

    async fn consume(&self, token: &str, purpose: Purpose) -> Result<Redeemed, TicketRefusal> {
        // 256 bits in base64url is 43 characters; anything else was never minted here.
        if token.len() != 43 {
            return Err(TicketRefusal::Unknown);
        }
        let key = token_hash(token);
        // Atomic: the first caller takes the entry out; racers find a tombstone or nothing.
        let mut refusal = TicketRefusal::Unknown;
        let mut found = None;
        self.map.alter(&key, |_, entry| match entry {
            Entry::Live {
                identity,
                purpose: p,
                session,
                expires,
            } => {
                let now = Instant::now();
                if expires <= now {
                    refusal = TicketRefusal::Expired;
                } else if p != purpose {
                    refusal = TicketRefusal::WrongPurpose;
                } else {
                    found = Some(Redeemed {
                        identity: *identity,
                        session,
                    });
                }
                Entry::Used { expires }
            }
            used @ Entry::Used { .. } => {
                refusal = TicketRefusal::Used;
                used
            }
        });
        found.ok_or(refusal)
    }

    async fn peek(&self, token: &str, purpose: Purpose) -> Result<Identity, TicketRefusal> {
        if token.len() != 43 {
            return Err(TicketRefusal::Unknown);
        }
        match self.map.get(&token_hash(token)).as_deref() {
            None => Err(TicketRefusal::Unknown),
            Some(Entry::Used { .. }) => Err(TicketRefusal::Used),
            Some(Entry::Live { expires, .. }) if *expires <= Instant::now() => {
                Err(TicketRefusal::Expired)
            }
            Some(Entry::Live { purpose: p, .. }) if *p != purpose => {
                Err(TicketRefusal::WrongPurpose)
            }
            Some(Entry::Live { identity, .. }) => Ok((**identity).clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::UserId;

    fn alice() -> Identity {
        Identity::from_mapped_key(UserId::parse("alice").unwrap(), "SHA256:x".into())
    }

    #[tokio::test]
    async fn tickets_are_single_use_purpose_bound_and_expire() {
        let s = MemoryTicketStore::new();
        let t = s
            .mint(&alice(), Purpose::Pty, None, DEFAULT_TTL)
            .await
            .unwrap();
        let tok = t.expose_secret().to_owned();
        assert_eq!(tok.len(), 43);
        assert!(!format!("{t:?}").contains(&tok), "tokens never print");
        assert_eq!(
            s.consume(&tok, Purpose::Pty)
                .await
                .unwrap()
                .identity
                .user_id
                .as_str(),
            "alice"
        );
        assert_eq!(
            s.consume(&tok, Purpose::Pty).await,
            Err(TicketRefusal::Used)
        );

        let t = s
            .mint(&alice(), Purpose::WebLogin, None, DEFAULT_TTL)
            .await
            .unwrap();
        assert_eq!(
            s.consume(t.expose_secret(), Purpose::Pty).await,
            Err(TicketRefusal::WrongPurpose)
        );
        assert_eq!(
            s.consume(t.expose_secret(), Purpose::WebLogin).await,
            Err(TicketRefusal::Used),
            "a wrong-purpose attempt burns the ticket"
        );

        let t = s
            .mint(&alice(), Purpose::Pty, Some("k3f9"), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            s.consume(t.expose_secret(), Purpose::Pty).await,
            Err(TicketRefusal::Expired)
        );
        assert_eq!(
            s.consume(&"A".repeat(43), Purpose::Pty).await,
            Err(TicketRefusal::Unknown)
        );
        assert_eq!(
            s.consume("short", Purpose::Pty).await,
            Err(TicketRefusal::Unknown)
        );

        // Only hashes are stored.
        assert!(s.map.iter().all(|e| e.key().len() == 64 && *e.key() != tok));
        assert_eq!(s.len(), 3);
        s.sweep();
        assert_eq!(
            s.len(),
            2,
            "the expired entry is swept; tombstones live until their expiry"
        );
    }
    // The 100-racer test runs in the shared store suite (tests/stores.rs) for every backend.
}
