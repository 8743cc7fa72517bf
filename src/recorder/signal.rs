//! How a running recording tells its call that it has failed (disk full,
//! write error …), so that a call whose profile says `on_record_failure =
//! reject` can be ended instead of going on unrecorded. The signal is
//! non-blocking and may be raised from any thread (the recorder's workers
//! included); a recording without a call holds a signal that goes nowhere.

use tokio::sync::mpsc;

use super::failure::FailureReason;

/// What the call learns when its recording fails.
#[derive(Debug, Clone)]
pub struct RecordingFailed {
    /// Why.
    pub reason: FailureReason,
    /// What happened, for the log.
    pub detail: String,
}

/// The sending end, kept by the recording (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct FailureSignal {
    tx: Option<mpsc::UnboundedSender<RecordingFailed>>,
}

impl FailureSignal {
    /// A signal and the receiver its call listens on.
    pub fn channel() -> (FailureSignal, mpsc::UnboundedReceiver<RecordingFailed>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (FailureSignal { tx: Some(tx) }, rx)
    }

    /// Tells the call; does nothing when the call has ended. Reporting the
    /// failure (log, metric, database) is the raiser's job, not the call's.
    pub fn raise(&self, reason: FailureReason, detail: impl Into<String>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(RecordingFailed {
                reason,
                detail: detail.into(),
            });
        }
    }
}
