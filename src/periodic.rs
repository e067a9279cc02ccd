//! Background housekeeping: run a small job at a fixed period until cancelled.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Calls `job` every `period` until `stop` is cancelled (the first call after one period).
pub fn every(period: Duration, stop: CancellationToken, mut job: impl FnMut() + Send + 'static) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => job(),
            }
        }
    });
}
