//! Per-channel flow control for the server (hermes-ssh-gateway patch, see PATCHED.md).
//!
//! Upstream hands every incoming channel message to the channel's bounded queue with a
//! blocking `send().await` in the session loop and re-opens the SSH receive window as soon as
//! data arrives. A reader that stops reading one channel therefore blocks the whole connection
//! (every other channel, keepalives, rekeying), and a peer can keep sending data nobody reads.
//!
//! Here the session loop never waits on a channel: what does not fit the queue goes to an
//! overflow list (consecutive data coalesced into one buffer), and the window is re-opened only
//! for what the reader actually took. A peer that respects the window can therefore never make
//! a channel hold more than its window; data beyond the window is dropped (RFC 4254 §5.2).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::BytesMut;
use tokio::sync::Notify;
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;

use super::ChannelMsg;

/// Most overflow entries kept for messages that carry no data (data is bounded by the window).
const MAX_OVERFLOW_ENTRIES: usize = 256;

/// What did not fit a channel's queue, in arrival order.
#[derive(Debug)]
pub(crate) enum Overflow {
    Data(BytesMut),
    Ext(u32, BytesMut),
    Msg(ChannelMsg),
}

impl Overflow {
    pub(crate) fn into_msg(self) -> ChannelMsg {
        match self {
            Overflow::Data(d) => ChannelMsg::Data { data: d.freeze() },
            Overflow::Ext(ext, d) => ChannelMsg::ExtendedData {
                data: d.freeze(),
                ext,
            },
            Overflow::Msg(m) => m,
        }
    }
}

/// Shared by the session loop (which delivers) and the channel's reader (which consumes).
#[derive(Debug, Default)]
pub struct Flow {
    overflow: Mutex<VecDeque<Overflow>>,
    /// Data bytes delivered (queued or in overflow) and not read yet.
    unread: AtomicUsize,
    /// The receive window this channel should have open; 0: the session's default.
    target: AtomicU32,
    /// Wakes the session loop after a read, to re-open the window.
    wake: OnceLock<Arc<Notify>>,
}

/// Data bytes a message carries (what counts against the window).
pub(crate) fn data_len(msg: &ChannelMsg) -> usize {
    match msg {
        ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => data.len(),
        _ => 0,
    }
}

impl Flow {
    pub(crate) fn lock_overflow(&self) -> MutexGuard<'_, VecDeque<Overflow>> {
        self.overflow.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session loop takes the channel over: reads wake `wake`.
    pub(crate) fn attach(&self, wake: Arc<Notify>) {
        let _ = self.wake.set(wake);
    }

    /// Hands `msg` to the reader without ever waiting.
    pub(crate) fn deliver(&self, sender: &Sender<ChannelMsg>, msg: ChannelMsg) {
        let len = data_len(&msg);
        let mut overflow = self.lock_overflow();
        let msg = if overflow.is_empty() {
            match sender.try_send(msg) {
                Ok(()) => {
                    self.unread.fetch_add(len, Ordering::AcqRel);
                    return;
                }
                // Nobody reads this channel any more: drop.
                Err(TrySendError::Closed(_)) => return,
                Err(TrySendError::Full(m)) => m,
            }
        } else if sender.is_closed() {
            return;
        } else {
            msg
        };
        if len == 0
            && overflow.len() >= MAX_OVERFLOW_ENTRIES
            && !matches!(msg, ChannelMsg::Eof | ChannelMsg::Close)
        {
            // Requests (window-change, env, signals…) piling up behind a reader that does not
            // read: the handler has seen each already; the copy for the reader is dropped.
            return;
        }
        self.unread.fetch_add(len, Ordering::AcqRel);
        match (msg, overflow.back_mut()) {
            (ChannelMsg::Data { data }, Some(Overflow::Data(last))) => last.extend_from_slice(&data),
            (ChannelMsg::ExtendedData { data, ext }, Some(Overflow::Ext(e, last))) if *e == ext => {
                last.extend_from_slice(&data)
            }
            (ChannelMsg::Data { data }, _) => overflow.push_back(Overflow::Data(BytesMut::from(&data[..]))),
            (ChannelMsg::ExtendedData { data, ext }, _) => {
                overflow.push_back(Overflow::Ext(ext, BytesMut::from(&data[..])))
            }
            (m, _) => overflow.push_back(Overflow::Msg(m)),
        }
    }

    /// The reader took `len` data bytes.
    pub(crate) fn consumed(&self, len: usize) {
        if len == 0 {
            return;
        }
        self.unread.fetch_sub(len, Ordering::AcqRel);
        if let Some(w) = self.wake.get() {
            w.notify_one();
        }
    }

    /// Data bytes delivered and not read yet.
    pub(crate) fn unread(&self) -> usize {
        self.unread.load(Ordering::Acquire)
    }

    /// The window to keep open, or `default`.
    pub(crate) fn target(&self, default: u32) -> u32 {
        match self.target.load(Ordering::Acquire) {
            0 => default,
            t => t,
        }
    }

    /// Sets the receive window to keep open (0: the session's default) and lets the session
    /// re-open it now.
    pub(crate) fn set_target(&self, bytes: u32) {
        self.target.store(bytes, Ordering::Release);
        if let Some(w) = self.wake.get() {
            w.notify_one();
        }
    }
}
