//! A connection's send queue, bounded in messages and in bytes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// The sending end of a connection's queue, bounded in messages and in
/// bytes (large answers to a peer that never reads must not pile up).
#[derive(Clone)]
pub(super) struct Queue {
    pub(super) tx: mpsc::Sender<Vec<u8>>,
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) max_bytes: usize,
}

/// What became of bytes offered to a queue.
pub(super) enum Push {
    Queued,
    Full,
    Closed(Vec<u8>),
}

impl Queue {
    pub(super) fn push(&self, bytes: Vec<u8>) -> Push {
        let n = bytes.len();
        if self.queued.fetch_add(n, Ordering::Relaxed) + n > self.max_bytes {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return Push::Full;
        }
        match self.tx.try_send(bytes) {
            Ok(()) => Push::Queued,
            Err(e) => {
                self.queued.fetch_sub(n, Ordering::Relaxed);
                match e {
                    mpsc::error::TrySendError::Full(_) => Push::Full,
                    mpsc::error::TrySendError::Closed(b) => Push::Closed(b),
                }
            }
        }
    }
}
