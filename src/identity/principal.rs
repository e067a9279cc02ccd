//! Who is on the other end: an authenticated [`Identity`], or a [`Pending`] connection that has
//! yet to sign in. They are different types on purpose: the launcher takes an `Identity`, so a
//! pending connection can never start a program.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::certs::CertificateInfo;
use super::limits::PendingPermit;
use super::UserId;

/// How the user proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// A public key mapped to the user in `users_dir/<id>.keys`.
    Key,
    /// The OIDC device flow, approved at the identity provider.
    DeviceFlow,
    /// A key bound to the user by an earlier device-flow sign-in.
    EnrolledKey,
    /// A browser login at the identity provider (authorization code + PKCE).
    Web,
    /// An OpenSSH user certificate signed by a trusted CA.
    Certificate,
}

impl AuthMethod {
    /// The name used in logs, JSON and the environment.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Key => "key",
            AuthMethod::DeviceFlow => "device-flow",
            AuthMethod::EnrolledKey => "enrolled-key",
            AuthMethod::Web => "web",
            AuthMethod::Certificate => "certificate",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated principal; anything that launches a program takes an `Identity`.
///
/// Who can make one: inside this crate only the identity core builds one (a mapped key, an
/// enrollment, the identity provider's verified token) or reads one back from a store it
/// wrote (tickets and enrollments, hence `Deserialize`); the fronts only receive them.
/// `#[non_exhaustive]` keeps code outside the crate from building one with a struct literal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Identity {
    /// The user id every program and log sees.
    pub user_id: UserId,
    /// Who vouched for the user: `"key"` for mapped keys, the IdP issuer for OIDC logins.
    pub provider: String,
    /// How the user authenticated.
    pub method: AuthMethod,
    /// SHA-256 fingerprint of the key used or bound, when there is one (`SHA256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// Email: verified by the IdP, or from the user's key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Display name from the IdP, or from the user's key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Groups from the IdP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The certificate that proved it (CA, serial, key id), for certificate logins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Box<CertificateInfo>>,
}

/// A detail of an identity that `[session] claims_env` can hand to the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityField {
    /// The display name (`name` claim, else `preferred_username`; `# name:` in a key file).
    Name,
    /// The email, only when verified (`email` with `email_verified`; `# email:` in a key file).
    Email,
    /// The groups claim, comma-separated.
    Groups,
}

impl Identity {
    /// The value of `field`, when the identity has one.
    pub fn field(&self, field: IdentityField) -> Option<String> {
        match field {
            IdentityField::Name => self.display_name.clone(),
            IdentityField::Email => self.email.clone(),
            IdentityField::Groups => (!self.groups.is_empty()).then(|| self.groups.join(",")),
        }
    }

    /// An identity proven by a mapped public key.
    pub fn from_mapped_key(user_id: UserId, fingerprint: String) -> Identity {
        Identity {
            user_id,
            provider: "key".into(),
            method: AuthMethod::Key,
            key_fingerprint: Some(fingerprint),
            email: None,
            display_name: None,
            groups: Vec::new(),
            certificate: None,
        }
    }

    /// An identity proven by a certificate of a trusted CA, for its key `fingerprint`.
    pub fn from_certificate(
        user_id: UserId,
        fingerprint: String,
        cert: CertificateInfo,
    ) -> Identity {
        Identity {
            provider: format!("ca:{}", cert.ca),
            method: AuthMethod::Certificate,
            certificate: Some(Box::new(cert)),
            ..Identity::from_mapped_key(user_id, fingerprint)
        }
    }
}

/// A key whose possession the client proved (a valid signature), but which maps to nobody yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenKey {
    /// `SHA256:…`.
    pub fingerprint: String,
}

/// A connection admitted only to sign in. It holds its slot in the pending limits until it
/// becomes an identity or goes away.
#[derive(Debug)]
pub struct Pending {
    /// The key the client proved, if any: the only key that may be bound after approval.
    pub proven_key: Option<ProvenKey>,
    /// Where the connection comes from.
    pub remote: Option<IpAddr>,
    /// The slot in the pending limits, released on drop.
    pub permit: PendingPermit,
    /// Why the proven key's enrollment just ended (the IdP's re-check), to tell the user.
    pub revoked: Option<String>,
}
