//! Caps on connections waiting to sign in, overall and per source address, so nobody can make
//! the gateway hold thousands of device flows open (or flood the IdP with them).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a new pending connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The gateway-wide cap is reached.
    #[error("too many sign-ins in progress on this gateway ({0})")]
    Global(usize),
    /// The per-address cap is reached.
    #[error("too many sign-ins in progress from this address ({0})")]
    PerAddress(usize),
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// Counts pending connections.
#[derive(Debug)]
pub struct PendingLimiter {
    max_total: usize,
    max_per_ip: usize,
    counts: Arc<Mutex<Counts>>,
}

/// One pending connection's slot; dropping it frees the slot.
pub struct PendingPermit {
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl std::fmt::Debug for PendingPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingPermit")
    }
}

impl PendingPermit {
    /// A slot freed by calling `release` once.
    pub fn new(release: impl FnOnce() + Send + Sync + 'static) -> PendingPermit {
        PendingPermit {
            release: Some(Box::new(release)),
        }
    }
}

impl Drop for PendingPermit {
    fn drop(&mut self) {
        if let Some(r) = self.release.take() {
            r();
        }
    }
}

/// Where pending slots are counted: this process, or every node together.
#[async_trait::async_trait]
pub trait PendingSlots: Send + Sync {
    /// Takes a slot for a connection from `ip`.
    async fn acquire(&self, ip: Option<IpAddr>) -> Result<PendingPermit, LimitError>;
}

#[async_trait::async_trait]
impl PendingSlots for PendingLimiter {
    async fn acquire(&self, ip: Option<IpAddr>) -> Result<PendingPermit, LimitError> {
        self.try_acquire(ip)
    }
}

impl PendingLimiter {
    /// A limiter with these caps.
    pub fn new(max_total: usize, max_per_ip: usize) -> PendingLimiter {
        PendingLimiter {
            max_total,
            max_per_ip,
            counts: Arc::default(),
        }
    }

    /// Takes a slot for a connection from `ip`.
    pub fn try_acquire(&self, ip: Option<IpAddr>) -> Result<PendingPermit, LimitError> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.max_total {
            return Err(LimitError::Global(self.max_total));
        }
        if let Some(ip) = ip {
            let n = c.by_ip.entry(ip).or_default();
            if *n >= self.max_per_ip {
                return Err(LimitError::PerAddress(self.max_per_ip));
            }
            *n += 1;
        }
        c.total += 1;
        let counts = self.counts.clone();
        Ok(PendingPermit::new(move || {
            let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
            c.total = c.total.saturating_sub(1);
            if let Some(ip) = ip {
                if let Some(n) = c.by_ip.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        c.by_ip.remove(&ip);
                    }
                }
            }
        }))
    }

    /// Pending connections now.
    pub fn in_use(&self) -> usize {
        self.counts.lock().map(|c| c.total).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_overall_and_frees_on_drop() {
        let l = PendingLimiter::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = l.try_acquire(Some(a)).unwrap();
        let _p2 = l.try_acquire(Some(a)).unwrap();
        assert_eq!(
            l.try_acquire(Some(a)).unwrap_err(),
            LimitError::PerAddress(2)
        );
        let _p3 = l.try_acquire(Some(b)).unwrap();
        assert_eq!(l.try_acquire(Some(b)).unwrap_err(), LimitError::Global(3));
        drop(p1);
        let _p4 = l.try_acquire(Some(a)).unwrap();
        assert_eq!(l.in_use(), 3);
    }
}

/// Failed-login counting and bans, in this process or shared by every node.
#[async_trait::async_trait]
pub trait Bans: Send + Sync {
    /// Whether `ip` is banned now.
    async fn is_banned(&self, ip: IpAddr) -> bool;
    /// Counts a failure; true when it bans the address now.
    async fn failure(&self, ip: IpAddr) -> bool;
    /// A success clears the address's failures.
    async fn success(&self, ip: IpAddr);
}

#[async_trait::async_trait]
impl Bans for BanList {
    async fn is_banned(&self, ip: IpAddr) -> bool {
        BanList::is_banned(self, ip)
    }
    async fn failure(&self, ip: IpAddr) -> bool {
        BanList::failure(self, ip)
    }
    async fn success(&self, ip: IpAddr) {
        BanList::success(self, ip)
    }
}

#[async_trait::async_trait]
impl Bans for super::redis::RedisBans {
    async fn is_banned(&self, ip: IpAddr) -> bool {
        super::redis::RedisBans::is_banned(self, ip).await
    }
    async fn failure(&self, ip: IpAddr) -> bool {
        super::redis::RedisBans::failure(self, ip).await
    }
    async fn success(&self, ip: IpAddr) {
        super::redis::RedisBans::success(self, ip).await
    }
}

/// Per-address failed logins and temporary bans.
///
/// A "failure" is a connection that tried to authenticate and ended without succeeding; after
/// `max_failures` of them within `ban` the address is banned for `ban`, and a banned address is
/// refused at accept, before any key exchange (no expensive work for it).
#[derive(Debug)]
pub struct BanList {
    max_failures: u32,
    ban: std::time::Duration,
    entries: dashmap::DashMap<IpAddr, BanEntry>,
}

#[derive(Debug, Clone, Copy)]
struct BanEntry {
    failures: u32,
    window_start: std::time::Instant,
    banned_until: Option<std::time::Instant>,
}

impl BanList {
    /// `max_failures == 0` disables banning.
    pub fn new(max_failures: u32, ban: std::time::Duration) -> BanList {
        BanList {
            max_failures,
            ban,
            entries: dashmap::DashMap::new(),
        }
    }

    /// Whether `ip` is banned now.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let now = std::time::Instant::now();
        match self.entries.get(&ip).and_then(|e| e.banned_until) {
            Some(until) if until > now => true,
            Some(_) => {
                self.entries.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// Counts a failure; returns true when it bans the address now.
    pub fn failure(&self, ip: IpAddr) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let now = std::time::Instant::now();
        let mut e = self.entries.entry(ip).or_insert(BanEntry {
            failures: 0,
            window_start: now,
            banned_until: None,
        });
        if now.duration_since(e.window_start) > self.ban {
            e.failures = 0;
            e.window_start = now;
        }
        e.failures += 1;
        if e.failures >= self.max_failures && e.banned_until.is_none() {
            e.banned_until = Some(now + self.ban);
            return true;
        }
        false
    }

    /// A success clears the address's failures.
    pub fn success(&self, ip: IpAddr) {
        self.entries.remove_if(&ip, |_, e| e.banned_until.is_none());
    }

    /// Forgets entries whose window and ban are over.
    pub fn sweep(&self) {
        let now = std::time::Instant::now();
        self.entries.retain(|_, e| {
            e.banned_until.is_some_and(|u| u > now)
                || now.duration_since(e.window_start) <= self.ban
        });
    }
}

#[cfg(test)]
mod ban_tests {
    use super::*;

    #[test]
    fn bans_after_n_failures_and_success_resets() {
        let b = BanList::new(3, std::time::Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert!(!b.failure(ip));
        b.success(ip);
        assert!(!b.failure(ip));
        assert!(!b.failure(ip));
        assert!(!b.is_banned(ip));
        assert!(b.failure(ip));
        assert!(b.is_banned(ip));
        b.success(ip);
        assert!(b.is_banned(ip), "a success does not lift a ban");
        assert!(!BanList::new(0, std::time::Duration::from_secs(1)).failure(ip));
    }
}

/// The address limits and bans count `ip` as: IPv4 addresses (and IPv4-mapped IPv6 ones) as
/// themselves, IPv6 addresses by their first `v6_prefix` bits. One host usually holds a whole
/// /64, so counting full IPv6 addresses would give it 2^64 fresh identities.
pub fn address_group(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6);
                let keep = u32::from(v6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        },
    }
}

/// Bans and pending slots counted per network ([`address_group`]) instead of per address.
pub struct ByNetwork<T: ?Sized> {
    inner: Arc<T>,
    v6_prefix: u8,
}

impl<T: ?Sized> ByNetwork<T> {
    /// Counts through `inner`, grouping IPv6 addresses by their first `v6_prefix` bits.
    pub fn new(inner: Arc<T>, v6_prefix: u8) -> ByNetwork<T> {
        ByNetwork { inner, v6_prefix }
    }

    fn group(&self, ip: IpAddr) -> IpAddr {
        address_group(ip, self.v6_prefix)
    }
}

#[async_trait::async_trait]
impl<T: Bans + ?Sized> Bans for ByNetwork<T> {
    async fn is_banned(&self, ip: IpAddr) -> bool {
        self.inner.is_banned(self.group(ip)).await
    }
    async fn failure(&self, ip: IpAddr) -> bool {
        self.inner.failure(self.group(ip)).await
    }
    async fn success(&self, ip: IpAddr) {
        self.inner.success(self.group(ip)).await
    }
}

#[async_trait::async_trait]
impl<T: PendingSlots + ?Sized> PendingSlots for ByNetwork<T> {
    async fn acquire(&self, ip: Option<IpAddr>) -> Result<PendingPermit, LimitError> {
        self.inner.acquire(ip.map(|i| self.group(i))).await
    }
}

#[cfg(test)]
mod network_tests {
    use super::*;

    #[test]
    fn ipv6_addresses_count_by_prefix_and_ipv4_by_address() {
        let g = |s: &str, p| address_group(s.parse().unwrap(), p).to_string();
        assert_eq!(g("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::");
        assert_eq!(g("2001:db8:1:2:bbbb::9", 64), "2001:db8:1:2::");
        assert_eq!(g("2001:db8:1:3::1", 64), "2001:db8:1:3::");
        assert_eq!(g("2001:db8:1:2:aaaa::1", 128), "2001:db8:1:2:aaaa::1");
        assert_eq!(g("2001:db8:1:2:aaaa::1", 48), "2001:db8:1::");
        assert_eq!(g("::ffff:10.1.2.3", 64), "10.1.2.3");
        assert_eq!(g("10.1.2.3", 64), "10.1.2.3");
    }

    #[tokio::test]
    async fn one_network_shares_its_pending_slots_and_ban() {
        let slots = ByNetwork::new(Arc::new(PendingLimiter::new(10, 2)), 64);
        let _a = slots
            .acquire(Some("2001:db8::1".parse().unwrap()))
            .await
            .unwrap();
        let _b = slots
            .acquire(Some("2001:db8::2".parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(
            slots
                .acquire(Some("2001:db8::3".parse().unwrap()))
                .await
                .unwrap_err(),
            LimitError::PerAddress(2)
        );
        assert!(slots
            .acquire(Some("2001:db9::1".parse().unwrap()))
            .await
            .is_ok());

        let bans = ByNetwork::new(
            Arc::new(BanList::new(2, std::time::Duration::from_secs(60))),
            64,
        );
        assert!(!bans.failure("2001:db8::a".parse().unwrap()).await);
        assert!(bans.failure("2001:db8::b".parse().unwrap()).await);
        assert!(bans.is_banned("2001:db8::c".parse().unwrap()).await);
        assert!(!bans.is_banned("2001:db9::c".parse().unwrap()).await);
    }
}
