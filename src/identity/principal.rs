//! Who is on the other end: an authenticated [`Identity`].

use std::fmt;

use serde::Serialize;

use super::UserId;

/// How the user proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// A public key mapped to the user in `users_dir/<id>.keys`.
    Key,
}

impl AuthMethod {
    /// The name used in logs, JSON and the environment.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Key => "key",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated principal. Only code that has checked a credential constructs one; anything
/// that launches a program takes an `Identity`, so nothing unauthenticated can ever be launched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The user id every program and log sees.
    pub user_id: UserId,
    /// Who vouched for the user: `"key"` for mapped keys, the IdP issuer for OIDC logins.
    pub provider: String,
    /// How the user authenticated.
    pub method: AuthMethod,
    /// SHA-256 fingerprint of the key used, when one was (`SHA256:…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
}

impl Identity {
    /// An identity proven by a mapped public key.
    pub fn from_mapped_key(user_id: UserId, fingerprint: String) -> Identity {
        Identity {
            user_id,
            provider: "key".into(),
            method: AuthMethod::Key,
            key_fingerprint: Some(fingerprint),
        }
    }

    /// One JSON line (what `ssh host whoami` prints).
    pub fn to_json_line(&self) -> String {
        // Serializing these plain fields cannot fail; fall back to a minimal object regardless.
        serde_json::to_string(self)
            .unwrap_or_else(|_| format!("{{\"user_id\":{:?}}}", self.user_id.as_str()))
    }
}
