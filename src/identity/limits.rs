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
#[derive(Debug)]
pub struct PendingPermit {
    ip: Option<IpAddr>,
    counts: Arc<Mutex<Counts>>,
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
        Ok(PendingPermit {
            ip,
            counts: self.counts.clone(),
        })
    }

    /// Pending connections now.
    pub fn in_use(&self) -> usize {
        self.counts.lock().map(|c| c.total).unwrap_or(0)
    }
}

impl Drop for PendingPermit {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(n) = c.by_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    c.by_ip.remove(&ip);
                }
            }
        }
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
