//! The transcription queue and the word index in the protocol database: one
//! row per sealed set waiting for (or done with) its transcript, and one row
//! per distinct word of a transcript. Written only by the database's writer
//! thread ([`apply`]); plain SQL that runs on SQLite and PostgreSQL alike.

use std::path::PathBuf;

use crate::db::{Conn, Db, DbError, SqlError};

/// The tables (one migration, see `db::schema`).
pub const MIGRATION: &str = r#"
CREATE TABLE transcript_queue (
    base_name TEXT PRIMARY KEY,
    folder TEXT NOT NULL,
    profile TEXT,
    language TEXT NOT NULL,
    targets TEXT NOT NULL,
    queued_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    detail TEXT,
    checksum_sha256 TEXT,
    done_ms INTEGER
);
CREATE INDEX transcript_queue_state ON transcript_queue(state, queued_ms);
CREATE TABLE transcript_words (
    word TEXT NOT NULL,
    base_name TEXT NOT NULL,
    PRIMARY KEY (word, base_name)
);
CREATE INDEX transcript_words_base ON transcript_words(base_name);
"#;

/// Waiting for a worker.
pub const PENDING: &str = "pending";
/// Transcript sealed and handed to the spool.
pub const DONE: &str = "done";
/// Given up (the reason is in `detail`); a restart does not retry it.
pub const FAILED: &str = "failed";

/// A sealed set waiting for its transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Base name of the set.
    pub base_name: String,
    /// The folder holding the set's files for the worker (links made at sealing).
    pub folder: PathBuf,
    /// The profile that recorded it.
    pub profile: Option<String>,
    /// The profile's language, forced on the engine.
    pub language: String,
    /// Where the transcript goes (the set's targets).
    pub targets: Vec<String>,
    /// When it was queued (ms since the epoch).
    pub queued_ms: i64,
}

/// One change of the queue or the index.
#[derive(Debug, Clone, PartialEq)]
pub enum QueueChange {
    /// A set was sealed and waits for its transcript.
    Queued(Job),
    /// Its transcript is sealed and spooled; its words go into the index.
    Done {
        /// Base name of the set.
        base_name: String,
        /// SHA-256 of the addendum's checksum file.
        checksum_sha256: String,
        /// The transcript's distinct words (lower case).
        words: Vec<String>,
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// The transcript could not be made.
    Failed {
        /// Base name of the set.
        base_name: String,
        /// Why.
        detail: String,
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// The set is deleted everywhere: its queue row and words go.
    Forget {
        /// Base name of the set.
        base_name: String,
    },
}

/// Applies a change; called by the database's writer thread.
pub(crate) fn apply(conn: &Conn, c: &QueueChange) -> Result<(), SqlError> {
    match c {
        QueueChange::Queued(j) => {
            let targets = serde_json::to_string(&j.targets).unwrap_or_else(|_| "[]".into());
            let folder = j.folder.to_string_lossy().into_owned();
            conn.execute(
                "INSERT INTO transcript_queue (base_name, folder, profile, language, targets, queued_ms, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                &[&j.base_name, &folder, &j.profile, &j.language, &targets, &j.queued_ms, &PENDING],
            )?;
        }
        QueueChange::Done {
            base_name,
            checksum_sha256,
            words,
            at_ms,
        } => {
            conn.execute(
                "UPDATE transcript_queue SET state = ?2, checksum_sha256 = ?3, done_ms = ?4, detail = NULL WHERE base_name = ?1",
                &[base_name, &DONE, checksum_sha256, at_ms],
            )?;
            conn.execute(
                "DELETE FROM transcript_words WHERE base_name = ?1",
                &[base_name],
            )?;
            for w in words {
                conn.execute(
                    "INSERT INTO transcript_words (word, base_name) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    &[w, base_name],
                )?;
            }
        }
        QueueChange::Failed {
            base_name,
            detail,
            at_ms,
        } => {
            conn.execute(
                "UPDATE transcript_queue SET state = ?2, detail = ?3, done_ms = ?4 WHERE base_name = ?1",
                &[base_name, &FAILED, detail, at_ms],
            )?;
        }
        QueueChange::Forget { base_name } => {
            conn.execute(
                "DELETE FROM transcript_queue WHERE base_name = ?1",
                &[base_name],
            )?;
            conn.execute(
                "DELETE FROM transcript_words WHERE base_name = ?1",
                &[base_name],
            )?;
        }
    }
    Ok(())
}

/// The sets waiting for a transcript, oldest first (what a restart resumes).
pub fn pending(db: &Db) -> Result<Vec<Job>, DbError> {
    db.read(|c| {
        c.query(
            "SELECT base_name, folder, profile, language, targets, queued_ms FROM transcript_queue WHERE state = ?1 ORDER BY queued_ms, base_name",
            &[&PENDING],
        )?
        .iter()
        .map(|r| {
            let targets: String = r.get(4)?;
            Ok(Job {
                base_name: r.get(0)?,
                folder: PathBuf::from(r.get::<String>(1)?),
                profile: r.get(2)?,
                language: r.get(3)?,
                targets: serde_json::from_str(&targets).unwrap_or_default(),
                queued_ms: r.get(5)?,
            })
        })
        .collect()
    })
}

/// Whether the queue has a row for `base_name`, in any state.
pub fn has_row(db: &Db, base_name: &str) -> Result<bool, DbError> {
    db.read(|c| {
        Ok(c.query_opt(
            "SELECT base_name FROM transcript_queue WHERE base_name = ?1",
            &[&base_name],
        )?
        .is_some())
    })
}

/// Every queue row as (base name, state, detail), for status and tests.
pub fn rows(db: &Db) -> Result<Vec<(String, String, Option<String>)>, DbError> {
    db.read(|c| {
        c.query(
            "SELECT base_name, state, detail FROM transcript_queue ORDER BY queued_ms, base_name",
            &[],
        )?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .collect()
    })
}

/// SHA-256 of the transcript addendum's checksum file of `base_name`, when done.
pub fn addendum_checksum(db: &Db, base_name: &str) -> Result<Option<String>, DbError> {
    db.read(|c| {
        match c.query_opt(
            "SELECT checksum_sha256 FROM transcript_queue WHERE base_name = ?1 AND state = ?2",
            &[&base_name, &DONE],
        )? {
            Some(r) => r.get::<Option<String>>(0),
            None => Ok(None),
        }
    })
}
