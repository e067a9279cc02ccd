//! End-to-end tests of the SSH front: the real binary, the real OpenSSH client, real PTYs.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// A gateway whose program prints its identity variables and environment, then exits 3.
const ENV_PROGRAM: &str = r#"[session]
command = ["/bin/sh", "-c", "echo ID=$HERMES_DASHBOARD_USER_ID S=$HERMES_SESSION_USER_ID; env; exit 3"]
identity_env = ["HERMES_SESSION_USER_ID"]
"#;

fn setup(extra: &str) -> (tempfile::TempDir, Gateway, Keypair) {
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::new(tmp.path(), "alice_key");
    let gw = Gateway::start_with_env(
        tmp.path(),
        &config("", extra),
        &[("GATEWAY_SECRET_TOKEN", "hunter2")],
    );
    gw.set_keys("alice", &format!("# alice's laptop\n{}\n", key.public_line));
    assert!(
        gw.wait_log("users=1", T).is_some(),
        "key file picked up; log:\n{}",
        gw.log()
    );
    (tmp, gw, key)
}

fn env_of(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn mapped_key_login_gives_the_program_its_identity_in_a_clean_environment() {
    let (_tmp, gw, key) = setup(ENV_PROGRAM);
    let mut ssh = gw.ssh(&key);
    ssh.args(["-T", "-o", "SetEnv=LANG=C.UTF-8 LC_TIME=C", "127.0.0.1"]);
    let out = run(ssh, T);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit status propagates: {out:?}"
    );
    assert!(stdout.contains("ID=alice S=alice"), "{stdout}");
    let env = env_of(&stdout);
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("HERMES_DASHBOARD_USER_ID"), Some("alice"));
    assert_eq!(get("HERMES_SESSION_USER_ID"), Some("alice"));
    assert_eq!(get("LANG"), Some("C.UTF-8"), "accepted client variable");
    assert_eq!(get("LC_TIME"), Some("C"), "LC_* accepted");
    assert!(get("PATH").is_some() && get("HOME").is_some() && get("USER").is_some());
    assert_eq!(
        get("GATEWAY_SECRET_TOKEN"),
        None,
        "gateway secrets never reach the program"
    );
    assert_eq!(
        get("RUST_LOG"),
        None,
        "nothing unnamed leaks from the gateway's environment"
    );
}

#[test]
fn the_client_can_never_set_or_override_identity_variables() {
    let (_tmp, gw, key) = setup(ENV_PROGRAM);
    let mut ssh = gw.ssh(&key);
    ssh.args([
        "-T",
        "-o",
        "SetEnv=HERMES_DASHBOARD_USER_ID=mallory HERMES_SESSION_USER_ID=mallory PATH=/evil LD_PRELOAD=/evil.so",
        "127.0.0.1",
    ]);
    let out = run(ssh, T);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("ID=alice S=alice"), "{stdout}");
    assert!(!stdout.contains("mallory"), "{stdout}");
    assert!(!stdout.contains("/evil"), "{stdout}");
    assert!(
        gw.wait_log("refused client env", T).is_some(),
        "refusal logged: {}",
        gw.log()
    );
    let log = gw.log();
    assert!(log.contains("HERMES_DASHBOARD_USER_ID") && log.contains("alice"));
}

#[test]
fn whoami_prints_the_identity_as_one_json_line() {
    let (_tmp, gw, key) = setup("");
    let mut ssh = gw.ssh(&key);
    ssh.args(["127.0.0.1", "whoami"]);
    let out = run(ssh, T);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["user_id"], "alice");
    assert_eq!(v["provider"], "key");
    assert_eq!(v["method"], "key");
    assert_eq!(v["key_fingerprint"], key.fingerprint().as_str());
    let line = gw.wait_log("authenticated", T).unwrap();
    assert!(
        line.contains("alice") && line.contains(&key.fingerprint()),
        "{line}"
    );
}

#[test]
fn ecdsa_and_rsa_keys_work_too() {
    let (tmp, gw, _key) = setup("");
    let ecdsa = Keypair::of_type(tmp.path(), "ec", &["-t", "ecdsa", "-b", "256"]);
    let rsa = Keypair::of_type(tmp.path(), "rsa", &["-t", "rsa", "-b", "3072"]);
    gw.set_keys(
        "bob",
        &format!("{}\n{}\n", ecdsa.public_line, rsa.public_line),
    );
    assert!(gw.wait_log("users=2", T).is_some());
    for key in [&ecdsa, &rsa] {
        let mut ssh = gw.ssh(key);
        ssh.args(["127.0.0.1", "whoami"]);
        let out = run(ssh, T);
        assert!(text(&out.stdout).contains("\"bob\""), "{out:?}");
        assert!(text(&out.stdout).contains(&key.fingerprint()));
    }
}

#[test]
fn other_exec_commands_are_refused_with_status_1() {
    let (_tmp, gw, key) = setup("");
    let mut ssh = gw.ssh(&key);
    ssh.args(["127.0.0.1", "cat", "/etc/passwd"]);
    let out = run(ssh, T);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not available"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn exec_words_become_arguments_when_configured_never_a_shell() {
    let (_tmp, gw, key) =
        setup("[session]\ncommand = [\"/bin/echo\", \"args:\"]\nexec = \"args\"\n");
    let mut ssh = gw.ssh(&key);
    ssh.args(["127.0.0.1", "one", "$(id)", ";", "two"]);
    let out = run(ssh, T);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout).trim(), "args: one $(id) ; two");
}

#[test]
fn unknown_key_is_refused_and_logged() {
    let (tmp, gw, _key) = setup("");
    let stranger = Keypair::new(tmp.path(), "stranger");
    let mut ssh = gw.ssh(&stranger);
    ssh.args(["127.0.0.1", "whoami"]);
    let out = run(ssh, T);
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("Permission denied"), "{out:?}");
    let line = gw.wait_log("publickey refused", T).expect("refusal logged");
    assert!(line.contains(&stranger.fingerprint()), "{line}");
}

#[test]
fn keys_added_changed_and_removed_take_effect_without_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::new(tmp.path(), "bob_key");
    let gw = Gateway::start(tmp.path(), &config("", ""));
    let login = |gw: &Gateway| {
        let mut ssh = gw.ssh(&key);
        ssh.args(["127.0.0.1", "whoami"]);
        run(ssh, T)
    };
    assert_eq!(
        login(&gw).status.code(),
        Some(255),
        "unknown before the file exists"
    );

    gw.set_keys("bob", &format!("{}\n", key.public_line));
    assert!(
        eventually(T, || text(&login(&gw).stdout).contains("\"bob\"")),
        "added key works: {}",
        gw.log()
    );

    // Moving the key to another user's file changes who it maps to.
    std::fs::remove_file(gw.dir.join("keys/users/bob.keys")).unwrap();
    gw.set_keys("carol", &format!("{}\n", key.public_line));
    assert!(
        eventually(T, || text(&login(&gw).stdout).contains("\"carol\"")),
        "changed mapping works"
    );

    std::fs::remove_file(gw.dir.join("keys/users/carol.keys")).unwrap();
    assert!(
        eventually(T, || login(&gw).status.code() == Some(255)),
        "removed key is refused"
    );
}

#[test]
fn a_bad_key_line_is_reported_as_file_and_line_and_the_rest_still_works() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::new(tmp.path(), "k");
    let gw = Gateway::start(tmp.path(), &config("", ""));
    gw.set_keys(
        "alice",
        &format!(
            "# comment\nssh-ed25519 AAAA-not-base64\n\nno-pty,restrict {}\n",
            key.public_line
        ),
    );
    let line = gw
        .wait_log("alice.keys:2", T)
        .expect("bad line reported with file:line");
    assert!(line.contains("skipped"), "{line}");
    let mut ssh = gw.ssh(&key);
    ssh.args(["127.0.0.1", "whoami"]);
    let out = run(ssh, T);
    assert!(text(&out.stdout).contains("\"alice\""), "{out:?}");
}

#[test]
fn a_key_listed_for_two_users_is_refused_for_both() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::new(tmp.path(), "shared");
    let gw = Gateway::start(tmp.path(), &config("", ""));
    gw.set_keys("alice", &format!("{}\n", key.public_line));
    gw.set_keys("bob", &format!("{}\n", key.public_line));
    assert!(gw.wait_log("refused for both", T).is_some(), "{}", gw.log());
    assert!(gw.wait_log("users=2", T).is_some());
    let mut ssh = gw.ssh(&key);
    ssh.args(["127.0.0.1", "whoami"]);
    assert_eq!(run(ssh, T).status.code(), Some(255));
}

#[test]
fn user_ids_that_could_escape_a_directory_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::new(tmp.path(), "dots");
    let homes = tmp.path().join("homes");
    std::fs::create_dir_all(&homes).unwrap();
    let extra = format!(
        "[session]\ncommand = [\"/bin/sh\", \"-c\", \"pwd\"]\nworkdir = \"{}/{{user_id}}\"\n",
        homes.display()
    );
    let gw = Gateway::start(tmp.path(), &config("", &extra));
    // A file named "...keys" claims the user id "..".
    std::fs::write(
        gw.dir.join("keys/users/...keys"),
        format!("{}\n", key.public_line),
    )
    .unwrap();
    let line = gw.wait_log("not a valid user id", T).expect("reported");
    assert!(line.contains("...keys"), "{line}");
    let mut ssh = gw.ssh(&key);
    ssh.args(["-T", "127.0.0.1"]);
    assert_eq!(run(ssh, T).status.code(), Some(255), "no login as \"..\"");

    // A legitimate user gets a private directory under the template's parent.
    gw.set_keys("alice", &format!("{}\n", key.public_line));
    assert!(gw.wait_log("users=1", T).is_some());
    let mut ssh = gw.ssh(&key);
    ssh.args(["-T", "127.0.0.1"]);
    let out = run(ssh, T);
    assert_eq!(
        text(&out.stdout).trim(),
        homes.join("alice").display().to_string()
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(homes.join("alice"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let made: Vec<_> = std::fs::read_dir(&homes)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        made,
        vec![std::ffi::OsString::from("alice")],
        "nothing else was created"
    );
}

#[test]
fn window_changes_reach_the_program_and_stty_sees_them() {
    let (_tmp, gw, key) = setup("[session]\ncommand = [\"/bin/sh\"]\n");
    let args = gw.pty_args(&key);
    let mut c = PtyClient::spawn(&args, 100, 30);
    c.send("stty size; echo ID=$HERMES_DASHBOARD_USER_ID TERM=$TERM\r");
    assert!(c.expect("30 100", T), "initial size: {}", c.output());
    assert!(c.expect("ID=alice", T), "{}", c.output());
    c.resize(132, 50);
    // ssh forwards SIGWINCH as a window-change request; give it a moment, then ask again.
    assert!(
        eventually(T, || {
            c.send("stty size\r");
            std::thread::sleep(Duration::from_millis(200));
            c.output().contains("50 132")
        }),
        "resized: {}",
        c.output()
    );
    c.send("exit 5\r");
    assert_eq!(c.wait(T), Some(5), "PTY exit status propagates");
}

#[test]
fn exit_status_propagates_with_and_without_a_pty() {
    let (_tmp, gw, key) = setup("[session]\ncommand = [\"/bin/sh\", \"-c\", \"exit 7\"]\n");
    for flag in ["-T", "-tt"] {
        let mut ssh = gw.ssh(&key);
        ssh.args([flag, "127.0.0.1"]);
        assert_eq!(run(ssh, T).status.code(), Some(7), "with {flag}");
    }
}

#[test]
fn a_program_killed_by_a_signal_reports_128_plus_the_signal() {
    let (_tmp, gw, key) = setup("[session]\ncommand = [\"/bin/sh\", \"-c\", \"kill -TERM $$\"]\n");
    let mut ssh = gw.ssh(&key);
    ssh.args(["-T", "127.0.0.1"]);
    assert_eq!(run(ssh, T).status.code(), Some(128 + 15));
}

/// Starts a session whose program leaves children behind, returns its process group id.
fn start_group_session(gw: &Gateway, key: &Keypair) -> (std::process::Child, i32) {
    let mut ssh = gw.ssh(key);
    ssh.args(["-T", "127.0.0.1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = ssh.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let pgid: i32 = line.trim().strip_prefix("PGID=").unwrap().parse().unwrap();
    (child, pgid)
}

#[test]
fn client_disconnect_kills_the_whole_process_group() {
    let (_tmp, gw, key) = setup(
        "[session]\ncommand = [\"/bin/sh\", \"-c\", \"sleep 600 & sleep 600 & echo PGID=$$; wait\"]\nkill_grace = \"500ms\"\n",
    );
    let (mut client, pgid) = start_group_session(&gw, &key);
    assert!(
        group_members(pgid).len() >= 3,
        "program and two children run"
    );
    client.kill().unwrap();
    let _ = client.wait();
    assert!(
        eventually(T, || group_members(pgid).is_empty()),
        "left behind: {:?}",
        group_members(pgid)
    );
}

#[test]
fn programs_that_ignore_sighup_are_killed_after_the_grace_period() {
    let (_tmp, gw, key) = setup(
        "[session]\ncommand = [\"/bin/sh\", \"-c\", \"trap '' HUP; sleep 600 & echo PGID=$$; wait\"]\nkill_grace = \"300ms\"\n",
    );
    let (mut client, pgid) = start_group_session(&gw, &key);
    client.kill().unwrap();
    let _ = client.wait();
    assert!(
        eventually(T, || group_members(pgid).is_empty()),
        "left behind: {:?}",
        group_members(pgid)
    );
    assert!(gw.wait_log("SIGKILL", T).is_some(), "escalation logged");
}

#[test]
fn forwarding_agent_x11_and_sftp_are_refused_and_logged() {
    let (tmp, gw, key) = setup("");
    // Local forwarding (stdio forward opens a direct-tcpip channel).
    let mut ssh = gw.ssh(&key);
    ssh.args(["-W", "127.0.0.1:9", "127.0.0.1"]);
    let out = run(ssh, T);
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(gw.wait_log("refused: local port forwarding", T).is_some());

    // Remote forwarding.
    let mut ssh = gw.ssh(&key);
    ssh.args([
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        "0:127.0.0.1:9",
        "127.0.0.1",
        "whoami",
    ]);
    let out = run(ssh, T);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(gw.wait_log("refused: remote port forwarding", T).is_some());

    // Agent forwarding, with a real agent to forward.
    let sock = tmp.path().join("agent.sock");
    let agent = Agent::start(&sock);
    let mut ssh = gw.ssh(&key);
    ssh.args(["-o", "ForwardAgent=yes", "127.0.0.1", "whoami"])
        .env("SSH_AUTH_SOCK", &sock);
    let out = run(ssh, T);
    drop(agent);
    assert!(
        text(&out.stdout).contains("alice"),
        "session still works: {out:?}"
    );
    assert!(
        gw.wait_log("refused: agent forwarding", T).is_some(),
        "{}",
        gw.log()
    );

    // sftp subsystem.
    let mut sftp = Command::new("sftp");
    let base: Vec<String> = ssh_base_args(gw.port)
        .into_iter()
        .map(|a| if a == "-p" { "-P".to_string() } else { a })
        .collect();
    sftp.args(&base)
        .arg("-i")
        .arg(&key.private)
        .args(["-b", "-", "127.0.0.1"])
        .stdin(std::process::Stdio::null());
    let out = run(sftp, T);
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    let line = gw
        .wait_log("refused: subsystem", T)
        .expect("sftp refusal logged");
    assert!(line.contains("sftp") && line.contains("alice"), "{line}");
}

#[test]
fn several_sessions_per_connection_and_many_connections_at_once() {
    // No per-user session limit here: 24 sessions of one user overlap.
    let (tmp, gw, key) = setup(
        "[session]\ncommand = [\"/bin/sh\", \"-c\", \"echo hi $HERMES_DASHBOARD_USER_ID\"]\n[limits]\nmax_sessions_per_user = 0\n",
    );
    // One connection, several sessions: OpenSSH multiplexing over a control master.
    let ctl = tmp.path().join("ctl");
    let mut master = gw.ssh(&key);
    master
        .args(["-M", "-N", "-o"])
        .arg(format!("ControlPath={}", ctl.display()))
        .arg("127.0.0.1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut master = master.spawn().unwrap();
    assert!(eventually(T, || ctl.exists()), "control master up");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let mut s = gw.ssh(&key);
            s.arg("-o")
                .arg(format!("ControlPath={}", ctl.display()))
                .args(["-T", "127.0.0.1"]);
            std::thread::spawn(move || run(s, T))
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert_eq!(text(&out.stdout).trim(), "hi alice", "{out:?}");
    }
    let _ = master.kill();
    let _ = master.wait();
    let connections = gw.log().matches("authenticated").count();
    assert_eq!(connections, 1, "all sessions shared one connection");

    // Many connections at once.
    let handles: Vec<_> = (0..24)
        .map(|_| {
            let mut s = gw.ssh(&key);
            s.args(["-T", "127.0.0.1"]);
            std::thread::spawn(move || run(s, Duration::from_secs(60)))
        })
        .collect();
    for h in handles {
        assert_eq!(text(&h.join().unwrap().stdout).trim(), "hi alice");
    }
}

#[test]
fn a_missing_program_shows_an_explanation_screen_not_a_silent_disconnect() {
    let (_tmp, gw, key) = setup("[session]\ncommand = [\"hermes-not-installed\", \"--tui\"]\n");
    assert!(
        gw.wait_log("cannot be started", T).is_some(),
        "operator warned at start: {}",
        gw.log()
    );
    let args = gw.pty_args(&key);
    let mut c = PtyClient::spawn(&args, 120, 30);
    assert!(c.expect_screen("could not be started", T), "{}", c.screen());
    for needle in [
        "alice",
        "hermes-not-installed --tui",
        "not found",
        "pip install hermes-agent",
    ] {
        assert!(
            c.screen().contains(needle),
            "screen shows {needle}: {}",
            c.screen()
        );
    }
    c.send("q");
    assert_eq!(c.wait(T), Some(127));

    // Without a PTY the same facts arrive as text on stderr.
    let mut ssh = gw.ssh(&key);
    ssh.args(["-T", "127.0.0.1"]);
    let out = run(ssh, T);
    assert_eq!(out.status.code(), Some(127));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("alice") && stderr.contains("not found"),
        "{stderr}"
    );
}

#[test]
fn demo_tui_shows_identity_and_redraws_on_resize() {
    let extra = format!(
        "[session]\ncommand = [\"{BIN}\", \"demo-tui\"]\nidentity_env = [\"HERMES_SESSION_USER_ID\"]\n"
    );
    let (_tmp, gw, key) = setup(&extra);
    let args = gw.pty_args(&key);
    let mut c = PtyClient::spawn(&args, 90, 28);
    assert!(c.expect_screen("90x28", T), "{}", c.screen());
    let screen = c.screen();
    let line = |name: &str| {
        screen
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line("HERMES_DASHBOARD_USER_ID").contains("alice"),
        "{screen}"
    );
    assert!(line("HERMES_SESSION_USER_ID").contains("alice"), "{screen}");
    c.resize(110, 33);
    assert!(c.expect_screen("110x33", T), "redrawn: {}", c.screen());
    c.send("q");
    assert_eq!(c.wait(T), Some(0));
}
