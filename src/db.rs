//! The protocol database: SQLite in WAL mode, written by one thread fed by a channel.
//!
//! Callers never wait on the database: [`Db::send`] only queues a [`Record`]; the
//! writer thread inserts it (in batches, one transaction per batch). The few writes
//! that must be durable before the caller goes on (the upload queue, see
//! `spool`) use [`Db::write_sync`], which waits for the commit. Reads open their
//! own connection, which WAL lets run beside the writer. The schema version is kept
//! in `PRAGMA user_version`; [`MIGRATIONS`] brings an older file up to date.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

/// File name of the database below the data directory.
pub const DB_FILE_NAME: &str = "callrec.sqlite";

/// The schema, one entry per version; entry `i` brings version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE calls (
    id INTEGER PRIMARY KEY,
    call_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    event TEXT NOT NULL,
    direction TEXT,
    caller TEXT,
    callee TEXT,
    detail TEXT
);
CREATE INDEX calls_call_id ON calls(call_id);
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY,
    call_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    recorded INTEGER NOT NULL,
    profile TEXT,
    reason TEXT NOT NULL
);
CREATE INDEX decisions_call_id ON decisions(call_id);
CREATE TABLE recordings (
    id INTEGER PRIMARY KEY,
    call_id TEXT NOT NULL,
    base_name TEXT NOT NULL,
    profile TEXT,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER,
    caller TEXT,
    callee TEXT
);
CREATE INDEX recordings_base_name ON recordings(base_name);
CREATE INDEX recordings_caller ON recordings(caller, start_ms);
CREATE INDEX recordings_callee ON recordings(callee, start_ms);
CREATE TABLE seals (
    id INTEGER PRIMARY KEY,
    base_name TEXT NOT NULL UNIQUE,
    at_ms INTEGER NOT NULL,
    checksum_sha256 TEXT NOT NULL,
    files INTEGER NOT NULL
);
CREATE TABLE uploads (
    id INTEGER PRIMARY KEY,
    base_name TEXT NOT NULL,
    target TEXT NOT NULL,
    queued_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    done_ms INTEGER,
    UNIQUE(base_name, target)
);
CREATE TABLE upload_attempts (
    id INTEGER PRIMARY KEY,
    base_name TEXT NOT NULL,
    target TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    error TEXT
);
CREATE INDEX upload_attempts_set ON upload_attempts(base_name, target);
CREATE TABLE errors (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    component TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE TABLE group_logouts (
    group_number TEXT NOT NULL,
    user_number TEXT NOT NULL,
    logged_out INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (group_number, user_number)
);
"#,
    r#"
CREATE TABLE deletions (
    id INTEGER PRIMARY KEY,
    base_name TEXT NOT NULL,
    target TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    checksum_sha256 TEXT
);
CREATE INDEX deletions_base_name ON deletions(base_name);
"#,
    r#"
ALTER TABLE uploads ADD COLUMN next_ms INTEGER;
CREATE INDEX uploads_state ON uploads(state, base_name);
"#,
    r#"
CREATE TABLE failures (
    id INTEGER PRIMARY KEY,
    call_id TEXT NOT NULL,
    base_name TEXT,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX failures_call_id ON failures(call_id);
CREATE INDEX failures_at ON failures(at_ms);
CREATE INDEX recordings_call_id ON recordings(call_id);
CREATE INDEX decisions_recorded_at ON decisions(recorded, at_ms);
"#,
    r#"
ALTER TABLE recordings ADD COLUMN recovered INTEGER NOT NULL DEFAULT 0;
"#,
    // Who answered on the callee's side (an agent of a called group).
    r#"
ALTER TABLE recordings ADD COLUMN answered_by TEXT;
"#,
    // Who searched, exported, played back or held which recordings (see access_log).
    r#"
CREATE TABLE access_log (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX access_log_at ON access_log(at_ms);
"#,
    // Users of the web console (argon2 hashes).
    r#"
CREATE TABLE console_users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    changed_ms INTEGER NOT NULL
);
"#,
    // A sealed set's place in its chain (JSON), for the tombstone its deletion leaves.
    r#"
ALTER TABLE seals ADD COLUMN chain TEXT;
"#,
    // RFC 3161 time stamps of the chain heads (see anchoring).
    r#"
CREATE TABLE anchors (
    profile TEXT NOT NULL,
    seq INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    reply BLOB NOT NULL,
    PRIMARY KEY (profile, seq)
);
"#,
    // Legal holds (see hold): sets retention must not delete.
    r#"
CREATE TABLE holds (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, value)
);
"#,
    // The personal phone links (see phone::keys): one random token per directory member.
    r#"
CREATE TABLE phone_keys (
    user_id INTEGER PRIMARY KEY,
    token TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    rotated_ms INTEGER NOT NULL,
    -- The login under which the link was put on the member's phones (NULL: not on a phone).
    provisioned_login TEXT
);
"#,
];

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
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
    /// An error worth keeping.
    Error {
        /// When (ms since epoch).
        at_ms: i64,
        /// Where it came from, e.g. "spool".
        component: String,
        /// What happened.
        message: String,
    },
    /// A group member logged out of (or back into) a group.
    GroupLogout {
        /// Group number.
        group_number: String,
        /// User number.
        user_number: String,
        /// True when logged out.
        logged_out: bool,
        /// When (ms since epoch).
        at_ms: i64,
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

/// What went wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Opening or migrating the file failed.
    #[error("protocol database {path}: {op} failed: {source}; check that the data directory is writable, and run `callrec db check` on it")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The file is damaged (SQLite cannot read it, or its check found faults).
    #[error("{}", crate::db_repair::corrupt_message(.path, .findings))]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong (SQLite's words).
        findings: Vec<String>,
    },
    /// The file has a newer schema than this build knows.
    #[error("protocol database {path} has schema version {found}, this callrec knows up to {known}; use a newer callrec")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Version in the file.
        found: i64,
        /// Highest known version.
        known: i64,
    },
    /// A synchronous write was not committed.
    #[error("protocol database {path}: write not committed: {detail}; check free disk space and that the file is not corrupt")]
    Write {
        /// The database file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// A read query failed.
    #[error(
        "protocol database {path}: query failed: {source}; check the file and free disk space"
    )]
    Query {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
}

/// A recording, as `callrec recordings search` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecordingRow {
    /// Call-ID of the caller's leg.
    pub call_id: String,
    /// Base name of the set.
    pub base_name: String,
    /// Profile that recorded it.
    pub profile: Option<String>,
    /// Start (ms since epoch).
    pub start_ms: i64,
    /// End (ms since epoch).
    pub end_ms: Option<i64>,
    /// Caller's number.
    pub caller: Option<String>,
    /// Callee's number.
    pub callee: Option<String>,
    /// Finished at start-up after a crash (audio up to the crash).
    pub recovered: bool,
    /// Who answered on the callee's side.
    pub answered_by: Option<String>,
}

/// The state of one set on one target, as `callrec uploads status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRow {
    /// Base name of the set.
    pub base_name: String,
    /// Target URL.
    pub target: String,
    /// "pending", "done", "lost" (the set's files vanished from the spool) or
    /// "deleted" (removed from the target by retention).
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
    /// When it was queued (ms since epoch).
    pub queued_ms: i64,
    /// When it was confirmed (ms since epoch).
    pub done_ms: Option<i64>,
    /// When the next attempt is due (ms since epoch), after a failed one.
    pub next_ms: Option<i64>,
}

/// One documented deletion of a set from a place (retention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionRow {
    /// Base name of the set.
    pub base_name: String,
    /// Target URL or local folder it was deleted from.
    pub target: String,
    /// When (ms since epoch).
    pub at_ms: i64,
    /// Why.
    pub reason: String,
    /// SHA-256 of the set's checksum file, when known.
    pub checksum_sha256: Option<String>,
}

/// One upload attempt, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    /// Base name of the set.
    pub base_name: String,
    /// Target URL.
    pub target: String,
    /// Start (ms since epoch).
    pub started_ms: i64,
    /// Whether every file was confirmed.
    pub ok: bool,
    /// The error of a failed attempt.
    pub error: Option<String>,
}

/// Reply to a synchronous write: `Err` carries what failed.
type SyncReply = mpsc::Sender<Result<(), String>>;

enum Msg {
    Write(Record),
    WriteSync(Vec<Record>, SyncReply),
    Flush(mpsc::Sender<()>),
}

/// Handle to the protocol database; cheap to clone, sending never blocks.
#[derive(Debug, Clone)]
pub struct Db {
    path: PathBuf,
    tx: mpsc::Sender<Msg>,
    _writer: std::sync::Arc<WriterGuard>,
    /// Idle read-only connections, reused: opening one per query costs more than the query.
    readers: std::sync::Arc<std::sync::Mutex<Vec<Connection>>>,
}

/// Most idle read-only connections kept.
const IDLE_READERS: usize = 4;

/// A read-only connection borrowed from the pool; goes back on drop.
struct Reader<'a> {
    conn: Option<Connection>,
    pool: &'a std::sync::Mutex<Vec<Connection>>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("reader used after drop")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let (Some(conn), Ok(mut idle)) = (self.conn.take(), self.pool.lock()) {
            if idle.len() < IDLE_READERS {
                idle.push(conn);
            }
        }
    }
}

#[derive(Debug)]
struct WriterGuard {
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        // The channel's last sender is gone by now; the writer drains and ends.
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Write(r) => write!(f, "Write({r:?})"),
            Msg::WriteSync(r, _) => write!(f, "WriteSync({r:?})"),
            Msg::Flush(_) => write!(f, "Flush"),
        }
    }
}

fn open_rw(path: &Path) -> Result<Connection, DbError> {
    let err = |op| {
        move |source| DbError::Open {
            path: path.to_path_buf(),
            op,
            source,
        }
    };
    let conn = Connection::open(path).map_err(err("open"))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(err("set busy timeout"))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err("enable WAL"))?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err("set synchronous"))?;
    Ok(conn)
}

/// Brings the schema of `conn` up to date (see [`MIGRATIONS`]).
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), DbError> {
    let err = |op| {
        move |source| DbError::Open {
            path: path.to_path_buf(),
            op,
            source,
        }
    };
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err("read schema version"))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(DbError::TooNew {
            path: path.to_path_buf(),
            found: version,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(err("begin migration"))?;
        tx.execute_batch(sql).map_err(err("migrate"))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(err("store schema version"))?;
        tx.commit().map_err(err("commit migration"))?;
        tracing::info!(path = %path.display(), version = i + 1, "protocol database migrated");
    }
    Ok(())
}

fn write(tx: &Connection, r: &Record) -> rusqlite::Result<()> {
    match r {
        Record::Call {
            call_id,
            at_ms,
            event,
            direction,
            caller,
            callee,
            detail,
        } => {
            tx.execute(
                "INSERT INTO calls (call_id, at_ms, event, direction, caller, callee, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![call_id, at_ms, event, direction, caller, callee, detail],
            )?;
        }
        Record::Failure {
            call_id,
            base_name,
            reason,
            detail,
            at_ms,
        } => {
            tx.execute(
                "INSERT INTO failures (call_id, base_name, reason, detail, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![call_id, base_name, reason, detail, at_ms],
            )?;
        }
        Record::Decision {
            call_id,
            at_ms,
            recorded,
            profile,
            reason,
        } => {
            tx.execute(
                "INSERT INTO decisions (call_id, at_ms, recorded, profile, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![call_id, at_ms, recorded, profile, reason],
            )?;
        }
        Record::Recording {
            call_id,
            base_name,
            profile,
            start_ms,
            end_ms,
            caller,
            callee,
            answered_by,
        } => {
            tx.execute(
                "INSERT INTO recordings (call_id, base_name, profile, start_ms, end_ms, caller, callee, answered_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![call_id, base_name, profile, start_ms, end_ms, caller, callee, answered_by],
            )?;
        }
        Record::RecordingRecovered { base_name } => {
            tx.execute(
                "UPDATE recordings SET recovered = 1 WHERE base_name = ?1",
                params![base_name],
            )?;
        }
        Record::Seal {
            base_name,
            at_ms,
            checksum_sha256,
            files,
            chain,
        } => {
            tx.execute(
                "INSERT OR REPLACE INTO seals (base_name, at_ms, checksum_sha256, files, chain) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![base_name, at_ms, checksum_sha256, files, chain],
            )?;
        }
        Record::UploadQueued {
            base_name,
            target,
            at_ms,
        } => {
            // Queuing again (e.g. a set re-created under the same name) makes it pending again.
            tx.execute(
                "INSERT INTO uploads (base_name, target, queued_ms, state) VALUES (?1, ?2, ?3, 'pending') \
                 ON CONFLICT(base_name, target) DO UPDATE SET state = 'pending', next_ms = NULL, done_ms = NULL WHERE state != 'pending'",
                params![base_name, target, at_ms],
            )?;
        }
        Record::UploadAttempt {
            base_name,
            target,
            started_ms,
            ended_ms,
            files,
            bytes,
            error,
            next_ms,
        } => {
            tx.execute(
                "INSERT INTO upload_attempts (base_name, target, started_ms, ended_ms, ok, files, bytes, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![base_name, target, started_ms, ended_ms, error.is_none(), files, *bytes as i64, error],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO uploads (base_name, target, queued_ms, state) VALUES (?1, ?2, ?3, 'pending')",
                params![base_name, target, started_ms],
            )?;
            let state = if error.is_none() { "done" } else { "pending" };
            let done_ms = error.is_none().then_some(*ended_ms);
            tx.execute(
                "UPDATE uploads SET attempts = attempts + 1, state = ?3, last_error = ?4, done_ms = ?5, next_ms = ?6 WHERE base_name = ?1 AND target = ?2",
                params![base_name, target, state, error, done_ms, next_ms],
            )?;
        }
        Record::UploadLost {
            base_name,
            target,
            reason,
        } => {
            tx.execute(
                "UPDATE uploads SET state = 'lost', last_error = ?3, next_ms = NULL WHERE base_name = ?1 AND target = ?2 AND state = 'pending'",
                params![base_name, target, reason],
            )?;
        }
        Record::Error {
            at_ms,
            component,
            message,
        } => {
            tx.execute(
                "INSERT INTO errors (at_ms, component, message) VALUES (?1, ?2, ?3)",
                params![at_ms, component, message],
            )?;
        }
        Record::GroupLogout {
            group_number,
            user_number,
            logged_out,
            at_ms,
        } => {
            tx.execute(
                "INSERT OR REPLACE INTO group_logouts (group_number, user_number, logged_out, at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![group_number, user_number, logged_out, at_ms],
            )?;
        }
        Record::Deletion {
            base_name,
            target,
            at_ms,
            reason,
            checksum_sha256,
        } => {
            tx.execute(
                "INSERT INTO deletions (base_name, target, at_ms, reason, checksum_sha256) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![base_name, target, at_ms, reason, checksum_sha256],
            )?;
            // The target no longer holds the set.
            tx.execute(
                "UPDATE uploads SET state = 'deleted', next_ms = NULL WHERE base_name = ?1 AND target = ?2 AND state = 'done'",
                params![base_name, target],
            )?;
        }
        Record::Access(entry) => crate::access_log::insert(tx, entry)?,
        Record::Anchor(row) => crate::anchoring::insert(tx, row)?,
        Record::Hold(change) => crate::hold::apply(tx, change)?,
        Record::Reduce { base_name, set_id } => crate::redact::reduce(tx, base_name, set_id)?,
        Record::ExpireUnrecorded { before_ms } => crate::redact::expire_unrecorded(tx, *before_ms)?,
    }
    Ok(())
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Msg>, path: PathBuf) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut flushes = Vec::new();
        // Replies to synchronous writes, sent once the batch's fate is known.
        let mut replies: Vec<(SyncReply, Result<(), String>)> = Vec::new();
        let result = (|| -> rusqlite::Result<()> {
            let mut tx = conn.transaction()?;
            for m in &batch {
                match m {
                    Msg::Write(r) => {
                        if let Err(e) = write(&tx, r) {
                            tracing::error!(path = %path.display(), record = ?r, error = %e, "protocol database: record not written");
                        }
                    }
                    Msg::WriteSync(records, reply) => {
                        // All of them or none: a savepoint per synchronous group.
                        let outcome = (|| -> rusqlite::Result<()> {
                            let sp = tx.savepoint()?;
                            for r in records {
                                write(&sp, r)?;
                            }
                            sp.commit()
                        })();
                        replies.push((reply.clone(), outcome.map_err(|e| e.to_string())));
                    }
                    Msg::Flush(done) => flushes.push(done.clone()),
                }
            }
            tx.commit()
        })();
        if let Err(e) = &result {
            tracing::error!(path = %path.display(), error = %e, records = batch.len(), "protocol database: batch not committed; check disk space and the file");
        }
        match &result {
            Ok(()) => {
                for (reply, outcome) in replies {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                // Nothing of the batch is committed: every synchronous writer hears so.
                for m in &batch {
                    if let Msg::WriteSync(_, reply) = m {
                        let _ = reply.send(Err(format!("commit failed: {e}")));
                    }
                }
            }
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

impl Db {
    /// Opens (creating and migrating) the database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| DbError::Open {
                path: path.to_path_buf(),
                op: "create the data directory",
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        }
        let mut conn = open_rw(path).map_err(crate::db_repair::classify)?;
        // A damaged file found now stops the start, before calls are taken and
        // their records written into it.
        let findings =
            crate::db_repair::damage_on_open(&conn, path).map_err(crate::db_repair::classify)?;
        if !findings.is_empty() {
            return Err(DbError::Corrupt {
                path: path.to_path_buf(),
                findings,
            });
        }
        migrate(&mut conn, path).map_err(crate::db_repair::classify)?;
        // Unbounded: a few records per call (bounded by the calls admitted)
        // and per upload; the protocol must not lose a record.
        let (tx, rx) = mpsc::channel();
        let p = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || writer_loop(conn, rx, p))
            .map_err(|e| DbError::Open {
                path: path.to_path_buf(),
                op: "start writer thread",
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok(Db {
            path: path.to_path_buf(),
            tx,
            _writer: std::sync::Arc::new(WriterGuard {
                thread: std::sync::Mutex::new(Some(thread)),
            }),
            readers: Default::default(),
        })
    }

    /// Opens `data_dir/callrec.sqlite`.
    pub fn open_in(data_dir: &Path) -> Result<Db, DbError> {
        Db::open(&data_dir.join(DB_FILE_NAME))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a record for the writer thread; never blocks.
    pub fn send(&self, record: Record) {
        if self.tx.send(Msg::Write(record)).is_err() {
            tracing::error!("protocol database writer has stopped; record lost");
        }
    }

    /// Writes `records` in one transaction and waits (blocking) until they are committed.
    ///
    /// For the few writes that must be durable before the caller goes on (a set
    /// entering the upload queue, an upload confirmed); never call it on the media path.
    pub fn write_sync(&self, records: Vec<Record>) -> Result<(), DbError> {
        let fail = |detail: String| DbError::Write {
            path: self.path.clone(),
            detail,
        };
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Msg::WriteSync(records, tx))
            .map_err(|_| fail("the writer thread has stopped".into()))?;
        rx.recv()
            .map_err(|_| fail("the writer thread stopped before answering".into()))?
            .map_err(fail)
    }

    /// Waits (blocking) until every record sent before this call is committed.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    fn reader(&self) -> Result<Reader<'_>, DbError> {
        let idle = self.readers.lock().ok().and_then(|mut idle| idle.pop());
        if let Some(conn) = idle {
            return Ok(Reader {
                conn: Some(conn),
                pool: &self.readers,
            });
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| DbError::Query {
            path: self.path.clone(),
            source,
        })?;
        let _ = conn.busy_timeout(Duration::from_secs(10));
        Ok(Reader {
            conn: Some(conn),
            pool: &self.readers,
        })
    }

    fn query_uploads(&self, filter: &str, args: &[&str]) -> Result<Vec<UploadRow>, DbError> {
        let q = |source| DbError::Query {
            path: self.path.clone(),
            source,
        };
        let conn = self.reader()?;
        let sql = format!(
            "SELECT base_name, target, state, attempts, last_error, queued_ms, done_ms, next_ms FROM uploads {filter} ORDER BY queued_ms, base_name, target"
        );
        let mut stmt = conn.prepare(&sql).map_err(q)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| {
                Ok(UploadRow {
                    base_name: r.get(0)?,
                    target: r.get(1)?,
                    state: r.get(2)?,
                    attempts: r.get(3)?,
                    last_error: r.get(4)?,
                    queued_ms: r.get(5)?,
                    done_ms: r.get(6)?,
                    next_ms: r.get(7)?,
                })
            })
            .map_err(q)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(q)?;
        Ok(rows)
    }

    /// Every upload (set × target) with its state, oldest first (`callrec uploads status`).
    pub fn uploads(&self) -> Result<Vec<UploadRow>, DbError> {
        self.query_uploads("", &[])
    }

    /// Every upload row of one set, whatever its state.
    pub fn uploads_of(&self, base_name: &str) -> Result<Vec<UploadRow>, DbError> {
        self.query_uploads("WHERE base_name = ?1", &[base_name])
    }

    /// Uploads not yet confirmed, oldest first: the upload queue.
    pub fn pending_uploads(&self) -> Result<Vec<UploadRow>, DbError> {
        self.query_uploads("WHERE state = 'pending'", &[])
    }

    /// Per target: upload attempts and failed attempts so far.
    pub fn attempt_counts(&self) -> Result<Vec<(String, i64, i64)>, DbError> {
        let q = |source| DbError::Query {
            path: self.path.clone(),
            source,
        };
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare("SELECT target, COUNT(*), COALESCE(SUM(ok = 0), 0) FROM upload_attempts GROUP BY target ORDER BY target")
            .map_err(q)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(q)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(q)?;
        Ok(rows)
    }

    /// Recordings that started in `[from_ms, to_ms]`, oldest first.
    pub fn recordings(&self, from_ms: i64, to_ms: i64) -> Result<Vec<RecordingRow>, DbError> {
        let q = |source| DbError::Query {
            path: self.path.clone(),
            source,
        };
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare("SELECT call_id, base_name, profile, start_ms, end_ms, caller, callee, recovered, answered_by FROM recordings WHERE start_ms BETWEEN ?1 AND ?2 ORDER BY start_ms, id")
            .map_err(q)?;
        let rows = stmt
            .query_map([from_ms, to_ms], |r| {
                Ok(RecordingRow {
                    call_id: r.get(0)?,
                    base_name: r.get(1)?,
                    profile: r.get(2)?,
                    start_ms: r.get(3)?,
                    end_ms: r.get(4)?,
                    caller: r.get(5)?,
                    callee: r.get(6)?,
                    recovered: r.get::<_, i64>(7)? != 0,
                    answered_by: r.get(8)?,
                })
            })
            .map_err(q)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(q)?;
        Ok(rows)
    }

    /// Whether a recording row exists for set `base_name`.
    pub fn has_recording(&self, base_name: &str) -> Result<bool, DbError> {
        let conn = self.reader()?;
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM recordings WHERE base_name = ?1)",
            [base_name],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n != 0)
        .map_err(|source| DbError::Query {
            path: self.path.clone(),
            source,
        })
    }

    /// Every attempt for a set, oldest first.
    pub fn attempts(&self, base_name: &str) -> Result<Vec<AttemptRow>, DbError> {
        let q = |source| DbError::Query {
            path: self.path.clone(),
            source,
        };
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare("SELECT base_name, target, started_ms, ok, error FROM upload_attempts WHERE base_name = ?1 ORDER BY id")
            .map_err(q)?;
        let rows = stmt
            .query_map([base_name], |r| {
                Ok(AttemptRow {
                    base_name: r.get(0)?,
                    target: r.get(1)?,
                    started_ms: r.get(2)?,
                    ok: r.get(3)?,
                    error: r.get(4)?,
                })
            })
            .map_err(q)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(q)?;
        Ok(rows)
    }

    /// Every documented deletion of a set, oldest first.
    pub fn deletions_of(&self, base_name: &str) -> Result<Vec<DeletionRow>, DbError> {
        let q = |source| DbError::Query {
            path: self.path.clone(),
            source,
        };
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare("SELECT base_name, target, at_ms, reason, checksum_sha256 FROM deletions WHERE base_name = ?1 ORDER BY id")
            .map_err(q)?;
        let rows = stmt
            .query_map([base_name], |r| {
                Ok(DeletionRow {
                    base_name: r.get(0)?,
                    target: r.get(1)?,
                    at_ms: r.get(2)?,
                    reason: r.get(3)?,
                    checksum_sha256: r.get(4)?,
                })
            })
            .map_err(q)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(q)?;
        Ok(rows)
    }

    /// SHA-256 of a sealed set's checksum file, from its seal record.
    pub fn seal_checksum(&self, base_name: &str) -> Result<Option<String>, DbError> {
        let q = |source| DbError::Query {
            path: self.path.clone(),
            source,
        };
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare("SELECT checksum_sha256 FROM seals WHERE base_name = ?1")
            .map_err(q)?;
        let mut rows = stmt.query([base_name]).map_err(q)?;
        match rows.next().map_err(q)? {
            Some(r) => Ok(Some(r.get(0).map_err(q)?)),
            None => Ok(None),
        }
    }

    /// A sealed set's chain position, from its seal record (`None` for sets
    /// sealed before positions were recorded).
    pub fn seal_position(
        &self,
        base_name: &str,
    ) -> Result<Option<crate::seal::ChainPosition>, DbError> {
        let text: Option<String> = self.read(|c| {
            c.query_row(
                "SELECT chain FROM seals WHERE base_name = ?1",
                [base_name],
                |r| r.get(0),
            )
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
        })?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Number of rows in `table` (one of the schema's tables), for checks and status.
    pub fn count(&self, table: &str) -> Result<i64, DbError> {
        const TABLES: &[&str] = &[
            "calls",
            "decisions",
            "recordings",
            "seals",
            "uploads",
            "upload_attempts",
            "errors",
            "group_logouts",
            "deletions",
            "failures",
            "access_log",
            "anchors",
            "holds",
        ];
        let q = |source| DbError::Query {
            path: self.path.clone(),
            source,
        };
        if !TABLES.contains(&table) {
            return Err(q(rusqlite::Error::InvalidParameterName(table.to_string())));
        }
        let conn = self.reader()?;
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .map_err(q)
    }

    /// Runs a read-only query on a pooled connection (for modules with their own SQL).
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, DbError> {
        let conn = self.reader()?;
        f(&conn).map_err(|source| DbError::Query {
            path: self.path.clone(),
            source,
        })
    }

    /// Group memberships switched off (logged out), as (group, user) pairs.
    pub fn group_logouts(&self) -> Result<Vec<(String, String)>, DbError> {
        let q = |source| DbError::Query {
            path: self.path.clone(),
            source,
        };
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare("SELECT group_number, user_number FROM group_logouts WHERE logged_out = 1 ORDER BY 1, 2")
            .map_err(q)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(q)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(q)?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_land_in_their_tables_and_uploads_track_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_in(dir.path()).unwrap();
        db.send(Record::Decision {
            call_id: "c1".into(),
            at_ms: 1,
            recorded: true,
            profile: Some("sales".into()),
            reason: "group 200".into(),
        });
        db.send(Record::UploadQueued {
            base_name: "s1".into(),
            target: "file:///x".into(),
            at_ms: 2,
        });
        db.send(Record::UploadAttempt {
            base_name: "s1".into(),
            target: "file:///x".into(),
            started_ms: 3,
            ended_ms: 4,
            files: 4,
            bytes: 10,
            error: Some("disk full".into()),
            next_ms: Some(100),
        });
        db.flush();
        assert_eq!(db.count("decisions").unwrap(), 1);
        let pending = db.pending_uploads().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].attempts, 1);
        assert_eq!(pending[0].last_error.as_deref(), Some("disk full"));
        assert_eq!(pending[0].next_ms, Some(100));
        db.send(Record::UploadAttempt {
            base_name: "s1".into(),
            target: "file:///x".into(),
            started_ms: 5,
            ended_ms: 6,
            files: 4,
            bytes: 10,
            error: None,
            next_ms: None,
        });
        db.flush();
        assert!(db.pending_uploads().unwrap().is_empty());
        let all = db.uploads().unwrap();
        assert_eq!((all[0].state.as_str(), all[0].attempts), ("done", 2));
        assert_eq!(db.attempts("s1").unwrap().len(), 2);
        assert!(db.count("nope").is_err());
    }

    #[test]
    fn write_sync_is_committed_on_return_and_lost_uploads_leave_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_in(dir.path()).unwrap();
        let queued = |target: &str| Record::UploadQueued {
            base_name: "s1".into(),
            target: target.into(),
            at_ms: 1,
        };
        db.write_sync(vec![queued("file:///a"), queued("file:///b")])
            .unwrap();
        // No flush: a reader sees both rows as soon as write_sync returns.
        let rows = db.uploads_of("s1").unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.state == "pending"));
        db.write_sync(vec![Record::UploadLost {
            base_name: "s1".into(),
            target: "file:///a".into(),
            reason: "files gone".into(),
        }])
        .unwrap();
        let pending = db.pending_uploads().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].target, "file:///b");
        let lost = db.uploads_of("s1").unwrap();
        let a = lost.iter().find(|r| r.target == "file:///a").unwrap();
        assert_eq!(
            (a.state.as_str(), a.last_error.as_deref()),
            ("lost", Some("files gone"))
        );
    }

    #[test]
    fn reopening_keeps_data_and_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open_in(dir.path()).unwrap();
            db.send(Record::Error {
                at_ms: 1,
                component: "t".into(),
                message: "m".into(),
            });
            db.flush();
        }
        let db = Db::open_in(dir.path()).unwrap();
        assert_eq!(db.count("errors").unwrap(), 1);
        let conn = Connection::open(db.path()).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        drop(db);
        assert!(matches!(
            Db::open_in(dir.path()),
            Err(DbError::TooNew { .. })
        ));
    }
}
