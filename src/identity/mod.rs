//! The identity core: user ids, identities, the key registry, the identity provider, tickets
//! and the state nodes share.
//!
//! Both fronts (SSH and the web) use it, so it imports neither russh nor axum: keys are
//! `ssh_key` types, identities are plain data.

pub mod certs;
pub mod claims;
pub mod key_options;
pub mod key_policy;
pub mod keys;
pub mod limits;
pub mod namespace;
pub mod oidc;
pub mod principal;
pub mod recheck;
pub mod redis;
pub mod revoked;
pub mod shared;
pub mod store;
pub mod tickets;
pub mod user_id;
pub mod watched;

pub use keys::KeyRegistry;
pub use principal::{AuthMethod, Identity, IdentityField, Pending, ProvenKey};
pub use user_id::{InvalidUserId, UserId};
