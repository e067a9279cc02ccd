//! The rules every public-key login passes besides "whose key is this": revocation
//! (`[ssh] revoked_keys`), certificates (`[ssh] trusted_user_ca_keys`) and the user-presence
//! flag of security keys (`[ssh] require_user_presence`).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ssh_key::public::KeyData;
use ssh_key::Certificate;

use super::certs::{CertGrant, CertPolicy, CertRefusal, PrincipalMap};
use super::revoked::RevocationList;
use super::watched::{FileError, Watched};

/// Security-key signature flag: the user touched the key (PROTOCOL.u2f).
pub const SK_USER_PRESENT: u8 = 0x01;
/// Security-key signature flag: the user was verified (PIN or biometrics).
pub const SK_USER_VERIFIED: u8 = 0x04;

/// What the key-file line or the certificate says about a security key's flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkRequirements {
    /// `no-touch-required`: presence is not required for this key.
    pub no_touch_required: bool,
    /// `verify-required`: user verification is required.
    pub verify_required: bool,
}

/// How a key file or certificate is configured.
pub struct KeyPolicySettings<'a> {
    /// `trusted_user_ca_keys`.
    pub trusted_user_ca_keys: Option<&'a Path>,
    /// `revoked_keys`.
    pub revoked_keys: Option<&'a Path>,
    /// `cert_principal_map`.
    pub principal_map: PrincipalMap,
    /// `cert_leeway`.
    pub cert_leeway: Duration,
    /// `require_user_presence`.
    pub require_user_presence: bool,
}

/// The rules, loaded.
pub struct KeyPolicy {
    certs: CertPolicy,
    revoked: Option<Watched<RevocationList>>,
    require_user_presence: bool,
}

impl KeyPolicy {
    /// Reads the CA and revoked-keys files; an error names the file and line.
    pub fn open(s: KeyPolicySettings<'_>) -> Result<KeyPolicy, FileError> {
        Ok(KeyPolicy {
            certs: CertPolicy::new(s.trusted_user_ca_keys, s.principal_map, s.cert_leeway)?,
            revoked: s
                .revoked_keys
                .map(|p| Watched::open(p, RevocationList::load))
                .transpose()?,
            require_user_presence: s.require_user_presence,
        })
    }

    /// No certificates, no revocation list, presence required: what a gateway without those
    /// settings does.
    pub fn plain() -> KeyPolicy {
        KeyPolicy {
            certs: CertPolicy::new(None, PrincipalMap::default(), Duration::ZERO)
                .expect("no file to read"),
            revoked: None,
            require_user_presence: true,
        }
    }

    /// Whether certificates can log in.
    pub fn certificates_enabled(&self) -> bool {
        self.certs.enabled()
    }

    fn revocations(&self) -> Result<Option<std::sync::Arc<RevocationList>>, String> {
        match &self.revoked {
            None => Ok(None),
            // Fail closed, as sshd: an unreadable list refuses every key.
            Some(w) => w
                .get()
                .map(Some)
                .map_err(|e| format!("revoked_keys cannot be used, every key is refused: {e}")),
        }
    }

    /// Why a plain key may not log in at all (revoked), if it may not.
    pub fn key_refusal(&self, key: &KeyData) -> Option<String> {
        match self.revocations() {
            Err(e) => Some(e),
            Ok(Some(list)) if list.key_revoked(key) => Some("key is revoked (revoked_keys)".into()),
            Ok(_) => None,
        }
    }

    /// Checks a certificate (see [`CertPolicy::check`]) and its revocation.
    pub fn certificate(
        &self,
        cert: &Certificate,
        login: &str,
        remote: Option<IpAddr>,
        now: u64,
    ) -> Result<CertGrant, String> {
        let grant = self
            .certs
            .check(cert, login, remote, now)
            .map_err(|e| e.to_string())?;
        match self.revocations()? {
            Some(list) if list.cert_revoked(cert) => Err(CertRefusal::Revoked.to_string()),
            _ => Ok(grant),
        }
    }

    /// Checks a security-key signature's flags (`None`: not a security key, nothing to check).
    pub fn security_key(&self, flags: Option<u8>, req: SkRequirements) -> Result<(), &'static str> {
        let Some(flags) = flags else { return Ok(()) };
        if self.require_user_presence && !req.no_touch_required && flags & SK_USER_PRESENT == 0 {
            return Err("security key signature without user presence (the key was not touched; [ssh] require_user_presence)");
        }
        if req.verify_required && flags & SK_USER_VERIFIED == 0 {
            return Err("security key signature without user verification (verify-required)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_and_verification_flags() {
        let p = KeyPolicy::plain();
        let none = SkRequirements::default();
        assert!(p.security_key(None, none).is_ok());
        assert!(p.security_key(Some(SK_USER_PRESENT), none).is_ok());
        assert!(p.security_key(Some(0), none).is_err());
        let no_touch = SkRequirements {
            no_touch_required: true,
            ..none
        };
        assert!(p.security_key(Some(0), no_touch).is_ok());
        let verify = SkRequirements {
            verify_required: true,
            ..none
        };
        assert!(p.security_key(Some(SK_USER_PRESENT), verify).is_err());
        assert!(p
            .security_key(Some(SK_USER_PRESENT | SK_USER_VERIFIED), verify)
            .is_ok());
        let relaxed = KeyPolicy {
            require_user_presence: false,
            ..KeyPolicy::plain()
        };
        assert!(relaxed.security_key(Some(0), none).is_ok());
    }
}
