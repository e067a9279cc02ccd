//! The admin socket: a Unix socket (mode 0600, owner only) on which `hermes-ssh-gateway
//! sessions` lists and ends sessions. One request line, one JSON answer line:
//! `list` → `[{"id":…,"user":…,…}]`; `end <id>` → `{"ended":true|false}`. `watch <id>` answers
//! one JSON line (`{"watching":…}` or `{"error":…}`) and then streams the session's terminal,
//! read-only, until the session ends or the operator closes the socket.
//!
//! The same requests serve operators by identity (`[admin] users`/`groups`), who use them from
//! their own SSH session (`ssh host admin …`) without access to the socket; see [`Operators`].

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
        crate::fsutil::create_private_dir(dir)?;
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

/// What the admin socket acts on.
#[derive(Clone)]
pub struct AdminState {
    /// Live sessions (list, end).
    pub sessions: Arc<SessionRegistry>,
    /// Enrolled keys (list, revoke).
    pub enrollments: Arc<dyn crate::identity::store::EnrollmentStore>,
    /// For the audit record of a revocation.
    pub ops: Arc<super::Ops>,
    /// The sessions that can be attached (and so watched).
    pub hub: Arc<crate::sessions::Hub>,
}

/// Serves until `shutdown`. Peers that are neither this account nor root are refused (the file
/// mode already keeps them out; this holds even if the mode was loosened by hand), and so are
/// the sessions' own programs, whatever their account.
pub async fn serve(listener: UnixListener, state: AdminState, shutdown: CancellationToken) {
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
        let cred = stream.peer_cred().ok();
        let uid = cred.map(|c| c.uid()).unwrap_or(u32::MAX);
        if uid != me && uid != 0 {
            tracing::warn!(uid, "refused: admin socket connection from another user");
            continue;
        }
        // A session's program runs as this account (or root) too: whatever descends from this
        // gateway, or sits in one of its session cgroups, is a user's program, not the operator.
        let pid = cred.and_then(|c| c.pid()).unwrap_or(0);
        if pid <= 0 || started_by_this_gateway(pid) {
            tracing::warn!(
                pid,
                "refused: admin socket connection from a session's program"
            );
            continue;
        }
        tokio::spawn(handle(stream, state.clone()));
    }
}

/// Whether `pid` is a process this gateway started (its child or a descendant of one), or lives
/// in one of its session cgroups (which also holds daemons that left the ancestry).
fn started_by_this_gateway(pid: i32) -> bool {
    let me = std::process::id() as i32;
    let session_cgroup = format!("/session-{me}-");
    if std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|c| c.contains(&session_cgroup))
    {
        return true;
    }
    let mut p = pid;
    // Bounded: process trees are shallow, and a vanished process ends the walk.
    for _ in 0..256 {
        if p == me {
            return true;
        }
        if p <= 1 {
            return false;
        }
        let Some(parent) = parent_of(p) else {
            return false;
        };
        p = parent;
    }
    false
}

/// The parent pid from `/proc/<pid>/stat` (the field after the `)` closing the command name).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

async fn handle(stream: UnixStream, state: AdminState) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(id) = line.strip_prefix("watch ") {
            return watch(&state, id.trim(), lines, w).await;
        }
        let answer = answer(&state, &line, &super::Actor::Operator).await;
        if w.write_all(format!("{answer}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

/// One request line's JSON answer; `actor` is who asks (for the log).
pub async fn answer(state: &AdminState, line: &str, actor: &super::Actor) -> String {
    use serde_json::json;
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("list"), None) => {
            serde_json::to_string(&state.sessions.list_all().await).unwrap_or_default()
        }
        (Some("end"), Some(id)) => match id.parse::<u64>() {
            Ok(id) => {
                let ended = state.sessions.end(id);
                if ended {
                    let by = serde_json::to_string(actor).unwrap_or_default();
                    tracing::info!(session_id = id, by, "session ended by an operator");
                }
                json!({"ended": ended}).to_string()
            }
            Err(_) => json!({"error": "bad id"}).to_string(),
        },
        (Some("enrollments"), user) => {
            let user = match user.map(crate::identity::UserId::parse).transpose() {
                Ok(u) => u,
                Err(e) => return json!({"error": format!("bad user id: {e}")}).to_string(),
            };
            match state.enrollments.list(user.as_ref()).await {
                Ok(list) => serde_json::Value::Array(
                    list.into_iter()
                        .map(|(fp, e)| {
                            json!({"fingerprint": fp, "user_id": e.user_id, "provider": e.provider,
                                   "enrolled_at": e.enrolled_at, "expires_at": e.expires_at,
                                   "last_used": e.last_used})
                        })
                        .collect(),
                )
                .to_string(),
                Err(e) => json!({"error": e.to_string()}).to_string(),
            }
        }
        (Some("revoke"), Some(fp)) => match state.enrollments.lookup(fp).await {
            Ok(Some(e)) => match state.enrollments.remove(fp).await {
                Ok(revoked) => {
                    tracing::info!(user = %e.user_id, key = fp, "enrolled key revoked by the operator");
                    state.ops.emit(super::Event::Revoked {
                        user: e.user_id.clone(),
                        key: fp.to_owned(),
                        by: super::RevokedBy::Operator,
                    });
                    json!({"revoked": revoked}).to_string()
                }
                Err(e) => json!({"error": e.to_string()}).to_string(),
            },
            Ok(None) => json!({"revoked": false}).to_string(),
            Err(e) => json!({"error": e.to_string()}).to_string(),
        },
        _ => json!({"error": "unknown command; use: list | end <id> | watch <id> | enrollments [user] | revoke <fingerprint>"})
            .to_string(),
    }
}

/// `watch <id>`: the operator watches a session read-only, as a watcher the owner is told
/// about; audited like any watcher, with `operator` as the actor.
async fn watch(
    state: &AdminState,
    id: &str,
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    mut w: tokio::net::unix::OwnedWriteHalf,
) {
    use serde_json::json;
    let session = match watchable(state, id) {
        Ok(s) => s,
        Err(why) => {
            let why = json!({ "error": why });
            let _ = w.write_all(format!("{why}\n").as_bytes()).await;
            return;
        }
    };
    let head = json!({"watching": session.live.id, "session": session.id, "user": session.user});
    if w.write_all(format!("{head}\n").as_bytes()).await.is_err() {
        return;
    }
    // Whatever the operator types is read and dropped; closing the socket ends the watch.
    let operator_left = async { while let Ok(Some(_)) = lines.next_line().await {} };
    let who = (super::Actor::Operator, None);
    watch_into(state, &session, Box::new(w), who, operator_left).await;
}

/// The session `id` (as `list` numbers them) if it can be watched.
pub fn watchable(state: &AdminState, id: &str) -> Result<Arc<crate::sessions::Running>, String> {
    id.parse::<u64>()
        .ok()
        .and_then(|n| state.hub.by_record(n))
        .ok_or_else(|| format!("no session {id} on this node that can be watched (sessions are watchable while [session] detach_timeout is on)"))
}

/// `actor` (connected from `remote`) watches `session` read-only through `sink` until `left`
/// completes or the session ends; the owner is told, and both ends are audited.
pub async fn watch_into(
    state: &AdminState,
    session: &Arc<crate::sessions::Running>,
    sink: crate::sessions::Sink,
    (actor, remote): (super::Actor, Option<std::net::IpAddr>),
    left: impl std::future::Future<Output = ()>,
) {
    let who = match &actor {
        super::Actor::Admin(u) => format!("the operator {u}"),
        _ => "the operator".into(),
    };
    let joining = crate::sessions::Joining {
        who,
        size: None,
        watcher: true,
        restore: true,
    };
    let attachment = session.attach(sink, joining).await;
    let audit = |what| super::Event::Attachment {
        owner: session.user.clone(),
        actor: actor.clone(),
        session: session.id.clone(),
        remote,
        what,
    };
    state.ops.emit(audit(super::AttachmentKind::WatchStart));
    tracing::info!(owner = %session.user, session = session.id, "an operator is watching");
    tokio::select! {
        _ = left => session.detach(&attachment).await,
        _ = attachment.gone.cancelled() => attachment.flushed().await,
    }
    state.ops.emit(audit(super::AttachmentKind::WatchEnd));
}

/// `[admin] users` and `groups`: who may use the operator's views from their own session.
#[derive(Debug, Default)]
pub struct Operators {
    users: std::collections::HashSet<crate::identity::UserId>,
    groups: std::collections::HashSet<String>,
}

impl Operators {
    /// Parses the configured ids; the error names a bad one.
    pub fn new(users: &[String], groups: &[String]) -> Result<Operators, String> {
        let users = users
            .iter()
            .map(|u| {
                crate::identity::UserId::parse(u)
                    .map_err(|e| format!("[admin] users: {u:?} is not a user id ({e})"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Operators {
            users,
            groups: groups.iter().cloned().collect(),
        })
    }

    /// Whether anyone is an operator by identity.
    pub fn any(&self) -> bool {
        !self.users.is_empty() || !self.groups.is_empty()
    }

    /// Whether `identity` is an operator; the error is the line the refused user reads.
    /// Groups are those of the identity provider's last validated token (the sign-in that
    /// enrolled the key, then each re-check); mapped keys and certificates carry none.
    pub fn admit(&self, identity: &crate::identity::Identity) -> Result<(), String> {
        if self.users.contains(&identity.user_id)
            || identity.groups.iter().any(|g| self.groups.contains(g))
        {
            return Ok(());
        }
        let mut why = format!(
            "{} is not an operator here ([admin] users or groups in the gateway's configuration)",
            identity.user_id
        );
        if !self.groups.is_empty() && identity.groups.is_empty() {
            why.push_str("; operator groups are those your identity provider's token listed when you signed in, and a key from a key file or a certificate carries none");
        }
        Err(why)
    }
}

/// [`request`] for a program without a runtime (the CLI).
pub fn request_blocking(path: &Path, line: &str) -> std::io::Result<String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(request(path, line))
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
