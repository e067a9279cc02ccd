//! Which `iss` an ID token must carry. Usually exactly the configured issuer; one documented
//! vendor quirk needs more:
//!
//! - Microsoft Entra ID's multi-tenant endpoints (`…/common/v2.0`, `…/organizations/v2.0`)
//!   publish the issuer `https://login.microsoftonline.com/{tenantid}/v2.0`: each token's `iss`
//!   names its own tenant, which is also its `tid` claim. Such an issuer serves every Entra
//!   tenant in the world, so the operator must list the tenants it admits
//!   (`[oidc] allowed_tenants`), and a token from any other is refused before its signature is
//!   even looked at.
//!
//! (Google documents `iss` as `https://accounts.google.com` *or* `accounts.google.com`; its
//! token endpoint issues the first form, the only one openidconnect can read.)
//!
//! The token's `iss` and `tid` are read unverified only to pick the issuer to verify against;
//! openidconnect then verifies the signature and that exact `iss`, and the signed `tid` must
//! be the one the choice was made with.

use base64::Engine as _;
use serde_json::Value;

/// The placeholder in Entra's multi-tenant discovery document.
pub const TENANT_PLACEHOLDER: &str = "{tenantid}";

/// The issuer ID tokens are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerRule {
    /// Exactly this issuer.
    Exact(String),
    /// A template with `{tenantid}`, filled from the token's `tid`, one of `tenants`.
    Tenant {
        /// `https://login.microsoftonline.com/{tenantid}/v2.0`.
        template: String,
        /// `[oidc] allowed_tenants`.
        tenants: Vec<String>,
    },
}

/// Why no issuer fits a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuerError {
    /// The token is not a readable JWT.
    #[error("the ID token is not a readable JWT")]
    Unreadable,
    /// A multi-tenant issuer's token without `tid`.
    #[error("the ID token names no tenant (tid)")]
    NoTenant,
    /// From a tenant the operator did not allow.
    #[error("tenant {0} is not in [oidc] allowed_tenants")]
    TenantNotAllowed(String),
}

impl IssuerRule {
    /// The rule for a discovery document that says `discovered` for the configured `issuer`;
    /// `Err` is the line the operator reads when they cannot go together.
    pub fn from_discovery(
        issuer: &str,
        discovered: &str,
        tenants: &[String],
    ) -> Result<IssuerRule, String> {
        let trimmed = discovered.trim_end_matches('/');
        if trimmed == issuer {
            return Ok(IssuerRule::Exact(issuer.to_owned()));
        }
        if trimmed.contains(TENANT_PLACEHOLDER) {
            if tenants.is_empty() {
                return Err(format!("{issuer} serves every tenant ({discovered}); set [oidc] allowed_tenants to the tenant ids (tid) that may sign in"));
            }
            return Ok(IssuerRule::Tenant {
                template: trimmed.to_owned(),
                tenants: tenants.to_vec(),
            });
        }
        Err(format!(
            "the discovery document names the issuer {discovered}, not {issuer}"
        ))
    }

    /// The issuer to verify `id_token` against, and the tenant it was chosen for.
    pub fn expected(&self, id_token: &str) -> Result<(String, Option<String>), IssuerError> {
        match self {
            IssuerRule::Exact(issuer) => Ok((issuer.clone(), None)),
            IssuerRule::Tenant { template, tenants } => {
                let claims = unverified_claims(id_token).ok_or(IssuerError::Unreadable)?;
                let tid = claims
                    .get("tid")
                    .and_then(Value::as_str)
                    .ok_or(IssuerError::NoTenant)?;
                if !tenants.iter().any(|t| t == tid) {
                    return Err(IssuerError::TenantNotAllowed(tid.to_owned()));
                }
                Ok((
                    template.replace(TENANT_PLACEHOLDER, tid),
                    Some(tid.to_owned()),
                ))
            }
        }
    }
}

/// The payload of a JWT, not verified.
fn unverified_claims(jwt: &str) -> Option<serde_json::Map<String, Value>> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: serde_json::Value) -> String {
        let b = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            b(b"{\"alg\":\"RS256\"}"),
            b(payload.to_string().as_bytes())
        )
    }

    #[test]
    fn entra_multi_tenant_needs_allowed_tenants_and_fills_the_template() {
        let common = "https://login.microsoftonline.com/common/v2.0";
        let template = "https://login.microsoftonline.com/{tenantid}/v2.0";
        assert!(IssuerRule::from_discovery(common, template, &[]).is_err());
        let rule = IssuerRule::from_discovery(common, template, &["t1".into()]).unwrap();
        let ok = jwt(serde_json::json!({"iss": "x", "tid": "t1"}));
        assert_eq!(
            rule.expected(&ok).unwrap(),
            (
                "https://login.microsoftonline.com/t1/v2.0".into(),
                Some("t1".into())
            )
        );
        let other = jwt(serde_json::json!({"tid": "t2"}));
        assert_eq!(
            rule.expected(&other),
            Err(IssuerError::TenantNotAllowed("t2".into()))
        );
        assert_eq!(
            rule.expected(&jwt(serde_json::json!({}))),
            Err(IssuerError::NoTenant)
        );
        assert_eq!(rule.expected("garbage"), Err(IssuerError::Unreadable));
    }

    #[test]
    fn an_exact_issuer_is_the_configured_one() {
        assert!(IssuerRule::from_discovery("https://a.example", "https://b.example", &[]).is_err());
        let rule =
            IssuerRule::from_discovery("https://a.example", "https://a.example/", &[]).unwrap();
        let t = jwt(serde_json::json!({"iss": "https://elsewhere.example"}));
        assert_eq!(
            rule.expected(&t).unwrap(),
            ("https://a.example".into(), None)
        );
    }
}
