//! The options prefix of a key line (`authorized_keys` format), with OpenSSH's meaning for the
//! ones that can narrow what a key may do here. Any other option makes the line a reported
//! problem: a key file must never grant more than it says.

use std::net::IpAddr;

use ssh_key::authorized_keys::ConfigOpts;

/// What a key line's options allow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyOptions {
    /// `from="…"`: the client's address must match this pattern list.
    pub from: Option<String>,
    /// `expiry-time="…"`: the key stops working at this Unix time.
    pub expires_at: Option<i64>,
    /// `no-pty`, or `restrict` without `pty`: sessions get no PTY.
    pub no_pty: bool,
    /// `no-touch-required`: a security key's signature need not show user presence.
    pub no_touch_required: bool,
    /// `verify-required`: a security key's signature must show user verification.
    pub verify_required: bool,
}

/// Why a mapped key may not log in now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    /// `from=` does not match.
    #[error("key is not allowed from {0} (from= in its key file)")]
    Address(String),
    /// `expiry-time=` has passed.
    #[error("key expired (expiry-time= in its key file)")]
    Expired,
}

/// Options that only take away what the gateway never offers (forwarding, agent, X11, rc
/// files): accepted, nothing to enforce.
const ALREADY_REFUSED: &[&str] = &[
    "no-port-forwarding",
    "no-agent-forwarding",
    "no-x11-forwarding",
    "no-user-rc",
];

impl KeyOptions {
    /// Parses an options prefix; the error names the option that cannot be honoured.
    pub fn parse(opts: &ConfigOpts) -> Result<KeyOptions, String> {
        let mut out = KeyOptions::default();
        let (mut restrict, mut pty) = (false, false);
        for opt in opts.iter() {
            let (name, value) = match opt.split_once('=') {
                Some((n, v)) => (n, Some(v.trim_matches('"'))),
                None => (opt, None),
            };
            match (name.to_ascii_lowercase().as_str(), value) {
                ("from", Some(v)) => {
                    check_patterns(v)?;
                    out.from = Some(v.to_owned());
                }
                ("expiry-time", Some(v)) => out.expires_at = Some(parse_expiry(v)?),
                ("no-pty", None) => out.no_pty = true,
                ("restrict", None) => restrict = true,
                ("pty", None) => pty = true,
                ("no-touch-required", None) => out.no_touch_required = true,
                ("verify-required", None) => out.verify_required = true,
                (n, None) if ALREADY_REFUSED.contains(&n) => {}
                _ => {
                    return Err(format!(
                        "option {opt:?} is not supported here (supported: from=, expiry-time=, restrict, no-pty, no-port-forwarding, no-touch-required, verify-required); the key is skipped rather than granted more than its line says"
                    ))
                }
            }
        }
        // `restrict` takes everything away; a later `pty` gives the PTY back (as in OpenSSH).
        if restrict && !pty {
            out.no_pty = true;
        }
        Ok(out)
    }

    /// What the line says about a security key's signature flags.
    pub fn sk_requirements(&self) -> crate::identity::key_policy::SkRequirements {
        crate::identity::key_policy::SkRequirements {
            no_touch_required: self.no_touch_required,
            verify_required: self.verify_required,
        }
    }

    /// Whether the key may log in from `remote` at `now` (Unix seconds).
    pub fn check(&self, remote: Option<IpAddr>, now: i64) -> Result<(), KeyRefusal> {
        if self.expires_at.is_some_and(|t| now >= t) {
            return Err(KeyRefusal::Expired);
        }
        if let Some(patterns) = &self.from {
            let allowed = remote.is_some_and(|ip| address_matches(ip, patterns));
            if !allowed {
                return Err(KeyRefusal::Address(
                    remote
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "an unknown address".into()),
                ));
            }
        }
        Ok(())
    }
}

/// OpenSSH's `from=` matching for an address (host names are never looked up, as with sshd's
/// default `UseDNS no`): a negated match (`!pattern`) refuses, else any match allows. A pattern
/// is a CIDR block or a glob with `*` and `?`.
pub fn address_matches(ip: IpAddr, patterns: &str) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let text = ip.to_string();
    let mut allowed = false;
    for p in patterns.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (negated, p) = match p.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, p),
        };
        let hit = match p.split_once('/') {
            Some((net, bits)) => in_cidr(ip, net, bits),
            None => glob(p.as_bytes(), text.as_bytes()),
        };
        if hit && negated {
            return false;
        }
        allowed |= hit;
    }
    allowed
}

fn in_cidr(ip: IpAddr, net: &str, bits: &str) -> bool {
    let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// `*` any run, `?` one character.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

fn check_patterns(v: &str) -> Result<(), String> {
    for p in v.split(',').map(|p| p.trim().trim_start_matches('!')) {
        if let Some((net, bits)) = p.split_once('/') {
            let ok = match net.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => bits.parse::<u32>().is_ok_and(|b| b <= 32),
                Ok(IpAddr::V6(_)) => bits.parse::<u32>().is_ok_and(|b| b <= 128),
                Err(_) => false,
            };
            if !ok {
                return Err(format!(
                    "from=: {p:?} is not an address block like 10.0.0.0/8"
                ));
            }
        } else if p.is_empty() {
            return Err("from=: an empty pattern".into());
        }
    }
    Ok(())
}

/// `YYYYMMDD[HHMM[SS]]`, local time, or UTC with a trailing `Z` (as OpenSSH).
fn parse_expiry(v: &str) -> Result<i64, String> {
    use chrono::{Local, NaiveDate, NaiveDateTime, TimeZone, Utc};
    let bad = || format!("expiry-time={v:?} is not YYYYMMDD[HHMM[SS]][Z]");
    let (digits, utc) = match v.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (v, false),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| digits.get(r).and_then(|s| s.parse::<u32>().ok());
    let date = NaiveDate::from_ymd_opt(
        num(0..4).ok_or_else(bad)? as i32,
        num(4..6).ok_or_else(bad)?,
        num(6..8).ok_or_else(bad)?,
    )
    .ok_or_else(bad)?;
    let time = date
        .and_hms_opt(
            num(8..10).unwrap_or(0),
            num(10..12).unwrap_or(0),
            num(12..14).unwrap_or(0),
        )
        .ok_or_else(bad)?;
    let when: NaiveDateTime = time;
    let ts = if utc {
        Utc.from_utc_datetime(&when).timestamp()
    } else {
        Local
            .from_local_datetime(&when)
            .earliest()
            .ok_or_else(bad)?
            .timestamp()
    };
    Ok(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &str) -> Result<KeyOptions, String> {
        KeyOptions::parse(&s.parse::<ConfigOpts>().unwrap())
    }

    #[test]
    fn from_patterns_match_as_openssh() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(address_matches(ip("10.9.9.9"), "10.9.9.9"));
        assert!(address_matches(ip("10.9.9.9"), "10.*"));
        assert!(address_matches(ip("10.9.9.9"), "192.168.0.0/16,10.0.0.0/8"));
        assert!(!address_matches(ip("10.9.9.9"), "10.0.0.0/8,!10.9.9.9"));
        assert!(!address_matches(ip("127.0.0.1"), "10.9.9.9"));
        assert!(address_matches(ip("::ffff:127.0.0.1"), "127.0.0.?"));
        assert!(address_matches(ip("2001:db8::5"), "2001:db8::/32"));
    }

    #[test]
    fn options_narrow_or_skip_the_line() {
        assert!(opts("restrict").unwrap().no_pty);
        assert!(!opts("restrict,pty").unwrap().no_pty);
        assert!(opts("no-pty,no-port-forwarding").unwrap().no_pty);
        let o = opts("from=\"10.0.0.0/8\",expiry-time=\"20300101Z\"").unwrap();
        assert_eq!(o.from.as_deref(), Some("10.0.0.0/8"));
        assert_eq!(o.expires_at, Some(1_893_456_000));
        assert!(opts("command=\"/bin/sh\"")
            .unwrap_err()
            .contains("not supported"));
        assert!(opts("environment=\"A=b\"").is_err());
        assert!(opts("expiry-time=\"2030\"").is_err());
        assert!(opts("from=\"10.0.0.0/99\"").is_err());
        let expired = opts("expiry-time=\"20200101Z\"").unwrap();
        assert_eq!(expired.check(None, 1_900_000_000), Err(KeyRefusal::Expired));
    }
}
