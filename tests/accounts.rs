//! Per-user Unix accounts and per-session resource limits, against the real binary, the real
//! OpenSSH client, real `useradd` accounts and the kernel's own enforcement (cgroups where the
//! machine lets the gateway create them, rlimits otherwise).
//!
//! These tests create accounts, so they need root (CI runs as root). Every account they create
//! has a per-run prefix and is removed again (`userdel -r`) when the test ends.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::accounts::{require_root, Accounts};
use common::*;

/// A temp dir others may pass through (homes live inside it).
fn shared_tmp() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    tmp
}

/// `[session]` that runs the words after `ssh host` through sh, under per-user accounts.
fn session(acc: &Accounts, tmp: &Path, extra: &str) -> String {
    format!(
        "[session]\ncommand = [\"/bin/sh\", \"-c\", \"eval \\\"$*\\\"\", \"sh\"]\nexec = \"args\"\nkill_grace = \"300ms\"\nrun_as = \"{}{{user_id}}\"\ncreate_accounts = true\nhome_base = \"{}\"\n{extra}",
        acc.prefix,
        tmp.join("homes").display()
    )
}

fn start(tmp: &Path, text: &str, users: &[(&str, &Keypair)]) -> Gateway {
    std::fs::create_dir_all(tmp.join("homes")).unwrap();
    let gw = Gateway::start(tmp, &config("", text));
    for (user, key) in users {
        gw.set_keys(user, &key.public_line);
    }
    assert!(gw.wait_log(&format!("users={}", users.len()), T).is_some());
    gw
}

fn ssh_run(gw: &Gateway, key: &Keypair, command: &str) -> std::process::Output {
    let mut ssh = gw.ssh(key);
    ssh.args(["-T", "127.0.0.1", command]);
    run(ssh, T)
}

/// `KEY=value` pairs printed by a session.
fn field(out: &str, key: &str) -> String {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {out:?}"))
        .to_owned()
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn owner_of(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().uid()
}

#[test]
fn each_user_runs_as_their_own_account_and_cannot_read_the_other() {
    let acc = Accounts::new("i");
    let tmp = shared_tmp();
    let alice = Keypair::new(tmp.path(), "alice_key");
    let bob = Keypair::new(tmp.path(), "bob_key");
    let audit = tmp.path().join("audit.log");
    let hermes = tmp.path().join("hermes");
    let gw = start(
        tmp.path(),
        &session(
            &acc,
            tmp.path(),
            &format!(
                "[session.env]\nHERMES_HOME = \"{}/{{user_id}}\"\n[audit]\npath = \"{}\"\n",
                hermes.display(),
                audit.display()
            ),
        ),
        &[("alice", &alice), ("bob", &bob)],
    );
    let report = "echo UID=$(id -u) GID=$(id -g) GROUPS=$(id -G | tr ' ' ,) HOME=$HOME USER=$USER LOGNAME=$LOGNAME HH=$HERMES_HOME; echo s3cret-$USER > $HOME/secret; echo mine > $HERMES_HOME/memory";
    let mut seen = Vec::new();
    for (user, key) in [("alice", &alice), ("bob", &bob)] {
        let out = ssh_run(&gw, key, report);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{out:?}\n{}", gw.log());
        let pw = acc.passwd(user).expect("the account was created");
        let uid: u32 = field(&stdout, "UID").parse().unwrap();
        assert_ne!(uid, 0);
        assert_eq!(uid, pw.uid.as_raw());
        assert_eq!(field(&stdout, "GID"), pw.gid.as_raw().to_string());
        assert!(
            !field(&stdout, "GROUPS").split(',').any(|g| g == "0"),
            "root's group survived: {stdout}"
        );
        let home = tmp.path().join("homes").join(acc.name(user));
        assert_eq!(field(&stdout, "HOME"), home.display().to_string());
        assert_eq!(field(&stdout, "USER"), acc.name(user));
        assert_eq!(field(&stdout, "LOGNAME"), acc.name(user));
        // The created account: no password, no login shell, private home, our marker.
        assert_eq!(mode_of(&home), 0o700);
        assert_eq!(owner_of(&home), uid);
        assert!(pw.shell.ends_with("nologin"), "{:?}", pw.shell);
        assert!(pw
            .gecos
            .to_string_lossy()
            .starts_with("hermes-ssh-gateway user"));
        let shadow = std::fs::read_to_string("/etc/shadow").unwrap();
        let hash = shadow
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{}:", acc.name(user))))
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .to_owned();
        assert!(
            hash.starts_with('!') || hash == "*",
            "the account has a usable password: {hash:?}"
        );
        // The per-user HERMES_HOME: created for this account, mode 0700.
        let hh = hermes.join(user);
        assert_eq!(field(&stdout, "HH"), hh.display().to_string());
        assert_eq!(owner_of(&hh), uid);
        assert_eq!(mode_of(&hh), 0o700);
        assert_eq!(
            mode_of(&hermes),
            0o711,
            "a shared parent others can pass, not list"
        );
        seen.push(uid);
    }
    assert_ne!(seen[0], seen[1], "two users, one uid");

    // Bob cannot read Alice's files: her home and her HERMES_HOME are closed to him.
    let alice_home = tmp.path().join("homes").join(acc.name("alice"));
    for path in [
        alice_home.join("secret"),
        hermes.join("alice").join("memory"),
    ] {
        let out = ssh_run(&gw, &bob, &format!("cat {}", path.display()));
        assert_ne!(out.status.code(), Some(0), "{out:?}");
        assert!(
            text(&out.stderr).contains("Permission denied"),
            "{}: {out:?}",
            path.display()
        );
    }
    // The sandbox is a second wall: the config is world-readable here (0644, as the test wrote
    // it), and still out of reach of a user's account.
    let config = tmp.path().join("gateway.toml");
    assert_eq!(mode_of(&config) & 0o004, 0o004);
    let out = ssh_run(&gw, &alice, &format!("cat {}", config.display()));
    assert!(
        text(&out.stderr).contains("Permission denied") && out.stdout.is_empty(),
        "{out:?}"
    );
    // whoami names the account too.
    let out = ssh_run(&gw, &alice, "whoami");
    let who: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(who["user_id"], "alice");
    assert_eq!(who["account"], acc.name("alice").as_str(), "{who}");
    // Her terminal is hers (as with sshd), so programs can reopen it by name.
    let mut ssh = gw.ssh(&alice);
    ssh.args(["-tt", "127.0.0.1", "stat -c OWNER=%U $(tty)"]);
    let out = run(ssh, T);
    assert_eq!(
        field(&text(&out.stdout), "OWNER"),
        acc.name("alice"),
        "{out:?}"
    );
    // Alice can.
    let out = ssh_run(
        &gw,
        &alice,
        &format!("cat {}", alice_home.join("secret").display()),
    );
    assert!(
        text(&out.stdout).contains(&format!("s3cret-{}", acc.name("alice"))),
        "{out:?}"
    );

    // The audit log says which account each session ran as.
    assert!(eventually(T, || std::fs::read_to_string(&audit)
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("\"session_start\"")
            && l.contains(&format!(
                "\"account\":\"{}\"",
                acc.name("bob")
            ))
            && l.contains(&format!("\"uid\":{}", seen[1])))));
    drop(gw);
}

#[test]
fn user_ids_cannot_reach_root_or_leave_the_prefix() {
    let acc = Accounts::new("r");
    let tmp = shared_tmp();
    let root_key = Keypair::new(tmp.path(), "root_key");
    let dots_key = Keypair::new(tmp.path(), "dots_key");
    let gw = start(
        tmp.path(),
        &session(&acc, tmp.path(), ""),
        &[("root", &root_key), ("..root", &dots_key)],
    );
    for (user, key) in [("root", &root_key), ("..root", &dots_key)] {
        let out = ssh_run(&gw, key, "echo UID=$(id -u) USER=$USER");
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{out:?}\n{}", gw.log());
        assert_ne!(field(&stdout, "UID"), "0", "user {user} ran as root");
        assert_eq!(
            field(&stdout, "USER"),
            acc.name(user),
            "the prefix was kept"
        );
    }
    drop(gw);

    // A template without a prefix would name root itself for the user "root": refused, with
    // the reason on the client's screen and in the log.
    let tmp2 = shared_tmp();
    let key = Keypair::new(tmp2.path(), "root_key");
    let audit = tmp2.path().join("audit.log");
    let bare = session(
        &acc,
        tmp2.path(),
        &format!("[audit]\npath = \"{}\"\n", audit.display()),
    )
    .replace(
        &format!("run_as = \"{}{{user_id}}\"", acc.prefix),
        "run_as = \"{user_id}\"",
    );
    let gw = start(tmp2.path(), &bare, &[("root", &key)]);
    let out = ssh_run(&gw, &key, "id -u");
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text(&out.stdout).trim().is_empty(),
        "the program ran: {out:?}"
    );
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains("account root") && all.contains("uid 0"),
        "{all}"
    );
    assert!(gw.wait_log("cannot start the session program", T).is_some());
    // A security refusal: in the audit log too.
    assert!(eventually(T, || std::fs::read_to_string(&audit)
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("\"refused\"") && l.contains("uid 0"))));
}

#[test]
fn without_create_accounts_a_missing_account_is_a_clear_refusal() {
    let acc = Accounts::new("n");
    let tmp = shared_tmp();
    let key = Keypair::new(tmp.path(), "alice_key");
    let cfg =
        session(&acc, tmp.path(), "").replace("create_accounts = true", "create_accounts = false");
    let gw = start(tmp.path(), &cfg, &[("alice", &key)]);
    let out = ssh_run(&gw, &key, "id -u");
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "account {} (for user alice) does not exist",
            acc.name("alice")
        )) && err.contains("create_accounts"),
        "{err}"
    );
    assert!(
        acc.passwd("alice").is_none(),
        "an account was created anyway"
    );
    // A user id that cannot become an account name is refused with the reason.
    let long = "a".repeat(40);
    let long_key = Keypair::new(tmp.path(), "long_key");
    gw.set_keys(&long, &long_key.public_line);
    assert!(gw.wait_log("users=2", T).is_some());
    let out = ssh_run(&gw, &long_key, "id -u");
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot make an account name") && err.contains("more than 32"),
        "{err}"
    );
}

/// Runs the gateway binary as `nobody` through setpriv (which drops every capability).
fn as_nobody() -> Vec<&'static str> {
    vec![
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]
}

fn give_to_nobody(dir: &Path) {
    let out = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn run_as_is_refused_without_privileges_and_the_gateway_runs_unprivileged_without_it() {
    require_root();
    let tmp = shared_tmp();
    std::fs::create_dir_all(tmp.path().join("keys/users")).unwrap();
    std::fs::write(
        tmp.path().join("gateway.toml"),
        config(
            "",
            "[session]\ncommand = [\"/bin/sh\", \"-c\", \"echo UID=$(id -u)\"]\nrun_as = \"hermes-{user_id}\"\n",
        ),
    )
    .unwrap();
    give_to_nobody(tmp.path());
    let mut argv = as_nobody();
    let bin = env!("CARGO_BIN_EXE_hermes-ssh-gateway");
    argv.push(bin);
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .arg("--config")
        .arg(tmp.path().join("gateway.toml"));
    let out = run(cmd, T);
    let err = text(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(0),
        "started without privileges: {err}"
    );
    assert!(
        err.contains("run_as") && err.contains("CAP_SETUID") && err.contains("uid 65534"),
        "{err}"
    );

    // Without run_as, nobody can run the gateway; programs run as nobody.
    let tmp = shared_tmp();
    let key = Keypair::new(tmp.path(), "alice_key");
    std::fs::create_dir_all(tmp.path().join("keys/users")).unwrap();
    give_to_nobody(tmp.path());
    let gw = Gateway::start_wrapped(
        tmp.path(),
        &config(
            "",
            "[session]\ncommand = [\"/bin/sh\", \"-c\", \"echo UID=$(id -u) USER=$USER\"]\n",
        ),
        &[],
        &as_nobody(),
    );
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    let out = ssh_run(&gw, &key, "");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}\n{}", gw.log());
    assert_eq!(field(&stdout, "UID"), "65534");
    assert_eq!(field(&stdout, "USER"), "nobody");
}

/// A gateway with per-user accounts and one `[session.limits]` line.
fn limited(
    acc: &Accounts,
    tmp: &tempfile::TempDir,
    limit: &str,
    cgroups: bool,
    users: &[(&str, &Keypair)],
) -> Gateway {
    let limits = format!("[session.limits]\n{limit}\ncgroups = {cgroups}\n");
    start(tmp.path(), &session(acc, tmp.path(), &limits), users)
}

#[test]
fn a_program_over_its_memory_limit_is_stopped_and_told_why_while_another_session_works() {
    // Both ways of enforcing it: a session cgroup (where this machine allows one) and RLIMIT_AS.
    for cgroups in [true, false] {
        memory_limit(cgroups);
    }
}

fn memory_limit(cgroups: bool) {
    let acc = Accounts::new(if cgroups { "mc" } else { "mr" });
    let tmp = shared_tmp();
    let key = Keypair::new(tmp.path(), "alice_key");
    let gw = limited(
        &acc,
        &tmp,
        "memory = \"64MiB\"",
        cgroups,
        &[("alice", &key)],
    );
    // A session that stays open: an interactive cat in a PTY.
    let mut args = gw.pty_args(&key);
    args.push("-tt".into());
    args.push("exec cat".into());
    let mut other = PtyClient::spawn(&args, 80, 24);
    // cat repeats each line after the terminal's echo, so a line seen twice went through it.
    other.send("before\r");
    assert!(other.expect("before\r\nbefore", T), "{}", other.output());

    // awk doubling a string: memory grows without bound until the limit stops it.
    let started = Instant::now();
    let out = ssh_run(
        &gw,
        &key,
        "echo started; exec awk 'BEGIN { s = \"x\"; while (1) s = s s }'",
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("started"), "{out:?}");
    assert!(started.elapsed() < T, "the memory hog was not stopped");
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    // Told why: with a cgroup the gateway saw the OOM kill; with RLIMIT_AS the allocation failed
    // and the gateway names the limit.
    if cgroup_active(&gw, cgroups) {
        assert!(
            stdout.contains("memory limit (64 MiB)"),
            "{stdout}\n{}",
            gw.log()
        );
        assert!(gw.log().contains("limit=\"memory\""), "{}", gw.log());
    } else {
        assert!(
            stdout.contains("64 MiB of memory"),
            "{stdout}\n{}",
            gw.log()
        );
    }
    // The other session is unaffected.
    other.send("after\r");
    assert!(other.expect("after\r\nafter", T), "{}", other.output());
    drop(other);
    // And the gateway is fine.
    let out = ssh_run(&gw, &key, "echo still-here");
    assert!(text(&out.stdout).contains("still-here"), "{out:?}");
}

/// Whether this gateway enforces limits through session cgroups (where the machine allows the
/// gateway to create them; the log says which way it went).
fn cgroup_active(gw: &Gateway, wanted: bool) -> bool {
    let log = gw.log();
    assert!(
        !wanted || log.contains("session limits use"),
        "the gateway did not say how it enforces limits:\n{log}"
    );
    wanted && log.contains("session limits use cgroup")
}

/// Processes of `account` alive right now.
fn processes_of(account: &str) -> usize {
    let out = Command::new("pgrep")
        .args(["-c", "-u", account])
        .output()
        .unwrap();
    text(&out.stdout).trim().parse().unwrap_or(0)
}

#[test]
fn a_fork_bomb_is_contained_by_the_process_limit() {
    // pids.max in a session cgroup, and RLIMIT_NPROC on the user's account.
    for cgroups in [true, false] {
        fork_bomb(cgroups);
    }
}

fn fork_bomb(cgroups: bool) {
    let acc = Accounts::new(if cgroups { "fc" } else { "fr" });
    let tmp = shared_tmp();
    let alice = Keypair::new(tmp.path(), "alice_key");
    let bob = Keypair::new(tmp.path(), "bob_key");
    let gw = limited(
        &acc,
        &tmp,
        "processes = 32",
        cgroups,
        &[("alice", &alice), ("bob", &bob)],
    );
    // Create alice's account first (the bomb needs it to exist to be counted).
    assert!(text(&ssh_run(&gw, &alice, "echo ok").stdout).contains("ok"));
    let mut ssh = gw.ssh(&alice);
    ssh.args(["-T", "127.0.0.1", "echo bomb; f() { f | f & }; f; sleep 60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut bomb = ssh.spawn().unwrap();
    let account = acc.name("alice");
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        peak = peak.max(processes_of(&account));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Contained: never (much) more than the limit (pgrep's sampling races forks and exits).
    assert!(peak <= 40, "{peak} processes for {account}");
    // Meanwhile another user works normally.
    let out = ssh_run(&gw, &bob, "echo bob-works");
    assert!(text(&out.stdout).contains("bob-works"), "{out:?}");
    // The session ends (the gateway stops it at the limit where a cgroup reports it; else the
    // client leaves), and nothing of the bomb survives it.
    let stopped_by_gateway = wait_timeout(&mut bomb, Duration::from_secs(10)).is_some();
    if !stopped_by_gateway {
        let _ = bomb.kill();
        let _ = bomb.wait();
    }
    let mut out = String::new();
    if let Some(mut o) = bomb.stdout.take() {
        use std::io::Read;
        let _ = o.read_to_string(&mut out);
    }
    if cgroup_active(&gw, cgroups) {
        assert!(
            stopped_by_gateway,
            "the gateway did not stop the session at pids.max"
        );
        assert!(out.contains("more than 32 processes"), "{out}");
    } else {
        assert!(!stopped_by_gateway, "{out}");
    }
    assert!(
        eventually(Duration::from_secs(15), || processes_of(&account) == 0),
        "{} processes of {account} survived the session",
        processes_of(&account)
    );
    let out = ssh_run(&gw, &bob, "echo bob-still-works");
    assert!(text(&out.stdout).contains("bob-still-works"), "{out:?}");
}

#[test]
fn cpu_time_and_open_file_limits_apply_and_are_explained() {
    let acc = Accounts::new("c");
    let tmp = shared_tmp();
    let key = Keypair::new(tmp.path(), "alice_key");
    let gw = start(
        tmp.path(),
        &session(
            &acc,
            tmp.path(),
            "[session.limits]\ncpu_time = \"1s\"\nopen_files = 64\n",
        ),
        &[("alice", &key)],
    );
    let out = ssh_run(&gw, &key, "echo FILES=$(ulimit -n)");
    assert_eq!(field(&text(&out.stdout), "FILES"), "64", "{out:?}");
    let started = Instant::now();
    let out = ssh_run(&gw, &key, "exec sh -c 'while :; do :; done'");
    let stdout = text(&out.stdout);
    assert!(started.elapsed() < Duration::from_secs(15), "not stopped");
    assert_eq!(out.status.code(), Some(128 + 24), "{out:?}");
    assert!(stdout.contains("CPU time limit (1s)"), "{stdout}");
}

/// Runs the gateway as `nobody` holding, as ambient capabilities, those it needs to switch
/// accounts (as a packaged unprivileged deployment would).
fn nobody_with_capabilities() -> Vec<String> {
    let caps = "+setuid,+setgid,+kill,+chown,+fowner,+dac_override";
    [
        "setpriv".to_owned(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--inh-caps={caps}"),
        format!("--ambient-caps={caps}"),
        "--".into(),
    ]
    .to_vec()
}

#[test]
fn with_capabilities_instead_of_root_programs_keep_none_of_them() {
    let acc = Accounts::new("k");
    let tmp = shared_tmp();
    let key = Keypair::new(tmp.path(), "alice_key");
    // An account the operator made (a regular one: no marker needed at uid >= 1000).
    let name = acc.name("alice");
    let home = tmp.path().join("homes").join(&name);
    let out = Command::new("useradd")
        .args([
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--home-dir",
        ])
        .arg(&home)
        .arg(&name)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::create_dir_all(&home).unwrap();
    assert!(Command::new("chown")
        .arg(format!("{name}:"))
        .arg(&home)
        .status()
        .unwrap()
        .success());
    std::fs::create_dir_all(tmp.path().join("keys/users")).unwrap();
    give_to_nobody(&tmp.path().join("keys"));
    let wrapper = nobody_with_capabilities();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let cfg = config(
        "",
        &format!(
            "[session]\ncommand = [\"/bin/sh\", \"-c\", \"echo UID=$(id -u) HOME=$HOME; grep -E '^(Cap|NoNewPrivs)' /proc/self/status\"]\nrun_as = \"{}{{user_id}}\"\n[state]\ndir = \"{}\"\n",
            acc.prefix,
            tmp.path().join("keys/state").display()
        ),
    );
    let gw = Gateway::start_wrapped(tmp.path(), &cfg, &[], &wrapper);
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    let out = ssh_run(&gw, &key, "");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}\n{}", gw.log());
    let uid = acc.passwd("alice").unwrap().uid.as_raw();
    assert_eq!(field(&stdout, "UID"), uid.to_string());
    assert_eq!(field(&stdout, "HOME"), home.display().to_string());
    // The gateway's capabilities did not reach the program.
    assert_no_privileges(&stdout, false);
}

/// What `grep -E '^(Cap|NoNewPrivs)' /proc/self/status` printed shows a program that holds no
/// capability, cannot gain one by exec (no_new_privs) and, where the gateway could drop it, has
/// an empty bounding set.
fn assert_no_privileges(status: &str, bounding_dropped: bool) {
    let value = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {key} in {status}"))
            .to_owned()
    };
    for set in ["CapPrm", "CapEff", "CapAmb", "CapInh"] {
        assert_eq!(value(set), "0000000000000000", "{set}: {status}");
    }
    assert_eq!(value("NoNewPrivs"), "1", "{status}");
    if bounding_dropped {
        assert_eq!(value("CapBnd"), "0000000000000000", "{status}");
    }
}

const PRIVILEGES: &str = "[session]\ncommand = [\"/bin/sh\", \"-c\", \"echo UID=$(id -u); grep -E '^(Cap|NoNewPrivs)' /proc/self/status\"]\n";

#[test]
fn programs_hold_no_privileges_even_without_an_account_switch() {
    require_root();
    // The gateway as root, programs under its own account (the quick start as root).
    let tmp = shared_tmp();
    let key = Keypair::new(tmp.path(), "alice_key");
    let gw = start(tmp.path(), PRIVILEGES, &[("alice", &key)]);
    let out = ssh_run(&gw, &key, "");
    let stdout = text(&out.stdout);
    assert_eq!(field(&stdout, "UID"), "0", "{out:?}");
    assert_no_privileges(&stdout, true);
    drop(gw);

    // The gateway as nobody with ambient capabilities, programs under its own account.
    let tmp = shared_tmp();
    std::fs::create_dir_all(tmp.path().join("keys/users")).unwrap();
    give_to_nobody(&tmp.path().join("keys"));
    let wrapper = nobody_with_capabilities();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let state = format!(
        "[state]\ndir = \"{}\"\n",
        tmp.path().join("keys/state").display()
    );
    let gw = Gateway::start_wrapped(
        tmp.path(),
        &config("", &format!("{PRIVILEGES}{state}")),
        &[],
        &wrapper,
    );
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    let out = ssh_run(&gw, &key, "");
    let stdout = text(&out.stdout);
    assert_eq!(field(&stdout, "UID"), "65534", "{out:?}\n{}", gw.log());
    assert_no_privileges(&stdout, false);
    drop(gw);

    // … and no user may be mapped to the gateway's own account.
    let cfg = format!("{PRIVILEGES}[session.accounts]\nalice = \"nobody\"\n{state}");
    let gw = Gateway::start_wrapped(tmp.path(), &config("", &cfg), &[], &wrapper);
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    let out = ssh_run(&gw, &key, "");
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text(&out.stderr).contains("the gateway's own account")
            || gw.log().contains("the gateway's own account"),
        "{out:?}\n{}",
        gw.log()
    );
}
