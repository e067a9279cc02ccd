//! Browser login (authorization code + PKCE), sessions, tickets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{AppendHeaders, Html, IntoResponse, Redirect, Response};
use axum::Json;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::sessions::LoginAttempt;
use super::{escape, WebContext, INDEX_HTML, SIGNIN_HTML};
use crate::identity::limits::address_group;
use crate::identity::tickets::{random_token, token_hash, Purpose};
use crate::identity::Identity;

/// The session cookie's name on plain http (tests, loopback).
const SESSION_COOKIE: &str = "hermes_session";
/// The session cookie's name on https: the `__Host-` prefix makes browsers refuse one set by a
/// sibling (sub)domain or for another path, so nobody can plant a session in a user's browser.
const SESSION_COOKIE_HOST: &str = "__Host-hermes_session";
/// Binds a login in flight to the browser that started it (login CSRF: a callback URL sent
/// from another browser does not log this one in).
const LOGIN_COOKIE: &str = "hermes_login";
const LOGIN_COOKIE_HOST: &str = "__Host-hermes_login";
/// Logins started but not finished are forgotten after this.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// At most this many logins in flight (a flood of /auth/login cannot grow memory without bound).
const MAX_LOGINS: usize = 10_000;

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// A `Set-Cookie` value: host-only, HttpOnly, SameSite=Lax, `Secure` behind HTTPS.
fn build_cookie(name: &'static str, value: &str, max_age: Duration, secure: bool) -> String {
    cookie::Cookie::build((name, value.to_owned()))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(
            i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX),
        ))
        .secure(secure)
        .build()
        .to_string()
}

fn cookie_value(ctx: &WebContext, headers: &HeaderMap) -> Option<String> {
    let name = if ctx.secure_cookies() {
        SESSION_COOKIE_HOST
    } else {
        SESSION_COOKIE
    };
    cookie(headers, name)
}

/// The identity of the browser's session, if any.
pub(super) async fn session_identity(ctx: &WebContext, headers: &HeaderMap) -> Option<Identity> {
    ctx.sessions.get(&cookie_value(ctx, headers)?).await
}

fn set_cookie(ctx: &WebContext, value: &str, max_age: Duration) -> String {
    let name = if ctx.secure_cookies() {
        SESSION_COOKIE_HOST
    } else {
        SESSION_COOKIE
    };
    build_cookie(name, value, max_age, ctx.secure_cookies())
}

fn login_cookie_name(ctx: &WebContext) -> &'static str {
    if ctx.secure_cookies() {
        LOGIN_COOKIE_HOST
    } else {
        LOGIN_COOKIE
    }
}

fn set_login_cookie(ctx: &WebContext, value: &str, max_age: Duration) -> String {
    build_cookie(login_cookie_name(ctx), value, max_age, ctx.secure_cookies())
}

fn signin_page(ctx: &WebContext, message: &str, status: StatusCode) -> Response {
    let host = ctx
        .public_url
        .split("://")
        .nth(1)
        .and_then(|h| h.split(':').next())
        .unwrap_or("host");
    let msg = if message.is_empty() {
        String::new()
    } else {
        format!("<p id=\"message\">{}</p>", escape(message))
    };
    let page = SIGNIN_HTML
        .replace("{{MESSAGE}}", &msg)
        .replace("{{HOST}}", &escape(host));
    (status, Html(page)).into_response()
}

/// The shared state (Redis) did not answer: the browser is told, nothing is half done.
fn state_unreachable(ctx: &WebContext, e: &crate::identity::store::StoreError) -> Response {
    tracing::error!("browser sign-in needs the shared state: {e}");
    signin_page(
        ctx,
        "The gateway cannot reach its shared state right now; try again shortly.",
        StatusCode::SERVICE_UNAVAILABLE,
    )
}

/// `GET /`: the terminal when signed in, else a sign-in link.
pub async fn index(State(ctx): State<Arc<WebContext>>, headers: HeaderMap) -> Response {
    match session_identity(&ctx, &headers).await {
        Some(id) => Html(
            INDEX_HTML
                .replace("{{USER}}", &escape(id.user_id.as_str()))
                .replace("{{METHOD}}", id.method.as_str()),
        )
        .into_response(),
        None => signin_page(&ctx, "", StatusCode::OK),
    }
}

/// A banned address may not start or finish a browser login.
async fn refuse_banned(ctx: &WebContext, client: IpAddr) -> Option<Response> {
    ctx.bans.is_banned(client).await.then(|| {
        signin_page(
            ctx,
            "Too many failed sign-ins from your address; try again later.",
            StatusCode::FORBIDDEN,
        )
    })
}

/// `GET /auth/login`: to the IdP, with PKCE, state and nonce.
pub async fn login(
    State(ctx): State<Arc<WebContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let client = ctx.client_ip(peer, &headers);
    if let Some(refused) = refuse_banned(&ctx, client).await {
        return refused;
    }
    let Some(oidc) = &ctx.oidc else {
        return signin_page(
            &ctx,
            "No identity provider is configured for browser sign-in.",
            StatusCode::SERVICE_UNAVAILABLE,
        );
    };
    if ctx.sessions.logins_in_flight() >= MAX_LOGINS {
        tracing::warn!("too many browser logins in flight; refusing new ones");
        return signin_page(
            &ctx,
            "Too many sign-ins in progress; try again shortly.",
            StatusCode::SERVICE_UNAVAILABLE,
        );
    }
    match oidc.authorization_request(&ctx.redirect_uri()) {
        Ok(req) => {
            // One value per browser (kept across its logins, so two tabs both work).
            let binding = cookie(&headers, login_cookie_name(&ctx))
                .filter(|v| v.len() >= 32)
                .unwrap_or_else(|| random_token().expose_secret().to_owned());
            let attempt = LoginAttempt {
                nonce: req.nonce,
                verifier: req.pkce_verifier,
                expires: Instant::now() + LOGIN_TTL,
                browser: token_hash(&binding),
                group: address_group(client, ctx.limits.ipv6_prefix),
            };
            // One address cannot crowd everyone else out of the gateway-wide cap above.
            let begun = ctx
                .sessions
                .begin_login(req.state.clone(), attempt, ctx.max_logins_per_address)
                .await;
            let begun = match begun {
                Ok(b) => b,
                Err(e) => return state_unreachable(&ctx, &e),
            };
            if !begun {
                tracing::warn!(%peer, "refused: too many browser logins in flight from this address");
                return signin_page(
                    &ctx,
                    "Too many sign-ins in progress from your address; finish one or try again in a few minutes.",
                    StatusCode::TOO_MANY_REQUESTS,
                );
            }
            (
                [(
                    header::SET_COOKIE,
                    set_login_cookie(&ctx, &binding, LOGIN_TTL),
                )],
                Redirect::to(req.url.as_str()),
            )
                .into_response()
        }
        Err(e) => signin_page(&ctx, &e.to_string(), StatusCode::SERVICE_UNAVAILABLE),
    }
}

/// The IdP's answer.
#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /auth/callback`: checks `state`, redeems the code (PKCE), validates the ID token like the
/// device flow (plus `nonce`), applies the same claim mapping and allow-lists, starts a session.
pub async fn callback(
    State(ctx): State<Arc<WebContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let client = ctx.client_ip(peer, &headers);
    if let Some(refused) = refuse_banned(&ctx, client).await {
        return refused;
    }
    match finish_login(&ctx, client, &headers, q).await {
        Ok(page) => page,
        Err((page, reason)) => {
            login_failed(&ctx, client, reason).await;
            page
        }
    }
}

/// A refused browser login: its page, and the reason for the audit log.
type LoginRefusal = (Response, String);

/// A failed browser login is audited and counts toward the address's ban, like a failed SSH
/// login.
async fn login_failed(ctx: &WebContext, client: IpAddr, reason: String) {
    ctx.ops.emit(crate::ops::Event::Auth {
        user: None,
        method: crate::ops::Method::Web,
        key: None,
        remote: Some(client),
        failure: Some(reason),
        certificate: None,
    });
    if ctx.bans.failure(client).await {
        tracing::warn!(ip = %client, "address banned after repeated failed logins");
    }
}

async fn finish_login(
    ctx: &Arc<WebContext>,
    client: IpAddr,
    headers: &HeaderMap,
    q: CallbackQuery,
) -> Result<Response, LoginRefusal> {
    let refuse = |msg: &str, status: StatusCode, reason: &str| -> LoginRefusal {
        (signin_page(ctx, msg, status), reason.to_owned())
    };
    let Some(oidc) = &ctx.oidc else {
        return Ok(StatusCode::NOT_FOUND.into_response());
    };
    if let Some(err) = q.error {
        let detail = q.error_description.unwrap_or_default();
        tracing::info!(error = %err, detail, "browser login refused at the identity provider");
        return Err(refuse(
            &format!("Sign-in was refused: {err}"),
            StatusCode::FORBIDDEN,
            &format!("refused at the identity provider: {err}"),
        ));
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return Err(refuse(
            "Incomplete answer from the identity provider.",
            StatusCode::BAD_REQUEST,
            "incomplete callback",
        ));
    };
    // The state is single use: taking it out makes a replayed callback fail.
    let Some(attempt) = ctx.sessions.take_login(&state).await else {
        tracing::warn!("browser login callback with an unknown or used state");
        return Err(refuse(
            "This sign-in link is no longer valid; sign in again.",
            StatusCode::BAD_REQUEST,
            "unknown or used state",
        ));
    };
    // The callback must come back to the browser that started the login: a callback URL
    // opened anywhere else (sent by an attacker who stopped at it) logs nobody in.
    let same_browser =
        cookie(headers, login_cookie_name(ctx)).is_some_and(|b| token_hash(&b) == attempt.browser);
    if !same_browser {
        tracing::warn!("refused: browser login callback from a browser that did not start it");
        return Err(refuse(
            "This sign-in was started in another browser. Sign in again from this one.",
            StatusCode::FORBIDDEN,
            "callback from another browser (login CSRF)",
        ));
    }
    if attempt.expires <= Instant::now() {
        return Err(refuse(
            "The sign-in took too long; sign in again.",
            StatusCode::BAD_REQUEST,
            "login expired",
        ));
    }
    let exchanged = oidc
        .exchange_code(
            &code,
            &attempt.verifier,
            &ctx.redirect_uri(),
            &attempt.nonce,
        )
        .await;
    // An IdP user never gets a key-file user's id by choosing a claim value.
    let exchanged = exchanged.and_then(|id| {
        ctx.namespaces.admit(&id)?;
        Ok(id)
    });
    match exchanged {
        Ok(identity) => {
            tracing::info!(user = %identity.user_id, method = %identity.method, provider = %identity.provider, "browser signed in");
            ctx.ops.emit(crate::ops::Event::Auth {
                user: Some(identity.user_id.clone()),
                method: crate::ops::Method::Web,
                key: None,
                remote: Some(client),
                failure: None,
                certificate: None,
            });
            ctx.bans.success(client).await;
            let token = match ctx.sessions.create(identity, ctx.session_ttl).await {
                Ok(t) => t,
                Err(e) => return Ok(state_unreachable(ctx, &e)),
            };
            Ok((
                AppendHeaders([
                    (
                        header::SET_COOKIE,
                        set_cookie(ctx, token.expose_secret(), ctx.session_ttl),
                    ),
                    (
                        header::SET_COOKIE,
                        set_login_cookie(ctx, "", Duration::ZERO),
                    ),
                ]),
                Redirect::to("/"),
            )
                .into_response())
        }
        Err(e) => {
            if let crate::identity::oidc::FlowError::InvalidToken(detail) = &e {
                tracing::warn!(
                    detail = detail as &dyn std::error::Error,
                    "ID token refused (browser login)"
                );
            }
            tracing::info!(reason = %e, "browser login failed");
            Err(refuse(
                &e.to_string(),
                StatusCode::FORBIDDEN,
                &e.to_string(),
            ))
        }
    }
}

/// `POST /auth/logout`.
pub async fn logout(State(ctx): State<Arc<WebContext>>, headers: HeaderMap) -> Response {
    if !ctx.same_origin(&headers) {
        tracing::warn!("refused: logout from a foreign origin");
        return StatusCode::FORBIDDEN.into_response();
    }
    if let Some(c) = cookie_value(&ctx, &headers) {
        if let Err(e) = ctx.sessions.remove(&c).await {
            tracing::error!("logout could not end the session in the shared state: {e}");
            return signin_page(
                &ctx,
                "Sign-out failed: the gateway cannot reach its shared state. Try again.",
                StatusCode::SERVICE_UNAVAILABLE,
            );
        }
    }
    (
        [(header::SET_COOKIE, set_cookie(&ctx, "", Duration::ZERO))],
        Redirect::to("/"),
    )
        .into_response()
}

/// `GET /api/auth/me`: the session's identity as JSON.
pub async fn me(State(ctx): State<Arc<WebContext>>, headers: HeaderMap) -> Response {
    match session_identity(&ctx, &headers).await {
        Some(id) => Json(id).into_response(),
        None => json_error(StatusCode::UNAUTHORIZED, "not signed in"),
    }
}

/// `GET /api/sessions`: the signed-in user's sessions (started in a browser or over SSH), as
/// `ssh host sessions` lists them; open one with a ticket from `ws-ticket {"session": ID}`.
pub async fn sessions(State(ctx): State<Arc<WebContext>>, headers: HeaderMap) -> Response {
    match session_identity(&ctx, &headers).await {
        Some(id) => {
            let list: Vec<_> = ctx
                .hub
                .of_user(&id.user_id)
                .iter()
                .map(|s| s.describe())
                .collect();
            Json(list).into_response()
        }
        None => json_error(StatusCode::UNAUTHORIZED, "not signed in"),
    }
}

/// Body of `POST /api/auth/ws-ticket`: empty or `{}` for a new session, `{"session": "ID"}` to
/// open one of the user's running sessions.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WsTicketRequest {
    session: Option<String>,
}

fn json_error(status: StatusCode, error: &str) -> Response {
    (status, Json(serde_json::json!({ "error": error }))).into_response()
}

/// `POST /api/auth/ws-ticket`: a short-lived, single-use ticket for `/api/pty`, for the session
/// cookie's identity (the same shape as the Hermes dashboard's), bound to one running session of
/// the user's when the body names one.
pub async fn ws_ticket(
    State(ctx): State<Arc<WebContext>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // CSRF: the cookie is SameSite=Lax, and a state-changing POST must come from our own pages.
    if !ctx.same_origin(&headers) {
        tracing::warn!("refused: ws-ticket request from a foreign origin");
        return json_error(StatusCode::FORBIDDEN, "forbidden");
    }
    let Some(identity) = session_identity(&ctx, &headers).await else {
        return json_error(StatusCode::UNAUTHORIZED, "not signed in");
    };
    let request: WsTicketRequest = if body.iter().all(u8::is_ascii_whitespace) {
        WsTicketRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(_) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    r#"the body must be {} or {"session": "ID"}"#,
                )
            }
        }
    };
    // Checked now so the page can say so at once; checked again when the ticket is redeemed.
    if let Some(id) = request.session.as_deref() {
        if ctx.hub.own(&identity.user_id, id).is_none() {
            return json_error(StatusCode::NOT_FOUND, "no such session of yours");
        }
    }
    match ctx
        .tickets
        .mint(
            &identity,
            Purpose::Pty,
            request.session.as_deref(),
            ctx.ticket_ttl,
        )
        .await
    {
        Ok(t) => Json(serde_json::json!({
            "ticket": t.expose_secret(),
            "ttl_seconds": ctx.ticket_ttl.as_secs(),
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(reason = %e, "minting a ticket failed");
            json_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    }
}

fn invalid_link(ctx: &WebContext) -> Response {
    signin_page(
        ctx,
        "This link is invalid or has expired. Run `link` again.",
        StatusCode::FORBIDDEN,
    )
}

/// `?t=…` (a query on GET, a form field on POST).
#[derive(Deserialize)]
pub struct TicketQuery {
    t: Option<String>,
}

/// A session id as `ssh host sessions` prints them (it goes into a URL).
fn is_session_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `GET /auth/ticket?t=…`: the SSH → browser hand-off (`ssh host link`). A link can be sent to
/// anyone, so opening it logs nobody in: the page names the account and asks first.
pub async fn ticket_confirm(
    State(ctx): State<Arc<WebContext>>,
    Query(q): Query<TicketQuery>,
) -> Response {
    let token = q.t.unwrap_or_default();
    match ctx.tickets.peek(&token, Purpose::WebLogin).await {
        Ok(identity) => {
            let page = format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>Hermes</title></head><body>\
<h1>Continue as {user}?</h1>\
<p>This link signs this browser in as <b>{user}</b>, the account that ran <code>link</code> over SSH. \
Continue only if you ran it yourself.</p>\
<form method=\"post\" action=\"/auth/ticket\"><input type=\"hidden\" name=\"t\" value=\"{t}\">\
<button id=\"continue\" type=\"submit\">Continue as {user}</button></form></body></html>",
                user = escape(identity.user_id.as_str()),
                t = escape(&token),
            );
            (
                [
                    (header::CACHE_CONTROL, "no-store"),
                    // The ticket in this page's URL must not leak to other sites, but the form's
                    // POST must carry our Origin: with "no-referrer" browsers send `Origin: null`
                    // and the same-origin check refuses the login (a real browser could not
                    // complete `ssh host link`; headless Chromium showed it).
                    (header::REFERRER_POLICY, "same-origin"),
                ],
                Html(page),
            )
                .into_response()
        }
        Err(reason) => {
            tracing::warn!(%reason, "refused: web-login ticket");
            invalid_link(&ctx)
        }
    }
}

/// `POST /auth/ticket` (form `t`), from the confirmation page only (same origin): redeems the
/// ticket and logs the browser in.
pub async fn ticket_login(
    State(ctx): State<Arc<WebContext>>,
    headers: HeaderMap,
    axum::Form(q): axum::Form<TicketQuery>,
) -> Response {
    if !ctx.same_origin(&headers) {
        tracing::warn!("refused: web-login ticket posted from a foreign origin");
        return StatusCode::FORBIDDEN.into_response();
    }
    let token = q.t.unwrap_or_default();
    let consumed = ctx.tickets.consume(&token, Purpose::WebLogin).await;
    ctx.ops.emit(crate::ops::Event::Ticket {
        op: crate::ops::TicketOp::Consume,
        purpose: Purpose::WebLogin,
        ok: consumed.is_ok(),
    });
    match consumed {
        Ok(redeemed) => {
            // `ssh host link ID`: the browser lands on that session.
            let landing = match redeemed.session.filter(|id| is_session_id(id)) {
                Some(id) => format!("/?session={id}"),
                None => "/".to_owned(),
            };
            let identity = redeemed.identity;
            tracing::info!(user = %identity.user_id, method = %identity.method, "browser signed in with an ssh link");
            let session = match ctx.sessions.create(identity, ctx.session_ttl).await {
                Ok(t) => t,
                Err(e) => return state_unreachable(&ctx, &e),
            };
            (
                [(
                    header::SET_COOKIE,
                    set_cookie(&ctx, session.expose_secret(), ctx.session_ttl),
                )],
                Redirect::to(&landing),
            )
                .into_response()
        }
        Err(reason) => {
            tracing::warn!(%reason, "refused: web-login ticket");
            invalid_link(&ctx)
        }
    }
}
