//! Operators by identity (`[admin] users` and `groups`): the sessions console and its JSON from
//! the operator's own SSH session, without the admin socket; everyone else refused; every use
//! audited. Real OpenSSH clients in real PTYs, the real test IdP for groups.

mod common;

use common::idp::{find_complete_uri, oidc_section, Idp};
use common::*;

/// A program that shows a recognisable screen and stays.
const PROGRAM: &str = r#"[session]
command = ["/bin/sh", "-c", "echo BOB-SCREEN-$HERMES_DASHBOARD_USER_ID; exec cat"]
detach_timeout = "10m"
[audit]
path = "audit.log"
"#;

struct Setup {
    tmp: tempfile::TempDir,
    gw: Gateway,
}

/// A gateway with `[admin]` set to `admin`, and key-file users `users` (one key each).
fn setup(admin: &str, extra: &str, users: &[&str]) -> (Setup, Vec<Keypair>) {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        tmp.path(),
        &config("", &format!("{PROGRAM}[admin]\n{admin}\n{extra}")),
    );
    let keys = users
        .iter()
        .map(|u| {
            let k = Keypair::new(tmp.path(), u);
            gw.set_keys(u, &format!("{}\n", k.public_line));
            k
        })
        .collect();
    let loaded = format!("users={}", users.len());
    assert!(gw.wait_log(&loaded, T).is_some(), "{}", gw.log());
    (Setup { tmp, gw }, keys)
}

impl Setup {
    fn admin(&self, key: &Keypair, words: &[&str]) -> std::process::Output {
        let mut ssh = self.gw.ssh(key);
        ssh.args(["127.0.0.1", "admin"]).args(words);
        run(ssh, T)
    }

    fn audit(&self, needle: &str) -> String {
        audit_when(&self.tmp.path().join("audit.log"), |l| l.contains(needle))
    }
}

#[test]
fn operators_by_user_id_list_watch_and_end_sessions_and_others_are_refused() {
    let (s, keys) = setup("users = [\"alice\"]", "", &["alice", "bob", "carol"]);
    let [alice_key, bob_key, carol_key] = [&keys[0], &keys[1], &keys[2]];
    let mut bob = PtyClient::spawn(&s.gw.pty_args(bob_key), 100, 30);
    assert!(bob.expect("BOB-SCREEN-bob", T), "{}", bob.output());

    // The JSON, as the admin socket's `list` gives it.
    let out = s.admin(alice_key, &["sessions"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["user"] == "bob")
        .unwrap_or_else(|| panic!("bob's session listed: {list}"));
    let id = row["id"].as_u64().unwrap().to_string();
    let rec = s.audit("\"command\":\"sessions\"");
    assert!(
        rec.contains("\"event\":\"admin\"") && rec.contains("\"allowed\":true"),
        "{rec}"
    );

    // Not an operator: refused with a line, audited.
    for who in [carol_key, bob_key] {
        let out = s.admin(who, &["sessions"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            text(&out.stderr).contains("is not an operator here"),
            "{out:?}"
        );
        assert!(out.stdout.is_empty(), "nothing listed: {out:?}");
    }
    let rec = s.audit("\"allowed\":false");
    assert!(rec.contains("\"user_id\":\"carol\""), "{rec}");
    let out = s.admin(carol_key, &["end", &id]);
    assert_eq!(out.status.code(), Some(1));

    // The console, in alice's terminal: the table, then watching bob's screen read-only.
    let mut alice = PtyClient::spawn(
        &[
            vec!["-t".to_owned()],
            s.gw.pty_args(alice_key),
            vec!["admin".into()],
        ]
        .concat(),
        160,
        30,
    );
    assert!(
        alice.expect_screen("hermes-ssh-gateway sessions (1)", T),
        "{}",
        alice.screen()
    );
    assert!(alice.screen().contains("bob"), "{}", alice.screen());
    alice.send("w");
    assert!(
        alice.expect_screen("BOB-SCREEN-bob", T),
        "{}",
        alice.screen()
    );
    assert!(
        bob.expect("the operator alice is watching", T),
        "{}",
        bob.output()
    );
    // Read-only: what alice types does not reach bob's program (cat would echo it back).
    alice.send("zzz\r");
    bob.send("from-bob\r");
    assert!(
        alice.expect_screen("from-bob", T),
        "live output: {}",
        alice.screen()
    );
    assert!(!bob.output().contains("zzz"), "{}", bob.output());
    alice.send("q");
    assert!(
        alice.expect_screen("stopped watching session", T),
        "{}",
        alice.screen()
    );
    let rec = s.audit("watch_end");
    assert!(rec.contains("\"user_id\":\"operator:alice\""), "{rec}");
    alice.send("q");
    assert_eq!(alice.wait(T), Some(0));

    // Without a terminal the console says how to get one.
    let out = s.admin(alice_key, &[]);
    assert!(text(&out.stderr).contains("ssh -t host admin"), "{out:?}");

    // End bob's session from alice's.
    let out = s.admin(alice_key, &["end", &id]);
    assert!(text(&out.stdout).contains("\"ended\":true"), "{out:?}");
    assert!(bob.wait(T).is_some(), "bob's session ended");
    let rec = s.audit(&format!("\"command\":\"end {id}\""));
    assert!(rec.contains("\"allowed\":true"), "{rec}");
}

/// Signs `key` in at the IdP as `user` (a device flow in a real PTY), so that it is enrolled.
fn enroll(s: &Setup, idp: &Idp, key: &Keypair, user: &str) {
    let mut c = PtyClient::spawn(&s.gw.signin_args(key, &[]), 120, 50);
    assert!(c.expect_screen("user_code=", T), "{}", c.screen());
    let uri = find_complete_uri(&c.screen()).unwrap();
    idp.approve(&uri, user);
    let started = format!("BOB-SCREEN-{user}");
    assert!(c.expect(&started, T), "{}", c.output());
    c.kill_hard();
}

#[test]
fn operators_by_group_are_those_the_identity_providers_token_names() {
    let idp = Idp::start(&[]);
    let (s, keys) = setup(
        "groups = [\"staff\"]",
        &oidc_section(&idp.issuer, "enroll_ttl = \"1h\""),
        &["dave"],
    );
    assert!(s.gw.wait_log("identity provider discovered", T).is_some());
    // At the test IdP bob is in "staff", carol only in "hermes-users".
    let (bob, carol) = (
        Keypair::new(s.tmp.path(), "bob-laptop"),
        Keypair::new(s.tmp.path(), "carol-laptop"),
    );
    enroll(&s, &idp, &bob, "bob");
    enroll(&s, &idp, &carol, "carol");

    // An enrolled key carries the groups of the token that bound it.
    let out = s.admin(&bob, &["sessions"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}\n{}", s.gw.log());
    assert!(text(&out.stdout).starts_with('['), "{out:?}");
    let out = s.admin(&carol, &["sessions"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // A key-file user has no groups.
    let out = s.admin(&keys[0], &["sessions"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("carries none"), "{out:?}");
}
