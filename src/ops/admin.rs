//! The admin socket: a Unix socket (mode 0600, owner only) on which `hermes-ssh-gateway
//! sessions` lists and ends sessions. One request line, one JSON answer line:
//! `list` → `[{"id":…,"user":…,…}]`; `end <id>` → `{"ended":true|false}`.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::SessionRegistry;

/// Binds the socket at `path` (replacing a stale one), mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Created private when missing; an existing one (the state directory by default, or a
        // shared one such as /run) is not changed: the socket is 0600 and checks its peers.
        crate::identity::keys::create_private_dir(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves until `shutdown`. Peers that are neither this account nor root are refused (the file
/// mode already keeps them out; this holds even if the mode was loosened by hand).
pub async fn serve(
    listener: UnixListener,
    sessions: Arc<SessionRegistry>,
    shutdown: CancellationToken,
) {
    let me = nix::unistd::getuid().as_raw();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
        if uid != me && uid != 0 {
            tracing::warn!(uid, "refused: admin socket connection from another user");
            continue;
        }
        let sessions = sessions.clone();
        tokio::spawn(handle(stream, sessions));
    }
}

async fn handle(stream: UnixStream, sessions: Arc<SessionRegistry>) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.split_whitespace();
        let answer = match (words.next(), words.next()) {
            (Some("list"), None) => {
                serde_json::to_string(&sessions.list_all().await).unwrap_or_default()
            }
            (Some("end"), Some(id)) => match id.parse::<u64>() {
                Ok(id) => {
                    let ended = sessions.end(id);
                    if ended {
                        tracing::info!(session_id = id, "session ended by the operator");
                    }
                    serde_json::json!({"ended": ended}).to_string()
                }
                Err(_) => serde_json::json!({"error": "bad id"}).to_string(),
            },
            _ => serde_json::json!({"error": "unknown command; use: list | end <id>"}).to_string(),
        };
        if w.write_all(format!("{answer}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Client side: sends one request line and returns the answer line.
pub async fn request(path: &Path, line: &str) -> std::io::Result<String> {
    let stream = UnixStream::connect(path).await?;
    let (r, mut w) = stream.into_split();
    w.write_all(format!("{line}\n").as_bytes()).await?;
    let mut lines = BufReader::new(r).lines();
    lines
        .next_line()
        .await?
        .ok_or_else(|| std::io::Error::other("the gateway closed the admin socket"))
}
