//! The protocol database: SQLite in WAL mode, written by one thread fed by a channel.
//!
//! Callers never wait on the database: [`Db::send`] only queues a [`Record`]; the
//! writer thread inserts it (in batches, one transaction per batch). The few writes
//! that must be durable before the caller goes on (the upload queue, see
//! `spool`) use [`Db::write_sync`], which waits for the commit. Reads open their
//! own connection, which WAL lets run beside the writer. The schema version is kept
//! in `PRAGMA user_version`; [`MIGRATIONS`] brings an older file up to date.
//!
//! Files: `schema` (migrations, opening), `record` (what is written), `writer`
//! (the writer thread), `query` (row types and reads).

mod query;
mod record;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc;

pub use query::{AttemptRow, DeletionRow, RecordingRow, UploadRow};
pub use record::{Record, UploadState};
pub(crate) use schema::migrate;
pub use schema::{DB_FILE_NAME, MIGRATIONS};
use writer::{Msg, WriterGuard};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
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
/// Handle to the protocol database; cheap to clone, sending never blocks.
#[derive(Debug, Clone)]
pub struct Db {
    path: PathBuf,
    tx: mpsc::Sender<Msg>,
    _writer: std::sync::Arc<WriterGuard>,
    /// Idle read-only connections, reused: opening one per query costs more than the query.
    readers: std::sync::Arc<std::sync::Mutex<Vec<rusqlite::Connection>>>,
    /// The instance whose recordings and uploads this handle writes (see crate::instance).
    instance: std::sync::Arc<str>,
}

impl Db {
    /// Opens (creating and migrating) the database at `path` and starts its
    /// writer thread, writing as the instance named by the host name.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        Db::open_as(path, &crate::instance::default_name())
    }

    /// Opens the database at `path` as the instance `instance`: its recording and
    /// upload rows carry that name, and its upload queue is that instance's rows.
    pub fn open_as(path: &Path, instance: &str) -> Result<Db, DbError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| DbError::Open {
                path: path.to_path_buf(),
                op: "create the data directory",
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        }
        let mut conn = schema::open_rw(path).map_err(crate::db_repair::classify)?;
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
        let me = instance.to_string();
        let thread = std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || writer::writer_loop(conn, rx, p, me))
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
            instance: instance.into(),
        })
    }

    /// Opens `data_dir/callrec.sqlite`.
    pub fn open_in(data_dir: &Path) -> Result<Db, DbError> {
        Db::open(&data_dir.join(DB_FILE_NAME))
    }

    /// Opens `data_dir/callrec.sqlite` as the instance `instance` (see [`Db::open_as`]).
    pub fn open_in_as(data_dir: &Path, instance: &str) -> Result<Db, DbError> {
        Db::open_as(&data_dir.join(DB_FILE_NAME), instance)
    }

    /// The instance this handle writes as.
    pub fn instance(&self) -> &str {
        &self.instance
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
        assert!(rows.iter().all(|r| r.state.as_str() == "pending"));
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
        let conn = rusqlite::Connection::open(db.path()).unwrap();
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

    #[test]
    fn upload_states_round_trip_and_an_unknown_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_in(dir.path()).unwrap();
        db.write_sync(vec![Record::UploadQueued {
            base_name: "s1".into(),
            target: "file:///a".into(),
            at_ms: 1,
        }])
        .unwrap();
        let conn = rusqlite::Connection::open(db.path()).unwrap();
        for state in [
            UploadState::Pending,
            UploadState::Done,
            UploadState::Lost,
            UploadState::Deleted,
        ] {
            conn.execute("UPDATE uploads SET state = ?1", [state])
                .unwrap();
            let stored: String = conn
                .query_row("SELECT state FROM uploads", [], |r| r.get(0))
                .unwrap();
            assert_eq!(stored, state.to_string());
            assert_eq!(db.uploads_of("s1").unwrap()[0].state, state);
        }
        conn.execute("UPDATE uploads SET state = 'uploading'", [])
            .unwrap();
        let err = db.uploads().unwrap_err().to_string();
        assert!(err.contains("uploading"), "{err}");
    }

    #[test]
    fn a_file_of_the_previous_version_loses_only_the_unused_group_logouts_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE_NAME);
        let before = MIGRATIONS.len() - 1;
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..before] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", before as i64)
                .unwrap();
            conn.execute(
                "INSERT INTO decisions (call_id, at_ms, recorded, reason) VALUES ('c1', 1, 1, 'r')",
                [],
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let tables: Vec<String> = db
            .read(|c| {
                c.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?
                    .query_map([], |r| r.get(0))?
                    .collect()
            })
            .unwrap();
        assert!(!tables.iter().any(|t| t == "group_logouts"), "{tables:?}");
        assert!(tables.iter().any(|t| t == "calls"), "{tables:?}");
        assert_eq!(db.count("decisions").unwrap(), 1);
        assert!(db.count("group_logouts").is_err());
    }
}
