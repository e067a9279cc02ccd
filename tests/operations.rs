//! Running it in production: limits, bans, graceful shutdown, reload, audit log, recordings,
//! metrics and the admin socket — against the real binary and the real OpenSSH client.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::idp::free_port;
use common::*;

fn setup(extra: &str) -> (tempfile::TempDir, Gateway, Keypair) {
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::new(tmp.path(), "alice_key");
    let gw = Gateway::start(tmp.path(), &config("", extra));
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    (tmp, gw, key)
}

/// An ssh client running `-T` (the program reads nothing) whose first output line is returned.
fn hold_session(gw: &Gateway, key: &Keypair) -> (std::process::Child, String) {
    let mut ssh = gw.ssh(key);
    ssh.args(["-T", "127.0.0.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = ssh.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    // Keep the pipe open (the program may write more).
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink);
    });
    (child, line)
}

const HOLD: &str = "[session]\ncommand = [\"/bin/sh\", \"-c\", \"echo PGID=$$; exec sleep 600\"]\nkill_grace = \"300ms\"\n";

fn pgid_of(line: &str) -> i32 {
    line.trim().strip_prefix("PGID=").unwrap().parse().unwrap()
}

#[test]
fn connection_and_per_user_session_limits() {
    let (_tmp, gw, key) = setup(&format!(
        "{HOLD}[limits]\nmax_connections = 2\nmax_sessions_per_user = 1\n"
    ));
    let (mut first, _) = hold_session(&gw, &key);
    // A second session of the same user is refused with a clear line.
    let mut ssh = gw.ssh(&key);
    ssh.args(["-T", "127.0.0.1"]);
    let out = run(ssh, T);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("already has 1 sessions"),
        "{out:?}"
    );
    // Two connections are open (one idle after its refusal closes? hold a raw one); a third
    // connection beyond max_connections is closed before any SSH work.
    let mut raw = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut banner = [0u8; 8];
    raw.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"SSH-2.0-");
    let mut third = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(
        third.read(&mut buf).unwrap_or(0),
        0,
        "closed without a banner"
    );
    assert!(gw.wait_log("too many connections", T).is_some());
    let _ = first.kill();
    let _ = first.wait();
}

#[test]
fn unauthenticated_connections_are_dropped_after_the_login_grace() {
    let (_tmp, gw, _key) = setup("[limits]\nlogin_grace = \"1s\"\n");
    let mut raw = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert!(text(&sink).starts_with("SSH-2.0-"));
}

#[test]
fn repeated_failures_ban_the_address_without_any_handshake() {
    let (tmp, gw, key) = setup("[limits]\nauth_failures_before_ban = 2\nban_duration = \"1m\"\n");
    let stranger = Keypair::new(tmp.path(), "stranger");
    for _ in 0..2 {
        let mut ssh = gw.ssh(&stranger);
        ssh.args(["127.0.0.1", "whoami"]);
        assert_eq!(run(ssh, T).status.code(), Some(255));
    }
    assert!(gw.wait_log("address banned", T).is_some(), "{}", gw.log());
    // Now even a valid key from that address is turned away at accept, before the banner.
    let mut raw = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(raw.read(&mut buf).unwrap_or(0), 0);
    let mut ssh = gw.ssh(&key);
    ssh.args(["127.0.0.1", "whoami"]);
    assert_eq!(run(ssh, T).status.code(), Some(255));
}

#[test]
fn idle_sessions_are_warned_then_ended() {
    let (_tmp, gw, key) =
        setup("[session]\ncommand = [\"/bin/sh\"]\n[limits]\nidle_timeout = \"3s\"\n");
    let args = gw.pty_args(&key);
    let mut c = PtyClient::spawn(&args, 100, 30);
    c.send("echo ty''ped\r");
    assert!(c.expect("typed", T));
    assert!(
        c.expect("unless you type", T),
        "warning first: {}",
        c.output()
    );
    assert!(c.expect("session ended: no input", T), "{}", c.output());
    assert!(c.wait(T).is_some());
}

#[test]
fn sigterm_drains_tells_sessions_ends_programs_and_exits_zero() {
    let (_tmp, gw, key) = setup(&format!("{HOLD}[limits]\ndrain_timeout = \"1s\"\n"));
    let (mut a, la) = hold_session(&gw, &key);
    let (mut b, lb) = hold_session(&gw, &key);
    let (ga, gb) = (pgid_of(&la), pgid_of(&lb));
    assert!(!group_members(ga).is_empty() && !group_members(gb).is_empty());
    let start = Instant::now();
    assert_eq!(gw.stop().code(), Some(0), "exit 0");
    assert!(start.elapsed() < Duration::from_secs(8));
    assert!(
        group_members(ga).is_empty() && group_members(gb).is_empty(),
        "no orphans"
    );
    for c in [&mut a, &mut b] {
        assert!(wait_timeout(c, T).is_some(), "clients disconnected");
    }
}

#[test]
fn sigterm_warns_interactive_users_in_one_line() {
    let (_tmp, gw, key) =
        setup("[session]\ncommand = [\"/bin/sh\"]\n[limits]\ndrain_timeout = \"2s\"\n");
    let args = gw.pty_args(&key);
    let mut c = PtyClient::spawn(&args, 100, 30);
    // The quotes keep the token out of the echoed command line (the client's own terminal may
    // echo it before ssh switches to raw mode): only the shell's output contains "ready".
    c.send("echo rea''dy\r");
    assert!(c.expect("ready", T));
    let pid = gw.pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(c.expect("the gateway is going down", T), "{}", c.output());
    assert!(c.wait(T).is_some());
}

#[test]
fn sighup_reloads_keys_and_session_config_and_survives_a_bad_config() {
    let (tmp, gw, key) = setup("[session]\ncommand = [\"/bin/echo\", \"first\"]\n");
    let login = |gw: &Gateway| {
        let mut ssh = gw.ssh(&key);
        ssh.args(["-T", "127.0.0.1"]);
        text(&run(ssh, T).stdout).trim().to_owned()
    };
    assert_eq!(login(&gw), "first");
    let cfg_path = tmp.path().join("gateway.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, cfg.replace("\"first\"", "\"second\"")).unwrap();
    gw.hup();
    assert!(gw.wait_log("configuration reloaded", T).is_some());
    assert_eq!(login(&gw), "second");

    std::fs::write(&cfg_path, "[session]\ncomand = 1\n").unwrap();
    gw.hup();
    let line = gw
        .wait_log("reload failed", T)
        .expect("bad config reported");
    assert!(line.contains("comand"), "{line}");
    assert_eq!(login(&gw), "second", "the running configuration stays");
}

#[test]
fn the_audit_log_records_every_kind_of_event_as_json_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let audit = tmp.path().join("audit/audit.log");
    let (_t, gw, key) = {
        let key = Keypair::new(tmp.path(), "k");
        let gw = Gateway::start(
            tmp.path(),
            &config("", &format!("[session]\ncommand = [\"/bin/sh\", \"-c\", \"exit 4\"]\n[audit]\npath = \"{}\"\n", audit.display())),
        );
        gw.set_keys("alice", &key.public_line);
        assert!(gw.wait_log("users=1", T).is_some());
        ((), gw, key)
    };
    let stranger = Keypair::new(tmp.path(), "stranger");
    let mut ssh = gw.ssh(&stranger);
    ssh.args(["127.0.0.1", "whoami"]);
    run(ssh, T);
    let mut ssh = gw.ssh(&key);
    ssh.args([
        "-T",
        "-o",
        "SetEnv=HERMES_DASHBOARD_USER_ID=mallory",
        "127.0.0.1",
    ]);
    assert_eq!(run(ssh, T).status.code(), Some(4));
    let mut ssh = gw.ssh(&key);
    ssh.args(["-W", "127.0.0.1:9", "127.0.0.1"]);
    run(ssh, T);
    let mut ssh = gw.ssh(&key);
    ssh.args(["127.0.0.1", "cat", "/etc/shadow"]);
    run(ssh, T);

    let records = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
            .collect()
    };
    assert!(eventually(T, || records()
        .iter()
        .any(|r| r["event"] == "session_end")));
    let r = records();
    let find = |ev: &str| {
        r.iter()
            .find(|x| x["event"] == ev)
            .unwrap_or_else(|| panic!("no {ev} in {r:?}"))
    };
    assert_eq!(
        find("auth_failure")["key_fingerprint"],
        stranger.fingerprint().as_str()
    );
    assert_eq!(find("auth_failure")["remote"], "127.0.0.1");
    let ok = find("auth_success");
    assert_eq!(ok["user_id"], "alice");
    assert_eq!(ok["method"], "key");
    let start = find("session_start");
    assert_eq!(start["user_id"], "alice");
    assert!(start["command"].as_str().unwrap().contains("/bin/sh"));
    let end = find("session_end");
    assert_eq!(end["exit_status"], 4);
    assert_eq!(end["session_id"], start["session_id"]);
    assert!(end["duration_ms"].is_u64() && end["bytes_out"].is_u64());
    let refused: Vec<String> = r
        .iter()
        .filter(|x| x["event"] == "refused")
        .map(|x| x["what"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        refused
            .iter()
            .any(|w| w.contains("HERMES_DASHBOARD_USER_ID")),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|w| w.contains("port forwarding")),
        "{refused:?}"
    );
    assert!(r.iter().all(|x| x["ts"].is_string()));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn sessions_are_recorded_as_asciicast_v2() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = tmp.path().join("recordings");
    let key = Keypair::new(tmp.path(), "k");
    let gw = Gateway::start(
        tmp.path(),
        &config(
            "",
            &format!(
                "[session]\ncommand = [\"/bin/sh\"]\n[recording]\ndir = \"{}\"\n",
                rec.display()
            ),
        ),
    );
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    let args = gw.pty_args(&key);
    let mut c = PtyClient::spawn(&args, 90, 25);
    c.send("echo RECORD-ME-$((6*7))\r");
    assert!(c.expect("RECORD-ME-42", T));
    c.resize(100, 40);
    // The program sees the new size once the window change has gone through the gateway.
    c.send("stty size\r");
    assert!(c.expect("40 100", T), "{}", c.output());
    c.send("exit\r");
    assert_eq!(c.wait(T), Some(0));
    let files: Vec<_> = std::fs::read_dir(&rec)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    let name = files[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.starts_with("alice-") && name.ends_with(".cast"),
        "{name}"
    );
    let body = std::fs::read_to_string(&files[0]).unwrap();
    let mut lines = body.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(90), Some(25))
    );
    let events: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut last = 0.0;
    for e in &events {
        let t = e[0].as_f64().unwrap();
        assert!(t >= last, "times increase");
        last = t;
    }
    let output: String = events
        .iter()
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap())
        .collect();
    assert!(output.contains("RECORD-ME-42"));
    assert!(
        events.iter().any(|e| e[1] == "r" && e[2] == "100x40"),
        "{events:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn metrics_are_served_in_prometheus_text_format() {
    let port = free_port();
    let (tmp, gw, key) = setup(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let mut ssh = gw.ssh(&key);
    ssh.args(["127.0.0.1", "whoami"]);
    run(ssh, T);
    let stranger = Keypair::new(tmp.path(), "s");
    let mut ssh = gw.ssh(&stranger);
    ssh.args(["127.0.0.1", "whoami"]);
    run(ssh, T);
    let body = reqwest::blocking::get(format!("http://127.0.0.1:{port}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    let value = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
    };
    assert!(value("hermes_gateway_auth_attempts_total{method=\"key\",result=\"success\"}") >= 1.0);
    assert!(
        // One vocabulary: a refused key is a `key` attempt, as a successful one is.
        value("hermes_gateway_auth_attempts_total{method=\"key\",result=\"failure\"}") >= 1.0
    );
    assert!(value("hermes_gateway_connections_total") >= 2.0);
    assert_eq!(value("hermes_gateway_sessions_active"), 0.0);
    assert!(body.contains("hermes_gateway_session_duration_seconds_bucket"));
    assert!(body.contains("hermes_gateway_device_flows_active"));
    assert!(body.trim_end().ends_with("# EOF"));
}

#[test]
fn the_admin_socket_lists_and_ends_sessions_and_refuses_other_users() {
    let (tmp, gw, key) = setup(HOLD);
    let socket = tmp.path().join("state/admin.sock");
    let (mut client, line) = hold_session(&gw, &key);
    let pgid = pgid_of(&line);
    let list = || {
        let out = run(
            {
                let mut c = Command::new(BIN);
                c.args(["sessions", "--json", "--socket"]).arg(&socket);
                c
            },
            T,
        );
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    };
    let sessions = list();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["user"], "alice");
    assert_eq!(sessions[0]["method"], "key");
    assert_eq!(sessions[0]["front"], "ssh");
    assert!(sessions[0]["command"].as_str().unwrap().contains("/bin/sh"));
    // Without run_as, programs run as the gateway's own account, and the console says which.
    let me = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap();
    assert_eq!(sessions[0]["account"], me.name.as_str());

    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Another user cannot even connect (CI runs as root, so drop to nobody for this).
    if nix::unistd::getuid().is_root() {
        let out = run(
            {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                    .arg(BIN)
                    .args(["sessions", "--json", "--socket"])
                    .arg(&socket);
                c
            },
            T,
        );
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains("ermission denied"), "{out:?}");
    }

    // End it from the console's protocol.
    let id = sessions[0]["id"].as_u64().unwrap();
    let answer = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(hermes_ssh_gateway::ops::admin::request(
            &socket,
            &format!("end {id}"),
        ))
        .unwrap();
    assert!(answer.contains("\"ended\":true"), "{answer}");
    assert!(eventually(T, || group_members(pgid).is_empty()));
    assert!(wait_timeout(&mut client, T).is_some());
    assert!(list().is_empty());
}
