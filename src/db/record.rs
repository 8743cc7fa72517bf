//! What callers write: one [`Record`] per fact, queued to the writer thread;
//! and the state of an upload, stored as its name.

use super::sql::{FromValue, ToValue, Value};

/// Where the upload of one set to one target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UploadState {
    /// Queued, not yet confirmed by the target: the spool keeps the set's files.
    Pending,
    /// Every file confirmed by the target.
    Done,
    /// The set's files vanished from the spool before the upload: it can never happen.
    Lost,
    /// Confirmed once, then removed from the target by retention.
    Deleted,
}

impl UploadState {
    /// The name stored in the database and shown by `callrec uploads status`.
    pub fn as_str(self) -> &'static str {
        match self {
            UploadState::Pending => "pending",
            UploadState::Done => "done",
            UploadState::Lost => "lost",
            UploadState::Deleted => "deleted",
        }
    }

    fn parse(name: &str) -> Option<UploadState> {
        [
            UploadState::Pending,
            UploadState::Done,
            UploadState::Lost,
            UploadState::Deleted,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for UploadState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // pad, not write_str: the status table aligns the state by width.
        f.pad(self.as_str())
    }
}

impl ToValue for UploadState {
    fn to_value(&self) -> Value {
        Value::Text(self.as_str().to_string())
    }
}

impl FromValue for UploadState {
    fn from_value(v: &Value) -> Result<Self, String> {
        let name = String::from_value(v)?;
        // An unknown name is a damaged or newer database: say which value, do not guess.
        UploadState::parse(&name).ok_or_else(|| format!("unknown upload state {name:?}"))
    }
}

/// One thing to write into the protocol database.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A call event (started, answered, ended, …).
    Call {
        /// Call-ID of the caller leg.
        call_id: String,
        /// When it happened (ms since epoch).
        at_ms: i64,
        /// What happened, e.g. "start", "answer", "end".
        event: String,
        /// "in" or "out".
        direction: Option<String>,
        /// Calling number.
        caller: Option<String>,
        /// Called number.
        callee: Option<String>,
        /// Free text (e.g. who hung up, final status).
        detail: Option<String>,
    },
    /// A recording decision.
    Decision {
        /// Call-ID of the caller leg.
        call_id: String,
        /// When (ms since epoch).
        at_ms: i64,
        /// Whether the call is recorded.
        recorded: bool,
        /// The profile that took it.
        profile: Option<String>,
        /// Why.
        reason: String,
    },
    /// A recording (its set's base name).
    Recording {
        /// Call-ID of the caller leg.
        call_id: String,
        /// Base name of the set.
        base_name: String,
        /// The profile.
        profile: Option<String>,
        /// Start (ms since epoch).
        start_ms: i64,
        /// End (ms since epoch).
        end_ms: Option<i64>,
        /// Calling number.
        caller: Option<String>,
        /// Called number.
        callee: Option<String>,
        /// Who answered on the callee's side, when the answer named them.
        answered_by: Option<String>,
    },
    /// A recording was finished at start-up after a crash (marks its row).
    RecordingRecovered {
        /// Base name of the set.
        base_name: String,
    },
    /// A sealed set.
    Seal {
        /// Base name of the set.
        base_name: String,
        /// When (ms since epoch).
        at_ms: i64,
        /// SHA-256 of the checksum file.
        checksum_sha256: String,
        /// Number of files in the set.
        files: u32,
        /// Its chain position as JSON (`seal::ChainPosition`), when it has one.
        chain: Option<String>,
    },
    /// A set was queued for a target (idempotent while pending; a done or lost upload becomes pending again).
    UploadQueued {
        /// Base name of the set.
        base_name: String,
        /// Target URL.
        target: String,
        /// When (ms since epoch).
        at_ms: i64,
    },
    /// One upload attempt of a set to a target; also updates the upload's state.
    UploadAttempt {
        /// Base name of the set.
        base_name: String,
        /// Target URL.
        target: String,
        /// Start of the attempt (ms since epoch).
        started_ms: i64,
        /// End of the attempt (ms since epoch).
        ended_ms: i64,
        /// Number of files in the set.
        files: u32,
        /// Bytes in the set.
        bytes: u64,
        /// `None` when every file was confirmed, else what failed.
        error: Option<String>,
        /// When the next attempt is due (ms since epoch), after a failure.
        next_ms: Option<i64>,
    },
    /// A pending upload can never happen: the set's files are gone from the spool.
    UploadLost {
        /// Base name of the set.
        base_name: String,
        /// Target URL.
        target: String,
        /// Why it is lost.
        reason: String,
    },
    /// Upload rows that name no instance (written before instances were
    /// named) become this instance's: they are from the time it had the
    /// database to itself.
    UploadsClaimed,
    /// The pending uploads of set `base_name` that instance `from` owned become
    /// this instance's (`callrec spool adopt` moved the set into its spool).
    UploadAdopted {
        /// Base name of the set.
        base_name: String,
        /// The instance that owned them.
        from: String,
    },
    /// An instance started: its name, identity and certificate.
    Instance(crate::instance::InstanceRow),
    /// An error worth keeping.
    Error {
        /// When (ms since epoch).
        at_ms: i64,
        /// Where it came from, e.g. "spool".
        component: String,
        /// What happened.
        message: String,
    },
    /// A recording failure (see `recorder::failure`), linked to the call.
    Failure {
        /// Call-ID of the caller leg.
        call_id: String,
        /// Base name of the set, when one exists.
        base_name: Option<String>,
        /// The reason's name, e.g. "disk_full".
        reason: String,
        /// What happened.
        detail: String,
        /// When (ms since epoch).
        at_ms: i64,
    },
    /// A set was deleted from a target or the local folder (retention); a done
    /// upload row of that target becomes `deleted`.
    Deletion {
        /// Base name of the set.
        base_name: String,
        /// Where it was deleted.
        target: String,
        /// When (ms since epoch).
        at_ms: i64,
        /// Why (e.g. "retention 5y").
        reason: String,
        /// SHA-256 of the set's checksum file, when known.
        checksum_sha256: Option<String>,
    },
    /// Someone searched, exported, played back or held recordings.
    Access(crate::access_log::AccessEntry),
    /// A chain head was time-stamped.
    Anchor(crate::anchoring::AnchorRow),
    /// A legal hold was placed or lifted.
    Hold(crate::hold::HoldChange),
    /// A member's phone link was created, rotated or put on her phones.
    PhoneKey(crate::phone::keys::PhoneKeyChange),
    /// A member logged out of a group or in again.
    Membership(crate::policy::membership::MembershipChange),
    /// The transcription queue or the word index changed.
    Transcript(crate::transcribe::queue::QueueChange),
    /// A set is deleted everywhere: its rows are reduced to the deletion record
    /// and its base name replaced by its set id.
    Reduce {
        /// Base name of the set.
        base_name: String,
        /// What names it from now on.
        set_id: String,
    },
    /// Rows of unrecorded calls older than this go (see `redact`).
    ExpireUnrecorded {
        /// Cut-off (ms since epoch).
        before_ms: i64,
    },
}
