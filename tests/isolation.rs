//! Issue 14: no user can act as another, or as the gateway. Each test plays the hostile user
//! with the real OpenSSH client against the real binary.

mod common;

use common::*;

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
    // The sandbox lets the program run the gateway's binary, so that the socket's own check is
    // what refuses it.
    let bin_dir = std::path::Path::new(BIN).parent().unwrap().display();
    let session = format!(
        "[session]\ncommand = [\"/bin/sh\", \"-c\", \"{BIN} sessions --json --socket {s} >/dev/null 2>&1; echo ADMIN=$?; cat /proc/$PPID/environ >/dev/null 2>&1; echo ENVIRON=$?\"]\n[session.sandbox]\nread = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\", \"/etc\", \"/proc\", \"{bin_dir}\"]\n",
        s = sock.display(),
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

/// What alice's program tries against bob and the gateway, one `NAME=ok|denied` line each.
/// `{D}` is the gateway's directory, `{PUB}` alice's public key, `{MARK}` bob's program's
/// distinctive argument, `{ABSTRACT}` an abstract socket the test listens on.
const ATTACKS: &str = r#"
if [ "$HERMES_DASHBOARD_USER_ID" = bob ]; then echo READY; exec sleep {MARK}; fi
D={D}
r() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "$name=ok"; else echo "$name=denied"; fi; }
r APPEND sh -c "echo {PUB} >> $D/keys/users/bob.keys"
r NEWUSER sh -c "echo {PUB} > $D/keys/users/mallory.keys"
r CONFIG cat $D/gateway.toml
r HOSTKEY cat $D/keys/host_ed25519
r STATE ls $D/state
r AUDIT cat $D/audit.log
r RECORDINGS ls $D/recordings
r BOBHOME ls $D/homes/bob
bob=$(pgrep -x -f "sleep {MARK}")
r FOUNDBOB test -n "$bob"
r KILL kill -KILL $bob
r BOBENV cat /proc/$bob/environ
r GWENV cat /proc/$PPID/environ
r PYTHON /usr/bin/python3 -c pass
r ADMIN /usr/bin/python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b'sessions\n'); sys.exit(0 if s.recv(100) else 1)" $D/state/admin.sock
r ABSTRACT /usr/bin/python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(b'\0'+sys.argv[1].encode())" {ABSTRACT}
r OWN sh -c "echo x > $HOME/f && cat $HOME/f && echo y > $TMPDIR/t"
r STDOUT sh -c "echo x > /dev/stdout"
r OWNTTY sh -c "t=\$(tty) && echo x > \$t"
r PTS sh -c "for t in /dev/pts/[0-9]*; do [ \$t = \"\$(tty)\" ] && continue; true < \$t && exit 0; done; exit 1"
r SYSTEM cat /etc/passwd
echo DONE
"#;

#[test]
fn in_shared_account_mode_a_users_program_reaches_neither_the_gateway_nor_other_users() {
    use std::os::linux::net::SocketAddrExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().canonicalize().unwrap();
    let alice = Keypair::new(&d, "alice_key");
    let bob = Keypair::new(&d, "bob_key");
    let abstract_name = format!("hgw-test-{}", std::process::id());
    let listener = std::os::unix::net::UnixListener::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap(),
    )
    .unwrap();
    let mark = format!("3000.{}", std::process::id());
    let script = ATTACKS
        .replace("{D}", &d.display().to_string())
        .replace("{PUB}", alice.public_line.trim())
        .replace("{MARK}", &mark)
        .replace("{ABSTRACT}", &abstract_name);
    let session = format!(
        "[session]\ncommand = [\"/bin/sh\", \"-c\", '''{script}''']\n[audit]\npath = \"audit.log\"\n[recording]\ndir = \"recordings\"\n"
    );
    let gw = Gateway::start(&d, &config("", &session));
    gw.set_keys("alice", &alice.public_line);
    gw.set_keys("bob", &bob.public_line);
    assert!(gw.wait_log("users=2", T).is_some(), "{}", gw.log());
    assert!(gw.log().contains("Landlock sandbox"), "{}", gw.log());

    // Bob's program runs while alice's attacks.
    let mut bob_session = PtyClient::spawn(&gw.pty_args(&bob), 80, 24);
    assert!(bob_session.expect("READY", T), "{}", bob_session.output());
    // With pipes, then with a terminal of her own (which she may use, and no other).
    for (mode, own_tty) in [("-T", "denied"), ("-tt", "ok")] {
        let out = text(&try_login(&gw, &alice, &[mode, "127.0.0.1"]).stdout);
        assert!(out.contains("DONE"), "{out}");
        let result = |name: &str| field(&out, name);
        for control in ["FOUNDBOB", "PYTHON", "OWN", "SYSTEM", "STDOUT"] {
            assert_eq!(
                result(control),
                "ok",
                "{control} (the sandbox must not block this) {mode}: {out}"
            );
        }
        assert_eq!(result("OWNTTY"), own_tty, "{mode}: {out}");
        for attack in [
            "APPEND",
            "NEWUSER",
            "CONFIG",
            "HOSTKEY",
            "STATE",
            "AUDIT",
            "RECORDINGS",
            "BOBHOME",
            "KILL",
            "BOBENV",
            "GWENV",
            "ADMIN",
            "ABSTRACT",
            "PTS",
        ] {
            assert_eq!(result(attack), "denied", "{attack} {mode}: {out}");
        }
    }
    // The abstract socket saw no connection.
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err());

    // Nothing changed: bob's key file is bob's, his program still runs, and alice's key is
    // still not bob.
    let bob_keys = std::fs::read_to_string(d.join("keys/users/bob.keys")).unwrap();
    assert_eq!(bob_keys.trim(), bob.public_line.trim());
    assert!(!d.join("keys/users/mallory.keys").exists());
    let mut alive = std::process::Command::new("pgrep");
    alive.args(["-x", "-f", &format!("sleep {mark}")]);
    assert!(run(alive, T).status.success(), "bob's program was killed");
    bob_session.send("\x03");
    assert!(bob_session.wait(T).is_some());
    let mut as_bob = gw.ssh(&alice);
    as_bob.args(["-l", "bob", "-T", "127.0.0.1", "whoami"]);
    let whoami = run(as_bob, T);
    assert!(
        !text(&whoami.stdout).contains("bob"),
        "{}",
        text(&whoami.stdout)
    );
    // Each user got a home of their own, private to them.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(d.join("homes/alice"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn without_landlock_shared_account_mode_serves_one_user_only_unless_the_operator_opts_out() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("keys/users")).unwrap();
    for user in ["alice", "bob"] {
        let k = Keypair::new(d, user);
        std::fs::write(d.join(format!("keys/users/{user}.keys")), &k.public_line).unwrap();
    }
    let cfg = d.join("gateway.toml");
    let write = |extra: &str| std::fs::write(&cfg, config("", extra)).unwrap();
    // This kernel has Landlock; the variable makes the gateway act as on one without.
    let no_landlock = |args: &[&str]| {
        let mut c = std::process::Command::new(BIN);
        c.arg("--config")
            .arg(&cfg)
            .args(args)
            .env("HERMES_GATEWAY_TEST_NO_LANDLOCK", "1");
        run(c, T)
    };
    write("");
    let out = no_landlock(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("no Landlock") && err.contains("isolation = \"none\""),
        "{err}"
    );
    let out = no_landlock(&["check-config"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("no Landlock"),
        "{}",
        text(&out.stdout)
    );

    // check-config passes and its output says `said`.
    let passes_saying = |said: &str| {
        let out = no_landlock(&["check-config"]);
        let stdout = text(&out.stdout);
        assert!(out.status.success() && stdout.contains(said), "{stdout}");
    };
    // The operator's explicit choice starts, with a warning saying what it means.
    write("[session]\nisolation = \"none\"\n");
    passes_saying("without a sandbox");
    // One user needs no sandbox to be safe from others.
    std::fs::remove_file(d.join("keys/users/bob.keys")).unwrap();
    write("");
    passes_saying("one user");
}

#[test]
fn a_sandbox_path_that_would_reach_the_gateways_files_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().canonicalize().unwrap();
    std::fs::create_dir_all(d.join("keys/users")).unwrap();
    let cfg = d.join("gateway.toml");
    let check = |extra: &str| {
        std::fs::write(&cfg, config("", extra)).unwrap();
        let mut c = std::process::Command::new(BIN);
        c.arg("--config").arg(&cfg).arg("check-config");
        run(c, T)
    };
    // Reading the directory the config lives in.
    let out = check(&format!(
        "[session.sandbox]\nread = [\"/usr\", \"{}\"]\n",
        d.display()
    ));
    assert!(!out.status.success());
    let said = text(&out.stdout);
    assert!(
        said.contains("the configuration file") && said.contains("read"),
        "{said}"
    );
    // A per-user directory beside the key files: a user named "keys" would own them.
    let out = check("[session.sandbox]\nhome = \"{user_id}\"\n");
    assert!(!out.status.success());
    assert!(text(&out.stdout).contains("home"), "{}", text(&out.stdout));
    // The gateway itself refuses to start the same way.
    std::fs::write(&cfg, config("", "[session.sandbox]\nwrite = [\"keys\"]\n")).unwrap();
    let mut c = std::process::Command::new(BIN);
    c.arg("--config").arg(&cfg);
    let out = run(c, T);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("key files"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_home_skeleton_fills_templates_safely_and_never_follows_a_planted_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().canonicalize().unwrap();
    let skel = d.join("skel");
    std::fs::create_dir_all(skel.join("plugins/p")).unwrap();
    std::fs::write(skel.join("config.yaml"), "plugins: {}\n").unwrap();
    std::fs::write(skel.join("plugins/p/plugin.yaml"), "name: p\n").unwrap();
    std::fs::write(
        skel.join("who.json.tmpl"),
        "{\"id\": \"{user_id}\", \"name\": \"{name}\", \"email\": \"{email}\"}\n",
    )
    .unwrap();
    let session = format!(
        "[session]\ncommand = [\"/bin/sh\", \"-c\", \"echo NAME=[$HERMES_DASHBOARD_USER_NAME] EMAIL=[$HERMES_DASHBOARD_USER_EMAIL]\"]\nclaims_env = {{ HERMES_DASHBOARD_USER_NAME = \"name\", HERMES_DASHBOARD_USER_EMAIL = \"email\" }}\nhome_skeleton = \"{}\"\naccept_env = [\"LANG\"]\n",
        skel.display()
    );
    let gw = Gateway::start(&d, &config("", &session));
    let alice = Keypair::new(&d, "alice_key");
    let bob = Keypair::new(&d, "bob_key");
    // A name with quotes: the JSON template must stay JSON.
    gw.set_keys(
        "alice",
        &format!("# name: Al \"Q\" Ice\n{}", alice.public_line),
    );
    gw.set_keys("bob", &bob.public_line);
    assert!(gw.wait_log("users=2", T).is_some());

    let out = text(&try_login(&gw, &alice, &["-T", "127.0.0.1"]).stdout);
    // From the key file; no email known, so none (not an empty one from anywhere else).
    assert!(out.contains("NAME=[Al \"Q\" Ice] EMAIL=[]"), "{out}");
    let home = d.join("homes/alice/.hermes");
    let who: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("who.json")).unwrap()).unwrap();
    assert_eq!(who["id"], "alice");
    assert_eq!(who["name"], "Al \"Q\" Ice");
    assert!(home.join("plugins/p/plugin.yaml").exists());
    assert!(!home.join("who.json.tmpl").exists());

    // Bob's Hermes home is a symlink he planted towards somewhere else: nothing is copied there,
    // and his program does not start on a half-made home.
    let elsewhere = d.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(d.join("homes/bob")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, d.join("homes/bob/.hermes")).unwrap();
    let out = try_login(&gw, &bob, &["-T", "127.0.0.1"]);
    assert!(!text(&out.stdout).contains("NAME="), "{out:?}");
    assert!(
        std::fs::read_dir(&elsewhere).unwrap().next().is_none(),
        "the copy followed the symlink"
    );
}
