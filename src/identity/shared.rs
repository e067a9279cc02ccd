//! The state gateway nodes share — enrolled keys, tickets, bans, sign-in slots — kept in this
//! process (and a file) or in Redis, chosen once at start. Everything above this module takes
//! the trait objects and never asks which.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use super::limits::{BanList, Bans, ByNetwork, PendingLimiter, PendingSlots};
use super::redis::{BadRedisUrl, Redis, RedisBans, RedisEnrollments, RedisPending, RedisTickets};
use super::store::{EnrollmentStore, FileEnrollmentStore, StoreError};
use super::tickets::{MemoryTicketStore, TicketStore};

/// Where the shared state lives.
#[derive(Debug, Clone, Copy)]
pub enum Backing<'a> {
    /// One node: tickets, bans and slots in memory, enrollments in a file under `dir`.
    Local {
        /// The state directory.
        dir: &'a Path,
    },
    /// Several nodes: everything in Redis.
    Redis {
        /// Its URL (never logged).
        url: &'a SecretString,
    },
}

/// When failed logins ban an address.
#[derive(Debug, Clone, Copy)]
pub struct BanPolicy {
    /// Failures before the ban (0: never).
    pub failures: u32,
    /// How long it lasts.
    pub duration: Duration,
    /// IPv6 clients are counted by network of this prefix length.
    pub ipv6_prefix: u8,
}

/// Why the shared state cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum SharedStateError {
    /// `[state] redis_url` is not usable.
    #[error(transparent)]
    Url(#[from] BadRedisUrl),
    /// The state directory cannot be used.
    #[error("[state] dir {}: {source}", dir.display())]
    Dir {
        /// The directory.
        dir: std::path::PathBuf,
        /// What failed.
        source: StoreError,
    },
}

/// The shared state, opened.
pub struct SharedState {
    /// Keys bound by device sign-ins.
    pub enrollments: Arc<dyn EnrollmentStore>,
    /// Single-use tickets.
    pub tickets: Arc<dyn TicketStore>,
    /// Addresses banned after failed logins (by network for IPv6).
    pub bans: Arc<dyn Bans>,
    /// The Redis connection, when the state is there (the session directory uses it too).
    pub redis: Option<Arc<Redis>>,
    ipv6_prefix: u8,
}

impl SharedState {
    /// Opens the state at `backing`; in-memory parts are swept until `background` ends.
    pub fn open(
        backing: Backing<'_>,
        ban: BanPolicy,
        background: &CancellationToken,
    ) -> Result<SharedState, SharedStateError> {
        let mut redis = None;
        let (enrollments, tickets, bans): (
            Arc<dyn EnrollmentStore>,
            Arc<dyn TicketStore>,
            Arc<dyn Bans>,
        ) = match backing {
            Backing::Redis { url } => {
                let r = Redis::open(url)?;
                redis = Some(r.clone());
                (
                    Arc::new(RedisEnrollments(r.clone())),
                    Arc::new(RedisTickets(r.clone())),
                    Arc::new(RedisBans::new(r, ban.failures, ban.duration)),
                )
            }
            Backing::Local { dir } => {
                let enrollments =
                    FileEnrollmentStore::open(dir).map_err(|source| SharedStateError::Dir {
                        dir: dir.to_owned(),
                        source,
                    })?;
                let tickets = MemoryTicketStore::new();
                tickets.spawn_sweeper(Duration::from_secs(10), background.clone());
                let bans = Arc::new(BanList::new(ban.failures, ban.duration));
                let sweep = bans.clone();
                crate::periodic::every(Duration::from_secs(60), background.clone(), move || {
                    sweep.sweep()
                });
                (Arc::new(enrollments), tickets, bans)
            }
        };
        Ok(SharedState {
            enrollments,
            tickets,
            bans: Arc::new(ByNetwork::new(bans, ban.ipv6_prefix)),
            redis,
            ipv6_prefix: ban.ipv6_prefix,
        })
    }

    /// Slots for connections waiting on a device sign-in: `max` in all, `per_address` per
    /// address (IPv6 by network); in Redis, a slot lapses after `timeout` if its node died.
    pub fn pending_slots(
        &self,
        max: usize,
        per_address: usize,
        timeout: Duration,
    ) -> Arc<dyn PendingSlots> {
        let slots: Arc<dyn PendingSlots> = match &self.redis {
            Some(r) => Arc::new(RedisPending::new(r.clone(), max, per_address, timeout)),
            None => Arc::new(PendingLimiter::new(max, per_address)),
        };
        Arc::new(ByNetwork::new(slots, self.ipv6_prefix))
    }
}
