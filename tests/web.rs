//! The web front: browser login at the real test IdP (code flow + PKCE, plain HTTP with a cookie
//! jar), WebSocket tickets, the WebSocket terminal (a real WebSocket client), the ssh → browser
//! hand-off, and one end-to-end run in real headless Chromium.

mod common;

use std::time::Duration;

use common::webclient::*;
use common::*;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

fn setup(extra_web: &str) -> Web {
    setup_with("", extra_web)
}

/// `extra_session` goes into `[session]` (after the command).
fn setup_with(extra_session: &str, extra_web: &str) -> Web {
    Web::start(extra_session, extra_web, &[])
}

/// Logs `user` in through the IdP, as a browser would (following every redirect).
fn login(w: &Web, user: &str) -> reqwest::blocking::Client {
    common::idp::browser_login(&w.url, user)
}

fn me(w: &Web, b: &reqwest::blocking::Client) -> (u16, serde_json::Value) {
    let r = b.get(format!("{}/api/auth/me", w.url)).send().unwrap();
    (r.status().as_u16(), r.json().unwrap_or_default())
}

#[test]
fn browser_login_ticket_and_websocket_terminal_know_the_user() {
    let w = setup("");
    let anon = browser();
    let page = anon
        .get(format!("{}/", w.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        page.contains("Sign in") && !page.contains("xterm.js"),
        "{page}"
    );
    assert_eq!(me(&w, &anon).0, 401);
    assert_eq!(ws_ticket(&w.url, &anon, &w.url).0, 401);

    let b = login(&w, "alice");
    let (code, who) = me(&w, &b);
    assert_eq!(code, 200);
    assert_eq!(who["user_id"], "alice");
    assert_eq!(who["method"], "web");
    assert_eq!(who["provider"], w.idp.issuer.as_str());

    let (code, t) = ws_ticket(&w.url, &b, &w.url);
    assert_eq!(code, 200, "{t}");
    assert_eq!(t["ttl_seconds"], 30);
    let ticket = t["ticket"].as_str().unwrap().to_owned();
    assert_eq!(ticket.len(), 43);
    assert!(
        !w.gw.log().contains(&ticket),
        "tickets never appear in logs"
    );

    let mut ws = open_ws(&w.url, &format!("ticket={ticket}&cols=90&rows=30"), &w.url).unwrap();
    type_line(&mut ws, "echo ID=$HERMES_DASHBOARD_USER_ID; stty size");
    let out = read_until(&mut ws, "30 90");
    assert!(out.contains("ID=alice"), "{out}");
    ws.send(Message::Text(
        r#"{"type":"resize","cols":120,"rows":40}"#.into(),
    ))
    .unwrap();
    // Frames are handled in order: the resize is applied before the next keystroke arrives.
    type_line(&mut ws, "stty size");
    assert!(read_until(&mut ws, "40 120").contains("40 120"));

    // The same ticket again: refused, before any upgrade.
    assert_eq!(
        open_ws(&w.url, &format!("ticket={ticket}"), &w.url).err(),
        Some(403)
    );
    assert!(
        w.gw.wait_log("ticket already used", T).is_some(),
        "{}",
        w.gw.log()
    );

    // Closing the socket ends the program's whole process group.
    type_line(&mut ws, "echo PGID=$$");
    // The terminal echoes the typed line first ("PGID=$$"); wait for the digits.
    let has_digits = |s: &str| {
        s.split("PGID=")
            .skip(1)
            .any(|p| p.starts_with(|c: char| c.is_ascii_digit()))
    };
    let out = read_until_with(&mut ws, has_digits);
    let pgid: i32 = out
        .split("PGID=")
        .find(|p| p.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or_else(|| panic!("{out}"))
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{out}"));
    assert!(!group_members(pgid).is_empty());
    ws.close(None).unwrap();
    drop(ws);
    assert!(
        eventually(T, || group_members(pgid).is_empty()),
        "{:?}",
        group_members(pgid)
    );
    drop(w.tmp);
}

#[test]
fn tickets_from_foreign_origins_wrong_purposes_and_expired_are_refused() {
    let w = setup("ticket_ttl = \"1s\"\n");
    let b = login(&w, "alice");
    // CSRF: a ticket request from another origin.
    assert_eq!(ws_ticket(&w.url, &b, "http://evil.example").0, 403);
    // A WebSocket from another origin, even with a valid ticket.
    let t = ws_ticket(&w.url, &b, &w.url).1["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        open_ws(&w.url, &format!("ticket={t}"), "http://evil.example").err(),
        Some(403)
    );
    assert!(w.gw.wait_log("foreign origin", T).is_some());
    // Expired.
    let t = ws_ticket(&w.url, &b, &w.url).1["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        open_ws(&w.url, &format!("ticket={t}"), &w.url).err(),
        Some(403)
    );
    assert!(w.gw.wait_log("ticket expired", T).is_some());
    // Unknown and missing.
    assert_eq!(
        open_ws(&w.url, &format!("ticket={}", "x".repeat(43)), &w.url).err(),
        Some(403)
    );
    assert_eq!(open_ws(&w.url, "", &w.url).err(), Some(403));
    // A pty ticket is not a login link.
    let t = ws_ticket(&w.url, &b, &w.url).1["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = browser()
        .get(format!("{}/auth/ticket?t={t}", w.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(w.gw.wait_log("another purpose", T).is_some());
    // Logout ends the session.
    let r = b
        .post(format!("{}/auth/logout", w.url))
        .header("Origin", &w.url)
        .send()
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(me(&w, &b).0, 401);
}

#[test]
fn a_ticket_for_alice_never_starts_a_session_as_anyone_else() {
    let w = setup("");
    let alice = login(&w, "alice");
    let bob = login(&w, "bob");
    let t = ws_ticket(&w.url, &alice, &w.url).1["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    // Bob's browser presents alice's ticket, plus every hint a client could add.
    let url = format!(
        "{}/api/pty?ticket={t}&user_id=bob&user=bob&HERMES_DASHBOARD_USER_ID=bob",
        w.url.replace("http://", "ws://")
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("Origin", w.url.parse().unwrap());
    req.headers_mut()
        .insert("X-Hermes-User", "bob".parse().unwrap());
    let bob_cookie = bob
        .get(format!("{}/api/auth/me", w.url))
        .send()
        .unwrap()
        .headers()
        .get("set-cookie")
        .cloned();
    assert!(bob_cookie.is_none(), "no cookie churn");
    let (mut ws, _) = tungstenite::connect(req).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
    }
    type_line(&mut ws, "echo ID=$HERMES_DASHBOARD_USER_ID");
    let out = read_until(&mut ws, "ID=a");
    assert!(out.contains("ID=alice") && !out.contains("ID=bob"), "{out}");
}

#[test]
fn ssh_link_logs_a_browser_in_as_the_same_user_once() {
    let w = setup("");
    let key = Keypair::new(w.tmp.path(), "k");
    w.gw.set_keys("carol", &key.public_line);
    assert!(w.gw.wait_log("users=1", T).is_some());
    let mut ssh = w.gw.ssh(&key);
    ssh.args(["127.0.0.1", "link"]);
    let out = run(ssh, T);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let link = text(&out.stdout).trim().to_owned();
    assert!(
        link.starts_with(&format!("{}/auth/ticket?t=", w.url)),
        "{link}"
    );

    let b = browser();
    // Opening the link only asks: a link sent by someone else must not log this browser in.
    let r = b.get(&link).send().unwrap();
    assert!(r.status().is_success());
    assert!(r.text().unwrap().contains("Continue as carol?"));
    assert_eq!(me(&w, &b).0, 401, "not logged in by opening the link");
    let token = link.split("t=").nth(1).unwrap().to_owned();
    let post = |b: &reqwest::blocking::Client, origin: &str| {
        b.post(format!("{}/auth/ticket", w.url))
            .header("Origin", origin)
            .form(&[("t", token.as_str())])
            .send()
            .unwrap()
    };
    // A form on another site cannot use it (login CSRF).
    assert_eq!(post(&b, "http://evil.example").status().as_u16(), 403);
    let r = post(&b, &w.url);
    assert!(r.status().is_success(), "{r:?}");
    assert!(r.text().unwrap().contains("carol"));
    let (code, who) = me(&w, &b);
    assert_eq!(code, 200);
    assert_eq!(who["user_id"], "carol");
    assert_eq!(
        who["method"], "key",
        "the identity is the ssh one, no new IdP round trip"
    );
    // The browser's own terminal is carol's too.
    let t = ws_ticket(&w.url, &b, &w.url).1["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = open_ws(&w.url, &format!("ticket={t}"), &w.url).unwrap();
    type_line(&mut ws, "echo ID=$HERMES_DASHBOARD_USER_ID");
    assert!(read_until(&mut ws, "ID=c").contains("ID=carol"));

    // The link works once.
    assert_eq!(browser().get(&link).send().unwrap().status().as_u16(), 403);
    assert_eq!(post(&browser(), &w.url).status().as_u16(), 403);
}

#[test]
fn healthz_and_assets_are_served_from_the_binary() {
    let w = setup("");
    let b = browser();
    assert_eq!(
        b.get(format!("{}/healthz", w.url))
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "ok\n"
    );
    for (path, needle) in [
        ("xterm.js", "Terminal"),
        ("addon-fit.js", "FitAddon"),
        ("xterm.css", ".xterm"),
        ("LICENSE.xterm", "MIT"),
        ("app.js", "ws-ticket"),
    ] {
        let body = b
            .get(format!("{}/assets/{path}", w.url))
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert!(body.contains(needle), "{path}");
    }
    assert_eq!(
        b.get(format!("{}/assets/nope.js", w.url))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        404
    );
}

/// The whole thing in a real browser: sign in, open the terminal page, type, read the user id
/// back from the rendered terminal. Keeps a screenshot in target/test-artifacts/.
#[test]
fn end_to_end_in_headless_chromium() {
    let w = setup("");
    let shot = std::path::PathBuf::from(concat!(
        env!("CARGO_TARGET_TMPDIR"),
        "/../test-artifacts/web-terminal.png"
    ));
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/idp/browser.mjs");
    let mut cmd = std::process::Command::new("node");
    cmd.arg(script)
        .env("GATEWAY_URL", &w.url)
        .env("LOGIN_USER", "alice")
        .env("SCREENSHOT", &shot);
    let out = run(cmd, Duration::from_secs(120));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{}", stdout, text(&out.stderr));
    let line = stdout
        .lines()
        .find(|l| l.starts_with("TERMINAL:"))
        .unwrap_or_default();
    assert!(line.contains("ID=alice"), "{stdout}");
    assert!(shot.exists());
}

#[test]
fn web_sessions_run_under_the_users_own_account() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "creating accounts needs root (CI runs as root)"
    );
    let account = format!("hgt{}w-alice", std::process::id() % 100_000);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("pkill")
                .args(["-KILL", "-u", &self.0])
                .status();
            let _ = std::process::Command::new("userdel")
                .args(["-r", "-f", &self.0])
                .output();
        }
    }
    let _cleanup = Cleanup(account.clone());
    let homes = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(homes.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let w = setup_with(
        &format!(
            "create_accounts = true\nhome_base = \"{}\"\n[session.accounts]\nalice = \"{account}\"\n",
            homes.path().display()
        ),
        "",
    );
    let alice = login(&w, "alice");
    let t = ws_ticket(&w.url, &alice, &w.url).1["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = open_ws(&w.url, &format!("ticket={t}"), &w.url).unwrap();
    type_line(
        &mut ws,
        "echo WHO=$(id -un):$HOME:$HERMES_DASHBOARD_USER_ID",
    );
    let out = read_until(&mut ws, &format!("WHO={account}"));
    assert!(
        out.contains(&format!(
            "WHO={account}:{}:alice",
            homes.path().join(&account).display()
        )),
        "{out}"
    );
    // Bob has no entry in the map and no template applies: refused with the reason.
    let bob = login(&w, "bob");
    let t = ws_ticket(&w.url, &bob, &w.url).1["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = open_ws(&w.url, &format!("ticket={t}"), &w.url).unwrap();
    let out = read_until(&mut ws, "no account is configured");
    assert!(out.contains("user bob: no account is configured"), "{out}");
}

/// A browser that goes through the IdP login as `user` but stops at the gateway's callback:
/// the callback URL it would have opened (what an attacker sends a victim).
fn callback_url_for(w: &Web, user: &str) -> String {
    let b = reqwest::blocking::Client::builder()
        .cookie_store(true)
        .timeout(T)
        .redirect(reqwest::redirect::Policy::custom(|a| {
            if a.url().path() == "/auth/callback" {
                a.stop()
            } else {
                a.follow()
            }
        }))
        .build()
        .unwrap();
    let r = b.get(format!("{}/auth/login", w.url)).send().unwrap();
    let interaction = r.url().to_string();
    let r = b
        .post(format!("{interaction}/login"))
        .form(&[("login", user)])
        .send()
        .unwrap();
    let location = r
        .headers()
        .get("location")
        .unwrap_or_else(|| panic!("{} {}", r.status(), r.url()))
        .to_str()
        .unwrap()
        .to_owned();
    assert!(location.contains("/auth/callback?"), "{location}");
    if location.starts_with("http") {
        location
    } else {
        format!("{}{location}", w.url)
    }
}

#[test]
fn a_login_callback_only_logs_in_the_browser_that_started_it() {
    let w = setup_with(
        "",
        "[audit]\npath = \"audit.log\"\n[limits]\nauth_failures_before_ban = 2\n",
    );
    // The attacker stops at their own callback and sends it to the victim.
    let url = callback_url_for(&w, "bob");
    let victim = browser();
    let r = victim.get(&url).send().unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.text().unwrap().contains("started in another browser"));
    assert_eq!(me(&w, &victim).0, 401, "the victim is not logged in as bob");
    // Audited with the client's address, and counted toward a ban.
    // The audit log is written by its own thread: wait for the record rather than read at once.
    let audit = || std::fs::read_to_string(w.tmp.path().join("audit.log")).unwrap_or_default();
    assert!(
        eventually(T, || audit().lines().any(|l| l
            .contains("\"auth_failure\"")
            && l.contains("\"web\"")
            && l.contains("127.0.0.1")
            && l.contains("another browser"))),
        "{}",
        audit()
    );
    let url = callback_url_for(&w, "bob");
    assert_eq!(victim.get(&url).send().unwrap().status().as_u16(), 403);
    assert!(
        w.gw.wait_log("address banned", T).is_some(),
        "{}",
        w.gw.log()
    );
    let r = browser()
        .get(format!("{}/auth/login", w.url))
        .send()
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "a banned address cannot start a login"
    );
}

#[test]
fn on_https_the_session_cookie_cannot_be_planted_by_a_sibling_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let port = common::idp::free_port();
    // TLS ends at a proxy in front; the gateway only needs to know users see https.
    let cfg = config(
        "",
        &format!(
            "[web]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"https://127.0.0.1:{port}\"\n"
        ),
    );
    let gw = Gateway::start(tmp.path(), &cfg);
    let key = Keypair::new(tmp.path(), "alice_key");
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    let mut ssh = gw.ssh(&key);
    ssh.args(["127.0.0.1", "link"]);
    let link = text(&run(ssh, T).stdout)
        .trim()
        .replace("https://", "http://");
    let b = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let token = link.split("t=").nth(1).unwrap().to_owned();
    let r = b
        .post(format!("http://127.0.0.1:{port}/auth/ticket"))
        .header("Origin", format!("https://127.0.0.1:{port}"))
        .form(&[("t", token.as_str())])
        .send()
        .unwrap();
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.contains("hermes_session="))
        .unwrap_or_else(|| panic!("{r:?}"));
    assert!(cookie.starts_with("__Host-hermes_session="), "{cookie}");
    assert!(
        cookie.contains("; Secure") && cookie.contains("Path=/;"),
        "{cookie}"
    );
    assert!(!cookie.to_ascii_lowercase().contains("domain="), "{cookie}");
}

#[test]
fn x_forwarded_for_counts_only_from_trusted_proxies() {
    for trusted in [false, true] {
        let extra = if trusted {
            "trusted_proxies = [\"127.0.0.0/8\"]\n[audit]\npath = \"audit.log\"\n"
        } else {
            "[audit]\npath = \"audit.log\"\n"
        };
        let w = setup(extra);
        let r = browser()
            .get(format!("{}/auth/callback?code=x&state=forged", w.url))
            .header("X-Forwarded-For", "198.51.100.7")
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let audit = audit_when(&w.tmp.path().join("audit.log"), |l| {
            l.contains("\"auth_failure\"")
        });
        let line = audit
            .lines()
            .find(|l| l.contains("\"auth_failure\""))
            .unwrap_or_else(|| panic!("{audit}"));
        let want = if trusted { "198.51.100.7" } else { "127.0.0.1" };
        assert!(line.contains(&format!("\"remote\":\"{want}\"")), "{line}");
    }
}

#[test]
fn plain_http_reported_by_a_trusted_proxy_is_sent_to_https_and_nobody_else_can_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let port = common::idp::free_port();
    let cfg = config(
        "",
        &format!(
            "[web]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"https://hermes.example.test\"\ntrusted_proxies = [\"127.0.0.1\"]\n"
        ),
    );
    let gw = Gateway::start(tmp.path(), &cfg);
    assert!(gw.wait_log("web front listening", T).is_some());
    let client = |from: &str| {
        reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .local_address(from.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap()
    };
    let get = |from: &str, header: (&str, &str)| {
        client(from)
            .get(format!("http://127.0.0.1:{port}/auth/login?x=1"))
            .header(header.0, header.1)
            .send()
            .unwrap()
    };
    for h in [
        ("X-Forwarded-Proto", "http"),
        ("Forwarded", "for=198.51.100.7;proto=http"),
    ] {
        let r = get("127.0.0.1", h);
        assert_eq!(r.status().as_u16(), 308, "{h:?}");
        assert_eq!(
            r.headers()["location"],
            "https://hermes.example.test/auth/login?x=1"
        );
    }
    // https through the proxy, and anything said by a client that is not a proxy: served.
    assert_ne!(
        get("127.0.0.1", ("X-Forwarded-Proto", "https"))
            .status()
            .as_u16(),
        308
    );
    assert_ne!(
        get("127.0.0.2", ("X-Forwarded-Proto", "http"))
            .status()
            .as_u16(),
        308
    );
    drop(gw);
}
