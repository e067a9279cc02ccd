//! One session's life after its program started, the same for every front: it ends when the
//! program exits or hits a limit, the operator ends it, the gateway shuts down, nobody typed
//! or read anything for `idle_timeout`, or no client came back within `detach_timeout`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::launcher::{LimitHit, Process};
use crate::ops::{LiveSession, Ops, SessionGuard, Shutdown};

use super::{Outcome, Running};

/// The program's last output gets this long to reach the client after it exits.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(300);

/// Where the gateway's own lines for the user go.
pub trait Notify: Send + Sync {
    /// Writes one `[hermes-ssh-gateway] …` line for the user.
    fn notice<'a>(&'a self, text: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

impl Notify for Running {
    fn notice<'a>(&'a self, text: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(Running::notice(self, text))
    }
}

/// Who is still there to see the session.
pub enum Presence {
    /// One connection: its end ends the session (pipes, or detaching turned off).
    Connection(CancellationToken),
    /// A detachable session: it ends `after` its last client left.
    Clients {
        /// The session.
        session: Arc<Running>,
        /// How long it waits for a client.
        after: Duration,
    },
}

impl Presence {
    /// Resolves when nobody is left to see the session.
    async fn abandoned(&self) {
        match self {
            Presence::Connection(closed) => closed.cancelled().await,
            Presence::Clients { session, after } => {
                let mut attached = session.attached();
                loop {
                    if *attached.borrow_and_update() {
                        if attached.changed().await.is_err() {
                            return;
                        }
                        continue;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(*after) => return,
                        r = attached.changed() => if r.is_err() { return },
                    }
                }
            }
        }
    }
}

/// What a session needs besides its program.
pub struct Rules {
    /// Audit and metrics.
    pub ops: Arc<Ops>,
    /// Shutdown stages.
    pub shutdown: Shutdown,
    /// `[limits] idle_timeout` (zero: never).
    pub idle: Duration,
}

/// A started program with its output pumps.
pub struct Started {
    /// The program.
    pub process: Process,
    /// Its admin/metrics record.
    pub live: Arc<LiveSession>,
    /// Its place in the per-user count; released when the session ends.
    pub guard: SessionGuard,
    /// The stdout (or PTY) pump.
    pub out: JoinHandle<()>,
    /// The stderr pump (pipes).
    pub err: Option<JoinHandle<()>>,
    /// When it started.
    pub started: Instant,
}

enum Ending {
    Exited(crate::launcher::ExitStatus),
    Limit(LimitHit),
    Abandoned,
    Ended(String),
}

/// Runs the session to its end and returns how it ended; the program's process group is gone
/// by then, and the `session_end` event emitted.
pub async fn supervise(
    s: Started,
    rules: Rules,
    presence: Presence,
    notify: &dyn Notify,
) -> Outcome {
    let Started {
        process,
        live,
        guard,
        out,
        err,
        started,
    } = s;
    let user = live.user.clone();
    let mut limit: Option<LimitHit> = None;
    let ending = wait(
        process.exited(),
        process.limit_hit(),
        &live,
        &rules,
        &presence,
        notify,
    )
    .await;
    let group = process.group();
    let (code, notice) = match ending {
        Ending::Limit(hit) => {
            limit = Some(hit);
            tracing::warn!(
                user = %user,
                limit = hit.as_str(),
                "session stopped at a resource limit"
            );
            group.terminate().await;
            let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, out).await;
            let reason = process.confinement().describe(hit);
            (Some(1), Some(format!("session ended: {reason}")))
        }
        Ending::Exited(status) => {
            // The program is gone; give its last output a moment to flush, then hang up
            // anything it left behind so nothing outlives the session.
            let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, out).await;
            if let Some(err) = err {
                let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, err).await;
            }
            group.terminate().await;
            tracing::info!(
                user = %user,
                code = status.exit_code(),
                signal = status.signal_name(),
                "program exited"
            );
            let confinement = process.confinement();
            let notice = if let Some(hit) = confinement.explain(status.signal) {
                limit = Some(hit);
                tracing::warn!(
                    user = %user,
                    limit = hit.as_str(),
                    "program stopped at a resource limit"
                );
                Some(confinement.describe(hit))
            } else if status.exit_code() != 0 {
                confinement.hint().map(|hint| {
                    format!(
                        "the program ended with status {}; {hint}",
                        status.exit_code()
                    )
                })
            } else {
                None
            };
            (Some(status.exit_code()), notice)
        }
        Ending::Abandoned => {
            tracing::info!(user = %user, "no client left; ending the program");
            group.terminate().await;
            out.abort();
            (None, None)
        }
        Ending::Ended(reason) => {
            tracing::info!(user = %user, reason, "session ended");
            group.terminate().await;
            let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, out).await;
            (Some(1), Some(format!("session ended: {reason}")))
        }
    };
    drop(process);
    rules.ops.emit(live.end_event(started, code, limit));
    drop(guard);
    Outcome {
        code,
        notice,
        at: SystemTime::now(),
    }
}

async fn wait(
    exited: impl Future<Output = crate::launcher::ExitStatus>,
    limit_hit: impl Future<Output = LimitHit>,
    live: &LiveSession,
    rules: &Rules,
    presence: &Presence,
    notify: &dyn Notify,
) -> Ending {
    let idle = rules.idle;
    // The warning comes a minute before the end, as people expect from a shell's TMOUT; a short
    // timeout (tests, kiosks) warns at three quarters, so the warning never comes at once.
    let warn_before = (idle / 4).min(Duration::from_secs(60));
    // Checked four times a second at most, and at least twice per timeout for very short ones.
    let mut idle_tick = tokio::time::interval(
        Duration::from_millis(250).min(idle.max(Duration::from_millis(50)) / 2),
    );
    idle_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut warned_idle = false;
    let mut warned_drain = false;
    tokio::pin!(limit_hit);
    tokio::pin!(exited);
    let abandoned = presence.abandoned();
    tokio::pin!(abandoned);
    loop {
        tokio::select! {
            s = &mut exited => return Ending::Exited(s),
            hit = &mut limit_hit => return Ending::Limit(hit),
            _ = &mut abandoned => return Ending::Abandoned,
            _ = live.end.cancelled() => {
                let reason = live.end_reason.get().map(String::as_str).unwrap_or("ended by the operator");
                return Ending::Ended(reason.into());
            }
            _ = rules.shutdown.terminate.cancelled() => return Ending::Ended("the gateway shut down".into()),
            _ = rules.shutdown.draining.cancelled(), if !warned_drain => {
                warned_drain = true;
                notify.notice("the gateway is going down; your session will end shortly").await;
            }
            _ = idle_tick.tick(), if !idle.is_zero() => {
                // Output counts as activity: an agent at work is not idle.
                let idle_for = Duration::from_millis(live.quiet_ms());
                if idle_for >= idle {
                    return Ending::Ended(format!("no input or output for {}", humantime::format_duration(idle)));
                }
                if idle_for + warn_before >= idle && !warned_idle {
                    warned_idle = true;
                    notify.notice(&format!(
                        "no input for a while: this session ends in {} unless you type",
                        humantime::format_duration(idle - idle_for)
                    ))
                    .await;
                } else if idle_for + warn_before < idle {
                    warned_idle = false;
                }
            }
        }
    }
}
