//! Who may hold which user id: an identity provider's users never get the id of a key-file user
//! (someone whose `<id>.keys` file the operator wrote) by choosing a claim value, unless the
//! operator links the two (`[oidc] linked_key_users`). Otherwise an IdP user who renames
//! themselves `alice` would get alice's `HERMES_HOME`, account and memory.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{AuthMethod, Identity, KeyRegistry, UserId};

/// The rule, with the live key registry.
#[derive(Debug)]
pub struct Namespaces {
    registry: Arc<KeyRegistry>,
    linked: BTreeSet<UserId>,
}

/// Why an identity may not have its id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the user id {0} belongs to a user of this gateway's key files; ask the operator to link the two accounts ([oidc] linked_key_users) or to give identity-provider users a prefix ([oidc] user_id_prefix)")]
pub struct NamespaceClash(pub UserId);

/// Claims many identity providers let users edit themselves: unfit to name a user.
pub const EDITABLE_CLAIMS: &[&str] = &[
    "preferred_username",
    "nickname",
    "name",
    "given_name",
    "family_name",
    "middle_name",
    "profile",
    "website",
];

impl Namespaces {
    /// Key-file users from `registry`; `linked` ids may also come from the identity provider.
    pub fn new(registry: Arc<KeyRegistry>, linked: impl IntoIterator<Item = UserId>) -> Namespaces {
        Namespaces {
            registry,
            linked: linked.into_iter().collect(),
        }
    }

    /// Whether `identity` may have its user id. Mapped-key identities always may (the key
    /// file is what defines them); anything vouched for by the identity provider (device flow,
    /// enrolled key, browser login) may not take a key-file user's id unless linked.
    pub fn admit(&self, identity: &Identity) -> Result<(), NamespaceClash> {
        if identity.method == AuthMethod::Key || self.linked.contains(&identity.user_id) {
            return Ok(());
        }
        if self.registry.snapshot().has_user(&identity.user_id) {
            return Err(NamespaceClash(identity.user_id.clone()));
        }
        Ok(())
    }
}
