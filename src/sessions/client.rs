//! One client's output path: a bounded queue and a task that writes it to the client.
//!
//! The program's output is handed to every client's queue, never written to a client directly,
//! so one slow or stalled client (a laptop asleep with its TCP connection still open, a watcher
//! who stops reading) cannot hold up the program or the other clients. A client whose queue
//! stays full is cut loose: it misses output until its queue drains, then gets the screen as it
//! stands from the terminal model and continues live — what tmux does for slow clients.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Running, Sink};

/// Chunks queued per client (each at most one read of program output, `OUTPUT_CHUNK`).
const QUEUE: usize = 32;

/// How long a full queue of the owner's own client may hold the program back before that client
/// is cut loose. Watchers get no grace: someone else's client never slows the program.
const GRACE: Duration = Duration::from_millis(500);

/// The session's side of a client's output path.
pub(super) enum Outbox {
    /// Through a queue and a writer task of its own (sessions with a terminal model).
    Queued {
        tx: mpsc::Sender<Bytes>,
        /// Set while the client misses output; its writer clears it with a fresh screen.
        lagging: Arc<AtomicBool>,
        watcher: bool,
    },
    /// Written in place: a session without a terminal model cannot make up missed output and
    /// has exactly one client, whose pace is the program's, as with sshd (and no task hop).
    Direct { sink: Sink, gone: CancellationToken },
}

/// What the front holds to see the client's output through.
#[derive(Debug, Clone)]
pub(super) struct Flush {
    /// Cancelled when the writer has written everything it was given, or gave up.
    pub done: CancellationToken,
    /// Cancelled by the front to stop writing at once (the client is gone or stuck).
    pub stop: CancellationToken,
}

impl Outbox {
    /// The output path for `sink`; `first` (the restored screen) goes out first. `gone` is
    /// cancelled when the client cannot be written to. `resyncs`: the session keeps a terminal
    /// model, so a client may skip output and be given the screen later.
    pub(super) fn start(
        sink: Sink,
        first: Option<tokio::sync::oneshot::Receiver<Vec<u8>>>,
        session: Weak<Running>,
        gone: CancellationToken,
        resyncs: bool,
        watcher: bool,
    ) -> (Outbox, Flush) {
        let flush = Flush {
            done: CancellationToken::new(),
            stop: CancellationToken::new(),
        };
        if !resyncs {
            // Everything is written before the session lets the client go.
            flush.done.cancel();
            return (Outbox::Direct { sink, gone }, flush);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let lagging = Arc::new(AtomicBool::new(false));
        tokio::spawn(write_out(
            sink,
            first,
            rx,
            Writer {
                session,
                lagging: lagging.clone(),
                gone,
                flush: flush.clone(),
            },
        ));
        let outbox = Outbox::Queued {
            tx,
            lagging,
            watcher,
        };
        (outbox, flush)
    }

    /// Hands the client program output (`shared`: the same bytes, already copied for the
    /// session): queued, waiting only for the owner's own client and only up to the grace; or
    /// written in place. Returns false when the client failed.
    pub(super) async fn output(&mut self, chunk: &[u8], shared: Option<&Bytes>) -> bool {
        let (tx, lagging, watcher) = match self {
            Outbox::Direct { sink, gone } => {
                if sink.write_all(chunk).await.is_err() {
                    gone.cancel();
                    return false;
                }
                return true;
            }
            Outbox::Queued {
                tx,
                lagging,
                watcher,
            } => (tx, lagging, *watcher),
        };
        if lagging.load(Ordering::Acquire) {
            return true;
        }
        let chunk = shared
            .cloned()
            .unwrap_or_else(|| Bytes::copy_from_slice(chunk));
        if let Err(mpsc::error::TrySendError::Full(chunk)) = tx.try_send(chunk) {
            let waited = !watcher && tokio::time::timeout(GRACE, tx.send(chunk)).await.is_ok();
            if !waited {
                lagging.store(true, Ordering::Release);
            }
        }
        true
    }

    /// Hands the client a line from the gateway; dropped when the client is behind.
    pub(super) async fn notice(&mut self, line: &[u8]) {
        match self {
            Outbox::Direct { sink, .. } => {
                let _ = sink.write_all(line).await;
            }
            Outbox::Queued { tx, .. } => {
                let _ = tx.try_send(Bytes::copy_from_slice(line));
            }
        }
    }
}

struct Writer {
    session: Weak<Running>,
    lagging: Arc<AtomicBool>,
    gone: CancellationToken,
    flush: Flush,
}

/// Writes the queue to the client until the session lets it go (the queue is closed and
/// drained), the client fails, or the front stops it.
async fn write_out(
    mut sink: Sink,
    first: Option<tokio::sync::oneshot::Receiver<Vec<u8>>>,
    mut rx: mpsc::Receiver<Bytes>,
    w: Writer,
) {
    let _done = w.flush.done.clone().drop_guard();
    // The screen as it stood when the client joined, before any of the output queued since.
    if let Some(first) = first {
        let screen = tokio::select! {
            s = first => s.unwrap_or_default(),
            _ = w.flush.stop.cancelled() => return,
        };
        let written = tokio::select! {
            r = sink.write_all(&screen) => r.is_ok(),
            _ = w.flush.stop.cancelled() => return,
        };
        if !written {
            return failed(&w, rx).await;
        }
    }
    let mut batch = bytes::BytesMut::new();
    loop {
        let chunk = match rx.try_recv() {
            Ok(c) => c,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                // Caught up: a client that missed output gets the screen, then live output.
                if w.lagging.load(Ordering::Acquire) {
                    match w.session.upgrade() {
                        Some(s) => Bytes::from(s.resync(&w.lagging).await),
                        None => break,
                    }
                } else {
                    tokio::select! {
                        c = rx.recv() => match c { Some(c) => c, None => break },
                        _ = w.flush.stop.cancelled() => break,
                    }
                }
            }
        };
        let chunk = coalesce(chunk, &mut rx, &mut batch);
        tokio::select! {
            r = sink.write_all(&chunk) => if r.is_err() {
                return failed(&w, rx).await;
            },
            _ = w.flush.stop.cancelled() => break,
        }
    }
}

/// The client could not be written to: its front is told, and the session drops it.
async fn failed(w: &Writer, rx: mpsc::Receiver<Bytes>) {
    w.gone.cancel();
    // Closed first: the session may be waiting on this very queue while holding the lock that
    // dropping the client takes.
    drop(rx);
    if let Some(s) = w.session.upgrade() {
        s.drop_failed().await;
    }
}

/// Bytes written to the client at once at most when several chunks are already queued: one
/// SSH data packet's worth, so a burst of small PTY reads costs a few packets, not hundreds.
const BATCH: usize = 32 * 1024;

/// `first` and whatever else is already queued behind it, up to [`BATCH`] bytes. Never waits.
fn coalesce(first: Bytes, rx: &mut mpsc::Receiver<Bytes>, batch: &mut bytes::BytesMut) -> Bytes {
    if first.len() >= BATCH || rx.is_empty() {
        return first;
    }
    batch.clear();
    batch.extend_from_slice(&first);
    while batch.len() < BATCH {
        // A chunk that would not fit is left for the next write (peeking is not possible, so
        // only take when the queue's head is known to fit: no chunk exceeds one read).
        if batch.len() + super::OUTPUT_CHUNK > BATCH {
            break;
        }
        match rx.try_recv() {
            Ok(c) => batch.extend_from_slice(&c),
            Err(_) => break,
        }
    }
    batch.split().freeze()
}
