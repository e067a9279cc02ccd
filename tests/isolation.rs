//! Issue 14: no user can act as another, or as the gateway. Each test plays the hostile user
//! with the real OpenSSH client against the real binary.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn gateway(session: &str) -> (tempfile::TempDir, Gateway, Keypair) {
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::new(tmp.path(), "alice_key");
    let gw = Gateway::start(tmp.path(), &config("", session));
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    (tmp, gw, key)
}

/// `KEY=value` from a program's output.
fn field(out: &str, key: &str) -> String {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {out:?}"))
        .to_owned()
}

/// The program reports its session id, pid and controlling terminal from /proc/self/stat.
const WHO_AM_I: &str = "[session]\ncommand = [\"/bin/sh\", \"-c\", \"read pid comm state ppid pgrp sid tty rest < /proc/self/stat; echo PID=$pid SID=$sid TTY=$tty\"]\n";

#[test]
fn every_program_leads_a_session_of_its_own_with_or_without_a_pty() {
    let (_tmp, gw, key) = gateway(WHO_AM_I);
    // Pipes (ssh -T): its own session, and no controlling terminal (not the gateway's).
    let mut ssh = gw.ssh(&key);
    ssh.args(["-T", "127.0.0.1"]);
    let out = text(&run(ssh, T).stdout);
    assert_eq!(field(&out, "SID"), field(&out, "PID"), "{out}");
    assert_eq!(field(&out, "TTY"), "0", "{out}");
    // A PTY: its own session with the PTY as its terminal.
    let mut ssh = gw.ssh(&key);
    ssh.args(["-tt", "127.0.0.1"]);
    let out = text(&run(ssh, T).stdout);
    assert_eq!(field(&out, "SID"), field(&out, "PID"), "{out}");
    assert_ne!(field(&out, "TTY"), "0", "{out}");
}

fn try_login(gw: &Gateway, key: &Keypair, args: &[&str]) -> std::process::Output {
    let mut ssh = gw.ssh(key);
    ssh.args(args);
    run(ssh, T)
}

#[test]
fn key_file_options_narrow_what_a_key_may_do() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(tmp.path(), &config("", WHO_AM_I));
    let keys: Vec<Keypair> = (0..7)
        .map(|i| Keypair::new(tmp.path(), &format!("k{i}")))
        .collect();
    let line = |opts: &str, k: &Keypair| format!("{opts} {}\n", k.public_line);
    gw.set_keys(
        "alice",
        &[
            line("from=\"10.9.9.9\"", &keys[0]),
            line("from=\"10.0.0.0/8,127.0.0.0/8,!127.0.0.2\"", &keys[1]),
            line("expiry-time=\"20200101\"", &keys[2]),
            line("expiry-time=\"29991231Z\",no-port-forwarding", &keys[3]),
            line("no-pty", &keys[4]),
            line("restrict", &keys[5]),
            line("command=\"/bin/sh\"", &keys[6]),
        ]
        .concat(),
    );
    assert!(gw.wait_log("users=1", T).is_some());
    let whoami = |k: &Keypair| try_login(&gw, k, &["127.0.0.1", "whoami"]);
    // from=: only from matching addresses.
    assert_eq!(
        whoami(&keys[0]).status.code(),
        Some(255),
        "from=\"10.9.9.9\" logged in from 127.0.0.1"
    );
    assert!(
        whoami(&keys[1]).status.success(),
        "from= with a matching CIDR"
    );
    // expiry-time=: not after it.
    assert_eq!(
        whoami(&keys[2]).status.code(),
        Some(255),
        "an expired key logged in"
    );
    assert!(
        whoami(&keys[3]).status.success(),
        "a key that expires in 2999"
    );
    // An option the gateway cannot honour skips the line, reported with file:line.
    assert_eq!(
        whoami(&keys[6]).status.code(),
        Some(255),
        "command= was ignored"
    );
    let log = gw.log();
    assert!(log.contains("alice.keys:7: line skipped: option"), "{log}");
    assert!(log.contains("not allowed from this address"), "{log}");
    assert!(log.contains("key expired"), "{log}");
    // no-pty and restrict: no PTY (the program still runs, without a terminal), no browser
    // terminal either.
    for k in [&keys[4], &keys[5]] {
        // From a terminal, as a person connects (an explicit -t makes OpenSSH give up instead).
        let c = PtyClient::spawn(&gw.pty_args(k), 80, 24);
        assert!(c.expect("TTY=", T), "{}", c.output());
        let out = c.output();
        assert!(out.contains("PTY allocation request failed"), "{out}");
        assert_eq!(field(&out, "TTY"), "0", "{out}");
        let out = try_login(&gw, k, &["127.0.0.1", "link"]);
        assert!(
            text(&out.stderr).contains("may not open a terminal"),
            "{out:?}"
        );
    }
    // check-config names the bad line too.
    let out = run(
        {
            let mut c = std::process::Command::new(BIN);
            c.arg("--config")
                .arg(tmp.path().join("gateway.toml"))
                .arg("check-config");
            c
        },
        T,
    );
    assert!(text(&out.stdout).contains("alice.keys:7:"), "{out:?}");
}

#[test]
fn private_directories_are_tightened_or_refused_at_start() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let audit_dir = tmp.path().join("audit");
    let recordings = tmp.path().join("recordings");
    for d in [&state, &audit_dir, &recordings] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let log = audit_dir.join("audit.log");
    std::fs::write(&log, "").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
    let cfg = config(
        "",
        "[audit]\npath = \"audit/audit.log\"\n[recording]\ndir = \"recordings\"\n",
    );
    let gw = Gateway::start(tmp.path(), &cfg);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    // A log directory may be shared (/var/log): only the file is the gateway's.
    assert_eq!(mode(&audit_dir), 0o777);
    assert_eq!(mode(&log), 0o600);
    assert_eq!(mode(&recordings), 0o700);
    assert!(gw.log().contains("tightened the mode"), "{}", gw.log());
    drop(gw);
    // A state directory another account owns: its owner could read or plant enrollments.
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    let out = run(
        {
            let mut c = std::process::Command::new(BIN);
            c.arg("--config").arg(tmp.path().join("gateway.toml"));
            c
        },
        T,
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("belongs to uid 65534"), "{err}");
}

#[test]
fn a_program_can_neither_use_the_admin_socket_nor_read_the_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("state/admin.sock");
    // As a signed-in user's program would: same account as the gateway (root here).
    let session = format!(
        "[session]\ncommand = [\"/bin/sh\", \"-c\", \"{BIN} sessions --json --socket {s} >/dev/null 2>&1; echo ADMIN=$?; cat /proc/$PPID/environ >/dev/null 2>&1; echo ENVIRON=$?\"]\n",
        s = sock.display()
    );
    let gw = Gateway::start(tmp.path(), &config("", &session));
    let key = Keypair::new(tmp.path(), "alice_key");
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    let out = text(&try_login(&gw, &key, &["-T", "127.0.0.1"]).stdout);
    assert_ne!(
        field(&out, "ADMIN"),
        "0",
        "a program listed the sessions: {out}"
    );
    assert_ne!(
        field(&out, "ENVIRON"),
        "0",
        "a program read the gateway's environment: {out}"
    );
    assert!(gw
        .log()
        .contains("refused: admin socket connection from a session's program"));
    // The operator, from outside, still can.
    let mut c = std::process::Command::new(BIN);
    c.args(["sessions", "--json", "--socket"]).arg(&sock);
    assert!(run(c, T).status.success());
}
