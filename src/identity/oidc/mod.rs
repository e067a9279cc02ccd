//! OpenID Connect: discovery, the device authorization grant (RFC 8628) and ID-token validation.
//!
//! `openidconnect` does the security-critical parts: discovery, JWKS, and ID-token verification
//! (signature, `iss`, `aud`, `exp`). The device-flow requests are small form posts written here,
//! because the gateway needs to control polling itself (honour `slow_down`, stop the moment the
//! client leaves, report each state to the user) — `oauth2`'s built-in loop polls first without
//! waiting and retries network errors silently until the code expires.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClientAuthMethod, CoreGenderClaim,
    CoreGrantType, CoreIdTokenVerifier, CoreJsonWebKey, CoreJsonWebKeySet,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, ClaimsVerificationError, ClientId, DeviceAuthorizationUrl,
    IdTokenClaims, IssuerUrl, JsonWebKeySetUrl, Nonce, ProviderMetadata,
    SignatureVerificationError,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::claims::{ClaimPolicy, Refusal};
use super::{AuthMethod, Identity};

mod browser;
mod device;
pub mod issuer;

use issuer::{IssuerError, IssuerRule};

pub use browser::AuthRequest;
pub use device::{Approved, Challenge, DeviceFlow};

/// RFC 8628 §3.2: the polling interval when the IdP sends none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// RFC 8628 §3.5: how much `slow_down` adds.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// JWKS is re-fetched for an unknown `kid` at most this often (a flood of forged kids must not
/// become a flood of requests to the IdP).
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
/// Consecutive failed polls (network, 5xx) tolerated before the sign-in fails.
const MAX_POLL_FAILURES: u32 = 3;

/// The operator's OIDC settings.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// Issuer URL.
    pub issuer: String,
    /// Client id.
    pub client_id: String,
    /// Client secret (confidential clients).
    pub client_secret: Option<SecretString>,
    /// Scopes requested.
    pub scopes: Vec<String>,
    /// Claim mapping and allow-lists.
    pub policy: ClaimPolicy,
    /// Clock skew tolerated.
    pub leeway: Duration,
    /// Tenants (`tid`) admitted by a multi-tenant issuer (Entra's `common`, `organizations`).
    pub allowed_tenants: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
struct ExtraMetadata {
    #[serde(default)]
    device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
}
impl AdditionalProviderMetadata for ExtraMetadata {}

type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// What discovery found.
pub(crate) struct Discovered {
    device_endpoint: Option<url::Url>,
    pub(crate) token_endpoint: Option<url::Url>,
    userinfo_endpoint: Option<url::Url>,
    authorization_endpoint: url::Url,
    jwks_uri: JsonWebKeySetUrl,
    jwks: RwLock<CoreJsonWebKeySet>,
    /// When the keys were last re-fetched for an unknown kid (None: never).
    jwks_fetched: Mutex<Option<Instant>>,
    algs: Vec<CoreJwsSigningAlgorithm>,
    pub(crate) basic_auth: bool,
    /// The `iss` tokens must carry.
    issuer: IssuerRule,
}

/// Why a sign-in did not produce an identity. `Display` is the one line the user sees.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// Discovery has not succeeded (yet) or the IdP does not answer.
    #[error("the identity provider is unreachable right now ({0}); try again in a minute")]
    Unreachable(#[source] IdpError),
    /// The IdP has no device authorization endpoint.
    #[error("the identity provider does not offer device sign-in")]
    NoDeviceFlow,
    /// The user denied the request at the IdP.
    #[error("sign-in was denied at the identity provider")]
    Denied,
    /// The code expired before approval.
    #[error("the sign-in code expired before it was approved; connect again for a new one")]
    Expired,
    /// The IdP answered with an error.
    #[error("the identity provider refused the sign-in: {0}")]
    Idp(String),
    /// The ID token failed validation (logged in detail; the user sees a summary).
    #[error("the identity provider's answer could not be verified")]
    InvalidToken(#[source] TokenError),
    /// Valid token, but the operator's rules do not admit the user.
    #[error("{0}")]
    NotAllowed(#[from] Refusal),
    /// The user cancelled.
    #[error("sign-in cancelled")]
    Cancelled,
    /// The user id names a key-file user the operator has not linked.
    #[error("{0}")]
    Clash(#[from] super::namespace::NamespaceClash),
}

/// The claims of an ID token that openidconnect has no field for (groups, a custom user-id
/// claim), kept as they came.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OtherClaims {
    #[serde(flatten)]
    rest: Map<String, Value>,
}

impl openidconnect::AdditionalClaims for OtherClaims {}

/// An ID token whose every claim survives verification.
type IdToken = openidconnect::IdToken<
    OtherClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

/// An error of the crates underneath (openidconnect's are generic over the HTTP client's).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the identity provider could not be reached or understood. The log shows the whole
/// chain of causes (the `source`s).
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    /// The HTTP client could not be built (TLS set-up).
    #[error("building the HTTP client")]
    Client(#[source] reqwest::Error),
    /// `[oidc] issuer` is not a URL.
    #[error("[oidc] issuer is not a URL")]
    Issuer(#[source] url::ParseError),
    /// The discovery document could not be fetched or read.
    #[error("fetching the discovery document")]
    Discovery(#[source] BoxError),
    /// The IdP signs with nothing we accept.
    #[error("the identity provider signs ID tokens with no asymmetric algorithm we accept")]
    NoAsymmetricAlgorithm,
    /// The signing keys could not be fetched or read.
    #[error("fetching the signing keys")]
    Keys(#[source] BoxError),
    /// A request to one of its endpoints failed.
    #[error("request to the identity provider")]
    Request(#[source] reqwest::Error),
    /// Discovery has not succeeded yet.
    #[error("discovery has not succeeded yet")]
    NotDiscovered,
    /// It answered with a server error.
    #[error("the identity provider answered {0}")]
    Status(reqwest::StatusCode),
    /// The discovery document's issuer does not go with the configured one.
    #[error("{0}")]
    IssuerMismatch(String),
}

/// Why an ID token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Signature, issuer, audience, expiry or nonce (openidconnect's verdict).
    #[error("the ID token failed verification")]
    Verification(#[source] ClaimsVerificationError),
    /// Signed with a key the IdP does not publish (even after fetching its keys again).
    #[error("no key of the identity provider matches the token")]
    NoMatchingKey,
    /// Issued to another client (`azp`).
    #[error("azp {0:?} is not this client")]
    OtherClient(String),
    /// Discovery has not succeeded yet.
    #[error("the identity provider is not discovered yet")]
    NotDiscovered,
    /// No issuer the token may come from (a tenant not allowed, for example).
    #[error("{0}")]
    Issuer(#[from] IssuerError),
}

/// The identity provider client, shared by every login.
pub struct Oidc {
    settings: OidcSettings,
    http: reqwest::Client,
    discovered: RwLock<Option<Arc<Discovered>>>,
    /// Cancelled once discovery has succeeded; waiters use it.
    ready: CancellationToken,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.settings.issuer)
            .field("client_id", &self.settings.client_id)
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Oidc {
    /// A client for `settings`; nothing is fetched until [`Oidc::discover`].
    pub fn new(settings: OidcSettings) -> Result<Arc<Oidc>, IdpError> {
        let http = reqwest::Client::builder()
            // Following redirects would let an IdP answer point us anywhere (SSRF).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(IdpError::Client)?;
        Ok(Arc::new(Oidc {
            settings,
            http,
            discovered: RwLock::new(None),
            ready: CancellationToken::new(),
        }))
    }

    /// The issuer (also the `provider` of identities it produces).
    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// Whether discovery has succeeded.
    pub fn is_ready(&self) -> bool {
        self.ready.is_cancelled()
    }

    pub(crate) fn current(&self) -> Result<Arc<Discovered>, FlowError> {
        let guard = self
            .discovered
            .read()
            .map_err(|_| FlowError::Unreachable(IdpError::NotDiscovered))?;
        guard
            .clone()
            .ok_or(FlowError::Unreachable(IdpError::NotDiscovered))
    }

    /// The discovery document, read as openidconnect's discovery does, except that the issuer
    /// it names is left to [`IssuerRule`] (Entra's multi-tenant template is not the URL asked).
    async fn fetch_metadata(&self) -> Result<Metadata, IdpError> {
        let url = format!("{}/.well-known/openid-configuration", self.settings.issuer);
        let url = url::Url::parse(&url).map_err(IdpError::Issuer)?;
        let resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| IdpError::Discovery(Box::new(e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(IdpError::Status(status));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| IdpError::Discovery(Box::new(e)))?;
        serde_json::from_slice(&body).map_err(|e| IdpError::Discovery(Box::new(e)))
    }

    /// Fetches the discovery document and the JWKS.
    pub async fn discover(&self) -> Result<(), IdpError> {
        let meta = self.fetch_metadata().await?;
        let rule = IssuerRule::from_discovery(
            &self.settings.issuer,
            meta.issuer().as_str(),
            &self.settings.allowed_tenants,
        )
        .map_err(IdpError::IssuerMismatch)?;
        let algs: Vec<CoreJwsSigningAlgorithm> = meta
            .id_token_signing_alg_values_supported()
            .iter()
            .filter(|a| is_asymmetric(a))
            .cloned()
            .collect();
        if algs.is_empty() {
            return Err(IdpError::NoAsymmetricAlgorithm);
        }
        let basic_auth = meta
            .token_endpoint_auth_methods_supported()
            .map(|m| m.contains(&CoreClientAuthMethod::ClientSecretBasic))
            .unwrap_or(true);
        let discovered = Discovered {
            device_endpoint: meta
                .additional_metadata()
                .device_authorization_endpoint
                .as_ref()
                .map(|u| u.url().clone()),
            token_endpoint: meta.token_endpoint().map(|u| u.url().clone()),
            userinfo_endpoint: meta.userinfo_endpoint().map(|u| u.url().clone()),
            authorization_endpoint: meta.authorization_endpoint().url().clone(),
            jwks_uri: meta.jwks_uri().clone(),
            jwks: RwLock::new(meta.jwks().clone()),
            jwks_fetched: Mutex::new(None),
            algs,
            basic_auth,
            issuer: rule,
        };
        // Discovery documents carry no keys; fetch them now so the first login is fast.
        let jwks = CoreJsonWebKeySet::fetch_async(&discovered.jwks_uri, &self.http)
            .await
            .map_err(|e| IdpError::Keys(Box::new(e)))?;
        if let Ok(mut k) = discovered.jwks.write() {
            *k = jwks;
        }
        if let Ok(mut d) = self.discovered.write() {
            *d = Some(Arc::new(discovered));
        }
        self.ready.cancel();
        Ok(())
    }

    /// Retries discovery in the background until it succeeds (or `shutdown`), so an IdP that is
    /// down at start does not stop the gateway: key logins work meanwhile.
    pub fn spawn_discovery(self: &Arc<Self>, shutdown: CancellationToken) {
        use backon::Retryable;
        let me = Arc::clone(self);
        tokio::spawn(async move {
            // 1 s, doubling, at most 30 s apart, for as long as it takes.
            let backoff = backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_secs(1))
                .with_max_delay(Duration::from_secs(30))
                .without_max_times();
            let issuer = me.settings.issuer.clone();
            let discovered = (|| me.discover())
                .retry(backoff)
                .sleep(tokio::time::sleep)
                .notify(|e: &IdpError, retry_in: Duration| {
                    tracing::warn!(issuer = %issuer, error = e as &dyn std::error::Error, ?retry_in, "identity provider discovery failed; device sign-in unavailable until it succeeds");
                });
            tokio::select! {
                _ = shutdown.cancelled() => {}
                r = discovered => if r.is_ok() {
                    tracing::info!(issuer = %me.settings.issuer, "identity provider discovered");
                },
            }
        });
    }

    /// The authorization endpoint (for a browser login).
    pub fn authorization_endpoint(&self) -> Result<url::Url, FlowError> {
        Ok(self.current()?.authorization_endpoint.clone())
    }

    pub(crate) async fn post_form(
        &self,
        url: &url::Url,
        basic_auth: bool,
        mut params: Vec<(&str, String)>,
    ) -> Result<(reqwest::StatusCode, bytes::Bytes), IdpError> {
        let mut req = self.http.post(url.clone());
        match &self.settings.client_secret {
            Some(secret) if basic_auth => {
                req = req.basic_auth(
                    form_encode(&self.settings.client_id),
                    Some(form_encode(secret.expose_secret())),
                );
            }
            Some(secret) => {
                params.push(("client_id", self.settings.client_id.clone()));
                params.push(("client_secret", secret.expose_secret().to_owned()));
            }
            None => params.push(("client_id", self.settings.client_id.clone())),
        }
        let resp = req
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&params)
            .send()
            .await
            .map_err(IdpError::Request)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(IdpError::Request)?;
        Ok((status, body))
    }

    /// Validates an ID token and returns all its claims.
    ///
    /// Checks: signature against the IdP's JWKS (asymmetric algorithms it advertises only, so
    /// `alg: none` and HMAC-with-the-public-key are refused), `iss`, `aud` (this client, no
    /// other audience), `azp` when present, `exp` and `iat` within the leeway, and `nonce` when
    /// one is expected. An unknown `kid` triggers one JWKS refresh.
    pub async fn verify_id_token(
        &self,
        id_token: &str,
        nonce: Option<&Nonce>,
    ) -> Result<Map<String, Value>, TokenError> {
        let d = self.current().map_err(|_| TokenError::NotDiscovered)?;
        let (issuer, tenant) = d.issuer.expected(id_token)?;
        let claims = match self.verify_with(&d, &issuer, id_token, nonce) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                if !self.refresh_jwks(&d).await {
                    return Err(TokenError::NoMatchingKey);
                }
                self.verify_with(&d, &issuer, id_token, nonce)
                    .map_err(TokenError::Verification)?
            }
            other => other.map_err(TokenError::Verification)?,
        };
        // The tenant was read unverified to choose the issuer; the signed one must agree.
        if let Some(tid) = tenant {
            let signed = claims
                .additional_claims()
                .rest
                .get("tid")
                .and_then(Value::as_str);
            if signed != Some(tid.as_str()) {
                return Err(TokenError::Issuer(IssuerError::NoTenant));
            }
        }
        if let Some(azp) = claims.authorized_party() {
            if **azp != self.settings.client_id {
                return Err(TokenError::OtherClient(azp.to_string()));
            }
        }
        // The verified claims as one JSON object: the standard ones openidconnect typed, and
        // every other one (groups, a custom user-id claim) kept by `OtherClaims`.
        match serde_json::to_value(&claims) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(TokenError::Verification(ClaimsVerificationError::Other(
                "the verified claims are not a JSON object".into(),
            ))),
        }
    }

    fn verify_with(
        &self,
        d: &Discovered,
        issuer: &str,
        id_token: &str,
        nonce: Option<&Nonce>,
    ) -> Result<IdTokenClaims<OtherClaims, CoreGenderClaim>, ClaimsVerificationError> {
        let token: IdToken = id_token
            .parse()
            .map_err(|e: serde_json::Error| ClaimsVerificationError::Other(e.to_string()))?;
        let jwks = d
            .jwks
            .read()
            .map_err(|_| ClaimsVerificationError::Other("jwks lock".into()))?
            .clone();
        let leeway = chrono::Duration::from_std(self.settings.leeway)
            .unwrap_or_else(|_| chrono::Duration::seconds(60));
        let verifier = CoreIdTokenVerifier::new_public_client(
            ClientId::new(self.settings.client_id.clone()),
            IssuerUrl::new(issuer.to_owned())
                .map_err(|e| ClaimsVerificationError::Other(e.to_string()))?,
            jwks,
        )
        .set_allowed_algs(d.algs.iter().cloned())
        // exp is compared with "now minus leeway", i.e. tolerated `leeway` past expiry.
        .set_time_fn(move || chrono::Utc::now() - leeway)
        .set_issue_time_verifier_fn(move |iat| {
            if iat > chrono::Utc::now() + leeway {
                Err(format!("issued in the future ({iat})"))
            } else {
                Ok(())
            }
        });
        let expected = nonce.cloned();
        let claims = token.claims(&verifier, move |got: Option<&Nonce>| {
            match (&expected, got) {
                (None, _) => Ok(()),
                (Some(want), Some(got)) if want.secret() == got.secret() => Ok(()),
                _ => Err("nonce mismatch".to_string()),
            }
        })?;
        Ok(claims.clone())
    }

    async fn refresh_jwks(&self, d: &Discovered) -> bool {
        {
            let Ok(mut last) = d.jwks_fetched.lock() else {
                return false;
            };
            if last.is_some_and(|t| t.elapsed() < JWKS_MIN_REFRESH) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match CoreJsonWebKeySet::fetch_async(&d.jwks_uri, &self.http).await {
            Ok(keys) => {
                tracing::info!("identity provider keys refreshed (unknown kid)");
                if let Ok(mut k) = d.jwks.write() {
                    *k = keys;
                }
                true
            }
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "refreshing the identity provider's keys failed"
                );
                false
            }
        }
    }

    /// Claims the policy needs but the ID token lacks, from the userinfo endpoint.
    async fn fill_from_userinfo(
        &self,
        claims: &mut Map<String, Value>,
        access_token: Option<&SecretString>,
    ) {
        let missing: Vec<String> = self
            .settings
            .policy
            .needed_claims()
            .into_iter()
            .filter(|c| !claims.contains_key(*c))
            .map(str::to_owned)
            .collect();
        if missing.is_empty() {
            return;
        }
        let (Some(token), Ok(d)) = (access_token, self.current()) else {
            return;
        };
        let Some(url) = d.userinfo_endpoint.clone() else {
            return;
        };
        let resp = self
            .http
            .get(url)
            .bearer_auth(token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await;
        let info: Map<String, Value> = match resp {
            Ok(r) if r.status().is_success() => match r.json().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "userinfo answer is not a JSON object (signed userinfo is not supported)");
                    return;
                }
            },
            Ok(r) => {
                tracing::warn!(status = %r.status(), "userinfo request refused");
                return;
            }
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "userinfo request failed"
                );
                return;
            }
        };
        // OIDC Core §5.3.2: the userinfo sub MUST match the ID token's, or it is someone else.
        if info.get("sub") != claims.get("sub") {
            tracing::warn!("userinfo sub differs from the ID token's; ignored");
            return;
        }
        for name in missing {
            if let Some(v) = info.get(&name) {
                claims.insert(name, v.clone());
            }
        }
    }

    /// Turns a token response into an identity: validate, fill from userinfo, map, admit.
    pub async fn identity_from_tokens(
        &self,
        id_token: &str,
        access_token: Option<&SecretString>,
        nonce: Option<&Nonce>,
        method: AuthMethod,
    ) -> Result<Identity, FlowError> {
        let mut claims = self
            .verify_id_token(id_token, nonce)
            .await
            .map_err(FlowError::InvalidToken)?;
        self.fill_from_userinfo(&mut claims, access_token).await;
        let mapped = self.settings.policy.map(&claims)?;
        Ok(Identity {
            user_id: mapped.user_id,
            provider: self.settings.issuer.clone(),
            method,
            key_fingerprint: None,
            email: mapped.email,
            display_name: mapped.display_name,
            groups: mapped.groups,
            certificate: None,
        })
    }
}

fn is_asymmetric(alg: &CoreJwsSigningAlgorithm) -> bool {
    use CoreJwsSigningAlgorithm as A;
    matches!(
        alg,
        A::RsaSsaPkcs1V15Sha256
            | A::RsaSsaPkcs1V15Sha384
            | A::RsaSsaPkcs1V15Sha512
            | A::RsaSsaPssSha256
            | A::RsaSsaPssSha384
            | A::RsaSsaPssSha512
            | A::EcdsaP256Sha256
            | A::EcdsaP384Sha384
            | A::EcdsaP521Sha512
            | A::EdDsa
    )
}

pub(crate) fn describe_error(status: reqwest::StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<OAuthError>(body) {
        Ok(e) => match e.error_description {
            Some(d) => format!("{}: {d}", e.error),
            None => e.error,
        },
        Err(_) => format!("HTTP {status}"),
    }
}

/// A token endpoint's answer (the parts read).
#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    pub(crate) id_token: Option<String>,
    pub(crate) access_token: Option<SecretString>,
    /// Present when the IdP granted `offline_access`: what re-checks an enrollment later.
    #[serde(default)]
    pub(crate) refresh_token: Option<SecretString>,
}

/// An OAuth error answer (RFC 6749 §5.2).
#[derive(Deserialize)]
pub(crate) struct OAuthError {
    pub(crate) error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// RFC 6749 §2.3.1: client credentials in Basic auth are form-encoded first.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
