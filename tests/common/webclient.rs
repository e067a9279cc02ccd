//! A WebSocket terminal client for the web front (tungstenite), as the browser page uses it.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

use super::idp::{free_port, oidc_section, Idp};
use super::{config, text, Gateway, T};

pub fn ws_ticket(
    url: &str,
    b: &reqwest::blocking::Client,
    origin: &str,
) -> (u16, serde_json::Value) {
    ws_ticket_with(url, b, origin, "{}")
}

/// `POST /api/auth/ws-ticket` with this body (`{"session": "ID"}` binds the ticket to a session).
pub fn ws_ticket_with(
    url: &str,
    b: &reqwest::blocking::Client,
    origin: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let r = b
        .post(format!("{url}/api/auth/ws-ticket"))
        .header("Origin", origin)
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap_or_default())
}

pub type Ws = WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

pub fn open_ws(url: &str, query: &str, origin: &str) -> Result<Ws, u16> {
    let url = format!("{}/api/pty?{query}", url.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("Origin", origin.parse().unwrap());
    match tungstenite::connect(req) {
        Ok((ws, _)) => {
            if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
            }
            Ok(ws)
        }
        Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

/// Reads terminal output until it contains `needle`.
pub fn read_until(ws: &mut Ws, needle: &str) -> String {
    read_until_with(ws, |s| s.contains(needle))
}

/// Reads terminal output until `done` says so (or the time limit).
pub fn read_until_with(ws: &mut Ws, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + T;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Binary(b)) => seen.extend_from_slice(&b),
            Ok(Message::Text(t)) => seen.extend_from_slice(t.as_bytes()),
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        if done(&text(&seen)) {
            break;
        }
    }
    text(&seen)
}

pub fn type_line(ws: &mut Ws, line: &str) {
    ws.send(Message::Binary(format!("{line}\r").into_bytes().into()))
        .unwrap();
}

/// A gateway with the web front and device sign-in at a test IdP; `/bin/sh` is the program.
pub struct Web {
    pub tmp: tempfile::TempDir,
    pub idp: Idp,
    pub gw: Gateway,
    pub url: String,
}

impl Web {
    /// `extra_session` goes into `[session]` (after the command), `extra_web` into `[web]`;
    /// the gateway runs through `wrapper` when it is not empty (e.g. `prlimit …`).
    pub fn start(extra_session: &str, extra_web: &str, wrapper: &[&str]) -> Web {
        Self::start_with(
            &format!("[session]\ncommand = [\"/bin/sh\"]\n{extra_session}"),
            extra_web,
            "",
            wrapper,
        )
    }

    /// Like [`Web::start`], with a whole `[session]` section of the caller's, and `extra_oidc`
    /// lines in `[oidc]`.
    pub fn start_with(session: &str, extra_web: &str, extra_oidc: &str, wrapper: &[&str]) -> Web {
        let tmp = tempfile::tempdir().unwrap();
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let idp = Idp::start(&[("REDIRECT_URIS", &format!("{url}/auth/callback"))]);
        let cfg = config(
            "",
            &format!(
                "{session}\n[web]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{url}\"\n{extra_web}\n{}",
                oidc_section(&idp.issuer, extra_oidc)
            ),
        );
        let gw = Gateway::start_wrapped(tmp.path(), &cfg, &[], wrapper);
        assert!(
            gw.wait_log("identity provider discovered", T).is_some(),
            "{}",
            gw.log()
        );
        assert!(gw.wait_log("web front listening", T).is_some());
        Web { tmp, idp, gw, url }
    }

    /// A terminal WebSocket for the browser `b` (a fresh ticket), with `query` appended.
    pub fn terminal(&self, b: &reqwest::blocking::Client, query: &str) -> Ws {
        let (status, t) = ws_ticket(&self.url, b, &self.url);
        assert_eq!(status, 200, "{t}");
        let ticket = t["ticket"].as_str().unwrap();
        open_ws(&self.url, &format!("ticket={ticket}{query}"), &self.url).unwrap()
    }
}
