//! Issue 16: sessions that outlive connections. The real OpenSSH client, killed with SIGKILL
//! as a sleeping laptop or a dropped network would leave it, and a new one that comes back.

mod common;

use std::time::Duration;

use common::*;

/// Colours, the alternate screen and bracketed paste, then a counter that runs to 40 (4 s) and
/// stops, so that the screen it leaves is known exactly.
const COUNTER: &str = r#"printf '\033[?1049h\033[?2004h\033[1;31mRED\033[0m \033[44mBLUE\033[0m ready\r\n'; i=0; while [ $i -lt 40 ]; do i=$((i+1)); printf '\rCOUNT %d ' $i; sleep 0.1; done; printf '\r\nDONE\r\n'; exec sleep 600"#;

fn gateway(detach: &str, program: &str) -> (tempfile::TempDir, Gateway, Keypair) {
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::new(tmp.path(), "alice_key");
    let session = format!(
        "[session]\ncommand = [\"/bin/sh\", \"-c\", '''{program}''']\ndetach_timeout = \"{detach}\"\n"
    );
    let gw = Gateway::start(tmp.path(), &config("", &session));
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    (tmp, gw, key)
}

/// The user's sessions as `ssh host sessions` prints them (one JSON object a line).
fn sessions_of(gw: &Gateway, key: &Keypair) -> Vec<serde_json::Value> {
    let mut ssh = gw.ssh(key);
    ssh.args(["127.0.0.1", "sessions"]);
    text(&run(ssh, T).stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The id of the user's one session.
fn only_session(gw: &Gateway, key: &Keypair) -> String {
    let listed = sessions_of(gw, key);
    assert_eq!(listed.len(), 1, "{listed:?}");
    listed[0]["id"].as_str().unwrap().to_owned()
}

/// Waits until the gateway has logged `n` detaches.
fn detaches(gw: &Gateway, n: usize) -> bool {
    gw.wait_log_count("session detached", n)
}

/// What a terminal shows after the counter program's whole output.
fn expected_screen(rows: u16, cols: u16) -> vt100::Parser {
    let mut p = vt100::Parser::new(rows, cols, 0);
    p.process(b"\x1b[?1049h\x1b[?2004h\x1b[1;31mRED\x1b[0m \x1b[44mBLUE\x1b[0m ready\r\n");
    for i in 1..=40 {
        p.process(format!("\rCOUNT {i} ").as_bytes());
    }
    p.process(b"\r\nDONE\r\n");
    p
}

fn same_cells(a: &vt100::Screen, b: &vt100::Screen) -> Result<(), String> {
    let (rows, cols) = a.size();
    for r in 0..rows {
        for c in 0..cols {
            let (x, y) = (a.cell(r, c).unwrap(), b.cell(r, c).unwrap());
            if x.contents() != y.contents()
                || x.fgcolor() != y.fgcolor()
                || x.bgcolor() != y.bgcolor()
                || x.bold() != y.bold()
            {
                return Err(format!("cell {r},{c}: {x:?} vs {y:?}"));
            }
        }
    }
    Ok(())
}

#[test]
fn a_killed_client_leaves_the_program_running_and_the_next_login_sees_the_same_screen() {
    let (_tmp, gw, key) = gateway("5m", COUNTER);
    let mut first = PtyClient::spawn(&gw.pty_args(&key), 80, 24);
    assert!(first.expect_screen("COUNT 5 ", T), "{}", first.screen());
    first.kill_hard();
    assert!(gw.wait_log("session detached", T).is_some(), "{}", gw.log());

    // The program went on counting with nobody attached (it reached 40 and said DONE), and a
    // new login comes back to exactly the screen it left.
    let back = PtyClient::spawn(&gw.pty_args(&key), 80, 24);
    assert!(back.expect_screen("DONE", T), "{}", back.screen());
    let got = back.terminal();
    let want = expected_screen(24, 80);
    assert_eq!(got.screen().contents(), want.screen().contents());
    same_cells(got.screen(), want.screen()).unwrap();
    assert!(
        got.screen().alternate_screen(),
        "back on the alternate screen"
    );
    assert!(
        got.screen().bracketed_paste(),
        "the program's modes restored"
    );
    assert_eq!(
        got.screen().cursor_position(),
        want.screen().cursor_position()
    );
    assert!(gw.log().contains("reattaching"), "{}", gw.log());
}

#[test]
fn users_list_attach_start_and_end_their_sessions_and_never_anyone_elses() {
    let (tmp, gw, key) = gateway("5m", "echo READY-$$; exec cat");
    let bob = Keypair::new(tmp.path(), "bob_key");
    gw.set_keys("bob", &bob.public_line);
    assert!(gw.wait_log("users=2", T).is_some());
    let cmd = |k: &Keypair, args: &[&str]| {
        let mut ssh = gw.ssh(k);
        ssh.args(args);
        run(ssh, T)
    };
    let list = |k: &Keypair| sessions_of(&gw, k);
    let mut a = PtyClient::spawn(&gw.pty_args(&key), 80, 24);
    assert!(a.expect("READY-", T));
    a.kill_hard();
    assert!(gw.wait_log("session detached", T).is_some());
    // `new` starts a second one although one is detached.
    let with_tty = |words: &[&str]| {
        let mut args = gw.pty_args(&key);
        args.insert(args.len() - 1, "-t".into());
        args.extend(words.iter().map(|w| w.to_string()));
        args
    };
    let args = with_tty(&["new"]);
    let mut b = PtyClient::spawn(&args, 80, 24);
    assert!(b.expect("READY-", T));
    let sessions = list(&key);
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(
        sessions.iter().filter(|s| s["state"] == "detached").count(),
        1,
        "{sessions:?}"
    );
    let detached = sessions.iter().find(|s| s["state"] == "detached").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    b.kill_hard();
    // Bob sees none of them and can neither attach nor end one.
    assert!(list(&bob).is_empty());
    let out = cmd(&bob, &["-tt", "127.0.0.1", "attach", &detached]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        cmd(&bob, &["127.0.0.1", "end", &detached]).status.code(),
        Some(1)
    );
    assert_eq!(list(&key).len(), 2);
    // An unknown id: one line, status 1.
    let out = cmd(&key, &["-tt", "127.0.0.1", "attach", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no session"), "{out:?}");
    // Attach by id: the screen as it was, and typing reaches the same program.
    let args = with_tty(&["attach", &detached]);
    let mut c = PtyClient::spawn(&args, 80, 24);
    assert!(c.expect_screen("READY-", T), "{}", c.screen());
    c.send("still-here\r");
    // The terminal's echo, then cat's copy: the program read it.
    assert!(
        eventually(T, || c.screen().matches("still-here").count() >= 2),
        "{}",
        c.screen()
    );
    // End the other one by id.
    let other = list(&key)
        .into_iter()
        .find(|s| s["id"] != detached.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(cmd(&key, &["127.0.0.1", "end", &other]).status.success());
    assert!(eventually(T, || list(&key).len() == 1));
}

#[test]
fn a_session_ends_when_nobody_comes_back_and_its_end_is_reported_once() {
    // Ends by itself while detached: reported at the next login.
    let (_tmp, gw, key) = gateway("5m", "echo READY; sleep 2; exit 3");
    let mut a = PtyClient::spawn(&gw.pty_args(&key), 80, 24);
    assert!(a.expect("READY", T));
    a.kill_hard();
    assert!(gw.wait_log("program exited", T).is_some(), "{}", gw.log());
    assert!(sessions_of(&gw, &key).is_empty());
    let c = PtyClient::spawn(&gw.pty_args(&key), 80, 24);
    assert!(c.expect("exit status 3", T), "{}", c.output());
    drop(c);
    let c = PtyClient::spawn(&gw.pty_args(&key), 80, 24);
    assert!(c.expect("READY", T));
    assert!(!c.output().contains("exit status 3"), "reported once");
    drop(c);

    // Nobody comes back within detach_timeout: the program is ended.
    let (_tmp, gw, key) = gateway("1s", "echo READY-$$; exec sleep 600");
    let mut a = PtyClient::spawn(&gw.pty_args(&key), 80, 24);
    assert!(a.expect("READY-", T));
    let pid: i32 = a
        .output()
        .split("READY-")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    a.kill_hard();
    assert!(
        gw.wait_log("no client left; ending the program", T)
            .is_some(),
        "{}",
        gw.log()
    );
    assert!(eventually(T, || !std::path::Path::new(&format!(
        "/proc/{pid}"
    ))
    .exists()));
}

#[test]
fn detached_sessions_are_capped_per_user_and_every_attach_and_detach_is_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::new(tmp.path(), "alice_key");
    let session = "[session]\ncommand = [\"/bin/sh\", \"-c\", \"echo READY; exec sleep 600\"]\ndetach_timeout = \"5m\"\n[limits]\nmax_detached_per_user = 2\n[audit]\npath = \"audit.log\"\n";
    let gw = Gateway::start(tmp.path(), &config("", session));
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    let mut args = gw.pty_args(&key);
    args.insert(args.len() - 1, "-t".into());
    args.push("new".into());
    for _ in 0..3 {
        let mut c = PtyClient::spawn(&args, 80, 24);
        assert!(c.expect("READY", T));
        c.kill_hard();
    }
    // The longest-detached one ends; two stay.
    assert!(
        gw.wait_log("more than 2 detached sessions", T).is_some(),
        "{}",
        gw.log()
    );
    assert!(eventually(T, || sessions_of(&gw, &key).len() == 2));
    // The next login hears about it, then picks one of the two left.
    let mut c = PtyClient::spawn(&gw.pty_args(&key), 80, 24);
    assert!(
        c.expect("more than 2 detached sessions", T),
        "{}",
        c.output()
    );
    assert!(c.expect_screen("Your sessions", T), "{}", c.screen());
    c.send("\r");
    let audit = tmp.path().join("audit.log");
    let count = |what: &str| {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.contains(&format!("\"event\":\"{what}\"")) && l.contains("\"owner\":\"alice\"")
            })
            .count()
    };
    assert!(eventually(T, || count("detach") == 3 && count("attach") == 1));
}

/// A gateway with the web front where alice is both a key-file user and the IdP's alice
/// (linked), so her SSH and browser sessions are one user's; and her key.
fn web_and_key() -> (common::webclient::Web, Keypair) {
    let w = common::webclient::Web::start_with(
        "[session]\ncommand = [\"/bin/sh\"]\ndetach_timeout = \"5m\"\n[audit]\npath = \"audit.log\"\n",
        "",
        "linked_key_users = [\"alice\"]\n",
        &[],
    );
    let key = Keypair::new(w.tmp.path(), "alice_key");
    w.gw.set_keys("alice", &key.public_line);
    assert!(w.gw.wait_log("users=1", T).is_some());
    (w, key)
}

#[test]
fn a_session_moves_between_the_terminal_and_the_browser() {
    use common::idp::browser_login;
    use common::webclient::{open_ws, read_until, type_line, ws_ticket_with};
    let (w, key) = web_and_key();
    let browser = browser_login(&w.url, "alice");
    // A ticket bound to session `id` (`POST /api/auth/ws-ticket {"session": ID}`).
    let ticket = |b: &reqwest::blocking::Client, id: &str| {
        ws_ticket_with(&w.url, b, &w.url, &format!(r#"{{"session":"{id}"}}"#))
    };

    // Started over SSH, then left.
    let mut term = PtyClient::spawn(&w.gw.pty_args(&key), 80, 24);
    term.send("echo FROM-SSH-$((40+2))\r");
    assert!(term.expect_screen("FROM-SSH-42", T), "{}", term.screen());
    term.kill_hard();
    assert!(w.gw.wait_log("session detached", T).is_some());
    // The browser lists it and opens it: the screen as it was, and typing goes in.
    let listed: Vec<serde_json::Value> = browser
        .get(format!("{}/api/sessions", w.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    let (status, t) = ticket(&browser, &id);
    assert_eq!(status, 200, "{t}");
    let token = t["ticket"].as_str().unwrap().to_owned();
    let mut ws = open_ws(&w.url, &format!("ticket={token}&cols=80&rows=24"), &w.url).unwrap();
    assert!(read_until(&mut ws, "FROM-SSH-42").contains("FROM-SSH-42"));
    type_line(&mut ws, "echo FROM-BROWSER-$((40+3))");
    assert!(read_until(&mut ws, "FROM-BROWSER-43").contains("FROM-BROWSER-43"));
    drop(ws);
    assert!(eventually(T, || w
        .gw
        .log()
        .contains("browser left; session detached")));
    // The browser leaving is audited like a terminal's: the SSH client's detach, then this one.
    let path = w.tmp.path().join("audit.log");
    let detaches = || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"event\":\"detach\"") && l.contains("\"owner\":\"alice\""))
            .count()
    };
    assert!(
        eventually(T, || detaches() == 2),
        "{} detach records",
        detaches()
    );
    // Back over SSH: both lines on the screen.
    let back = PtyClient::spawn(&w.gw.pty_args(&key), 80, 24);
    assert!(
        back.expect_screen("FROM-BROWSER-43", T),
        "{}",
        back.screen()
    );
    assert!(back.screen().contains("FROM-SSH-42"));
    // Another user's browser cannot get a ticket for it, nor can a malformed body.
    let bob = browser_login(&w.url, "bob");
    let (status, t) = ticket(&bob, &id);
    assert_eq!(
        (status, t["error"].as_str()),
        (404, Some("no such session of yours"))
    );
    let (status, _) = ws_ticket_with(&w.url, &bob, &w.url, r#"{"session": 7}"#);
    assert_eq!(status, 400);
    // A ticket outlives its session by nothing: once the session ends, the bound ticket is void.
    let (status, t) = ticket(&browser, &id);
    assert_eq!(status, 200, "{t}");
    let mut end = w.gw.ssh(&key);
    end.args(["127.0.0.1", "end", &id]);
    assert!(run(end, T).status.success());
    assert!(eventually(T, || sessions_of(&w.gw, &key).is_empty()));
    let late = open_ws(
        &w.url,
        &format!("ticket={}", t["ticket"].as_str().unwrap()),
        &w.url,
    );
    assert_eq!(late.err(), Some(404));
}

#[test]
fn several_clients_share_a_session_and_the_pty_follows_the_one_typing() {
    let (_tmp, gw, key) = gateway("5m", "echo READY; exec sh");
    let a = PtyClient::spawn(&gw.pty_args(&key), 80, 24);
    assert!(a.expect("READY", T));
    let listed = sessions_of(&gw, &key);
    assert_eq!(listed[0]["clients"], 1, "{listed:?}");
    let id = only_session(&gw, &key);
    let mut args = gw.pty_args(&key);
    args.insert(args.len() - 1, "-t".into());
    args.extend(["attach".into(), id]);
    let mut b = PtyClient::spawn(&args, 100, 30);
    // Each sees who else is there.
    assert!(a.expect("is attached too (2 clients)", T), "{}", a.output());
    // Input from either goes in, output goes to both; the PTY takes the typing client's size.
    b.send("stty size\r");
    assert!(b.expect("30 100", T), "{}", b.output());
    assert!(a.expect("30 100", T), "{}", a.output());
    let mut a = a;
    a.send("stty size\r");
    assert!(a.expect("24 80", T), "{}", a.output());
    assert!(b.expect("24 80", T), "{}", b.output());
    b.kill_hard();
    assert!(a.expect("left (1 clients)", T), "{}", a.output());
    a.send("echo STILL-$((6*7))\r");
    assert!(a.expect("STILL-42", T));
}

/// `ssh host share ID` as alice, and the token it prints.
fn share_token(gw: &Gateway, key: &Keypair, id: &str) -> String {
    let mut ssh = gw.ssh(key);
    ssh.args(["127.0.0.1", "share", id]);
    let shared = text(&run(ssh, T).stdout);
    shared
        .rsplit(" watch ")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("{shared}"))
        .to_owned()
}

#[test]
fn a_watcher_who_stops_reading_never_holds_up_the_owner_and_catches_up_later() {
    use std::io::Read;
    let (tmp, gw, key) = gateway("5m", "echo READY; exec sh");
    let bob = Keypair::new(tmp.path(), "bob_key");
    gw.set_keys("bob", &bob.public_line);
    assert!(gw.wait_log("users=2", T).is_some());
    let mut alice = PtyClient::spawn(&gw.pty_args(&key), 80, 24);
    assert!(alice.expect("READY", T));
    let token = share_token(&gw, &key, &only_session(&gw, &key));
    // The real OpenSSH client whose output nobody reads: its stdout pipe fills, it stops reading
    // the connection, and the channel window and the socket buffers fill behind it.
    let mut ssh = gw.ssh(&bob);
    ssh.args(["-tt", "127.0.0.1", "watch", &token])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut stalled = ssh.spawn().unwrap();
    assert!(
        alice.expect("(watching) is watching too", T),
        "{}",
        alice.output()
    );
    // Far more output than every buffer between the gateway and that client holds.
    alice.send("head -c 30000000 /dev/zero | tr '\\0' x; echo; echo DONE-$((6*7))\r");
    assert!(
        alice.expect("DONE-42", Duration::from_secs(90)),
        "the owner was held up by a watcher who stopped reading"
    );
    // The watcher reads again: it skipped what it missed and gets the screen as it stands.
    let mut out = stalled.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tail = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n @ 1..) = out.read(&mut buf) {
            tail.extend_from_slice(&buf[..n]);
            if tail.windows(7).any(|w| w == b"DONE-42") {
                let _ = tx.send(());
                return;
            }
            let keep = tail.len().saturating_sub(16);
            tail.drain(..keep);
        }
    });
    // A keystroke from alice makes sure there is output after the watcher drained its queue.
    alice.send("\r");
    assert!(rx.recv_timeout(Duration::from_secs(90)).is_ok());
    let _ = stalled.kill();
    let _ = stalled.wait();
}

#[test]
fn the_operator_watches_a_session_from_the_console_read_only_and_the_owner_is_told() {
    let session = "[session]\ncommand = [\"/bin/sh\", \"-c\", \"echo READY; exec sh\"]\ndetach_timeout = \"5m\"\n[audit]\npath = \"audit.log\"\n";
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::new(tmp.path(), "alice_key");
    let gw = Gateway::start(tmp.path(), &config("", session));
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    let mut alice = PtyClient::spawn(&gw.pty_args(&key), 80, 24);
    assert!(alice.expect("READY", T));
    alice.send("echo SECRET-$((7*6))\r");
    assert!(alice.expect_screen("SECRET-42", T));
    let socket = tmp.path().join("state/admin.sock").display().to_string();
    let mut console = PtyClient::spawn_program(
        BIN,
        &["sessions".into(), "--socket".into(), socket],
        140,
        30,
    );
    assert!(console.expect_screen("alice", T), "{}", console.screen());
    console.send("w");
    // The screen as it stands, then live output; the owner is told who watches.
    assert!(
        console.expect_screen("SECRET-42", T),
        "{}",
        console.screen()
    );
    assert!(
        alice.expect("the operator is watching too", T),
        "{}",
        alice.output()
    );
    console.send("echo OPERATOR-$((1+1))\r");
    alice.send("echo AFTER-$((5+5))\r");
    assert!(console.expect_screen("AFTER-10", T), "{}", console.screen());
    assert!(alice.expect_screen("AFTER-10", T));
    assert!(!alice.output().contains("OPERATOR"), "{}", alice.output());
    // q stops watching and brings the table back; the owner is told.
    console.send("q");
    assert!(
        console.expect_screen("stopped watching", T),
        "{}",
        console.screen()
    );
    assert!(alice.expect("the operator left", T), "{}", alice.output());
    console.send("q");
    assert!(console.wait(T).is_some());
    let audit = audit_when(&tmp.path().join("audit.log"), |l| {
        l.contains("\"watch_end\"")
    });
    for what in ["watch_start", "watch_end"] {
        assert!(
            audit
                .lines()
                .any(|l| l.contains(&format!("\"event\":\"{what}\""))
                    && l.contains("\"user_id\":\"operator\"")
                    && l.contains("\"owner\":\"alice\"")),
            "{audit}"
        );
    }
}

#[test]
fn a_shared_session_is_watched_read_only_once() {
    let (tmp, gw, key) = gateway("5m", "echo READY-$HERMES_DASHBOARD_USER_ID; exec sh");
    let bob = Keypair::new(tmp.path(), "bob_key");
    gw.set_keys("bob", &bob.public_line);
    assert!(gw.wait_log("users=2", T).is_some());
    let mut alice = PtyClient::spawn(&gw.pty_args(&key), 80, 24);
    assert!(alice.expect("READY-alice", T));
    let id = only_session(&gw, &key);
    // Bob cannot share alice's session; alice can.
    let mut ssh = gw.ssh(&bob);
    ssh.args(["127.0.0.1", "share", &id]);
    assert_eq!(run(ssh, T).status.code(), Some(1));
    let token = share_token(&gw, &key, &id);
    let watch_args = |k: &Keypair| {
        let mut args = gw.pty_args(k);
        args.insert(args.len() - 1, "-t".into());
        args.extend(["watch".into(), token.clone()]);
        args
    };
    let mut watcher = PtyClient::spawn(&watch_args(&bob), 80, 24);
    assert!(
        watcher.expect_screen("READY-alice", T),
        "{}",
        watcher.screen()
    );
    assert!(
        alice.expect("bob from 127.0.0.1 (watching) is watching too", T),
        "{}",
        alice.output()
    );
    // The watcher sees what alice does; what the watcher types never reaches the program.
    alice.send("echo ALICE-$((20+1))\r");
    assert!(watcher.expect("ALICE-21", T), "{}", watcher.output());
    watcher.send("echo MALLORY-$((30+3))\r");
    alice.send("echo AFTER-$((50+5))\r");
    assert!(alice.expect("AFTER-55", T));
    assert!(watcher.expect("AFTER-55", T));
    assert!(!alice.output().contains("MALLORY"), "{}", alice.output());
    assert!(!alice.output().contains("33"), "{}", alice.output());
    // The link is single-use.
    let again = PtyClient::spawn(&watch_args(&bob), 80, 24);
    assert!(again.expect("not valid", T), "{}", again.output());
    watcher.kill_hard();
    assert!(alice.expect("(watching) left", T), "{}", alice.output());
    // Alice's session is still attached (a watcher leaving detaches nothing).
    assert_eq!(sessions_of(&gw, &key)[0]["state"], "attached");
    // The operator's view shows it too: one client, no watcher left.
    let mut admin = std::process::Command::new(BIN);
    admin
        .args(["sessions", "--json", "--socket"])
        .arg(tmp.path().join("state/admin.sock"));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&run(admin, T).stdout).unwrap();
    let row = listed.iter().find(|r| r["user"] == "alice").unwrap();
    assert_eq!(row["clients"], 1, "{row}");
    assert_eq!(row["watchers"], 0, "{row}");
}

#[test]
fn with_several_detached_sessions_a_login_picks_one_or_starts_anew() {
    let (_tmp, gw, key) = gateway("5m", "echo READY-$$; exec cat");
    let mut args = gw.pty_args(&key);
    args.insert(args.len() - 1, "-t".into());
    args.push("new".into());
    let mut pids = Vec::new();
    for _ in 0..2 {
        let mut c = PtyClient::spawn(&args, 80, 24);
        assert!(c.expect("READY-", T));
        let out = c.output();
        pids.push(
            out.split("READY-")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned(),
        );
        c.kill_hard();
    }
    assert!(detaches(&gw, 2));
    // The picker lists both, the most recently active first; down + Enter attaches the other.
    let mut c = PtyClient::spawn(&gw.pty_args(&key), 80, 24);
    assert!(c.expect_screen("Your sessions", T), "{}", c.screen());
    c.send("\x1b[B");
    c.send("\r");
    assert!(
        c.expect_screen(&format!("READY-{}", pids[0]), T),
        "{}",
        c.screen()
    );
    c.kill_hard();
    assert!(detaches(&gw, 3));
    // n starts a new one.
    let mut c = PtyClient::spawn(&gw.pty_args(&key), 80, 24);
    assert!(c.expect_screen("Your sessions", T), "{}", c.screen());
    c.send("n");
    assert!(
        eventually(T, || {
            let o = c.output();
            o.matches("READY-").count() >= 1
                && !pids.iter().any(|p| o.contains(&format!("READY-{p}")))
        }),
        "{}",
        c.output()
    );
}

#[test]
fn metrics_count_detached_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::new(tmp.path(), "alice_key");
    let port = common::idp::free_port();
    let session = format!(
        "[session]\ncommand = [\"/bin/sh\", \"-c\", \"echo READY; exec sleep 600\"]\ndetach_timeout = \"5m\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    let gw = Gateway::start(tmp.path(), &config("", &session));
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    let detached = || -> Option<String> {
        let body = reqwest::blocking::get(format!("http://127.0.0.1:{port}/metrics"))
            .ok()?
            .text()
            .ok()?;
        body.lines()
            .find(|l| l.starts_with("hermes_gateway_sessions_detached "))
            .map(|l| l.rsplit(' ').next().unwrap_or("").to_owned())
    };
    let mut a = PtyClient::spawn(&gw.pty_args(&key), 80, 24);
    assert!(a.expect("READY", T));
    assert_eq!(detached().as_deref(), Some("0"));
    a.kill_hard();
    assert!(
        eventually(T, || detached().as_deref() == Some("1")),
        "{:?}",
        detached()
    );
    let mut b = PtyClient::spawn(&gw.pty_args(&key), 80, 24);
    assert!(b.expect_screen("READY", T));
    assert!(eventually(T, || detached().as_deref() == Some("0")));
    b.kill_hard();
    assert!(eventually(T, || detached().as_deref() == Some("1")));
    // Ended while detached: no longer counted.
    let id = only_session(&gw, &key);
    let mut ssh = gw.ssh(&key);
    ssh.args(["127.0.0.1", "end", &id]);
    assert!(run(ssh, T).status.success());
    assert!(
        eventually(T, || detached().as_deref() == Some("0")),
        "{:?}",
        detached()
    );
}

#[test]
fn one_recording_spans_every_attachment_with_markers() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::new(tmp.path(), "alice_key");
    let session = "[session]\ncommand = [\"/bin/sh\", \"-c\", \"echo READY; exec cat\"]\ndetach_timeout = \"5m\"\n[recording]\ndir = \"recordings\"\n";
    let gw = Gateway::start(tmp.path(), &config("", session));
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    let mut a = PtyClient::spawn(&gw.pty_args(&key), 80, 24);
    assert!(a.expect("READY", T));
    a.kill_hard();
    assert!(gw.wait_log("session detached", T).is_some());
    let mut b = PtyClient::spawn(&gw.pty_args(&key), 80, 24);
    assert!(b.expect_screen("READY", T));
    b.send("AFTER-REATTACH\r");
    assert!(b.expect_screen("AFTER-REATTACH", T));
    let dir = tmp.path().join("recordings");
    let cast = || -> String {
        std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        eventually(T, || cast().contains("AFTER-REATTACH")),
        "{}",
        cast()
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "one file per session"
    );
    let text = cast();
    let markers: Vec<&str> = text.lines().filter(|l| l.contains("\"m\"")).collect();
    assert!(markers.iter().any(|m| m.contains("left")), "{text}");
    assert!(markers.iter().any(|m| m.contains("attached")), "{text}");
}

#[test]
fn headless_chromium_opens_an_ssh_session_from_ssh_link_and_types_into_it() {
    let (w, key) = web_and_key();
    let mut term = PtyClient::spawn(&w.gw.pty_args(&key), 80, 24);
    term.send("echo FROM-SSH-$((40+2))\r");
    assert!(term.expect_screen("FROM-SSH-42", T), "{}", term.screen());
    term.kill_hard();
    assert!(w.gw.wait_log("session detached", T).is_some());
    let id = only_session(&w.gw, &key);
    // ssh host link ID: a browser lands on that very session.
    let mut ssh = w.gw.ssh(&key);
    ssh.args(["127.0.0.1", "link", &id]);
    let url = text(&run(ssh, T).stdout).trim().to_owned();
    // The session is inside the ticket: the link is one opaque token.
    assert!(!url.contains("session"), "{url}");
    let chromium = |url: &str, expect: &str, typed: &str, after: &str| {
        let mut cmd = std::process::Command::new("node");
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/idp/browser.mjs"
        ))
        .env("GATEWAY_URL", &w.url)
        .env("OPEN_URL", url)
        .env("EXPECT", expect)
        .env("TYPE", typed)
        .env("EXPECT_AFTER", after);
        let out = run(cmd, Duration::from_secs(120));
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}\n{}",
            text(&out.stderr),
            w.gw.log()
        );
        stdout
    };
    let page = chromium(
        &url,
        "FROM-SSH-42",
        "echo FROM-CHROMIUM-$((40+4))\n",
        "FROM-CHROMIUM-44",
    );
    // The page lists the user's sessions, this one marked as the one open.
    assert!(page.contains(&format!("SESSIONS: {id}* + new")), "{page}");
    // A plain link (no ID) lands on the page, which resumes the detached session as `ssh` would.
    assert!(eventually(T, || w
        .gw
        .log()
        .contains("browser left; session detached")));
    let mut ssh = w.gw.ssh(&key);
    ssh.args(["127.0.0.1", "link"]);
    let url = text(&run(ssh, T).stdout).trim().to_owned();
    chromium(
        &url,
        "FROM-CHROMIUM-44",
        "echo AGAIN-$((40+5))\n",
        "AGAIN-45",
    );
    assert!(w.gw.wait_log_count("browser left; session detached", 2));
    // Back over SSH: what was typed in Chromium ran in the same program.
    let back = PtyClient::spawn(&w.gw.pty_args(&key), 80, 24);
    assert!(back.expect_screen("AGAIN-45", T), "{}", back.screen());
    assert!(
        back.screen().contains("FROM-CHROMIUM-44"),
        "{}",
        back.screen()
    );
    // A link for a session that is not yours is refused.
    let mut ssh = w.gw.ssh(&key);
    ssh.args(["127.0.0.1", "link", "nosuch"]);
    assert_eq!(run(ssh, T).status.code(), Some(1));
}
