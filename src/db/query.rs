//! Reads: the row types the commands and the admin API show, a small pool of
//! connections for reads (WAL lets SQLite's run beside the writer), and the queries.

use std::time::Duration;

use rusqlite::OpenFlags;

use super::sql::{Conn, Row, SqlError, ToValue};
use super::{Db, DbError, Location, UploadState};

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
    /// Where the upload stands.
    pub state: UploadState,
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

/// Most idle read-only connections kept.
pub(super) const IDLE_READERS: usize = 4;

/// A connection borrowed from the pool; goes back on drop.
pub(super) struct Reader<'a> {
    conn: Option<Conn>,
    pool: &'a std::sync::Mutex<Vec<Conn>>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("reader used after drop")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let (Some(conn), Ok(mut idle)) = (self.conn.take(), self.pool.lock()) {
            // A connection the server closed (restart, network) is not kept:
            // the next read opens a new one.
            if idle.len() < IDLE_READERS && !conn.is_broken() {
                idle.push(conn);
            }
        }
    }
}

impl Db {
    fn reader(&self) -> Result<Reader<'_>, DbError> {
        let idle = self.readers.lock().ok().and_then(|mut idle| idle.pop());
        if let Some(conn) = idle {
            return Ok(Reader {
                conn: Some(conn),
                pool: &self.readers,
            });
        }
        let err = |source| DbError::Query {
            path: self.path.clone(),
            source,
        };
        let conn = match &self.location {
            Location::Sqlite(path) => {
                let c = rusqlite::Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|e| err(e.into()))?;
                let _ = c.busy_timeout(Duration::from_secs(10));
                Conn::sqlite(c)
            }
            other => other.connect().map_err(err)?,
        };
        Ok(Reader {
            conn: Some(conn),
            pool: &self.readers,
        })
    }

    /// Runs `sql` on a pooled connection and maps every row with `map`.
    fn rows<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        map: impl FnMut(&Row) -> Result<T, SqlError>,
    ) -> Result<Vec<T>, DbError> {
        let rows = self.read(|c| c.query(sql, params))?;
        rows.iter()
            .map(map)
            .collect::<Result<_, _>>()
            .map_err(|source| DbError::Query {
                path: self.path.clone(),
                source,
            })
    }

    /// Runs `sql` on a pooled connection; `None` when it yields no row.
    fn row<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        map: impl FnOnce(&Row) -> Result<T, SqlError>,
    ) -> Result<Option<T>, DbError> {
        let row = self.read(|c| c.query_opt(sql, params))?;
        row.as_ref()
            .map(map)
            .transpose()
            .map_err(|source| DbError::Query {
                path: self.path.clone(),
                source,
            })
    }

    fn query_uploads(
        &self,
        filter: &str,
        params: &[&dyn ToValue],
    ) -> Result<Vec<UploadRow>, DbError> {
        let sql = format!(
            "SELECT base_name, target, state, attempts, last_error, queued_ms, done_ms, next_ms FROM uploads {filter} ORDER BY queued_ms, base_name, target"
        );
        self.rows(&sql, params, |r| {
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
    }

    /// Every upload (set × target) with its state, oldest first (`callrec uploads status`).
    pub fn uploads(&self) -> Result<Vec<UploadRow>, DbError> {
        self.query_uploads("", &[])
    }

    /// Every upload row of one set, whatever its state.
    pub fn uploads_of(&self, base_name: &str) -> Result<Vec<UploadRow>, DbError> {
        self.query_uploads("WHERE base_name = ?1", &[&base_name])
    }

    /// Uploads not yet confirmed, oldest first: the upload queue.
    pub fn pending_uploads(&self) -> Result<Vec<UploadRow>, DbError> {
        self.query_uploads("WHERE state = ?1", &[&UploadState::Pending])
    }

    /// Per target: upload attempts and failed attempts so far.
    pub fn attempt_counts(&self) -> Result<Vec<(String, i64, i64)>, DbError> {
        self.rows(
            "SELECT target, COUNT(*), CAST(COALESCE(SUM(CASE WHEN ok = 0 THEN 1 ELSE 0 END), 0) AS BIGINT) FROM upload_attempts GROUP BY target ORDER BY target",
            &[],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }

    /// Recordings that started in `[from_ms, to_ms]`, oldest first.
    pub fn recordings(&self, from_ms: i64, to_ms: i64) -> Result<Vec<RecordingRow>, DbError> {
        self.rows(
            &format!("SELECT {RECORDING_COLUMNS} FROM recordings WHERE start_ms BETWEEN ?1 AND ?2 ORDER BY start_ms, id"),
            &[&from_ms, &to_ms],
            recording_row,
        )
    }

    /// The newest recording row of the set named `base_name`.
    pub fn recording(&self, base_name: &str) -> Result<Option<RecordingRow>, DbError> {
        self.row(
            &format!("SELECT {RECORDING_COLUMNS} FROM recordings WHERE base_name = ?1 ORDER BY id DESC LIMIT 1"),
            &[&base_name],
            recording_row,
        )
    }

    /// Whether a recording row exists for set `base_name`.
    pub fn has_recording(&self, base_name: &str) -> Result<bool, DbError> {
        let found = self.row(
            "SELECT 1 FROM recordings WHERE base_name = ?1 LIMIT 1",
            &[&base_name],
            |_| Ok(()),
        )?;
        Ok(found.is_some())
    }

    /// Every attempt for a set, oldest first.
    pub fn attempts(&self, base_name: &str) -> Result<Vec<AttemptRow>, DbError> {
        self.rows(
            "SELECT base_name, target, started_ms, ok, error FROM upload_attempts WHERE base_name = ?1 ORDER BY id",
            &[&base_name],
            |r| {
                Ok(AttemptRow {
                    base_name: r.get(0)?,
                    target: r.get(1)?,
                    started_ms: r.get(2)?,
                    ok: r.get(3)?,
                    error: r.get(4)?,
                })
            },
        )
    }

    /// Every documented deletion of a set, oldest first.
    pub fn deletions_of(&self, base_name: &str) -> Result<Vec<DeletionRow>, DbError> {
        self.rows(
            "SELECT base_name, target, at_ms, reason, checksum_sha256 FROM deletions WHERE base_name = ?1 ORDER BY id",
            &[&base_name],
            |r| {
                Ok(DeletionRow {
                    base_name: r.get(0)?,
                    target: r.get(1)?,
                    at_ms: r.get(2)?,
                    reason: r.get(3)?,
                    checksum_sha256: r.get(4)?,
                })
            },
        )
    }

    /// SHA-256 of a sealed set's checksum file, from its seal record.
    pub fn seal_checksum(&self, base_name: &str) -> Result<Option<String>, DbError> {
        self.row(
            "SELECT checksum_sha256 FROM seals WHERE base_name = ?1",
            &[&base_name],
            |r| r.get(0),
        )
    }

    /// A sealed set's chain position, from its seal record (`None` for sets
    /// sealed before positions were recorded).
    pub fn seal_position(
        &self,
        base_name: &str,
    ) -> Result<Option<crate::seal::ChainPosition>, DbError> {
        let text: Option<Option<String>> = self.row(
            "SELECT chain FROM seals WHERE base_name = ?1",
            &[&base_name],
            |r| r.get(0),
        )?;
        Ok(text.flatten().and_then(|t| serde_json::from_str(&t).ok()))
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
            "deletions",
            "failures",
            "access_log",
            "anchors",
            "holds",
        ];
        if !TABLES.contains(&table) {
            return Err(DbError::Query {
                path: self.path.clone(),
                source: SqlError::Other(format!("no table {table:?} in the schema")),
            });
        }
        self.read(|c| {
            c.query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])?
                .get(0)
        })
    }

    /// Runs reads on a pooled connection (for modules with their own SQL).
    ///
    /// A read on a connection the server has closed (PostgreSQL restarted) is
    /// run once more on a new connection, so `f` may run twice.
    pub fn read<T>(&self, f: impl Fn(&Conn) -> Result<T, SqlError>) -> Result<T, DbError> {
        let conn = self.reader()?;
        let mut result = f(&conn);
        if result.is_err() && conn.is_broken() {
            drop(conn);
            // Its idle siblings went with the same server: none is kept.
            if let Ok(mut idle) = self.readers.lock() {
                idle.clear();
            }
            result = f(&*self.reader()?);
        }
        result.map_err(|source| DbError::Query {
            path: self.path.clone(),
            source,
        })
    }
}

/// The columns `recording_row` reads, in its order.
const RECORDING_COLUMNS: &str =
    "call_id, base_name, profile, start_ms, end_ms, caller, callee, recovered, answered_by";

fn recording_row(r: &Row) -> Result<RecordingRow, SqlError> {
    Ok(RecordingRow {
        call_id: r.get(0)?,
        base_name: r.get(1)?,
        profile: r.get(2)?,
        start_ms: r.get(3)?,
        end_ms: r.get(4)?,
        caller: r.get(5)?,
        callee: r.get(6)?,
        recovered: r.get::<i64>(7)? != 0,
        answered_by: r.get(8)?,
    })
}
