use tokio::sync::mpsc::Sender;

use super::WindowSizeRef;
use crate::ChannelMsg;

/// A handle to the [`super::Channel`]'s to be able to transmit messages
/// to it and update it's `window_size`.
#[derive(Debug)]
pub struct ChannelRef {
    pub(super) sender: Sender<ChannelMsg>,
    pub(super) window_size: WindowSizeRef,
    pub(super) flow: std::sync::Arc<super::Flow>,
}

impl ChannelRef {
    pub fn new(sender: Sender<ChannelMsg>) -> Self {
        Self {
            sender,
            window_size: WindowSizeRef::new(0),
            flow: Default::default(),
        }
    }

    /// Flow control shared with the channel's reader.
    pub(crate) fn flow(&self) -> &std::sync::Arc<super::Flow> {
        &self.flow
    }

    /// Hands `msg` to the channel's reader without waiting (server sessions).
    pub(crate) fn deliver(&self, msg: ChannelMsg) {
        self.flow.deliver(&self.sender, msg)
    }

    pub(crate) fn window_size(&self) -> &WindowSizeRef {
        &self.window_size
    }
}

impl std::ops::Deref for ChannelRef {
    type Target = Sender<ChannelMsg>;

    fn deref(&self) -> &Self::Target {
        &self.sender
    }
}
