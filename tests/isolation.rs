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
