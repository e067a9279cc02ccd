//! Re-checking an enrolled key's user with the identity provider.
//!
//! An enrollment lets a key log in without the IdP for `enroll_ttl`. When the sign-in that
//! bound it also brought a refresh token (`offline_access`), a login with the key at least
//! `[oidc] recheck_interval` after the IdP's last word renews the token: the IdP answers with a
//! fresh ID token, which goes through the same checks as a sign-in (signature, audience,
//! `allowed_groups`, email domains, the user id it maps to). A user the IdP no longer knows or
//! has disabled (the renewal is refused), or one the rules no longer admit, loses the
//! enrollment. An IdP that cannot be reached changes nothing: the binding still ends at its
//! expiry.

use std::sync::Arc;

use secrecy::{ExposeSecret as _, SecretString};

use super::oidc::{describe_error, FlowError, OAuthError, Oidc, TokenResponse};
use super::store::{unix_now, Enrollment, EnrollmentStore, RefreshToken};
use super::AuthMethod;

/// What a re-check decided about one login.
#[derive(Debug, PartialEq, Eq)]
pub enum Recheck {
    /// Not due, confirmed, or the IdP could not be asked: the login goes on.
    Admit,
    /// The IdP or the rules no longer vouch for the user: the enrollment was removed.
    Revoked {
        /// Why, for the user and the audit log.
        reason: String,
    },
    /// The enrollment ended while this login waited for another one's re-check.
    Gone,
}

/// Why the IdP did not confirm the user.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The IdP answered and said no, or its answer failed the sign-in checks.
    #[error("{0}")]
    Refused(String),
    /// The IdP could not be asked (network, server error, no discovery yet).
    #[error("{0}")]
    Unreachable(String),
}

/// Re-checks `enrollment` of key `fingerprint` when due; see the module documentation.
pub async fn recheck(
    oidc: &Arc<Oidc>,
    store: &Arc<dyn EnrollmentStore>,
    fingerprint: &str,
    enrollment: &Enrollment,
    interval: std::time::Duration,
) -> Recheck {
    if !enrollment.recheck_due(interval) {
        return Recheck::Admit;
    }
    // One re-check per key at a time: providers that rotate refresh tokens revoke the whole
    // grant when an old token is replayed, so two logins at once must not both renew.
    let flight = Flight::join(fingerprint);
    let _turn = flight.0.lock().await;
    // Another login may have renewed (and rotated) the token, or ended the enrollment, while
    // this one waited.
    let enrollment = match store.lookup(fingerprint).await {
        Ok(Some(e)) => e,
        Ok(None) => return Recheck::Gone,
        Err(e) => {
            tracing::error!(error = %e, "enrollment lookup failed");
            return Recheck::Gone;
        }
    };
    let enrollment = &enrollment;
    let Some(token) = enrollment
        .refresh_token
        .as_ref()
        .filter(|_| enrollment.recheck_due(interval))
    else {
        return Recheck::Admit;
    };
    match renew(oidc, token, enrollment).await {
        Ok((next, groups)) => {
            let mut updated = enrollment.clone();
            updated.checked_at = Some(unix_now());
            updated.groups = groups;
            // Providers that rotate refresh tokens invalidate the old one now.
            if let Some(t) = next {
                updated.refresh_token = Some(RefreshToken::new(t.expose_secret().to_owned()));
            }
            if let Err(e) = store.bind(fingerprint, updated).await {
                tracing::warn!(error = %e, "recording the re-check failed; the next login asks again");
            }
            tracing::info!(user = %enrollment.user_id, key = fingerprint, "enrolled key re-checked with the identity provider");
            Recheck::Admit
        }
        Err(Failure::Unreachable(detail)) => {
            tracing::warn!(user = %enrollment.user_id, key = fingerprint, detail, "cannot re-check an enrolled key with the identity provider; admitting it until its expiry");
            Recheck::Admit
        }
        Err(Failure::Refused(reason)) => {
            if let Err(e) = store.remove(fingerprint).await {
                tracing::error!(error = %e, "removing a refused enrollment failed");
            }
            tracing::warn!(user = %enrollment.user_id, key = fingerprint, reason, "enrollment revoked: the identity provider no longer vouches for the user");
            Recheck::Revoked { reason }
        }
    }
}

/// The re-check of one key in progress on this node; the last one out removes it.
struct Flight(Arc<tokio::sync::Mutex<()>>, String);

static FLIGHTS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
> = std::sync::LazyLock::new(Default::default);

impl Flight {
    fn join(fingerprint: &str) -> Flight {
        let mut map = FLIGHTS.lock().unwrap_or_else(|p| p.into_inner());
        let lock = map.entry(fingerprint.to_owned()).or_default().clone();
        Flight(lock, fingerprint.to_owned())
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut map = FLIGHTS.lock().unwrap_or_else(|p| p.into_inner());
        // Two holders: the map and this one, so nobody else waits.
        if Arc::strong_count(&self.0) <= 2 {
            map.remove(&self.1);
        }
    }
}

/// Renews the refresh token and checks the new ID token as a sign-in would; returns the
/// rotated refresh token, if the IdP issued one, and the user's groups as the token says.
async fn renew(
    oidc: &Arc<Oidc>,
    token: &RefreshToken,
    enrollment: &Enrollment,
) -> Result<(Option<SecretString>, Vec<String>), Failure> {
    let unreachable = |e: FlowError| Failure::Unreachable(e.to_string());
    let d = oidc.current().map_err(unreachable)?;
    let Some(endpoint) = d.token_endpoint.clone() else {
        return Err(Failure::Unreachable("no token endpoint".into()));
    };
    let params = vec![
        ("grant_type", "refresh_token".to_owned()),
        ("refresh_token", token.expose().to_owned()),
    ];
    let (status, body) = oidc
        .post_form(&endpoint, d.basic_auth, params)
        .await
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    if status.is_server_error() {
        return Err(Failure::Unreachable(format!("HTTP {status}")));
    }
    if !status.is_success() {
        let why = match serde_json::from_slice::<OAuthError>(&body) {
            Ok(e) => e.error,
            Err(_) => describe_error(status, &body),
        };
        return Err(Failure::Refused(format!(
            "your identity provider no longer accepts your sign-in ({why})"
        )));
    }
    let tokens: TokenResponse = serde_json::from_slice(&body)
        .map_err(|e| Failure::Unreachable(format!("unreadable token response: {e}")))?;
    let Some(id_token) = tokens.id_token else {
        // Nothing to check the rules against; the enrollment's expiry still holds.
        return Err(Failure::Unreachable(
            "the renewal brought no ID token".into(),
        ));
    };
    let identity = oidc
        .identity_from_tokens(
            &id_token,
            tokens.access_token.as_ref(),
            None,
            AuthMethod::EnrolledKey,
        )
        .await
        .map_err(|e| match e {
            FlowError::Unreachable(d) => Failure::Unreachable(d.to_string()),
            FlowError::InvalidToken(detail) => {
                Failure::Refused(format!("the renewed ID token was refused ({detail})"))
            }
            other => Failure::Refused(other.to_string()),
        })?;
    if identity.user_id != enrollment.user_id {
        return Err(Failure::Refused(format!(
            "the identity provider now names you {} instead of {}",
            identity.user_id, enrollment.user_id
        )));
    }
    Ok((tokens.refresh_token, identity.groups))
}
