//! The big identity providers' device flows, each as its vendor documents it, proven against
//! the test IdP (oidc-provider) switched into that vendor's behaviour (tests/idp/server.mjs,
//! `VENDOR=…`), with the real OpenSSH client in a real PTY. The README's per-IdP sections
//! describe the same settings.

mod common;

use std::time::{Duration, Instant};

use common::idp::{find_complete_uri, oidc_section, Idp};
use common::*;

const PROGRAM: &str = "[session]\ncommand = [\"/bin/sh\", \"-c\", \"echo PROGRAM-STARTED ID=$HERMES_DASHBOARD_USER_ID; sleep 1\"]\n";

struct Setup {
    tmp: tempfile::TempDir,
    idp: Idp,
    gw: Gateway,
}

/// A gateway on the IdP started with `idp_env`; `oidc` is the whole `[oidc]` section.
fn setup(idp_env: &[(&str, &str)], oidc: impl Fn(&str) -> String) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let idp = Idp::start(idp_env);
    let gw = Gateway::start(
        tmp.path(),
        &config("", &format!("{PROGRAM}{}", oidc(&idp.issuer))),
    );
    assert!(
        gw.wait_log("identity provider discovered", T).is_some(),
        "{}",
        gw.log()
    );
    Setup { tmp, idp, gw }
}

/// The URL and code of a screen without a complete URL: "Go to URL and enter  CODE".
fn url_and_code(screen: &str) -> Option<(String, String)> {
    let line = screen.lines().find(|l| l.contains("Go to "))?;
    let rest = line.split("Go to ").nth(1)?;
    let mut words = rest.split_whitespace();
    let url = words.next()?.to_owned();
    let code = rest
        .split("enter")
        .nth(1)?
        .split_whitespace()
        .next()?
        .to_owned();
    Some((url, code))
}

/// Signs in as `user` on a screen that shows only the URL and the code (Google, Entra ID): the
/// QR code encodes the plain URL; the person types the code.
fn sign_in_with_code(s: &Setup, user: &str) -> PtyClient {
    let key = Keypair::new(s.tmp.path(), &format!("k-{user}"));
    let c = PtyClient::spawn(&s.gw.signin_args(&key, &[]), 120, 50);
    assert!(
        c.expect_screen("and enter", T),
        "{}\n{}",
        c.screen(),
        s.gw.log()
    );
    let screen = c.screen();
    assert!(!screen.contains("user_code="), "no complete URL: {screen}");
    let (url, code) = url_and_code(&screen).unwrap_or_else(|| panic!("{screen}"));
    assert_eq!(
        c.decode_qr().as_deref(),
        Some(url.as_str()),
        "QR = the plain URL"
    );
    s.idp.approve(&format!("{url}?user_code={code}"), user);
    c
}

#[test]
fn google_verification_url_no_complete_uri_and_a_client_secret_when_polling() {
    let oidc = |issuer: &str| {
        format!(
            "[oidc]\nissuer = \"{issuer}\"\nclient_id = \"hermes-confidential\"\nclient_secret = \"test-secret-please-change\"\nscopes = [\"openid\", \"email\", \"profile\"]\nuser_id_claim = \"email\"\n"
        )
    };
    let s = setup(&[("VENDOR", "google")], oidc);
    let c = sign_in_with_code(&s, "alice");
    assert!(
        c.expect("PROGRAM-STARTED ID=alice@example.com", T),
        "{}",
        c.output()
    );

    // The same client without its secret: the IdP refuses it, and the user is told why.
    let s2 = setup(&[("VENDOR", "google")], |issuer| {
        format!("[oidc]\nissuer = \"{issuer}\"\nclient_id = \"hermes-confidential\"\n")
    });
    let key = Keypair::new(s2.tmp.path(), "k");
    let c = PtyClient::spawn(&s2.gw.signin_args(&key, &[]), 120, 50);
    assert!(c.expect("invalid_client", T), "{}", c.output());
}

#[test]
fn entra_id_multi_tenant_issuer_message_and_no_complete_uri() {
    let tenant = "11111111-2222-3333-4444-555555555555";
    let oidc = |issuer: &str| {
        format!(
            "[oidc]\nissuer = \"{issuer}/common/v2.0\"\nclient_id = \"hermes-gateway\"\nscopes = [\"openid\", \"email\", \"profile\", \"offline_access\"]\nuser_id_claim = \"preferred_username\"\nallowed_tenants = [\"{tenant}\"]\n"
        )
    };
    let s = setup(&[("VENDOR", "entra")], oidc);
    let c = sign_in_with_code(&s, "alice");
    assert!(c.expect("PROGRAM-STARTED ID=alice", T), "{}", c.output());

    // A token from another tenant (same issuer template, same keys) is refused.
    s.idp
        .configure(serde_json::json!({"tenant": "99999999-0000-0000-0000-000000000000"}));
    let c = sign_in_with_code(&s, "bob");
    assert!(c.expect("could not be verified", T), "{}", c.output());
    assert!(
        s.gw.wait_log("is not in [oidc] allowed_tenants", T)
            .is_some(),
        "{}",
        s.gw.log()
    );

    // Without allowed_tenants the multi-tenant issuer is not used at all, and the log says why.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = format!(
        "{PROGRAM}[oidc]\nissuer = \"{}/common/v2.0\"\nclient_id = \"hermes-gateway\"\n",
        s.idp.issuer
    );
    let gw = Gateway::start(tmp.path(), &config("", &cfg));
    assert!(
        gw.wait_log("set [oidc] allowed_tenants", T).is_some(),
        "{}",
        gw.log()
    );
}

#[test]
fn okta_keycloak_authentik_dex_groups_in_a_custom_claim_and_slow_down() {
    let oidc = |issuer: &str| {
        oidc_section(
            issuer,
            "groups_claim = \"hermes_groups\"\nallowed_groups = [\"staff\"]",
        )
    };
    let s = setup(&[("VENDOR", "okta"), ("INTERVAL", "1")], oidc);
    s.idp.configure(serde_json::json!({"slow_down": 1}));
    let key = Keypair::new(s.tmp.path(), "bob");
    let c = PtyClient::spawn(&s.gw.signin_args(&key, &[]), 120, 50);
    assert!(c.expect_screen("user_code=", T), "{}", c.screen());
    let uri = find_complete_uri(&c.screen()).expect("complete URL shown");
    assert!(eventually(T, || s.idp.polls().len() >= 2));
    let p = s.idp.polls();
    assert!(p[1] - p[0] >= 5900, "slow_down honoured: {p:?}");
    s.idp.approve(&uri, "bob");
    assert!(c.expect("PROGRAM-STARTED ID=bob", T), "{}", c.output());

    // carol is not in "staff" (only the custom claim says so: the standard one is gone).
    let key = Keypair::new(s.tmp.path(), "carol");
    let c = PtyClient::spawn(&s.gw.signin_args(&key, &[]), 120, 50);
    assert!(c.expect_screen("user_code=", T), "{}", c.screen());
    let uri = find_complete_uri(&c.screen()).unwrap();
    s.idp.approve(&uri, "carol");
    assert!(
        c.expect("not in a group allowed", T),
        "refused: {}",
        c.output()
    );
    assert!(!c.output().contains("PROGRAM-STARTED"));
}

#[test]
fn an_idp_that_omits_interval_is_polled_every_five_seconds() {
    let s = setup(&[("INTERVAL", "0")], |i| oidc_section(i, ""));
    let key = Keypair::new(s.tmp.path(), "k");
    let c = PtyClient::spawn(&s.gw.signin_args(&key, &[]), 120, 50);
    assert!(c.expect_screen("user_code=", T), "{}", c.screen());
    let uri = find_complete_uri(&c.screen()).unwrap();
    assert!(eventually(T, || s.idp.polls().len() >= 2));
    let p = s.idp.polls();
    assert!(p[1] - p[0] >= 4900, "RFC 8628's default of 5 s: {p:?}");
    s.idp.approve(&uri, "alice");
    assert!(c.expect("PROGRAM-STARTED ID=alice", T), "{}", c.output());
}

#[test]
fn repeated_slow_down_adds_five_seconds_each_time() {
    let s = setup(&[("INTERVAL", "1")], |i| oidc_section(i, ""));
    s.idp.configure(serde_json::json!({"slow_down": 2}));
    let key = Keypair::new(s.tmp.path(), "k");
    let c = PtyClient::spawn(&s.gw.signin_args(&key, &[]), 120, 50);
    assert!(c.expect_screen("user_code=", T), "{}", c.screen());
    let uri = find_complete_uri(&c.screen()).unwrap();
    assert!(eventually(T_SLOW, || s.idp.polls().len() >= 3));
    let p = s.idp.polls();
    assert!(p[1] - p[0] >= 5900, "1 + 5 s: {p:?}");
    assert!(p[2] - p[1] >= 10900, "1 + 5 + 5 s: {p:?}");
    s.idp.approve(&uri, "alice");
    assert!(
        c.expect("PROGRAM-STARTED ID=alice", T_SLOW),
        "{}",
        c.output()
    );
}

/// The countdown line of the sign-in screen.
fn countdown(screen: &str) -> Option<String> {
    screen
        .lines()
        .find(|l| l.contains("Waiting for approval") || l.contains("left"))
        .map(|l| l.trim().to_owned())
}

#[test]
fn a_slow_token_endpoint_keeps_the_countdown_and_the_pace() {
    let s = setup(&[("INTERVAL", "2")], |i| oidc_section(i, ""));
    s.idp.configure(serde_json::json!({"token_delay_ms": 1500}));
    let key = Keypair::new(s.tmp.path(), "k");
    let c = PtyClient::spawn(&s.gw.signin_args(&key, &[]), 120, 50);
    assert!(c.expect_screen("user_code=", T), "{}", c.screen());
    let uri = find_complete_uri(&c.screen()).unwrap();
    // While polls hang for 1.5 s each, the screen keeps counting down.
    let first = countdown(&c.screen()).expect("a countdown");
    assert!(
        eventually(T, || countdown(&c.screen()).is_some_and(|now| now != first)),
        "{}",
        c.screen()
    );
    // Polls start every 2 s (the interval), not every 2 + 1.5 s.
    assert!(eventually(T, || s.idp.polls().len() >= 4));
    let p = s.idp.polls();
    let pace = (p[3] - p[1]) / 2;
    assert!((1900..3400).contains(&pace), "poll every {pace} ms: {p:?}");
    let approved = Instant::now();
    s.idp.approve(&uri, "alice");
    assert!(c.expect("PROGRAM-STARTED ID=alice", T), "{}", c.output());
    // One interval, the endpoint's 1.5 s, and slack for the loaded 2-core machine.
    let took = approved.elapsed();
    assert!(took < Duration::from_millis(2000 + 1500 + 1500), "{took:?}");
}
