//! OpenSSH user certificates (PROTOCOL.certkeys) signed by the CAs in
//! `[ssh] trusted_user_ca_keys`, with sshd's rules: a *user* certificate, inside its validity
//! window (allowing `leeway` of clock skew), from a trusted CA, naming a principal, honouring
//! its critical options and extensions. The principal becomes the user id.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ssh_key::public::KeyData;
use ssh_key::{Certificate, HashAlg};

use super::key_options::address_matches;
use super::watched::{public_key_lines, FileError, Watched};
use super::{Identity, UserId};

/// The CA public keys of `trusted_user_ca_keys`.
#[derive(Debug)]
pub struct TrustedCas {
    keys: Vec<KeyData>,
}

impl TrustedCas {
    /// Parses the file: one public key per line, `#` comments and blank lines allowed.
    pub fn load(path: &Path) -> Result<TrustedCas, FileError> {
        let text = std::fs::read_to_string(path).map_err(|e| FileError::io(path, &e))?;
        let keys: Vec<KeyData> = public_key_lines(&text, path, "a CA public key")?
            .into_iter()
            .map(|(_, k)| k.key_data().clone())
            .collect();
        if keys.is_empty() {
            return Err(FileError::at(path, None, "holds no CA key".into()));
        }
        Ok(TrustedCas { keys })
    }

    fn trusts(&self, ca: &KeyData) -> bool {
        self.keys.iter().any(|k| k == ca)
    }
}

/// `[ssh] cert_principal_map`: which principals count and how they become user ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrincipalMap {
    /// Only principals starting with this count, without it (`"hermes:"`).
    pub strip_prefix: Option<String>,
    /// Only principals ending with this count, without it (`"@corp.example"`).
    pub strip_suffix: Option<String>,
}

impl PrincipalMap {
    /// The user id a principal maps to, if it maps to one.
    pub fn user_id(&self, principal: &str) -> Option<UserId> {
        let mut p = principal;
        if let Some(prefix) = &self.strip_prefix {
            p = p.strip_prefix(prefix.as_str())?;
        }
        if let Some(suffix) = &self.strip_suffix {
            p = p.strip_suffix(suffix.as_str())?;
        }
        UserId::parse(p).ok()
    }
}

/// Who a certificate vouches for, for the audit log and `whoami`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertificateInfo {
    /// The signing CA's key fingerprint (`SHA256:…`).
    pub ca: String,
    /// The certificate's serial number.
    pub serial: u64,
    /// Its key id (`ssh-keygen -I`).
    pub key_id: String,
    /// The principal that became the user id (empty in the record of a refused one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub principal: String,
}

impl CertificateInfo {
    /// What the audit log records of `cert`, with the principal that became the user id.
    pub fn of(cert: &Certificate, principal: String) -> CertificateInfo {
        CertificateInfo {
            ca: cert
                .signature_key()
                .fingerprint(HashAlg::Sha256)
                .to_string(),
            serial: cert.serial(),
            key_id: cert.key_id().to_owned(),
            principal,
        }
    }
}

/// What an accepted certificate allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertGrant {
    /// The identity it proves.
    pub identity: Identity,
    /// No `permit-pty` extension: sessions get no PTY.
    pub no_pty: bool,
    /// The `force-command` critical option: the gateway runs one program, so sessions are
    /// refused with this named.
    pub forced_command: Option<String>,
    /// `no-touch-required` extension: a security-key signature need not show user presence.
    pub no_touch_required: bool,
    /// `verify-required` critical option: a security-key signature must show user
    /// verification (PIN or biometrics).
    pub verify_required: bool,
}

/// Why a certificate does not log in; the text is what the log and the audit record say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertRefusal {
    /// No `trusted_user_ca_keys`.
    #[error("certificates are not accepted (no [ssh] trusted_user_ca_keys)")]
    NotConfigured,
    /// The CA file cannot be used now.
    #[error("the trusted CA file cannot be used: {0}")]
    CaFile(String),
    /// Signed by a CA not in the file.
    #[error("certificate signed by an untrusted CA ({0})")]
    UntrustedCa(String),
    /// A host certificate.
    #[error("a host certificate cannot log in a user")]
    HostCertificate,
    /// Before `valid_after`.
    #[error("certificate is not yet valid (valid from {0})")]
    NotYetValid(String),
    /// After `valid_before`.
    #[error("certificate expired at {0}")]
    Expired(String),
    /// No principal maps to a user id.
    #[error("certificate names no principal that is a user id here ({0})")]
    NoPrincipal(String),
    /// `source-address` does not match.
    #[error("certificate is not valid from {0} (source-address {1})")]
    SourceAddress(String, String),
    /// A critical option the gateway does not know: OpenSSH refuses these too.
    #[error("certificate has the unknown critical option {0:?}")]
    UnknownOption(String),
    /// Revoked in `revoked_keys`.
    #[error("certificate is revoked (revoked_keys)")]
    Revoked,
}

/// Critical options the gateway understands.
const KNOWN_CRITICAL: &[&str] = &["force-command", "source-address", "verify-required"];

/// The certificate rules of one gateway.
pub struct CertPolicy {
    cas: Option<Watched<TrustedCas>>,
    map: PrincipalMap,
    leeway: Duration,
}

impl CertPolicy {
    /// `cas`: the trusted CA file (none: every certificate is refused).
    pub fn new(cas: Option<&Path>, map: PrincipalMap, leeway: Duration) -> Result<Self, FileError> {
        let cas = cas
            .map(|p| Watched::open(p, TrustedCas::load))
            .transpose()?;
        Ok(CertPolicy { cas, map, leeway })
    }

    /// Whether certificates can log in at all.
    pub fn enabled(&self) -> bool {
        self.cas.is_some()
    }

    /// Checks `cert` for a client at `remote` that asked to log in as `login` (the SSH user
    /// name: preferred when it is one of the certificate's principals) at Unix time `now`.
    /// The certificate's signature by its CA is already checked (russh does it).
    pub fn check(
        &self,
        cert: &Certificate,
        login: &str,
        remote: Option<IpAddr>,
        now: u64,
    ) -> Result<CertGrant, CertRefusal> {
        let cas = self.cas.as_ref().ok_or(CertRefusal::NotConfigured)?;
        let cas = cas.get().map_err(|e| CertRefusal::CaFile(e.to_string()))?;
        let ca_fp = cert
            .signature_key()
            .fingerprint(HashAlg::Sha256)
            .to_string();
        if !cas.trusts(cert.signature_key()) {
            return Err(CertRefusal::UntrustedCa(ca_fp));
        }
        if !cert.cert_type().is_user() {
            return Err(CertRefusal::HostCertificate);
        }
        self.check_window(cert, now)?;
        let options = cert.critical_options();
        if let Some(unknown) = options
            .keys()
            .find(|k| !KNOWN_CRITICAL.contains(&k.as_str()))
        {
            return Err(CertRefusal::UnknownOption(unknown.clone()));
        }
        if let Some(allowed) = options.get("source-address") {
            if !remote.is_some_and(|ip| address_matches(ip, allowed)) {
                let from = remote.map_or_else(|| "an unknown address".into(), |r| r.to_string());
                return Err(CertRefusal::SourceAddress(from, allowed.clone()));
            }
        }
        let (principal, user) = self.principal(cert, login)?;
        let info = CertificateInfo::of(cert, principal);
        let fingerprint = cert.public_key().fingerprint(HashAlg::Sha256).to_string();
        let extensions = cert.extensions();
        Ok(CertGrant {
            identity: Identity::from_certificate(user, fingerprint, info),
            no_pty: !extensions.contains_key("permit-pty"),
            forced_command: options.get("force-command").cloned(),
            no_touch_required: extensions.contains_key("no-touch-required"),
            verify_required: options.contains_key("verify-required"),
        })
    }

    fn check_window(&self, cert: &Certificate, now: u64) -> Result<(), CertRefusal> {
        let leeway = self.leeway.as_secs();
        // OpenSSH's "forever" bounds are 0 and u64::MAX; saturating arithmetic keeps them so.
        if now.saturating_add(leeway) < cert.valid_after() {
            return Err(CertRefusal::NotYetValid(unix_time(cert.valid_after())));
        }
        if now.saturating_sub(leeway) >= cert.valid_before() {
            return Err(CertRefusal::Expired(unix_time(cert.valid_before())));
        }
        Ok(())
    }

    /// The principal that becomes the user id: the login name when it is one of them, else
    /// the first that maps. sshd refuses certificates without principals for users, and so
    /// does this.
    fn principal(&self, cert: &Certificate, login: &str) -> Result<(String, UserId), CertRefusal> {
        let mapped: Vec<(&String, UserId)> = cert
            .valid_principals()
            .iter()
            .filter_map(|p| self.map.user_id(p).map(|u| (p, u)))
            .collect();
        let chosen = mapped
            .iter()
            .find(|(p, u)| p.as_str() == login || u.as_str() == login)
            .or(mapped.first());
        match chosen {
            Some((p, u)) => Ok(((*p).clone(), u.clone())),
            None => {
                let listed = cert.valid_principals().join(", ");
                Err(CertRefusal::NoPrincipal(if listed.is_empty() {
                    "it lists none".into()
                } else {
                    format!("principals: {listed}")
                }))
            }
        }
    }
}

fn unix_time(t: u64) -> String {
    i64::try_from(t)
        .ok()
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map_or_else(
            || t.to_string(),
            |d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_map_strips_and_filters() {
        let m = PrincipalMap {
            strip_prefix: Some("hermes:".into()),
            strip_suffix: Some("@corp".into()),
        };
        assert_eq!(m.user_id("hermes:alice@corp").unwrap().as_str(), "alice");
        assert!(m.user_id("alice@corp").is_none());
        assert!(m.user_id("hermes:alice").is_none());
        assert!(m.user_id("hermes:../x@corp").is_none());
        assert_eq!(
            PrincipalMap::default().user_id("bob").unwrap().as_str(),
            "bob"
        );
    }
}
