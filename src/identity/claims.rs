//! From validated ID-token claims to a user id, with the operator's allow-lists.
//!
//! Shared by every OIDC login (the SSH device flow today, the web login later), so a user is
//! the same user whichever way they came in.

use serde_json::{Map, Value};

use super::{InvalidUserId, UserId};

/// The operator's mapping and admission rules (`[oidc]` in the config).
#[derive(Debug, Clone, Default)]
pub struct ClaimPolicy {
    /// The claim whose string value becomes the user id.
    pub user_id_claim: String,
    /// Prepended to that value.
    pub user_id_prefix: String,
    /// The claim listing groups.
    pub groups_claim: String,
    /// Non-empty: membership in one of these is required.
    pub allowed_groups: Vec<String>,
    /// Non-empty: a verified email in one of these domains is required.
    pub allowed_email_domains: Vec<String>,
}

/// Who the claims say the user is, once admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The user id.
    pub user_id: UserId,
    /// `email`, when present and verified.
    pub email: Option<String>,
    /// `name` (or `preferred_username`), when present.
    pub display_name: Option<String>,
    /// The groups claim, when present.
    pub groups: Vec<String>,
}

/// Why the claims do not admit a user. The text is shown to the user and logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The configured claim is absent or not a string.
    #[error("the identity provider did not send the claim {0:?} (needed for the user id)")]
    MissingClaim(String),
    /// The claim's value is not a valid user id.
    #[error("the claim {claim:?} is not a usable user id: {reason}")]
    InvalidUserId {
        /// The claim.
        claim: String,
        /// Why.
        reason: InvalidUserId,
    },
    /// Not a member of an allowed group.
    #[error("you are not in a group allowed to use this gateway")]
    NotInAllowedGroup,
    /// Email missing, unverified or in another domain.
    #[error("{0}")]
    EmailNotAllowed(String),
}

impl ClaimPolicy {
    /// The claims the policy reads; when one is missing from the ID token, userinfo may supply it.
    pub fn needed_claims(&self) -> Vec<&str> {
        let mut v = vec![self.user_id_claim.as_str()];
        if !self.allowed_groups.is_empty() {
            v.push(self.groups_claim.as_str());
        }
        if !self.allowed_email_domains.is_empty() || self.user_id_claim == "email" {
            v.push("email");
            v.push("email_verified");
        }
        v
    }

    /// Maps validated claims to a user, or says why not.
    pub fn map(&self, claims: &Map<String, Value>) -> Result<Mapped, Refusal> {
        let raw = claims
            .get(&self.user_id_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| Refusal::MissingClaim(self.user_id_claim.clone()))?;
        let email = claims
            .get("email")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let email_verified = match claims.get("email_verified") {
            Some(Value::Bool(b)) => *b,
            // Some IdPs send "true" as a string.
            Some(Value::String(s)) => s == "true",
            _ => false,
        };
        // An email that identifies or admits a user must be verified, or anyone could register
        // someone else's address at the IdP and become them here.
        if self.user_id_claim == "email" && !email_verified {
            return Err(Refusal::EmailNotAllowed(
                "your email address is not verified at the identity provider".into(),
            ));
        }
        if !self.allowed_email_domains.is_empty() {
            let Some(addr) = &email else {
                return Err(Refusal::EmailNotAllowed(
                    "the identity provider did not send your email address".into(),
                ));
            };
            if !email_verified {
                return Err(Refusal::EmailNotAllowed(
                    "your email address is not verified at the identity provider".into(),
                ));
            }
            let domain = addr.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
            let ok = domain.is_some_and(|d| {
                self.allowed_email_domains
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(&d))
            });
            if !ok {
                return Err(Refusal::EmailNotAllowed(format!(
                    "the email domain of {addr} is not allowed to use this gateway"
                )));
            }
        }
        let groups: Vec<String> = match claims.get(&self.groups_claim) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        // From here on the email is what the program may be told: only a verified one.
        let email = email.filter(|_| email_verified);
        if !self.allowed_groups.is_empty()
            && !groups.iter().any(|g| self.allowed_groups.contains(g))
        {
            return Err(Refusal::NotInAllowedGroup);
        }
        let user_id =
            UserId::parse(&format!("{}{raw}", self.user_id_prefix)).map_err(|reason| {
                Refusal::InvalidUserId {
                    claim: self.user_id_claim.clone(),
                    reason,
                }
            })?;
        let display_name = claims
            .get("name")
            .or_else(|| claims.get("preferred_username"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(Mapped {
            user_id,
            email,
            display_name,
            groups,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn policy() -> ClaimPolicy {
        ClaimPolicy {
            user_id_claim: "sub".into(),
            groups_claim: "groups".into(),
            ..Default::default()
        }
    }

    #[test]
    fn maps_the_configured_claim_with_prefix() {
        let c =
            claims(json!({"sub": "alice", "email": "a@x.org", "name": "Alice", "groups": ["g"]}));
        let m = policy().map(&c).unwrap();
        assert_eq!(m.user_id.as_str(), "alice");
        assert_eq!(m.display_name.as_deref(), Some("Alice"));
        let p = ClaimPolicy {
            user_id_claim: "preferred_username".into(),
            user_id_prefix: "corp:".into(),
            ..policy()
        };
        let c = claims(json!({"sub": "1", "preferred_username": "al"}));
        assert_eq!(p.map(&c).unwrap().user_id.as_str(), "corp:al");
    }

    #[test]
    fn missing_or_unsafe_claims_are_refused() {
        assert!(matches!(
            policy().map(&claims(json!({"email": "x"}))),
            Err(Refusal::MissingClaim(_))
        ));
        assert!(matches!(
            policy().map(&claims(json!({"sub": "../root"}))),
            Err(Refusal::InvalidUserId { .. })
        ));
        assert!(policy().map(&claims(json!({"sub": 42}))).is_err());
    }

    #[test]
    fn email_as_user_id_requires_verification() {
        let p = ClaimPolicy {
            user_id_claim: "email".into(),
            ..policy()
        };
        assert!(p
            .map(&claims(json!({"sub": "1", "email": "a@x.org"})))
            .is_err());
        assert!(p
            .map(&claims(
                json!({"sub": "1", "email": "a@x.org", "email_verified": true})
            ))
            .is_ok());
    }

    #[test]
    fn allow_lists() {
        let p = ClaimPolicy {
            allowed_groups: vec!["hermes".into()],
            allowed_email_domains: vec!["Example.com".into()],
            ..policy()
        };
        let ok = json!({"sub": "a", "email": "a@example.COM", "email_verified": true, "groups": ["x", "hermes"]});
        assert!(p.map(&claims(ok)).is_ok());
        let wrong_group =
            json!({"sub": "a", "email": "a@example.com", "email_verified": true, "groups": ["x"]});
        assert_eq!(p.map(&claims(wrong_group)), Err(Refusal::NotInAllowedGroup));
        let wrong_domain = json!({"sub": "a", "email": "a@evil.com", "email_verified": true, "groups": ["hermes"]});
        assert!(matches!(
            p.map(&claims(wrong_domain)),
            Err(Refusal::EmailNotAllowed(_))
        ));
        let unverified = json!({"sub": "a", "email": "a@example.com", "groups": ["hermes"]});
        assert!(matches!(
            p.map(&claims(unverified)),
            Err(Refusal::EmailNotAllowed(_))
        ));
        let suffix_trick = json!({"sub": "a", "email": "a@evil-example.com", "email_verified": true, "groups": ["hermes"]});
        assert!(p.map(&claims(suffix_trick)).is_err());
    }
}
