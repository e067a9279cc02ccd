//! `[oidc]`: the identity provider for device and browser sign-in.

use std::time::Duration;

use serde::Deserialize;

/// `[oidc]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL (https; http only for loopback addresses, for testing).
    pub issuer: IssuerUrl,
    /// The client id registered at the IdP (allowed the device grant).
    pub client_id: String,
    /// Secret of a confidential client (omit for a public client). Never logged.
    #[serde(default)]
    pub client_secret: Option<secrecy::SecretString>,
    /// Scopes requested.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The claim that becomes the user id (`sub`, `email`, `preferred_username`, any string claim).
    #[serde(default = "default_user_id_claim")]
    pub user_id_claim: String,
    /// Prepended to the claim's value, e.g. `"corp:"`.
    #[serde(default)]
    pub user_id_prefix: String,
    /// User ids that may be both a key-file user and an identity-provider user (the same
    /// person); any other identity-provider user whose id names a key-file user is refused.
    #[serde(default)]
    pub linked_key_users: Vec<String>,
    /// The claim holding the user's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// When non-empty, only members of one of these groups may sign in.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// When non-empty, only verified emails in these domains may sign in.
    #[serde(default)]
    pub allowed_email_domains: Vec<String>,
    /// The tenants (`tid`) a multi-tenant issuer admits: Microsoft Entra ID's `…/common/v2.0`
    /// or `…/organizations/v2.0` serves every tenant, so the gateway needs this to use one.
    #[serde(default)]
    pub allowed_tenants: Vec<String>,
    /// How long a key proven during a device login stays bound to the user ("0s": never bound).
    #[serde(default = "default_enroll_ttl", with = "humantime_serde")]
    pub enroll_ttl: Duration,
    /// An enrolled key's login asks the IdP about its user again (with the refresh token of
    /// the sign-in that bound it) when the IdP's last word is this old. Needs `offline_access`
    /// in `scopes`; "0s": at every login.
    #[serde(default = "default_recheck_interval", with = "humantime_serde")]
    pub recheck_interval: Duration,
    /// Clock skew tolerated on `exp`/`iat`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Most connections waiting to sign in, overall.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Most connections waiting to sign in from one source address.
    #[serde(default = "default_max_pending_per_ip")]
    pub max_pending_per_ip: usize,
    /// A connection still signing in after this long is closed (the device code's own expiry
    /// ends a sign-in earlier when it is shorter).
    #[serde(default = "default_pending_timeout", with = "humantime_serde")]
    pub pending_timeout: Duration,
}

impl OidcConfig {
    /// Why enrolled keys would never be re-checked with the IdP, if that is the case.
    pub fn recheck_warning(&self) -> Option<String> {
        (!self.enroll_ttl.is_zero() && !self.scopes.iter().any(|s| s == "offline_access")).then(|| {
            format!(
                "[oidc] scopes has no \"offline_access\": the IdP issues no refresh token, so an enrolled key logs in for its whole enroll_ttl ({}) even after the user is disabled or leaves allowed_groups; add it to re-check users every recheck_interval",
                humantime::format_duration(self.enroll_ttl)
            )
        })
    }
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}
fn default_user_id_claim() -> String {
    "sub".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_enroll_ttl() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_recheck_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_leeway() -> Duration {
    Duration::from_secs(60)
}
fn default_max_pending() -> usize {
    64
}
fn default_max_pending_per_ip() -> usize {
    4
}
fn default_pending_timeout() -> Duration {
    Duration::from_secs(10 * 60)
}

/// An issuer URL: https, or http on a loopback address (for local testing only).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IssuerUrl(pub url::Url);

impl TryFrom<String> for IssuerUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let u = url::Url::parse(&s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        let loopback = match u.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        match u.scheme() {
            "https" => Ok(IssuerUrl(u)),
            "http" if loopback => Ok(IssuerUrl(u)),
            _ => Err(format!(
                "{s:?}: the issuer must use https (http is accepted only on a loopback address)"
            )),
        }
    }
}

impl From<&OidcConfig> for crate::identity::oidc::OidcSettings {
    fn from(o: &OidcConfig) -> Self {
        crate::identity::oidc::OidcSettings {
            issuer: o.issuer.0.as_str().trim_end_matches('/').to_owned(),
            client_id: o.client_id.clone(),
            client_secret: o.client_secret.clone(),
            scopes: o.scopes.clone(),
            policy: crate::identity::claims::ClaimPolicy {
                user_id_claim: o.user_id_claim.clone(),
                user_id_prefix: o.user_id_prefix.clone(),
                groups_claim: o.groups_claim.clone(),
                allowed_groups: o.allowed_groups.clone(),
                allowed_email_domains: o.allowed_email_domains.clone(),
            },
            leeway: o.leeway,
            allowed_tenants: o.allowed_tenants.clone(),
        }
    }
}
