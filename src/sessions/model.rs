//! A session's terminal model (`vt100`), parsed beside the output path.
//!
//! Parsing costs about 13 ns a byte (70–80 MB/s on this machine's cores): done inline, it made
//! the program's output wait for it, and a detachable session streamed a quarter slower than
//! one without a model. Here the output path only queues; a task parses. Everything goes through
//! one ordered queue — output, resizes and requests for the screen — so a screen asked for at a
//! given point in the output stream shows exactly the output before that point. The task runs
//! only while there is something to parse: an idle session (most detached ones) holds no task
//! and no queue, only its model.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{oneshot, Semaphore};

use crate::launcher::TermSize;

/// Output bytes the model may be behind by before the output path waits for it.
const BEHIND: usize = 1 << 20;

enum Msg {
    Output(Bytes),
    Resize(TermSize),
    Screen(oneshot::Sender<Vec<u8>>),
}

struct Shared {
    parser: Mutex<vt100::Parser>,
    /// What is waiting to be parsed, and whether a task is parsing it.
    queue: Mutex<(VecDeque<Msg>, bool)>,
    /// Output bytes not parsed yet may not exceed [`BEHIND`].
    budget: Semaphore,
}

/// The handle the session holds.
pub(super) struct Model(Arc<Shared>);

impl Model {
    /// A model of a `size` terminal keeping `scrollback` lines.
    pub(super) fn start(size: TermSize, scrollback: usize) -> Model {
        Model(Arc::new(Shared {
            parser: Mutex::new(vt100::Parser::new(size.rows, size.cols, scrollback)),
            queue: Mutex::new((VecDeque::new(), false)),
            budget: Semaphore::new(BEHIND),
        }))
    }

    /// Program output, in order. Waits only when the model is more than [`BEHIND`] behind.
    pub(super) async fn output(&self, chunk: Bytes) {
        let n = chunk.len().min(BEHIND) as u32;
        if let Ok(p) = self.0.budget.acquire_many(n).await {
            // Given back once parsed.
            p.forget();
        }
        self.push(Msg::Output(chunk));
    }

    /// The terminal's new size, in order with the output.
    pub(super) fn resize(&self, size: TermSize) {
        self.push(Msg::Resize(size));
    }

    /// The screen as it will stand once everything sent so far is parsed.
    pub(super) fn screen(&self) -> oneshot::Receiver<Vec<u8>> {
        let (tx, rx) = oneshot::channel();
        self.push(Msg::Screen(tx));
        rx
    }

    fn push(&self, msg: Msg) {
        let start = {
            let mut q = lock(&self.0.queue);
            q.0.push_back(msg);
            !std::mem::replace(&mut q.1, true)
        };
        if start {
            tokio::spawn(parse(self.0.clone()));
        }
    }
}

/// Parses the queue until it is empty, then ends (the next message starts another).
async fn parse(shared: Arc<Shared>) {
    loop {
        let msg = {
            let mut q = lock(&shared.queue);
            match q.0.pop_front() {
                Some(m) => m,
                None => {
                    q.1 = false;
                    // A burst's queue is not kept for the quiet that follows.
                    q.0 = VecDeque::new();
                    return;
                }
            }
        };
        match msg {
            Msg::Output(chunk) => {
                lock(&shared.parser).process(&chunk);
                shared.budget.add_permits(chunk.len().min(BEHIND));
            }
            Msg::Resize(size) => lock(&shared.parser)
                .screen_mut()
                .set_size(size.rows, size.cols),
            Msg::Screen(reply) => {
                let _ = reply.send(restore_bytes(lock(&shared.parser).screen()));
            }
        }
        // A steady stream of output must not keep a worker thread to itself.
        tokio::task::consume_budget().await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Escape sequences that put a fresh terminal into the state `screen` describes: the right
/// screen (main or alternate), its contents with colours and attributes, the cursor, and the
/// input modes the program set (keypad, cursor keys, bracketed paste, mouse).
fn restore_bytes(screen: &vt100::Screen) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(if screen.alternate_screen() {
        b"\x1b[?1049h"
    } else {
        b"\x1b[?1049l"
    });
    out.extend_from_slice(&screen.state_formatted());
    out.extend_from_slice(&screen.cursor_state_formatted());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restored_screen_matches_the_original() {
        let mut a = vt100::Parser::new(10, 40, 100);
        a.process(
            b"\x1b[31mred\x1b[0m plain\r\n\x1b[?1049h\x1b[1;44mALT\x1b[0m\x1b[?2004h\x1b[5;7H",
        );
        let mut b = vt100::Parser::new(10, 40, 100);
        b.process(b"garbage that was on the new terminal\r\n");
        b.process(&restore_bytes(a.screen()));
        assert_eq!(
            a.screen().contents_formatted(),
            b.screen().contents_formatted()
        );
        assert!(b.screen().alternate_screen());
        assert!(b.screen().bracketed_paste());
        assert_eq!(a.screen().cursor_position(), b.screen().cursor_position());
        assert_eq!(
            b.screen().cell(0, 0).unwrap().bgcolor(),
            vt100::Color::Idx(4)
        );
    }

    #[tokio::test]
    async fn a_screen_asked_for_shows_exactly_the_output_before_it() {
        let m = Model::start(TermSize::clamped(40, 5, 0, 0), 10);
        m.output(Bytes::from_static(b"first\r\n")).await;
        let before = m.screen();
        m.output(Bytes::from_static(b"second\r\n")).await;
        m.resize(TermSize::clamped(20, 5, 0, 0));
        let after = m.screen();
        let shown = |bytes: Vec<u8>, cols| {
            let mut p = vt100::Parser::new(5, cols, 0);
            p.process(&bytes);
            p.screen().contents()
        };
        let before = shown(before.await.unwrap(), 40);
        assert!(
            before.contains("first") && !before.contains("second"),
            "{before}"
        );
        let after = shown(after.await.unwrap(), 20);
        assert!(
            after.contains("first") && after.contains("second"),
            "{after}"
        );
    }
}
