//! Recording failures: the one vocabulary for "a call that should have been
//! recorded is not, or not completely", and the one place every part of
//! callrec reports such a failure to. Each report is logged at ERROR (in the
//! call's span when the caller is in one), counted per reason for
//! `/metrics` (`callrec_recording_failures_total{reason}`), written as a row
//! of the protocol database's `failures` table and mailed to the operator
//! (rate-limited, a digest when many); the README's "When a recording fails"
//! lists the reasons and what callrec does. Reporting never waits: the
//! database row and the mail go through their own queues.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why a recording failed or is incomplete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The recording's files could not be created or its recorder not started.
    StartFailed,
    /// The disk holding the recording ran full (ENOSPC).
    DiskFull,
    /// Writing the recording failed for another reason.
    WriteError,
    /// The call's codec cannot be decoded (e.g. G.729, AMR).
    UndecodableCodec,
    /// The media is encrypted with keys callrec does not hold (SRTP, DTLS).
    EncryptedMedia,
    /// The announcement the profile requires could not be played.
    AnnouncementNotPlayed,
    /// The proxy died while recording; the set was finished at the next start.
    RecoveredAfterCrash,
    /// A journal a crash left has no audio, and the database could not say
    /// at the next start whether its set had been delivered: judged later.
    UndecidedAfterCrash,
    /// The recorder could not keep up and dropped audio.
    RecorderOverload,
    /// A call decided "record" has no sealed set (found by reconciliation).
    NotSealed,
    /// The set is recorded and sealed, but its transcript could not be made
    /// (speech model missing, engine error); the audio is not affected.
    TranscriptionFailed,
}

impl FailureReason {
    /// Every reason, in the order `/metrics` lists them.
    pub const ALL: [FailureReason; 11] = [
        FailureReason::StartFailed,
        FailureReason::DiskFull,
        FailureReason::WriteError,
        FailureReason::UndecodableCodec,
        FailureReason::EncryptedMedia,
        FailureReason::AnnouncementNotPlayed,
        FailureReason::RecoveredAfterCrash,
        FailureReason::UndecidedAfterCrash,
        FailureReason::RecorderOverload,
        FailureReason::NotSealed,
        FailureReason::TranscriptionFailed,
    ];

    /// The name used in the database, the metadata, metrics and mails.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::StartFailed => "start_failed",
            FailureReason::DiskFull => "disk_full",
            FailureReason::WriteError => "write_error",
            FailureReason::UndecodableCodec => "undecodable_codec",
            FailureReason::EncryptedMedia => "encrypted_media",
            FailureReason::AnnouncementNotPlayed => "announcement_not_played",
            FailureReason::RecoveredAfterCrash => "recovered_after_crash",
            FailureReason::UndecidedAfterCrash => "undecided_after_crash",
            FailureReason::RecorderOverload => "recorder_overload",
            FailureReason::NotSealed => "not_sealed",
            FailureReason::TranscriptionFailed => "transcription_failed",
        }
    }

    /// The reason for an I/O error while writing a recording.
    pub fn of_io(e: &std::io::Error) -> FailureReason {
        if e.raw_os_error() == Some(28) || e.kind() == std::io::ErrorKind::StorageFull {
            FailureReason::DiskFull
        } else {
            FailureReason::WriteError
        }
    }

    pub(crate) fn index(self) -> usize {
        FailureReason::ALL
            .iter()
            .position(|r| *r == self)
            .expect("every reason is in ALL")
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failure of one call's recording.
#[derive(Debug, Clone, Serialize)]
pub struct RecordingFailure {
    /// Call-ID of the caller's leg.
    pub call_id: String,
    /// The set's base name, when a set exists (partial or recovered).
    pub set: Option<String>,
    /// Why.
    pub reason: FailureReason,
    /// What happened, for the operator (the error, the codec, the file …).
    pub detail: String,
    /// When (ms since the epoch).
    pub at_ms: i64,
}

impl RecordingFailure {
    /// A failure happening now.
    pub fn now(
        call_id: &str,
        set: Option<&str>,
        reason: FailureReason,
        detail: impl Into<String>,
    ) -> RecordingFailure {
        RecordingFailure {
            call_id: call_id.to_string(),
            set: set.map(str::to_string),
            reason,
            detail: detail.into(),
            at_ms: chrono::Utc::now().timestamp_millis(),
        }
    }
}

/// Where a failure goes besides the log and the counter.
struct Sinks {
    db: Option<crate::db::Db>,
    mail: Option<(crate::notify::Notifier, tokio::runtime::Handle)>,
}

/// Where failures are reported; cheap to clone, shared by calls, recorder,
/// recovery and reconciliation.
#[derive(Clone, Default)]
pub struct FailureReporter {
    counts: Arc<[AtomicU64; 11]>,
    sinks: Option<Arc<Sinks>>,
}

impl FailureReporter {
    /// A reporter with all counts at zero that only logs and counts.
    pub fn new() -> FailureReporter {
        FailureReporter::default()
    }

    /// A reporter that also writes each failure into the protocol database
    /// and mails it. Mails are sent on the tokio runtime this is called in
    /// (without one, none are sent), so threads outside it may report too.
    pub fn with_sinks(
        db: Option<crate::db::Db>,
        notifier: Option<crate::notify::Notifier>,
    ) -> FailureReporter {
        let rt = tokio::runtime::Handle::try_current().ok();
        FailureReporter {
            counts: Arc::default(),
            sinks: Some(Arc::new(Sinks {
                db,
                mail: notifier.zip(rt),
            })),
        }
    }

    /// Reports one failure: logged at ERROR, counted, written to the database
    /// and mailed. Never blocks: both go through queues.
    pub fn report(&self, f: RecordingFailure) {
        self.counts[f.reason.index()].fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            call = %f.call_id,
            set = f.set.as_deref().unwrap_or("-"),
            reason = %f.reason,
            "recording failure: {}",
            f.detail
        );
        let Some(sinks) = &self.sinks else {
            return;
        };
        if let Some(db) = &sinks.db {
            db.send(crate::db::Record::Failure {
                call_id: f.call_id.clone(),
                base_name: f.set.clone(),
                reason: f.reason.as_str().to_string(),
                detail: f.detail.clone(),
                at_ms: f.at_ms,
            });
        }
        if let Some((notifier, rt)) = &sinks.mail {
            // The notifier spawns its sending task; recorder threads are outside the runtime.
            let _g = rt.enter();
            notifier.recording_failed(f);
        }
    }

    /// Failures reported since start, per reason.
    pub fn counts(&self) -> Vec<(FailureReason, u64)> {
        FailureReason::ALL
            .iter()
            .map(|r| (*r, self.counts[r.index()].load(Ordering::Relaxed)))
            .collect()
    }
}
