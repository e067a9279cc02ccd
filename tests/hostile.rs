//! Issue 13's attacks, replayed against the real binary: a stranger (or a signed-in user's
//! client) tries to crash the gateway, clog it or make it buffer without bound, and the gateway
//! stays up for everyone else. OpenSSH where it can be made to misbehave; raw TCP and a
//! scriptable russh client (tests/common/rawssh.rs) for what OpenSSH will not do on purpose.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::idp::{free_port, oidc_section, Idp};
use common::*;

/// The gateway's resident memory, in KB.
fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn interactive_args(gw: &Gateway, key: &Keypair) -> Vec<String> {
    gw.signin_args(key, &[])
}

fn whoami_works(gw: &Gateway, key: &Keypair) -> bool {
    let mut ssh = gw.ssh(key);
    ssh.args(["127.0.0.1", "whoami"]);
    let out = run(ssh, T);
    out.status.success() && text(&out.stdout).contains("\"user_id\":\"alice\"")
}

struct Signin {
    _tmp: tempfile::TempDir,
    idp: Idp,
    gw: Gateway,
    alice: Keypair,
    stranger: Keypair,
}

/// A gateway with device sign-in, whose configured program is not installed (so a key user
/// gets the gateway's own fallback screen), and a mapped key for alice.
fn signin_gateway(extra: &str, env: &[(&str, &str)]) -> Signin {
    let tmp = tempfile::tempdir().unwrap();
    let idp = Idp::start(&[]);
    let alice = Keypair::new(tmp.path(), "alice_key");
    let stranger = Keypair::new(tmp.path(), "stranger");
    let gw = Gateway::start_with_env(
        tmp.path(),
        &config(
            "",
            &format!(
                "[session]\ncommand = [\"/nonexistent/hermes\", \"--tui\"]\n{extra}\n{}",
                oidc_section(&idp.issuer, "")
            ),
        ),
        env,
    );
    gw.set_keys("alice", &alice.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    assert!(
        gw.wait_log("identity provider discovered", T).is_some(),
        "{}",
        gw.log()
    );
    Signin {
        _tmp: tmp,
        idp,
        gw,
        alice,
        stranger,
    }
}

#[test]
fn huge_terminal_sizes_cost_the_gateway_nothing_before_or_after_sign_in() {
    let s = signin_gateway("", &[]);
    // Warm up both screens at an ordinary size, so the baseline includes their code paths.
    let c = PtyClient::spawn(&interactive_args(&s.gw, &s.stranger), 80, 24);
    assert!(c.expect("user_code=", T), "{}", c.output());
    drop(c);
    let c = PtyClient::spawn(&interactive_args(&s.gw, &s.alice), 80, 24);
    assert!(
        c.expect("could not be started", T) || c.expect("cannot", T),
        "{}",
        c.output()
    );
    drop(c);
    assert!(whoami_works(&s.gw, &s.alice));
    let before = rss_kb(s.gw.pid());

    for (cols, rows) in [(65535u16, 65535u16), (4000, 4000)] {
        // Before sign-in: the device sign-in screen, drawn by the gateway at the client's size.
        let mut c = PtyClient::spawn(&interactive_args(&s.gw, &s.stranger), cols, rows);
        assert!(c.expect("user_code=", T), "{}", c.output());
        // A window-change to the other extreme redraws it.
        c.resize(rows, cols);
        c.resize(cols, rows);
        // After sign-in: alice's program is missing, so the gateway draws its fallback screen.
        let a = PtyClient::spawn(&interactive_args(&s.gw, &s.alice), cols, rows);
        assert!(a.expect("/nonexistent/hermes", T), "{}", a.output());
        a.resize(rows, cols);
        assert!(whoami_works(&s.gw, &s.alice), "the gateway still serves");
        let now = rss_kb(s.gw.pid());
        assert!(
            now < before + 2048,
            "RSS grew from {before} KB to {now} KB at {cols}x{rows}"
        );
        c.send("q");
        assert!(c.wait(T).is_some());
    }
    assert!(whoami_works(&s.gw, &s.alice));
}

#[test]
fn a_cancelled_sign_in_ends_the_connection_and_counts_toward_a_ban() {
    let s = signin_gateway(
        "[limits]\nauth_failures_before_ban = 2\nban_duration = \"1m\"\n",
        &[("RUST_LOG", "info")],
    );
    for round in 0..2 {
        let mut c = PtyClient::spawn(&interactive_args(&s.gw, &s.stranger), 100, 40);
        assert!(c.expect("user_code=", T), "{}", c.output());
        let code = common::idp::find_complete_uri(&c.output())
            .unwrap()
            .split("user_code=")
            .nth(1)
            .unwrap()
            .to_owned();
        c.send("q");
        // The connection ends at once after its one line: the client exits by itself.
        assert_eq!(
            c.wait(Duration::from_secs(10)),
            Some(1),
            "round {round}: {}",
            c.output()
        );
        assert!(c.output().contains("cancel"), "{}", c.output());
        // The device code is a bearer secret: not in info-level logs.
        assert!(
            !s.gw.log().contains(&code),
            "user code logged: {}",
            s.gw.log()
        );
    }
    assert!(
        s.gw.wait_log("address banned", T).is_some(),
        "{}",
        s.gw.log()
    );
    let mut raw = TcpStream::connect(("127.0.0.1", s.gw.port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(
        raw.read(&mut buf).unwrap_or(0),
        0,
        "banned: closed before the banner"
    );
    let _ = &s.idp;
}

/// Reads until the peer closes; how long that took.
fn time_to_close(mut s: TcpStream) -> Duration {
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("still open after {:?}", start.elapsed())
            }
            Err(_) => return start.elapsed(),
        }
    }
}

#[test]
fn login_grace_ends_silent_half_handshake_and_retrying_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::new(tmp.path(), "alice_key");
    let gw = Gateway::start(
        tmp.path(),
        &config("", "[limits]\nlogin_grace = \"2s\"\nmax_connections = 4\n"),
    );
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    let connect = || TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    // Silent; version line only; version line and half a key-exchange packet.
    let silent = connect();
    let mut banner_only = connect();
    banner_only.write_all(b"SSH-2.0-x\r\n").unwrap();
    let mut half_kex = connect();
    half_kex
        .write_all(b"SSH-2.0-x\r\n\x00\x00\x01\x00\x08\x14")
        .unwrap();
    // All four slots are taken now (with the retrying client below): nobody else can log in
    // until the grace time frees them.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = gw.port;
    let retrying = rt.spawn(async move {
        let mut h = common::rawssh::connect(port).await;
        let start = Instant::now();
        // A client that keeps trying "none" forever, well within russh's own limits.
        while start.elapsed() < Duration::from_secs(30) {
            if h.authenticate_none("tester").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        start.elapsed()
    });
    let handles: Vec<_> = [silent, banner_only, half_kex]
        .into_iter()
        .map(|s| std::thread::spawn(move || time_to_close(s)))
        .collect();
    for h in handles {
        let took = h.join().unwrap();
        assert!(took < Duration::from_secs(10), "closed after {took:?}");
    }
    let took = rt.block_on(retrying).unwrap();
    assert!(
        took < Duration::from_secs(10),
        "retrying client lasted {took:?}"
    );
    assert!(whoami_after_grace(&gw, &key), "{}", gw.log());
}

fn whoami_after_grace(gw: &Gateway, key: &Keypair) -> bool {
    eventually(T, || {
        let mut ssh = gw.ssh(key);
        ssh.args(["127.0.0.1", "whoami"]);
        run(ssh, T).status.success()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_connection_holds_one_channel_and_a_signed_in_one_at_most_the_cap() {
    let s = tokio::task::spawn_blocking(|| {
        signin_gateway("[limits]\nmax_channels_per_connection = 3\n", &[])
    })
    .await
    .unwrap();
    let pending = common::rawssh::pending(s.gw.port).await;
    let first = pending.channel_open_session().await;
    assert!(first.is_ok(), "one channel to sign in");
    assert!(
        pending.channel_open_session().await.is_err(),
        "a second channel on a pending connection"
    );
    let user = common::rawssh::signed_in(s.gw.port, &s.alice).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(user.channel_open_session().await.expect("within the cap"));
    }
    assert!(user.channel_open_session().await.is_err(), "over the cap");
    // Closing one frees its place.
    let c = open.pop().unwrap();
    c.close().await.unwrap();
    // Retried: the server frees the place when it has processed the close.
    let deadline = Instant::now() + T;
    loop {
        if let Ok(c) = user.channel_open_session().await {
            open.push(c);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a closed channel's place is never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = s.gw.log();
    assert!(log.contains("refused: session channel"), "{log}");
}

#[test]
fn pending_connections_time_out_whatever_they_do() {
    let s = signin_gateway("", &[]);
    // pending_timeout is in [oidc]: restart with a short one.
    drop(s);
    let tmp = tempfile::tempdir().unwrap();
    let idp = Idp::start(&[]);
    let gw = Gateway::start(
        tmp.path(),
        &config(
            "",
            &format!(
                "[session]\ncommand = [\"/bin/true\"]\n{}",
                oidc_section(&idp.issuer, "pending_timeout = \"3s\"\n")
            ),
        ),
    );
    assert!(gw.wait_log("identity provider discovered", T).is_some());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = gw.port;
    // Admitted to sign in, then never opens a channel; keepalive-like traffic does not help.
    let took = rt.block_on(async move {
        let h = common::rawssh::pending(port).await;
        let start = Instant::now();
        while !h.is_closed() && start.elapsed() < Duration::from_secs(30) {
            let _ = h.send_keepalive(true).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        start.elapsed()
    });
    assert!(
        took < Duration::from_secs(10),
        "pending connection lasted {took:?}"
    );
    let _ = free_port();
}

/// The pids whose environment carries `marker` (a variable only our test programs have).
fn processes_with_env(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            if env.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
                out.push(pid);
            }
        }
    }
    out
}

/// An interactive session (the ssh client in a PTY) whose program has said READY.
fn ready_pty_session(gw: &Gateway, key: &Keypair) -> PtyClient {
    let pty = PtyClient::spawn(&gw.pty_args(key), 80, 24);
    assert!(pty.expect("READY", T), "{}", pty.output());
    pty
}

/// A gateway running `session` for one user whose id belongs to this run only (other runs'
/// leftovers must not count); the environment entry that marks that user's programs.
fn gateway_for_orphans(
    session: &str,
    prefix: &str,
) -> (tempfile::TempDir, Gateway, Keypair, String) {
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::new(tmp.path(), "key");
    let gw = Gateway::start(tmp.path(), &config("", session));
    let user = format!("{prefix}-{}", std::process::id());
    gw.set_keys(&user, &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    let marker = format!("HERMES_DASHBOARD_USER_ID={user}");
    (tmp, gw, key, marker)
}

#[test]
fn programs_and_their_children_end_when_the_gateway_is_killed() {
    // The program starts a child of its own and waits; both ignore nothing.
    let (_tmp, mut gw, key, marker) = gateway_for_orphans(
        "[session]\ncommand = [\"/bin/sh\", \"-c\", \"sleep 600 & echo READY; wait\"]\n",
        "orphan",
    );
    let marker = marker.as_str();
    // A PTY session and a pipe session.
    let _pty = ready_pty_session(&gw, &key);
    let mut ssh = gw.ssh(&key);
    ssh.args(["-T", "127.0.0.1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut pipe = ssh.spawn().unwrap();
    let mut first = [0u8; 5];
    pipe.stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    assert_eq!(&first, b"READY");
    assert!(
        processes_with_env(marker).len() >= 4,
        "two programs and two children: {:?}",
        processes_with_env(marker)
    );
    // SIGKILL: the gateway gets no chance to end anything itself.
    gw.kill();
    assert!(
        eventually(Duration::from_secs(10), || processes_with_env(marker)
            .is_empty()),
        "left running: {:?}",
        processes_with_env(marker)
    );
    let _ = pipe.kill();
    let _ = pipe.wait();
}

/// A TCP connection to `port` from the loopback address `from` (the attacker's address).
fn connect_from(from: &str, port: u16) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(
        &format!("{from}:0")
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )?;
    s.connect(
        &format!("127.0.0.1:{port}")
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )?;
    Ok(s.into())
}

/// One raw `GET path` from `from`; the status code (0 when the connection was refused or
/// closed without an answer).
fn get_status_from(from: &str, port: u16, path: &str) -> u16 {
    let Ok(mut s) = connect_from(from, port) else {
        return 0;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .is_err()
    {
        return 0;
    }
    let mut head = [0u8; 12];
    match s.read_exact(&mut head) {
        Ok(()) => text(&head[9..12]).parse().unwrap_or(0),
        Err(_) => 0,
    }
}

#[test]
fn a_web_flood_from_one_address_leaves_ssh_and_other_browsers_working() {
    // A descriptor table of the common default size, shared by both fronts.
    let w = common::webclient::Web::start(
        "",
        "header_timeout = \"3s\"\nmax_connections_per_address = 32\nmax_logins_per_address = 4\n",
        &["prlimit", "--nofile=1024:1024", "--"],
    );
    let (gw, url) = (&w.gw, w.url.clone());
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let key = Keypair::new(w.tmp.path(), "alice_key");
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());

    // A /auth/login flood from 127.0.0.2: a few are let through, then it is refused.
    let statuses: Vec<u16> = (0..20)
        .map(|_| get_status_from("127.0.0.2", port, "/auth/login"))
        .collect();
    assert!(
        statuses.iter().filter(|s| **s == 303 || **s == 302).count() <= 4,
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");

    // 1,100 connections from 127.0.0.2 that send half a request and then nothing.
    let mut held = Vec::new();
    for _ in 0..1100 {
        if let Ok(mut s) = connect_from("127.0.0.2", port) {
            let _ = s.write_all(b"GET / HTTP/1.1\r\n");
            held.push(s);
        }
    }
    // Everyone else is still served: a key login over SSH and a browser login from 127.0.0.1.
    assert!(whoami_works(gw, &key), "{}", gw.log());
    let b = common::idp::browser_login(&url, "bob");
    let me: serde_json::Value = b
        .get(format!("{url}/api/auth/me"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(me["user_id"], "bob");
    // The half-open connections are closed after the header timeout.
    let first = held.remove(0);
    assert!(time_to_close(first) < Duration::from_secs(10));
    assert!(!gw.log().contains("Too many open files"), "{}", gw.log());
    drop(held);
}

/// A gateway whose program, run as a shell, never reads its input, and run as `echo` (exec
/// with arguments) copies input to output.
fn stalled_and_echo_gateway() -> (tempfile::TempDir, Gateway, Keypair) {
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::new(tmp.path(), "alice_key");
    let gw = Gateway::start(
        tmp.path(),
        &config(
            "",
            "[session]\ncommand = [\"/bin/sh\", \"-c\", \"if [ \\\"$1\\\" = echo ]; then exec cat; fi; echo READY; exec sleep 600\", \"sh\"]\nexec = \"args\"\n",
        ),
    );
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    (tmp, gw, key)
}

/// Waits until `channel` has sent output containing `needle`.
async fn channel_says(channel: &mut russh::Channel<russh::client::Msg>, needle: &str) -> bool {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(T, async {
        while let Some(msg) = channel.wait().await {
            if let russh::ChannelMsg::Data { data } = msg {
                seen.extend_from_slice(&data);
                if text(&seen).contains(needle) {
                    return true;
                }
            }
        }
        false
    })
    .await;
    found.unwrap_or(false)
}

/// `len` bytes of a paste, counting in `sent` what the SSH client has taken so far.
struct Paste {
    left: usize,
    sent: Arc<AtomicUsize>,
}

impl Paste {
    fn of(len: usize, sent: Arc<AtomicUsize>) -> Paste {
        Paste { left: len, sent }
    }

    async fn into(
        self,
        channel: russh::ChannelWriteHalf<russh::client::Msg>,
    ) -> Result<(), russh::Error> {
        channel.data(self).await
    }
}

impl tokio::io::AsyncRead for Paste {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = buf.remaining().min(self.left);
        buf.put_slice(&vec![b'x'; n]);
        self.left -= n;
        self.sent.fetch_add(n, Ordering::Relaxed);
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_stops_reading_stalls_only_its_own_channel() {
    let (_tmp, gw, key) = tokio::task::spawn_blocking(stalled_and_echo_gateway)
        .await
        .unwrap();
    // One connection, two channels (as OpenSSH's ControlMaster multiplexes them).
    let h = common::rawssh::signed_in(gw.port, &key).await;
    let mut stalled = h.channel_open_session().await.unwrap();
    stalled.request_shell(false).await.unwrap();
    assert!(channel_says(&mut stalled, "READY").await);
    // Paste 16 MB into the program that does not read: the client must be held back, not
    // buffered, and this send never completes.
    let (stalled_read, stalled_write) = stalled.split();
    let sent = Arc::new(AtomicUsize::new(0));
    let before = rss_kb(gw.pid());
    let paste = tokio::spawn(Paste::of(16 << 20, sent.clone()).into(stalled_write));
    // Wait until the paste is held back: nothing more leaves the client for a while.
    let mut last = (0, Instant::now());
    while last.1.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = sent.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    assert!(
        last.0 >= 64 << 10,
        "the paste never got going: {} bytes",
        last.0
    );
    // Meanwhile the other channel of the same connection works.
    let mut echo = h.channel_open_session().await.unwrap();
    echo.exec(false, "echo").await.unwrap();
    echo.data(&b"ping-through\n"[..]).await.unwrap();
    assert!(
        channel_says(&mut echo, "ping-through").await,
        "{}",
        gw.log()
    );
    assert!(
        !paste.is_finished(),
        "8 MB accepted for a program that reads nothing"
    );
    let grown = rss_kb(gw.pid()).saturating_sub(before);
    assert!(
        grown < 4096,
        "the gateway buffered {grown} KB of unread input"
    );
    paste.abort();
    drop(stalled_read);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_on_channels_without_a_program_is_not_acknowledged() {
    let (_tmp, gw, key) = tokio::task::spawn_blocking(stalled_and_echo_gateway)
        .await
        .unwrap();
    const CONNECTIONS: usize = 6;
    const SEND: usize = 1 << 20;
    let mut conns = Vec::new();
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        let h = common::rawssh::signed_in(gw.port, &key).await;
        for _ in 0..10 {
            channels.push(h.channel_open_session().await.unwrap());
        }
        conns.push(h);
    }
    let before = rss_kb(gw.pid());
    // Every channel gets 1 MB and no shell or exec request: nothing will ever read it.
    let sends: Vec<_> = channels
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                let data = vec![b'y'; SEND];
                c.data(&data[..]).await
            })
        })
        .collect();
    // The client stalls once the small pre-program windows are used: let it get there (the
    // gateway has read everything the windows allowed once a fresh request round-trips).
    for h in &conns {
        let c = h.channel_open_session().await;
        drop(c);
    }
    let grown = rss_kb(gw.pid()).saturating_sub(before);
    assert!(
        grown < (CONNECTIONS as u64) * 64,
        "{CONNECTIONS} connections x 10 channels grew the gateway by {grown} KB"
    );
    assert!(
        sends.iter().all(|s| !s.is_finished()),
        "data was acknowledged"
    );
    for s in sends {
        s.abort();
    }
}

#[test]
fn huge_sizes_and_messages_over_the_websocket_cost_the_gateway_nothing() {
    use common::webclient::*;
    let w = Web::start("", "max_message_size = \"64KiB\"\n", &[]);
    let b = common::idp::browser_login(&w.url, "bob");
    // Warm-up session at an ordinary size.
    let mut ws = w.terminal(&b, "&cols=80&rows=24");
    type_line(&mut ws, "echo warm-$((1+1))");
    assert!(read_until(&mut ws, "warm-2").contains("warm-2"));
    drop(ws);
    let before = rss_kb(w.gw.pid());
    for (cols, rows) in [(65535u32, 65535u32), (4000, 4000)] {
        let mut ws = w.terminal(&b, &format!("&cols={cols}&rows={rows}"));
        ws.send(tungstenite::Message::Text(
            format!("{{\"type\":\"resize\",\"cols\":{rows},\"rows\":{cols}}}").into(),
        ))
        .unwrap();
        ws.send(tungstenite::Message::Text(
            format!("{{\"type\":\"resize\",\"cols\":{cols},\"rows\":{rows}}}").into(),
        ))
        .unwrap();
        // The program's PTY has the size the kernel takes; the gateway allocates nothing for it.
        type_line(&mut ws, "stty size; echo sized-$((2+2))");
        let out = read_until(&mut ws, "sized-4");
        assert!(out.contains(&format!("{rows} {cols}")), "{out}");
        assert!(
            rss_kb(w.gw.pid()) < before + 2048,
            "RSS grew at {cols}x{rows}"
        );
    }
    // A message over max_message_size ends that WebSocket, not the gateway.
    let mut ws = w.terminal(&b, "");
    let _ = ws.send(tungstenite::Message::Binary(vec![b'a'; 1 << 20].into()));
    let rest = read_until_with(&mut ws, |_| false);
    assert!(
        !rest.contains(&"a".repeat(1000)),
        "an oversized message reached the program"
    );
    let mut ws = w.terminal(&b, "");
    type_line(&mut ws, "echo still-$((3+3))");
    assert!(read_until(&mut ws, "still-6").contains("still-6"));
}

#[test]
fn programs_that_left_their_group_end_with_their_session_cgroup_when_the_gateway_is_killed() {
    // The child escapes the program's process group (setsid), as a daemon would: only the
    // session's cgroup still holds it.
    let (_tmp, mut gw, key, marker) = gateway_for_orphans(
        "[session]\ncommand = [\"/bin/sh\", \"-c\", \"setsid sleep 600 & echo READY; wait\"]\n[session.limits]\nprocesses = 64\n",
        "daemon",
    );
    assert!(
        gw.log().contains("session limits use cgroup"),
        "this test needs session cgroups (root on a cgroup v1 or delegated v2 host): {}",
        gw.log()
    );
    let _pty = ready_pty_session(&gw, &key);
    assert!(
        eventually(T, || processes_with_env(&marker).len() >= 2),
        "{:?}",
        processes_with_env(&marker)
    );
    gw.kill();
    assert!(
        eventually(Duration::from_secs(10), || processes_with_env(&marker)
            .is_empty()),
        "left running: {:?}",
        processes_with_env(&marker)
    );
}

/// A network namespace of this test's own with IPv6 addresses on its loopback: the only way to
/// have several client addresses in one /64 (and another /64) without touching the host.
struct Netns(String);

impl Netns {
    fn new(addrs: &[&str]) -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "hgw-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .expect("ip (iproute2) runs");
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        for a in addrs {
            ip(&["-n", &ns.0, "-6", "addr", "add", a, "dev", "lo", "nodad"]);
        }
        ns
    }

    /// `ssh` run inside the namespace, from the local address `from`.
    fn ssh(&self, port: u16, from: &str, extra: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new("ip");
        // Keyboard-interactive (device sign-in) needs BatchMode off; ssh keeps the first value.
        let base = ssh_base_args(port).into_iter().map(|a| {
            if a == "BatchMode=yes" {
                "BatchMode=no".into()
            } else {
                a
            }
        });
        c.args(["netns", "exec", &self.0, "ssh"])
            .args(base)
            .args(["-b", from])
            .args(extra)
            .env_remove("SSH_AUTH_SOCK")
            .stdin(std::process::Stdio::null());
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

#[test]
fn ipv6_clients_are_counted_by_network_for_pending_slots_and_bans() {
    let ns = Netns::new(&[
        "2001:db8::1/64",
        "2001:db8::a/64",
        "2001:db8::b/64",
        "2001:db8:0:1::c/64",
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let stranger = Keypair::new(tmp.path(), "stranger");
    // Device sign-in on (the IdP need not answer: admission to sign in comes first).
    let cfg = format!(
        "[ssh]\nlisten = \"[2001:db8::1]:0\"\n[limits]\nauth_failures_before_ban = 2\n{}",
        oidc_section("http://127.0.0.1:9", "max_pending_per_ip = 1\n")
    );
    let gw = Gateway::start_wrapped(tmp.path(), &cfg, &[], &["ip", "netns", "exec", &ns.0]);
    let admitted = || gw.log().matches("admitted to device sign-in").count();
    // Device sign-in (held open with -N), and an unknown key (refused), from a given address.
    const SIGN_IN: &[&str] = &[
        "-N",
        "-o",
        "PreferredAuthentications=keyboard-interactive",
        "2001:db8::1",
    ];
    let stranger_key = stranger.private.to_str().unwrap();
    let with_key = [
        "-o",
        "PreferredAuthentications=publickey",
        "-i",
        stranger_key,
        "2001:db8::1",
        "whoami",
    ];
    let hold = |from: &str| {
        let mut c = ns.ssh(gw.port, from, SIGN_IN);
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c.spawn().unwrap()
    };
    // One sign-in in progress from 2001:db8::a takes the /64's only pending slot…
    let mut a = hold("2001:db8::a");
    assert!(eventually(T, || admitted() == 1), "{}", gw.log());
    // …so 2001:db8::b, another address of the same /64, is refused…
    assert_eq!(
        run(ns.ssh(gw.port, "2001:db8::b", SIGN_IN), T)
            .status
            .code(),
        Some(255)
    );
    assert!(
        gw.log()
            .contains("too many sign-ins in progress from this address"),
        "{}",
        gw.log()
    );
    // …while another /64 still gets its own.
    let mut c = hold("2001:db8:0:1::c");
    assert!(eventually(T, || admitted() == 2), "{}", gw.log());
    // A second failure from the first /64 (an unknown key) bans the whole /64 …
    assert_eq!(
        run(ns.ssh(gw.port, "2001:db8::b", &with_key), T)
            .status
            .code(),
        Some(255)
    );
    assert!(gw.wait_log("address banned", T).is_some(), "{}", gw.log());
    let banned = |from: &str| {
        let out = run(ns.ssh(gw.port, from, &with_key), T);
        // Banned: closed at accept, before the banner; not banned: a refused key.
        !text(&out.stderr).contains("Permission denied")
    };
    assert!(banned("2001:db8::a"), "same /64 as the failures");
    assert!(!banned("2001:db8:0:1::c"), "another /64");
    for h in [&mut a, &mut c] {
        let _ = h.kill();
        let _ = h.wait();
    }
}
