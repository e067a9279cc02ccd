//! Per-connection authentication state, free of russh types so it can be unit-tested.
//!
//! russh does not enforce any ordering between methods, so the connection's state lives here:
//! a connection is `Unauthenticated` until a mapped key proves possession, then it holds an
//! [`Identity`] for good.

use std::sync::Arc;

use russh::keys::ssh_key::{HashAlg, PublicKey};

use crate::identity::{Identity, KeyRegistry};

/// What to answer the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Authentication succeeded with this identity.
    Accept(Identity),
    /// Refused; the reason is for the log only (the client just sees "denied").
    Reject(&'static str),
}

/// The auth state machine of one connection.
#[derive(Debug)]
pub struct Authenticator {
    registry: Arc<KeyRegistry>,
    identity: Option<Identity>,
}

impl Authenticator {
    /// A fresh, unauthenticated connection.
    pub fn new(registry: Arc<KeyRegistry>) -> Authenticator {
        Authenticator {
            registry,
            identity: None,
        }
    }

    /// The identity, once authenticated.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// A key was offered without a signature: is it worth the client's signing it?
    /// Only mapped keys are; answering "no" early saves both sides a signature.
    pub fn offered(&self, key: &PublicKey) -> Result<(), &'static str> {
        if self.identity.is_some() {
            return Err("already authenticated");
        }
        match self.registry.lookup(key) {
            Some(_) => Ok(()),
            None => Err("key is not mapped to any user"),
        }
    }

    /// The client proved possession of `key` (russh verified the signature).
    pub fn verified(&mut self, key: &PublicKey) -> Decision {
        if self.identity.is_some() {
            return Decision::Reject("already authenticated");
        }
        match self.registry.lookup(key) {
            Some(user) => {
                let id = Identity::from_mapped_key(user, fp(key));
                self.identity = Some(id.clone());
                Decision::Accept(id)
            }
            None => Decision::Reject("key is not mapped to any user"),
        }
    }
}

/// `SHA256:…` fingerprint of a public key.
pub fn fp(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}
