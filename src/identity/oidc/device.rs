//! The device authorization grant (RFC 8628): the code and URL a terminal shows, and the
//! polling until the user approves at the identity provider.

use super::*;

/// What the user is shown to approve a sign-in.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// Where to enter the code.
    pub verification_uri: String,
    /// The same with the code filled in (preferred when present).
    pub verification_uri_complete: Option<String>,
    /// The code.
    pub user_code: String,
    /// When the code stops working.
    pub expires_at: Instant,
    /// The initial polling interval.
    pub interval: Duration,
}

impl Challenge {
    /// The URL to show first (and encode in the QR code).
    pub fn best_uri(&self) -> &str {
        self.verification_uri_complete
            .as_deref()
            .unwrap_or(&self.verification_uri)
    }
}

#[derive(Deserialize)]
struct DeviceAuthResponse {
    device_code: SecretString,
    user_code: String,
    #[serde(alias = "verification_url")]
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    expires_in: u64,
    #[serde(default)]
    interval: Option<u64>,
}

/// A device sign-in the identity provider approved.
#[derive(Debug)]
pub struct Approved {
    /// Who signed in.
    pub identity: Identity,
    /// The refresh token, when the IdP issued one (`offline_access`).
    pub refresh_token: Option<SecretString>,
}

impl Oidc {
    /// Starts a device authorization (RFC 8628 §3.1).
    pub async fn start_device_flow(self: &Arc<Self>) -> Result<DeviceFlow, FlowError> {
        let d = self.current()?;
        let endpoint = d.device_endpoint.clone().ok_or(FlowError::NoDeviceFlow)?;
        let (status, body) = self
            .post_form(
                &endpoint,
                d.basic_auth,
                vec![("scope", self.settings.scopes.join(" "))],
            )
            .await
            .map_err(FlowError::Unreachable)?;
        if !status.is_success() {
            return Err(FlowError::Idp(describe_error(status, &body)));
        }
        let r: DeviceAuthResponse = serde_json::from_slice(&body).map_err(|e| {
            FlowError::Idp(format!("unreadable device authorization response: {e}"))
        })?;
        let interval = r
            .interval
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_INTERVAL);
        let challenge = Challenge {
            verification_uri: r.verification_uri,
            verification_uri_complete: r.verification_uri_complete,
            user_code: r.user_code,
            expires_at: Instant::now() + Duration::from_secs(r.expires_in.min(24 * 3600)),
            interval,
        };
        Ok(DeviceFlow {
            oidc: Arc::clone(self),
            device_code: r.device_code,
            challenge,
            interval,
            polls: 0,
        })
    }
}

/// One device authorization in progress.
pub struct DeviceFlow {
    oidc: Arc<Oidc>,
    device_code: SecretString,
    challenge: Challenge,
    interval: Duration,
    polls: u32,
}

/// What one poll found.
enum Poll {
    Pending,
    SlowDown,
    Done(Result<Approved, FlowError>),
    Failed(IdpError),
}

impl DeviceFlow {
    /// What to show the user.
    pub fn challenge(&self) -> &Challenge {
        &self.challenge
    }

    /// Polls at the IdP's pace until approval, denial, expiry or error.
    ///
    /// Polls once per interval (RFC 8628 §3.5), counted from the start of the previous poll,
    /// so that a slow token endpoint does not stretch the pace (approval still lands within
    /// one interval plus the endpoint's own time); adds 5 s on `slow_down`; stops at
    /// `expires_in`. Cancel it by dropping the future: nothing is polled after that.
    pub async fn wait(mut self) -> Result<Approved, FlowError> {
        let mut failures = 0;
        let mut last_start = Instant::now();
        loop {
            if Instant::now() >= self.challenge.expires_at {
                return Err(FlowError::Expired);
            }
            let wake = (last_start + self.interval).min(self.challenge.expires_at);
            tokio::time::sleep_until(wake.into()).await;
            if Instant::now() >= self.challenge.expires_at {
                return Err(FlowError::Expired);
            }
            self.polls += 1;
            last_start = Instant::now();
            match self.poll().await {
                Poll::Pending => failures = 0,
                Poll::SlowDown => {
                    failures = 0;
                    self.interval += SLOW_DOWN_STEP;
                    tracing::debug!(interval = ?self.interval, "identity provider asked to slow down");
                }
                Poll::Done(r) => {
                    tracing::debug!(polls = self.polls, "device flow finished");
                    return r;
                }
                Poll::Failed(e) => {
                    failures += 1;
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        failures,
                        "device flow poll failed"
                    );
                    if failures >= MAX_POLL_FAILURES {
                        return Err(FlowError::Unreachable(e));
                    }
                    // RFC 8628 §3.5: back off on connection problems.
                    self.interval = (self.interval * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn poll(&self) -> Poll {
        let d = match self.oidc.current() {
            Ok(d) => d,
            Err(_) => return Poll::Failed(IdpError::NotDiscovered),
        };
        let Some(token_endpoint) = d.token_endpoint.clone() else {
            return Poll::Done(Err(FlowError::Idp("no token endpoint".into())));
        };
        let params = vec![
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:device_code".to_owned(),
            ),
            ("device_code", self.device_code.expose_secret().to_owned()),
        ];
        let (status, body) = match self
            .oidc
            .post_form(&token_endpoint, d.basic_auth, params)
            .await
        {
            Ok(x) => x,
            Err(e) => return Poll::Failed(e),
        };
        if status.is_success() {
            let tokens: TokenResponse = match serde_json::from_slice(&body) {
                Ok(t) => t,
                Err(e) => {
                    return Poll::Done(Err(FlowError::Idp(format!(
                        "unreadable token response: {e}"
                    ))))
                }
            };
            let Some(id_token) = tokens.id_token else {
                return Poll::Done(Err(FlowError::Idp(
                    "no ID token in the answer (is the openid scope allowed for this client?)"
                        .into(),
                )));
            };
            let identity = self
                .oidc
                .identity_from_tokens(
                    &id_token,
                    tokens.access_token.as_ref(),
                    None,
                    AuthMethod::DeviceFlow,
                )
                .await;
            return Poll::Done(identity.map(|identity| Approved {
                identity,
                refresh_token: tokens.refresh_token,
            }));
        }
        if status.is_server_error() {
            return Poll::Failed(IdpError::Status(status));
        }
        match serde_json::from_slice::<OAuthError>(&body) {
            Ok(e) => match e.error.as_str() {
                "authorization_pending" => Poll::Pending,
                "slow_down" => Poll::SlowDown,
                "access_denied" => Poll::Done(Err(FlowError::Denied)),
                "expired_token" => Poll::Done(Err(FlowError::Expired)),
                other => Poll::Done(Err(FlowError::Idp(match e.error_description {
                    Some(d) => format!("{other}: {d}"),
                    None => other.to_owned(),
                }))),
            },
            Err(_) => Poll::Done(Err(FlowError::Idp(describe_error(status, &body)))),
        }
    }
}
