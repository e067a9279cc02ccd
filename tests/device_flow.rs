//! OIDC device-flow sign-in from the terminal: the real OpenSSH client in a PTY (never typed
//! into unless a test says so), the real test IdP (oidc-provider) approved over plain HTTP.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::idp::{find_complete_uri, free_port, oidc_section, Idp};
use common::*;

/// The program prints who it is told it is, then waits a little (so the session is visible).
const PROGRAM: &str = "[session]\ncommand = [\"/bin/sh\", \"-c\", \"echo PROGRAM-STARTED ID=$HERMES_DASHBOARD_USER_ID; sleep 1\"]\n";

struct Setup {
    tmp: tempfile::TempDir,
    idp: Idp,
    gw: Gateway,
}

fn setup(oidc_extra: &str, idp_env: &[(&str, &str)]) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let idp = Idp::start(idp_env);
    let gw = Gateway::start(
        tmp.path(),
        &config(
            "",
            &format!("{PROGRAM}{}", oidc_section(&idp.issuer, oidc_extra)),
        ),
    );
    assert!(
        gw.wait_log("identity provider discovered", T).is_some(),
        "{}",
        gw.log()
    );
    Setup { tmp, idp, gw }
}

fn pty_args(gw: &Gateway, key: &Keypair, extra: &[&str]) -> Vec<String> {
    gw.signin_args(key, extra)
}

/// Starts an interactive sign-in and returns the client and the URL it shows.
fn begin(s: &Setup, key: &Keypair, extra: &[&str]) -> (PtyClient, String) {
    let c = PtyClient::spawn(&pty_args(&s.gw, key, extra), 120, 50);
    assert!(
        c.expect_screen("user_code=", T),
        "sign-in screen: {}\nlog: {}",
        c.screen(),
        s.gw.log()
    );
    let uri = find_complete_uri(&c.screen()).expect("complete URL on screen");
    (c, uri)
}

fn batch_whoami(gw: &Gateway, key: &Keypair) -> std::process::Output {
    let mut ssh = gw.ssh(key);
    ssh.args(["127.0.0.1", "whoami"]);
    run(ssh, T)
}

#[test]
fn approval_starts_the_program_within_one_poll_interval_and_the_qr_code_scans() {
    let s = setup("", &[("INTERVAL", "1")]);
    let key = Keypair::new(s.tmp.path(), "newcomer");
    let (mut c, uri) = begin(&s, &key, &[]);
    let screen = c.screen();
    assert!(screen.contains("Sign in to Hermes"), "{screen}");
    assert!(screen.contains("/device and enter"), "{screen}");
    let code = uri.split("user_code=").nth(1).unwrap();
    assert!(screen.contains(code), "the code itself is shown: {screen}");
    assert!(screen.contains("left"), "a countdown: {screen}");
    assert_eq!(
        c.decode_qr().as_deref(),
        Some(uri.as_str()),
        "QR encodes the complete URL"
    );

    s.idp.approve(&uri, "alice");
    let approved = Instant::now();
    assert!(c.expect("PROGRAM-STARTED ID=alice", T), "{}", c.output());
    let latency = approved.elapsed();
    // One poll interval (1 s) plus the gateway's work; the slack covers the IdP and the client
    // on a loaded 2-core CI machine running every test at once. The benchmark harness measures
    // this precisely.
    assert!(
        latency < Duration::from_millis(1000 + 1000),
        "program started {latency:?} after approval"
    );
    assert!(c.output().contains("Signed in as alice"));
    assert_eq!(c.wait(T), Some(0));

    // The proven key is now bound: the next ssh is instant, even in batch mode.
    let out = batch_whoami(&s.gw, &key);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"));
    assert_eq!(v["user_id"], "alice");
    assert_eq!(v["method"], "enrolled-key");
    assert_eq!(v["provider"], s.idp.issuer.as_str());
    assert_eq!(v["key_fingerprint"], key.fingerprint().as_str());
    let line = s.gw.wait_log("key enrolled", T).unwrap();
    assert!(line.contains(&key.fingerprint()), "{line}");
}

#[test]
fn denial_expiry_and_cancel_end_with_a_clear_reason_and_nonzero_exit() {
    let s = setup("", &[("INTERVAL", "1")]);
    let key = Keypair::new(s.tmp.path(), "k");

    let (mut c, uri) = begin(&s, &key, &[]);
    s.idp.deny(&uri);
    assert!(c.expect("denied", T), "{}", c.output());
    assert_ne!(c.wait(T), Some(0));

    let (mut c, _uri) = begin(&s, &key, &[]);
    c.send("q");
    assert!(c.expect("cancelled", T), "{}", c.output());
    assert_ne!(c.wait(T), Some(0));

    let short = Idp::start(&[("INTERVAL", "1"), ("DEVICE_TTL", "2")]);
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        tmp.path(),
        &config("", &format!("{PROGRAM}{}", oidc_section(&short.issuer, ""))),
    );
    assert!(gw.wait_log("identity provider discovered", T).is_some());
    let mut c = PtyClient::spawn(&pty_args(&gw, &key, &[]), 120, 50);
    assert!(c.expect("expired", T), "{}", c.output());
    assert_ne!(c.wait(T), Some(0));
    assert!(!c.output().contains("PROGRAM-STARTED"));
}

#[test]
fn slow_down_adds_five_seconds_between_polls() {
    let s = setup("", &[("INTERVAL", "1")]);
    let key = Keypair::new(s.tmp.path(), "k");
    s.idp.configure(serde_json::json!({"slow_down": 1}));
    let (mut c, uri) = begin(&s, &key, &[]);
    // First poll after 1 s gets slow_down; the next must wait 1 + 5 = 6 s.
    assert!(
        eventually(T, || s.idp.polls().len() >= 2),
        "polls: {:?}",
        s.idp.polls()
    );
    let p = s.idp.polls();
    let gap = p[1] - p[0];
    assert!(gap >= 5900, "gap after slow_down was {gap} ms");
    // Exactly +5 s: the gateway's own account (an upper bound on the IdP's clock would measure
    // the loaded CI machine's scheduling, not the gateway).
    let line =
        s.gw.wait_log("asked to slow down", T)
            .expect("slow_down logged");
    assert!(line.contains("interval=6s"), "{line}");
    s.idp.approve(&uri, "alice");
    assert!(c.expect("PROGRAM-STARTED ID=alice", T), "{}", c.output());
    assert_eq!(c.wait(T), Some(0));
}

#[test]
fn a_client_that_leaves_stops_the_polling_at_once() {
    let s = setup("", &[("INTERVAL", "1")]);
    let key = Keypair::new(s.tmp.path(), "k");
    let (c, _uri) = begin(&s, &key, &[]);
    assert!(eventually(T, || !s.idp.polls().is_empty()));
    drop(c); // kills the ssh client
    std::thread::sleep(Duration::from_millis(500));
    let n = s.idp.polls().len();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(s.idp.polls().len(), n, "no polls after the client left");
    assert!(
        s.gw.wait_log("polling stopped", T).is_some(),
        "{}",
        s.gw.log()
    );
}

#[test]
fn quiet_clients_still_see_the_code_and_batch_mode_fails_fast() {
    let s = setup("", &[("INTERVAL", "1")]);
    let key = Keypair::new(s.tmp.path(), "k");
    for flags in [&["-q"][..], &["-o", "LogLevel=ERROR"][..]] {
        let (mut c, uri) = begin(&s, &key, flags);
        assert!(c.screen().contains(uri.split("user_code=").nth(1).unwrap()));
        c.send("q");
        let _ = c.wait(T);
    }
    // Without a PTY the same screen arrives as text on stderr.
    let mut ssh = gw_ssh_interactive(&s.gw, &key);
    ssh.args(["-T", "-q", "127.0.0.1"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = ssh.spawn().unwrap();
    let err = child.stderr.take().unwrap();
    let found = read_until(err, "user_code=", T);
    let _ = child.kill();
    let _ = child.wait();
    assert!(found.contains("enter"), "{found}");

    let start = Instant::now();
    let out = batch_whoami(&s.gw, &key);
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("Permission denied"), "{out:?}");
    assert!(start.elapsed() < Duration::from_secs(5), "fails fast");
}

fn gw_ssh_interactive(gw: &Gateway, key: &Keypair) -> Command {
    let mut ssh = Command::new("ssh");
    ssh.args(["-o", "BatchMode=no"])
        .args(ssh_base_args(gw.port))
        .arg("-i")
        .arg(&key.private)
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null());
    ssh
}

/// Reads `r` until `needle` appears or `timeout` passes, whichever is first. The reading
/// happens on a thread of its own, so a pipe that stalls fails the test instead of hanging it.
fn read_until(
    mut r: impl std::io::Read + Send + 'static,
    needle: &str,
    timeout: Duration,
) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = r.read(&mut chunk) {
            if tx.send(chunk[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    while !String::from_utf8_lossy(&buf).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(c) => buf.extend_from_slice(&c),
            Err(_) => break,
        }
    }
    text(&buf)
}

#[test]
fn pending_connections_can_do_nothing_but_sign_in() {
    let s = setup("", &[("INTERVAL", "1")]);
    let key = Keypair::new(s.tmp.path(), "k");
    let mut ssh = gw_ssh_interactive(&s.gw, &key);
    ssh.args(["127.0.0.1", "whoami"]);
    let out = run(ssh, T);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("sign in first"), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "no identity for a pending connection"
    );
}

#[test]
fn enrollment_survives_restart_and_logout_removes_it() {
    let s = setup("", &[("INTERVAL", "1")]);
    let key = Keypair::new(s.tmp.path(), "k");
    let (mut c, uri) = begin(&s, &key, &[]);
    s.idp.approve(&uri, "alice");
    assert!(c.expect("PROGRAM-STARTED ID=alice", T));
    let _ = c.wait(T);

    let cfg = std::fs::read_to_string(s.tmp.path().join("gateway.toml")).unwrap();
    let Setup { tmp, idp, gw } = s;
    assert_eq!(gw.stop().code(), Some(0));
    let gw = Gateway::start(tmp.path(), &cfg);
    let out = batch_whoami(&gw, &key);
    assert!(
        text(&out.stdout).contains("enrolled-key"),
        "after restart: {out:?}"
    );

    let mut ssh = gw.ssh(&key);
    ssh.args(["127.0.0.1", "logout"]);
    let out = run(ssh, T);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("no longer linked"), "{out:?}");
    assert_eq!(
        batch_whoami(&gw, &key).status.code(),
        Some(255),
        "binding gone"
    );
    drop(idp);
}

#[test]
fn a_mapped_key_in_an_agent_with_other_keys_logs_in_without_a_device_prompt() {
    let s = setup("", &[("INTERVAL", "1")]);
    let unknown = Keypair::new(s.tmp.path(), "unknown");
    let mapped = Keypair::new(s.tmp.path(), "mapped");
    s.gw.set_keys("bob", &mapped.public_line);
    assert!(s.gw.wait_log("users=1", T).is_some());
    let sock = s.tmp.path().join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .args(["-D", "-a"])
        .arg(&sock)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(T, || sock.exists()));
    for k in [&unknown, &mapped] {
        let st = Command::new("ssh-add")
            .arg(&k.private)
            .env("SSH_AUTH_SOCK", &sock)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    }
    let mut ssh = Command::new("ssh");
    // For ssh the first value of an option wins: these override the base arguments.
    ssh.args(["-o", "BatchMode=no", "-o", "IdentitiesOnly=no"])
        .args(ssh_base_args(s.gw.port))
        .args(["-T", "127.0.0.1", "whoami"])
        .env("SSH_AUTH_SOCK", &sock)
        .stdin(Stdio::null());
    let out = run(ssh, T);
    let _ = agent.kill();
    let _ = agent.wait();
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}\n{}", s.gw.log()));
    assert_eq!(v["user_id"], "bob");
    assert_eq!(v["method"], "key");
    assert!(!text(&out.stderr).contains("user_code"), "no device prompt");
    // The unknown key was proven on the way, but nothing was bound.
    assert!(s.gw.log().contains(&unknown.fingerprint()));
    assert!(s
        .gw
        .wait_log("key enrolled", Duration::from_millis(200))
        .is_none());
}

#[test]
fn a_second_user_cannot_take_over_the_first_users_key() {
    let s = setup("", &[("INTERVAL", "1")]);
    let alice_key = Keypair::new(s.tmp.path(), "alice_key");
    let (mut c, uri) = begin(&s, &alice_key, &[]);
    s.idp.approve(&uri, "alice");
    assert!(c.expect("PROGRAM-STARTED ID=alice", T));
    let _ = c.wait(T);

    // Bob has only alice's *public* key (public keys are public) and offers it.
    let stolen = s.tmp.path().join("stolen");
    std::fs::copy(
        alice_key.private.with_extension("pub"),
        stolen.with_extension("pub"),
    )
    .unwrap();
    let bob_key = Keypair::new(s.tmp.path(), "bob_key");
    let mut args = pty_args(&s.gw, &bob_key, &[]);
    let pos = args.iter().position(|a| a == "-i").unwrap();
    args.insert(pos, stolen.display().to_string());
    args.insert(pos, "-i".into());
    let c = PtyClient::spawn(&args, 120, 50);
    assert!(c.expect_screen("user_code=", T), "{}", c.screen());
    let uri = find_complete_uri(&c.screen()).unwrap();
    s.idp.approve(&uri, "bob");
    assert!(c.expect("PROGRAM-STARTED ID=bob", T), "{}", c.output());

    // Alice's key is still alice's; bob's own proven key is bob's.
    let v: serde_json::Value =
        serde_json::from_slice(&batch_whoami(&s.gw, &alice_key).stdout).unwrap();
    assert_eq!(v["user_id"], "alice");
    let v: serde_json::Value =
        serde_json::from_slice(&batch_whoami(&s.gw, &bob_key).stdout).unwrap();
    assert_eq!(v["user_id"], "bob");
    let state = std::fs::read_to_string(s.tmp.path().join("state/enrollments.json")).unwrap();
    let bound: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(bound[alice_key.fingerprint()]["user_id"], "alice");
}

#[test]
fn users_outside_the_allow_lists_are_refused_with_the_reason() {
    let s = setup(
        "allowed_groups = [\"hermes-users\"]\n",
        &[("INTERVAL", "1")],
    );
    let key = Keypair::new(s.tmp.path(), "k");
    let (mut c, uri) = begin(&s, &key, &[]);
    s.idp.approve(&uri, "bob");
    assert!(c.expect("not in a group allowed", T), "{}", c.output());
    assert_ne!(c.wait(T), Some(0));
    assert!(!c.output().contains("PROGRAM-STARTED"));
    assert!(s.gw.wait_log("not in a group allowed", T).is_some());
    assert_eq!(
        batch_whoami(&s.gw, &key).status.code(),
        Some(255),
        "nothing enrolled"
    );

    let s = setup(
        "allowed_email_domains = [\"example.com\"]\n",
        &[("INTERVAL", "1")],
    );
    // carol is in example.com but her email is not verified.
    let (mut c, uri) = begin(&s, &key, &[]);
    s.idp.approve(&uri, "carol");
    assert!(c.expect("not verified", T), "{}", c.output());
    assert_ne!(c.wait(T), Some(0));
}

#[test]
fn forged_and_foreign_id_tokens_are_refused() {
    let s = setup("", &[("INTERVAL", "1")]);
    let key = Keypair::new(s.tmp.path(), "k");
    for mode in [
        "foreign_aud",
        "foreign_key",
        "alg_none",
        "hs256_pubkey",
        "expired",
    ] {
        s.idp.configure(serde_json::json!({"token_mode": mode}));
        let (mut c, uri) = begin(&s, &key, &[]);
        s.idp.approve(&uri, "alice");
        assert!(
            c.expect("could not be verified", T),
            "{mode}: {}",
            c.output()
        );
        assert_ne!(c.wait(T), Some(0), "{mode}");
        assert!(!c.output().contains("PROGRAM-STARTED"), "{mode}");
    }
    // The client can read the refusal before the gateway's log line reaches this test's log
    // reader: wait for the lines, then check there is exactly one per attempt.
    s.gw.wait_log_count("ID token refused", 5);
    assert_eq!(
        s.gw.log().matches("ID token refused").count(),
        5,
        "{}",
        s.gw.log()
    );
    assert_eq!(
        batch_whoami(&s.gw, &key).status.code(),
        Some(255),
        "nothing enrolled"
    );
    // And the real thing still works.
    s.idp.configure(serde_json::json!({"token_mode": "normal"}));
    let (mut c, uri) = begin(&s, &key, &[]);
    s.idp.approve(&uri, "alice");
    assert!(c.expect("PROGRAM-STARTED ID=alice", T), "{}", c.output());
    let _ = c.wait(T);
}

#[test]
fn an_unreachable_idp_keeps_key_logins_working_and_recovers_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let gw = Gateway::start(
        tmp.path(),
        &config("", &format!("{PROGRAM}{}", oidc_section(&issuer, ""))),
    );
    assert!(gw.wait_log("discovery failed", T).is_some(), "{}", gw.log());
    let mapped = Keypair::new(tmp.path(), "mapped");
    gw.set_keys("alice", &mapped.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    assert!(text(&batch_whoami(&gw, &mapped).stdout).contains("\"alice\""));

    let key = Keypair::new(tmp.path(), "k");
    let mut c = PtyClient::spawn(&pty_args(&gw, &key, &[]), 120, 50);
    assert!(c.expect("unreachable", T), "{}", c.output());
    assert_ne!(c.wait(T), Some(0));

    let idp = Idp::start(&[("PORT", &port.to_string()), ("INTERVAL", "1")]);
    assert_eq!(idp.issuer, issuer);
    assert!(gw
        .wait_log("identity provider discovered", Duration::from_secs(60))
        .is_some());
    let c = PtyClient::spawn(&pty_args(&gw, &key, &[]), 120, 50);
    assert!(c.expect_screen("user_code=", T), "{}", c.screen());
    let uri = find_complete_uri(&c.screen()).unwrap();
    // Someone other than the key-file user alice (whose id an IdP user may not take).
    idp.approve(&uri, "bob");
    assert!(c.expect("PROGRAM-STARTED ID=bob", T), "{}", c.output());
}

#[test]
fn pending_sign_ins_are_capped_per_address() {
    let s = setup("max_pending_per_ip = 1\n", &[("INTERVAL", "1")]);
    let key = Keypair::new(s.tmp.path(), "k");
    let (first, _uri) = begin(&s, &key, &[]);
    let mut ssh = gw_ssh_interactive(&s.gw, &key);
    ssh.args(["-T", "127.0.0.1"]);
    let start = Instant::now();
    let out = run(ssh, T);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(text(&out.stderr).contains("Permission denied"), "{out:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(s
        .gw
        .wait_log("too many sign-ins in progress from this address", T)
        .is_some());
    drop(first);
    // The slot is freed when the first client leaves.
    assert!(eventually(T, || {
        let c = PtyClient::spawn(&pty_args(&s.gw, &key, &[]), 120, 50);
        c.expect_screen("user_code=", Duration::from_secs(5))
    }));
}

#[test]
fn a_new_signing_key_at_the_idp_is_picked_up_by_its_kid() {
    let s = setup("", &[("INTERVAL", "1")]);
    let key = Keypair::new(s.tmp.path(), "k");
    // The IdP restarts on the same port with a new signing key (and a new kid): key rotation.
    let port = s.idp.port.to_string();
    let Setup { tmp, idp, gw } = s;
    drop(idp);
    let idp = Idp::start(&[("PORT", &port), ("INTERVAL", "1")]);
    let c = PtyClient::spawn(&pty_args(&gw, &key, &[]), 120, 50);
    assert!(c.expect_screen("user_code=", T), "{}", c.screen());
    let uri = find_complete_uri(&c.screen()).unwrap();
    idp.approve(&uri, "alice");
    assert!(c.expect("PROGRAM-STARTED ID=alice", T), "{}", c.output());
    assert!(gw.wait_log("keys refreshed", T).is_some(), "{}", gw.log());
    drop(tmp);
}

#[test]
fn clients_without_keys_still_sign_in_without_enrollment() {
    let s = setup("", &[("INTERVAL", "1")]);
    let key = Keypair::new(s.tmp.path(), "unused");
    let c = PtyClient::spawn(
        &pty_args(&s.gw, &key, &["-o", "PubkeyAuthentication=no"]),
        120,
        50,
    );
    assert!(c.expect_screen("user_code=", T), "{}", c.screen());
    let uri = find_complete_uri(&c.screen()).unwrap();
    s.idp.approve(&uri, "alice");
    assert!(c.expect("PROGRAM-STARTED ID=alice", T), "{}", c.output());
    let line = s.gw.wait_log("method=device-flow", T).unwrap();
    assert!(
        line.contains("key=\"-\"") || line.contains("key=-"),
        "{line}"
    );
    assert!(
        !s.gw.log().contains("key enrolled"),
        "no key, no enrollment"
    );
}

#[test]
fn an_idp_user_cannot_take_a_key_file_users_id_unless_linked() {
    for linked in [false, true] {
        let extra = if linked {
            "linked_key_users = [\"alice\"]\n"
        } else {
            ""
        };
        let s = setup(extra, &[("INTERVAL", "1")]);
        // alice is a key-file user of this gateway…
        let alice = Keypair::new(s.tmp.path(), "alice_key");
        s.gw.set_keys("alice", &alice.public_line);
        assert!(s.gw.wait_log("users=1", T).is_some());
        // …and someone at the IdP names themselves alice.
        let key = Keypair::new(s.tmp.path(), "impostor");
        let (mut c, uri) = begin(&s, &key, &[]);
        s.idp.approve(&uri, "alice");
        if linked {
            assert!(c.expect("PROGRAM-STARTED ID=alice", T), "{}", c.output());
            continue;
        }
        assert_eq!(c.wait(T), Some(1), "{}", c.output());
        assert!(
            c.output()
                .contains("belongs to a user of this gateway's key files"),
            "{}",
            c.output()
        );
        assert!(!c.output().contains("PROGRAM-STARTED"), "{}", c.output());
        // Nothing was enrolled for the impostor's key either.
        assert_eq!(batch_whoami(&s.gw, &key).status.code(), Some(255));
    }
}

#[test]
fn users_and_the_operator_see_and_revoke_enrolled_keys() {
    let s = setup("", &[("INTERVAL", "1")]);
    let key = Keypair::new(s.tmp.path(), "laptop");
    let (mut c, uri) = begin(&s, &key, &[]);
    // The sign-in screen says which key it will remember, and until when.
    let remembered = format!("Remembers key {}", key.fingerprint());
    assert!(c.expect_screen(&remembered, T), "{}", c.screen());
    s.idp.approve(&uri, "bob");
    assert!(c.expect("PROGRAM-STARTED ID=bob", T), "{}", c.output());
    assert_eq!(c.wait(T), Some(0));
    let fp = key.fingerprint();
    let keys = |k: &Keypair, args: &[&str]| {
        let mut ssh = s.gw.ssh(k);
        ssh.args(["127.0.0.1", "keys"]).args(args);
        run(ssh, T)
    };
    // bob sees his key, marked as the one in use.
    let out = keys(&key, &[]);
    let listed = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        listed.contains(&fp) && listed.contains("(this key)"),
        "{listed}"
    );
    assert!(
        listed.contains("expires") && listed.contains("last used"),
        "{listed}"
    );
    // The operator sees it too, through the admin socket.
    let sock = s.tmp.path().join("state/admin.sock");
    let mut admin = Command::new(BIN);
    admin
        .args(["enrollments", "--user", "bob", "--socket"])
        .arg(&sock);
    let out = run(admin, T);
    let list: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"));
    assert_eq!(list[0]["fingerprint"], fp.as_str());
    assert_eq!(list[0]["user_id"], "bob");
    // Nobody revokes a key that is not theirs (a second enrolled user, carol, tries).
    let other = Keypair::new(s.tmp.path(), "other");
    let (mut c2, uri2) = begin(&s, &other, &[]);
    s.idp.approve(&uri2, "carol");
    assert!(c2.expect("PROGRAM-STARTED ID=carol", T), "{}", c2.output());
    assert_eq!(c2.wait(T), Some(0));
    let out = keys(&other, &["revoke", &fp]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(batch_whoami(&s.gw, &key).status.success(), "still bob's");
    // bob revokes it: the key signs in no more.
    let out = keys(&key, &["revoke", &fp]);
    assert!(text(&out.stdout).contains("Revoked"), "{out:?}");
    assert_eq!(batch_whoami(&s.gw, &key).status.code(), Some(255));
    // The operator revokes carol's.
    let mut admin = Command::new(BIN);
    admin
        .args(["enrollments", "--socket"])
        .arg(&sock)
        .args(["revoke", &other.fingerprint()]);
    assert!(text(&run(admin, T).stdout).contains("\"revoked\":true"));
    assert_eq!(batch_whoami(&s.gw, &other).status.code(), Some(255));
}

#[test]
fn enrolled_keys_are_rechecked_with_the_idp_and_end_when_it_no_longer_vouches() {
    let tmp = tempfile::tempdir().unwrap();
    let idp = Idp::start(&[("INTERVAL", "1")]);
    // offline_access: the IdP issues a refresh token; "0s": every login asks the IdP again.
    let cfg = config(
        "",
        &format!(
            "{PROGRAM}[oidc]\nissuer = \"{}\"\nclient_id = \"hermes-gateway\"\nscopes = [\"openid\", \"email\", \"profile\", \"groups\", \"offline_access\"]\nallowed_groups = [\"hermes-users\"]\nrecheck_interval = \"0s\"\n[audit]\npath = \"audit.log\"\n",
            idp.issuer
        ),
    );
    let gw = Gateway::start(tmp.path(), &cfg);
    assert!(gw.wait_log("identity provider discovered", T).is_some());
    let s = Setup { tmp, idp, gw };
    let enroll = |name: &str| {
        let key = Keypair::new(s.tmp.path(), name);
        let (mut c, uri) = begin(&s, &key, &[]);
        s.idp.approve(&uri, "alice");
        assert!(c.expect("PROGRAM-STARTED ID=alice", T), "{}", c.output());
        assert_eq!(c.wait(T), Some(0));
        key
    };
    let token_requests = || s.idp.polls().len();

    // The enrollment keeps the refresh token (never in the log); each login renews it, and a
    // rotated token replaces the old one (the second renewal would fail otherwise).
    let first = enroll("first");
    let state = std::fs::read_to_string(s.tmp.path().join("state/enrollments.json")).unwrap();
    assert!(state.contains("refresh_token"), "{state}");
    for _ in 0..2 {
        let before = token_requests();
        let out = batch_whoami(&s.gw, &first);
        assert!(
            text(&out.stdout).contains("enrolled-key"),
            "{out:?}\n{}",
            s.gw.log()
        );
        assert_eq!(token_requests(), before + 1, "one renewal per login");
    }
    assert!(!s.gw.log().contains("refresh_token"));
    // Logins at once with the same key renew one after the other, never with a token another
    // renewal already replaced (which the IdP treats as a replay).
    std::thread::scope(|scope| {
        let logins: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| batch_whoami(&s.gw, &first)))
            .collect();
        for l in logins {
            let out = l.join().unwrap();
            assert!(
                text(&out.stdout).contains("enrolled-key"),
                "{out:?}\n{}",
                s.gw.log()
            );
        }
    });

    // Alice leaves the allowed group: her next login ends the enrollment, with the reason.
    s.idp
        .change_user(serde_json::json!({"user": "alice", "groups": ["staff"]}));
    assert_eq!(batch_whoami(&s.gw, &first).status.code(), Some(255));
    assert!(s.gw.log().contains("enrollment revoked"), "{}", s.gw.log());
    let audit = audit_when(&s.tmp.path().join("audit.log"), |l| {
        l.contains("\"revoked\"") && l.contains("identity provider")
    });
    // The sign-in that bound the key was audited as an enrollment.
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"event\":\"enrolled\"") && l.contains(&first.fingerprint())),
        "{audit}"
    );
    let revoked = audit
        .lines()
        .find(|l| l.contains("\"revoked\"") && l.contains("identity provider"))
        .unwrap_or_else(|| panic!("{audit}"));
    assert!(revoked.contains(&first.fingerprint()), "{revoked}");
    assert!(
        audit.contains("not in a group allowed"),
        "the reason names the rule: {audit}"
    );
    let before = token_requests();
    assert_eq!(batch_whoami(&s.gw, &first).status.code(), Some(255));
    assert_eq!(
        token_requests(),
        before,
        "a removed enrollment is not re-checked"
    );

    // Back in the group, enrolled again; then the IdP disables her. The next interactive login
    // ends the enrollment and its sign-in screen says why.
    s.idp
        .change_user(serde_json::json!({"user": "alice", "groups": ["hermes-users"]}));
    let second = enroll("second");
    s.idp
        .change_user(serde_json::json!({"user": "alice", "disabled": true}));
    let (mut c, _uri) = begin(&s, &second, &[]);
    assert!(c.expect_screen("enrollment ended", T), "{}", c.screen());
    assert!(c.screen().contains("invalid_grant"), "{}", c.screen());
    c.send("q");
    let _ = c.wait(T);

    // An IdP that cannot be asked changes nothing: the binding holds until its expiry.
    s.idp
        .change_user(serde_json::json!({"user": "alice", "disabled": false}));
    let third = enroll("third");
    let Setup { tmp: _tmp, idp, gw } = s;
    drop(idp);
    let out = batch_whoami(&gw, &third);
    assert!(text(&out.stdout).contains("enrolled-key"), "{out:?}");
    assert!(gw.log().contains("cannot re-check"), "{}", gw.log());
}

#[test]
fn identity_details_reach_the_program_only_when_the_idp_verified_them() {
    let tmp = tempfile::tempdir().unwrap();
    let idp = Idp::start(&[("INTERVAL", "1")]);
    let program = "[session]\ncommand = [\"/bin/sh\", \"-c\", \"echo PROGRAM-STARTED NAME=[$HERMES_DASHBOARD_USER_NAME] EMAIL=[$HERMES_DASHBOARD_USER_EMAIL] GROUPS=[$G]; sleep 1\"]\nclaims_env = { HERMES_DASHBOARD_USER_NAME = \"name\", HERMES_DASHBOARD_USER_EMAIL = \"email\", G = \"groups\" }\n";
    let gw = Gateway::start(
        tmp.path(),
        &config("", &format!("{program}{}", oidc_section(&idp.issuer, ""))),
    );
    assert!(gw.wait_log("identity provider discovered", T).is_some());
    let s = Setup { tmp, idp, gw };
    let sign_in = |user: &str| {
        let key = Keypair::new(s.tmp.path(), user);
        let (mut c, uri) = begin(&s, &key, &[]);
        s.idp.approve(&uri, user);
        assert!(c.expect("PROGRAM-STARTED", T), "{}", c.output());
        let out = c.output();
        let _ = c.wait(T);
        out
    };
    let alice = sign_in("alice");
    assert!(
        alice
            .contains("NAME=[Alice Example] EMAIL=[alice@example.com] GROUPS=[hermes-users,staff]"),
        "{alice}"
    );
    // carol's email is not verified at the IdP: the program is not told it.
    let carol = sign_in("carol");
    assert!(
        carol.contains("NAME=[Carol Unverified] EMAIL=[] GROUPS=[hermes-users]"),
        "{carol}"
    );
}
