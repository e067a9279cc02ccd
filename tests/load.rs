//! Bounded load on loopback and backpressure. The many concurrent sessions use russh's client
//! (300 OpenSSH processes would measure the clients, not the gateway); everything stays on
//! 127.0.0.1 and every loop has a fixed count.

mod common;

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use russh::keys::{load_secret_key, PrivateKeyWithHashAlg};
use russh::ChannelMsg;

const T: Duration = T_SLOW;

fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Client;

impl russh::client::Handler for Client {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// Logs in, starts the program (`cat`), and proves the session echoes.
async fn open_session(
    port: u16,
    key: Arc<russh::keys::PrivateKey>,
) -> (
    russh::client::Handle<Client>,
    russh::Channel<russh::client::Msg>,
) {
    let config = Arc::new(russh::client::Config::default());
    let mut h = russh::client::connect(config, ("127.0.0.1", port), Client)
        .await
        .expect("connect");
    let auth = h
        .authenticate_publickey("load", PrivateKeyWithHashAlg::new(key, None))
        .await
        .unwrap();
    assert!(auth.success());
    let ch = h.channel_open_session().await.unwrap();
    ch.request_shell(true).await.unwrap();
    (h, ch)
}

async fn echo(ch: &mut russh::Channel<russh::client::Msg>, token: &str) -> bool {
    if ch.data(format!("{token}\n").as_bytes()).await.is_err() {
        return false;
    }
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, ch.wait()).await {
            Ok(Some(ChannelMsg::Data { data })) => {
                got.extend_from_slice(&data);
                if String::from_utf8_lossy(&got).contains(token) {
                    return true;
                }
            }
            Ok(Some(_)) => {}
            _ => return false,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_sessions_and_a_burst_of_a_thousand_unauthenticated_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let keypair = Keypair::new(tmp.path(), "load");
    let gw = Gateway::start(
        tmp.path(),
        &config(
            "",
            "[session]\ncommand = [\"/bin/cat\"]\n[limits]\nmax_connections = 2000\nmax_sessions_per_user = 0\nlogin_grace = \"3s\"\nauth_failures_before_ban = 0\n",
        ),
    );
    gw.set_keys("load", &keypair.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    let key = Arc::new(load_secret_key(&keypair.private, None).unwrap());
    let pid = gw.pid();
    // Warm up the allocator and code paths, then take the baseline.
    {
        let (h, mut ch) = open_session(gw.port, key.clone()).await;
        assert!(echo(&mut ch, "warm").await);
        drop(ch);
        drop(h);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_kb(pid);

    // 300 concurrent authenticated sessions, opened 25 at a time.
    let mut sessions = Vec::new();
    for batch in 0..12 {
        let mut opening = Vec::new();
        for _ in 0..25 {
            opening.push(tokio::spawn(open_session(gw.port, key.clone())));
        }
        for (i, t) in opening.into_iter().enumerate() {
            let (h, mut ch) = t.await.unwrap();
            assert!(echo(&mut ch, &format!("s{batch}-{i}")).await);
            sessions.push((h, ch));
        }
    }
    assert_eq!(sessions.len(), 300);
    let loaded = rss_kb(pid);

    // A burst of 1,000 connections that never authenticate (half say nothing at all).
    let mut burst = Vec::new();
    for i in 0..1000 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", gw.port)).await {
            if i % 2 == 0 {
                use tokio::io::AsyncWriteExt;
                let _ = s.write_all(b"SSH-2.0-load\r\n").await;
            }
            burst.push(s);
        }
    }
    assert!(burst.len() >= 990, "accepted {}", burst.len());

    // Existing sessions keep working during the burst, and new logins too.
    for (i, (_, ch)) in sessions.iter_mut().enumerate().step_by(30) {
        assert!(echo(ch, &format!("during-{i}")).await, "session {i}");
    }
    let (h, mut ch) = open_session(gw.port, key.clone()).await;
    assert!(echo(&mut ch, "newcomer").await);
    drop((h, ch));

    // The unauthenticated ones are dropped after the login grace: each reads to its end (the
    // server's version line, then EOF) once the gateway hangs up on it.
    let hung_up = burst.into_iter().map(|mut s| async move {
        use tokio::io::AsyncReadExt;
        let mut sink = Vec::new();
        tokio::time::timeout(T, s.read_to_end(&mut sink))
            .await
            .is_ok()
    });
    let hung_up = futures_util::future::join_all(hung_up).await;
    assert!(
        hung_up.iter().all(|h| *h),
        "a silent connection outlived the login grace"
    );
    for (i, (_, ch)) in sessions.iter_mut().enumerate().step_by(50) {
        assert!(echo(ch, &format!("after-{i}")).await, "session {i}");
    }

    // Close everything; the gateway's memory returns close to its baseline.
    drop(sessions);
    assert!(
        eventually(T, || gw.log().matches("program exited").count()
            + gw.log().matches("ending the program").count()
            >= 300),
        "all programs ended"
    );
    let log = gw.log();
    assert_eq!(
        log.matches(" connected").count(),
        log.matches("disconnected").count(),
        "no connection task left"
    );
    // The gateway trims its heap a few seconds after connections close.
    eventually(Duration::from_secs(20), || {
        rss_kb(pid) < baseline + 16 * 1024
    });
    let after = rss_kb(pid);
    eprintln!(
        "gateway RSS: baseline {baseline} KB, 300 sessions {loaded} KB ({} KB/session), after {after} KB",
        (loaded.saturating_sub(baseline)) / 300
    );
    assert!(
        after < baseline + 16 * 1024,
        "memory returned near baseline: baseline {baseline} KB, after {after} KB"
    );
    assert!(
        loaded.saturating_sub(baseline) / 300 < 200,
        "per-session memory {} KB",
        loaded.saturating_sub(baseline) / 300
    );
}

#[test]
fn a_stalled_client_never_makes_the_gateway_buffer_a_gigabyte() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::new(tmp.path(), "k");
    let gw = Gateway::start(
        tmp.path(),
        &config(
            "",
            "[session]\ncommand = [\"/bin/sh\", \"-c\", \"head -c 1000000000 /dev/zero\"]\n",
        ),
    );
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    let pid = gw.pid();
    let baseline = rss_kb(pid);
    let mut ssh = gw.ssh(&key);
    ssh.args(["-T", "127.0.0.1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = ssh.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    // Read a little, then stall for 3 s while the program keeps trying to write.
    let mut buf = vec![0u8; 1 << 20];
    let mut total = out.read(&mut buf).unwrap() as u64;
    let mut peak = 0;
    let stall_end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < stall_end {
        peak = peak.max(rss_kb(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Then read slowly for a while, then drain it all.
    let slow_end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < slow_end {
        total += out.read(&mut buf[..64 * 1024]).unwrap() as u64;
        peak = peak.max(rss_kb(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    loop {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    let status = wait_timeout(&mut child, T).unwrap();
    assert_eq!(total, 1_000_000_000, "every byte arrived");
    assert!(status.success());
    eprintln!("gateway RSS: baseline {baseline} KB, peak while stalled/slow {peak} KB");
    assert!(
        peak < baseline + 32 * 1024,
        "bounded buffering: baseline {baseline} KB, peak {peak} KB"
    );
}
