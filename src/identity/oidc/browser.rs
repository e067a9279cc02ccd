//! The authorization-code flow with PKCE, for a browser login.

use super::*;

/// A browser login to start: send the user to `url`, remember the rest until the callback.
#[derive(Debug)]
pub struct AuthRequest {
    /// The IdP's authorization URL with every parameter.
    pub url: url::Url,
    /// `state` (CSRF protection of the callback).
    pub state: String,
    /// `nonce` (binds the ID token to this login).
    pub nonce: String,
    /// PKCE verifier (S256).
    pub pkce_verifier: SecretString,
}

impl Oidc {
    /// An authorization-code request with PKCE (S256), `state` and `nonce`, each from
    /// openidconnect's own random types.
    pub fn authorization_request(&self, redirect_uri: &str) -> Result<AuthRequest, FlowError> {
        let mut url = self.authorization_endpoint()?;
        let (challenge, verifier) = openidconnect::PkceCodeChallenge::new_random_sha256();
        let state = openidconnect::CsrfToken::new_random();
        let nonce = Nonce::new_random();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &self.settings.scopes.join(" "))
            .append_pair("state", state.secret())
            .append_pair("nonce", nonce.secret())
            .append_pair("code_challenge", challenge.as_str())
            .append_pair("code_challenge_method", challenge.method().as_str());
        Ok(AuthRequest {
            url,
            state: state.secret().to_owned(),
            nonce: nonce.secret().to_owned(),
            pkce_verifier: SecretString::from(verifier.secret().to_owned()),
        })
    }

    /// Redeems an authorization code and validates the ID token exactly as the device flow
    /// does (plus the `nonce`).
    pub async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &SecretString,
        redirect_uri: &str,
        nonce: &str,
    ) -> Result<Identity, FlowError> {
        let d = self.current()?;
        let Some(token_endpoint) = d.token_endpoint.clone() else {
            return Err(FlowError::Idp("no token endpoint".into()));
        };
        let params = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.to_owned()),
            ("redirect_uri", redirect_uri.to_owned()),
            ("code_verifier", pkce_verifier.expose_secret().to_owned()),
        ];
        let (status, body) = self
            .post_form(&token_endpoint, d.basic_auth, params)
            .await
            .map_err(FlowError::Unreachable)?;
        if !status.is_success() {
            return Err(FlowError::Idp(describe_error(status, &body)));
        }
        let tokens: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| FlowError::Idp(format!("unreadable token response: {e}")))?;
        let id_token = tokens
            .id_token
            .ok_or_else(|| FlowError::Idp("no ID token in the answer".into()))?;
        self.identity_from_tokens(
            &id_token,
            tokens.access_token.as_ref(),
            Some(&Nonce::new(nonce.to_owned())),
            AuthMethod::Web,
        )
        .await
    }
}
