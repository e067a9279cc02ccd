//! Test harness: runs the real `hermes-ssh-gateway` binary on 127.0.0.1 port 0 and drives the
//! real OpenSSH client against it. Everything a test starts is stopped on Drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod accounts;
pub mod haproxy;
pub mod idp;
pub mod rawssh;
pub mod redis;
pub mod softkey;
pub mod webclient;

pub const BIN: &str = env!("CARGO_BIN_EXE_hermes-ssh-gateway");

/// How long a test waits for anything to happen before it fails: generous, because tests wait
/// for conditions, and a condition that holds ends the wait at once.
pub const T: Duration = Duration::from_secs(30);

/// The same for the real Hermes agent and load tests, whose steps are slower on 2 cores.
pub const T_SLOW: Duration = Duration::from_secs(60);

/// The one deadline loop: asks `f` every `every` until it gives a value or `timeout` passes.
pub fn poll_until<R>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<R>,
) -> Option<R> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(r) = f() {
            return Some(r);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// An ed25519 key pair made by ssh-keygen.
#[derive(Clone, Debug)]
pub struct Keypair {
    pub private: PathBuf,
    pub public_line: String,
}

impl Keypair {
    pub fn new(dir: &Path, name: &str) -> Keypair {
        Self::of_type(dir, name, &["-t", "ed25519"])
    }

    /// A key of another type, e.g. `&["-t", "rsa", "-b", "3072"]`.
    pub fn of_type(dir: &Path, name: &str, type_args: &[&str]) -> Keypair {
        let private = dir.join(name);
        let st = Command::new("ssh-keygen")
            .args(type_args)
            .args(["-q", "-N", "", "-C", name, "-f"])
            .arg(&private)
            .status()
            .expect("ssh-keygen runs");
        assert!(st.success());
        let public_line = std::fs::read_to_string(private.with_extension("pub"))
            .unwrap()
            .trim()
            .to_owned();
        Keypair {
            private,
            public_line,
        }
    }

    /// `SHA256:…` as ssh-keygen prints it.
    pub fn fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.private.with_extension("pub"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    }
}

/// A real `ssh-agent` listening on `sock`; killed on drop.
pub struct Agent(Child);

impl Agent {
    pub fn start(sock: &Path) -> Agent {
        let child = Command::new("ssh-agent")
            .args(["-D", "-a"])
            .arg(sock)
            .stdout(Stdio::null())
            .spawn()
            .expect("ssh-agent runs");
        assert!(eventually(T, || sock.exists()), "the agent listens");
        Agent(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A gateway process with its own directory, config and log.
pub struct Gateway {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    log: Arc<Mutex<String>>,
}

/// A config with the test defaults (port 0, paths inside `dir`) plus `extra` TOML appended.
/// `extra` must not repeat the `[ssh]` table header; use `ssh_extra` for keys inside it.
pub fn config(ssh_extra: &str, extra: &str) -> String {
    format!("[ssh]\nlisten = \"127.0.0.1:0\"\n{ssh_extra}\n{extra}\n")
}

impl Gateway {
    /// Writes `config_text` to `dir/gateway.toml` and starts the gateway on it.
    pub fn start(dir: &Path, config_text: &str) -> Gateway {
        Self::start_with_env(dir, config_text, &[])
    }

    pub fn start_with_env(dir: &Path, config_text: &str, env: &[(&str, &str)]) -> Gateway {
        Self::start_wrapped(dir, config_text, env, &[])
    }

    /// Like [`Gateway::start_with_env`], run through `wrapper` (e.g. `setpriv …`) when non-empty.
    pub fn start_wrapped(
        dir: &Path,
        config_text: &str,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Gateway {
        std::fs::create_dir_all(dir.join("keys/users")).unwrap();
        std::fs::write(dir.join("gateway.toml"), config_text).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("--config")
            .arg(dir.join("gateway.toml"))
            .env("RUST_LOG", "info,hermes_ssh_gateway=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("gateway starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("GATEWAY_LOG").is_some() {
                    eprintln!("gw| {line}");
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut gw = Gateway {
            child: Some(child),
            port: 0,
            dir: dir.to_owned(),
            log,
        };
        let line = gw
            .wait_log("listening; try", Duration::from_secs(20))
            .unwrap_or_else(|| panic!("gateway did not start; log:\n{}", gw.log()));
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .expect("listening line names the address");
        gw.port = addr.rsplit(':').next().unwrap().parse().unwrap();
        gw
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        poll_until(timeout, Duration::from_millis(20), || {
            self.log()
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_owned)
        })
    }

    /// Waits until at least `n` log lines contain `needle`.
    pub fn wait_log_count(&self, needle: &str, n: usize) -> bool {
        eventually(T, || self.log().matches(needle).count() >= n)
    }

    /// Adds (or replaces) `users_dir/<user>.keys`.
    pub fn set_keys(&self, user: &str, text: &str) {
        let path = self.dir.join("keys/users").join(format!("{user}.keys"));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    /// An `ssh` command for this gateway with `key`, ignoring every user config and agent.
    pub fn ssh(&self, key: &Keypair) -> Command {
        let mut c = Command::new("ssh");
        c.args(ssh_base_args(self.port))
            .arg("-i")
            .arg(&key.private)
            // No agent: only the key given is used (a test may set its own agent).
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null());
        c
    }

    /// The gateway's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends SIGHUP (reload).
    pub fn hup(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    }

    /// Arguments for an interactive `ssh` (run in a [`PtyClient`]) to this gateway with `key`.
    pub fn pty_args(&self, key: &Keypair) -> Vec<String> {
        let mut args = ssh_base_args(self.port);
        args.extend([
            "-i".into(),
            key.private.display().to_string(),
            "127.0.0.1".into(),
        ]);
        args
    }

    /// SIGKILL (as the OOM killer would), then wait for exit.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Arguments for an interactive `ssh` that may sign in with the IdP (keyboard-interactive
    /// on), `extra` options first.
    pub fn signin_args(&self, key: &Keypair, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        a.extend(ssh_base_args(self.port));
        // Interactive users have keyboard-interactive; BatchMode (in the base args) disables it.
        let pos = a.iter().position(|x| x == "BatchMode=yes").unwrap();
        a[pos] = "BatchMode=no".into();
        a.extend([
            "-i".into(),
            key.private.display().to_string(),
            "127.0.0.1".into(),
        ]);
        a
    }

    /// SIGTERM, then wait for exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        wait_timeout(&mut child, Duration::from_secs(10)).expect("gateway exits on SIGTERM")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn ssh_base_args(port: u16) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-p",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([port.to_string(), "-o".into(), "User=tester".into()])
    .collect()
}

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    poll_until(timeout, Duration::from_millis(10), || {
        child.try_wait().ok().flatten()
    })
}

/// Runs `cmd` to completion with a time limit (killing it past that).
pub fn run(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("command starts");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = match wait_timeout(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            panic!("command timed out after {timeout:?}: {cmd:?}");
        }
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An HTTP client with a cookie jar, following redirects, as a browser would.
pub fn browser() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The audit log at `path` once one of its lines satisfies `line` (or after `T`): the log is
/// written by the gateway's own thread, so a record lands a moment after the act.
pub fn audit_when(path: &Path, line: impl Fn(&str) -> bool) -> String {
    let read = || std::fs::read_to_string(path).unwrap_or_default();
    eventually(T, || read().lines().any(&line));
    read()
}

/// Retries `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    poll_until(timeout, Duration::from_millis(100), || f().then_some(())).is_some()
}

/// Retries the async check `f` until it returns true or `timeout` passes.
pub async fn eventually_async<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pids whose process group is `pgid` (from /proc).
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the ")" that closes the command name: state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|f| f.parse::<i32>().ok()) == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

/// The ssh client running inside a PTY, as a person would use it.
pub struct PtyClient {
    master: Box<dyn portable_pty::MasterPty + Send>,
    writer: Arc<Mutex<Box<dyn Write + Send>>>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    screen: Arc<Mutex<Vec<u8>>>,
}

impl PtyClient {
    /// Starts `ssh` with `args` in a PTY of `cols`×`rows`.
    pub fn spawn(args: &[String], cols: u16, rows: u16) -> PtyClient {
        PtyClient::spawn_program("ssh", args, cols, rows)
    }

    /// Starts `program` with `args` in a PTY of `cols`×`rows`.
    pub fn spawn_program(program: &str, args: &[String], cols: u16, rows: u16) -> PtyClient {
        use portable_pty::{CommandBuilder, PtySize};
        let pair = portable_pty::native_pty_system()
            .openpty(PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
        let mut cmd = CommandBuilder::new(program);
        cmd.args(args);
        cmd.env_remove("SSH_AUTH_SOCK");
        let child = pair.slave.spawn_command(cmd).unwrap();
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().unwrap();
        let writer = Arc::new(Mutex::new(pair.master.take_writer().unwrap()));
        let screen = Arc::new(Mutex::new(Vec::new()));
        let (s2, answer) = (screen.clone(), writer.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                // A terminal answers "where is the cursor?" (crossterm asks it at start-up).
                if buf[..n].windows(4).any(|w| w == b"\x1b[6n") {
                    let _ = answer.lock().unwrap().write_all(b"\x1b[1;1R");
                }
                s2.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        PtyClient {
            master: pair.master,
            writer,
            child,
            screen,
        }
    }

    /// Everything the client printed, raw.
    pub fn output(&self) -> String {
        text(&self.screen.lock().unwrap())
    }

    /// The terminal screen as a person sees it (escape sequences interpreted by vt100).
    pub fn screen(&self) -> String {
        let size = self.master.get_size().unwrap();
        let mut parser = vt100::Parser::new(size.rows, size.cols, 0);
        parser.process(&self.screen.lock().unwrap());
        parser.screen().contents()
    }

    /// The terminal as vt100 sees it after everything the client printed (cells, colours,
    /// modes, alternate screen).
    pub fn terminal(&self) -> vt100::Parser {
        let size = self.master.get_size().unwrap();
        let mut parser = vt100::Parser::new(size.rows, size.cols, 0);
        parser.process(&self.screen.lock().unwrap());
        parser
    }

    /// Kills the ssh client with SIGKILL, as a laptop that loses power would leave it.
    pub fn kill_hard(&mut self) {
        if let Some(pid) = self.child.process_id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.wait();
    }

    /// Reads the QR code drawn on the screen (black-on-white Unicode half blocks) with a real
    /// QR decoder, as a phone camera would.
    pub fn decode_qr(&self) -> Option<String> {
        let size = self.master.get_size().unwrap();
        let mut parser = vt100::Parser::new(size.rows, size.cols, 0);
        parser.process(&self.screen.lock().unwrap());
        let screen = parser.screen();
        let white = |r: u16, c: u16| {
            screen.cell(r, c).is_some_and(|cell| {
                matches!(cell.bgcolor(), vt100::Color::Idx(7) | vt100::Color::Idx(15))
            })
        };
        let cells: Vec<(u16, u16)> = (0..size.rows)
            .flat_map(|r| (0..size.cols).map(move |c| (r, c)))
            .filter(|&(r, c)| white(r, c))
            .collect();
        let r0 = cells.iter().map(|x| x.0).min()?;
        let r1 = cells.iter().map(|x| x.0).max()?;
        let c0 = cells.iter().map(|x| x.1).min()?;
        let c1 = cells.iter().map(|x| x.1).max()?;
        let (w, h) = ((c1 - c0 + 1) as usize, 2 * (r1 - r0 + 1) as usize);
        let mut dark = vec![false; w * h];
        for r in r0..=r1 {
            for c in c0..=c1 {
                let ch = screen
                    .cell(r, c)
                    .map(|x| x.contents().to_string())
                    .unwrap_or_default();
                let (top, bottom) = match ch.as_str() {
                    "█" => (true, true),
                    "▀" => (true, false),
                    "▄" => (false, true),
                    _ => (false, false),
                };
                let (x, y) = ((c - c0) as usize, 2 * (r - r0) as usize);
                dark[y * w + x] = top;
                dark[(y + 1) * w + x] = bottom;
            }
        }
        const SCALE: usize = 4;
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(w * SCALE, h * SCALE, |x, y| {
            if dark[(y / SCALE) * w + x / SCALE] {
                0
            } else {
                255
            }
        });
        let grids = img.detect_grids();
        let (_, content) = grids.first()?.decode().ok()?;
        Some(content)
    }

    /// Waits until the screen shows `needle`.
    pub fn expect_screen(&self, needle: &str, timeout: Duration) -> bool {
        eventually(timeout, || self.screen().contains(needle))
    }

    /// Waits until the output (since the start) contains `needle`.
    pub fn expect(&self, needle: &str, timeout: Duration) -> bool {
        eventually(timeout, || self.output().contains(needle))
    }

    pub fn send(&mut self, s: &str) {
        let mut w = self.writer.lock().unwrap();
        w.write_all(s.as_bytes()).unwrap();
        w.flush().unwrap();
    }

    pub fn resize(&self, cols: u16, rows: u16) {
        self.master
            .resize(portable_pty::PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
    }

    pub fn wait(&mut self, timeout: Duration) -> Option<u32> {
        poll_until(timeout, Duration::from_millis(20), || {
            self.child
                .try_wait()
                .ok()
                .flatten()
                .map(|st| st.exit_code())
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.process_id()
    }
}

impl Drop for PtyClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies the directory tree `from` to `to` (regular files and directories).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
