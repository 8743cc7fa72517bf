//! The protocol database: SQLite in WAL mode (the default, in the data
//! directory) or PostgreSQL (shared by several instances), written by one
//! thread per instance fed by a channel.
//!
//! Callers never wait on the database: [`Db::send`] only queues a [`Record`]; the
//! writer thread inserts it (in batches, one transaction per batch). The few writes
//! that must be durable before the caller goes on (the upload queue, see
//! `spool`) use [`Db::write_sync`], which waits for the commit. Reads use their
//! own pooled connections, which run beside the writer (WAL on SQLite). Between
//! instances, the database's transactions keep the truth: writes that could
//! race are conditional updates or upserts. [`MIGRATIONS`] brings an older
//! schema up to date on either engine.
//!
//! Files: `sql` (the connection both engines share), `location` (which
//! database), `schema` (migrations, opening), `record` (what is written),
//! `writer` (the writer thread), `query` (row types and reads), `lock`
//! (advisory locks between instances), `copy` (SQLite into PostgreSQL).

mod copy;
mod location;
mod lock;
mod query;
mod record;
mod schema;
#[doc(hidden)]
pub mod scratch;
mod sql;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc;

pub use copy::{copy_sqlite_into, table_rows, CopyReport};
pub use location::Location;
pub use lock::{ExclusiveLock, LockName};
pub use query::{AttemptRow, DeletionRow, RecordingRow, UploadRow};
pub use record::{Record, UploadState};
pub(crate) use schema::migrate;
pub use schema::{render, version as schema_version, DB_FILE_NAME, MIGRATIONS};
pub use sql::{Conn, Engine, FromValue, Row, SqlError, ToValue, Value};
use writer::{Msg, WriterGuard};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What went wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Opening or migrating the database failed.
    #[error("protocol database {}: {op} failed: {source}; check that the data directory is writable (or the PostgreSQL server reachable and the login right), and run `callrec db check` on it", .path.display())]
    Open {
        /// The database file (or the PostgreSQL URL without password).
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The engine's error.
        source: SqlError,
    },
    /// The file is damaged (SQLite cannot read it, or its check found faults).
    #[error("{}", crate::db_repair::corrupt_message(.path, .findings))]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong (SQLite's words).
        findings: Vec<String>,
    },
    /// The database has a newer schema than this build knows.
    #[error("protocol database {} has schema version {found}, this callrec knows up to {known}; use a newer callrec", .path.display())]
    TooNew {
        /// The database file (or URL).
        path: PathBuf,
        /// Version in the database.
        found: i64,
        /// Highest known version.
        known: i64,
    },
    /// A synchronous write was not committed.
    #[error("protocol database {}: write not committed: {detail}; check free disk space and that the database is not corrupt", .path.display())]
    Write {
        /// The database file (or URL).
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// A read query failed.
    #[error("protocol database {}: query failed: {source}; check the database and free disk space", .path.display())]
    Query {
        /// The database file (or URL).
        path: PathBuf,
        /// The engine's error.
        source: SqlError,
    },
    /// `--database` (or its password) cannot be used.
    #[error("{detail}")]
    Location {
        /// What is wrong with it.
        detail: String,
    },
}

/// Handle to the protocol database; cheap to clone, sending never blocks.
#[derive(Debug, Clone)]
pub struct Db {
    location: Location,
    /// How the database is named in messages (the URL has no password).
    path: PathBuf,
    tx: mpsc::Sender<Msg>,
    _writer: std::sync::Arc<WriterGuard>,
    /// Idle connections for reads, reused: opening one per query costs more than the query.
    readers: std::sync::Arc<std::sync::Mutex<Vec<Conn>>>,
}

impl Db {
    /// Opens (creating and migrating) the SQLite file at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        Db::open_at(&Location::Sqlite(path.to_path_buf()))
    }

    /// Opens (creating and migrating) the database at `location` and starts its writer thread.
    pub fn open_at(location: &Location) -> Result<Db, DbError> {
        let shown = PathBuf::from(location.shown());
        let open_err = |op| {
            let shown = shown.clone();
            move |source| DbError::Open {
                path: shown,
                op,
                source,
            }
        };
        if let Some(path) = location.sqlite_path() {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| {
                    open_err("create the data directory")(SqlError::Other(e.to_string()))
                })?;
            }
        }
        let conn = location
            .connect()
            .map_err(open_err("open"))
            .map_err(crate::db_repair::classify)?;
        if let (Some(path), Some(c)) = (location.sqlite_path(), conn.as_sqlite()) {
            // A damaged file found now stops the start, before calls are taken and
            // their records written into it.
            let findings =
                crate::db_repair::damage_on_open(c, path).map_err(crate::db_repair::classify)?;
            if !findings.is_empty() {
                return Err(DbError::Corrupt {
                    path: path.to_path_buf(),
                    findings,
                });
            }
        }
        migrate(&conn, &shown).map_err(crate::db_repair::classify)?;
        // Unbounded: a few records per call (bounded by the calls admitted)
        // and per upload; the protocol must not lose a record.
        let (tx, rx) = mpsc::channel();
        let (p, l) = (shown.clone(), location.clone());
        let thread = std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || writer::writer_loop(conn, rx, p, l))
            .map_err(|e| open_err("start writer thread")(SqlError::Other(e.to_string())))?;
        Ok(Db {
            location: location.clone(),
            path: shown,
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

    /// The database file, or for PostgreSQL its URL without password (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the database is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Which engine holds it.
    pub fn engine(&self) -> Engine {
        self.location.engine()
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
    use super::scratch::{ScratchDb, ENGINES};
    use super::*;

    /// Runs `test` on a fresh database of each engine.
    fn on_each_engine(test: impl Fn(&ScratchDb)) {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let scratch = ScratchDb::new(engine, dir.path());
            test(&scratch);
        }
    }

    #[test]
    fn records_land_in_their_tables_and_uploads_track_attempts() {
        on_each_engine(|s| {
            let db = s.open();
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
            assert_eq!(
                db.attempt_counts().unwrap(),
                vec![("file:///x".to_string(), 2, 1)]
            );
            assert!(db.count("nope").is_err());
        });
    }

    #[test]
    fn a_failing_record_loses_only_itself_and_a_failing_group_all_of_it() {
        use crate::phone::keys::{member_of, PhoneKeyChange};
        on_each_engine(|s| {
            let db = s.open();
            let seal = |sha: &str| Record::Seal {
                base_name: "s1".into(),
                at_ms: 1,
                checksum_sha256: sha.into(),
                files: 3,
                chain: None,
            };
            let error = |m: &str| Record::Error {
                at_ms: 2,
                component: "t".into(),
                message: m.into(),
            };
            let key = |user, token: &str| {
                Record::PhoneKey(PhoneKeyChange::Rotate {
                    user,
                    token: token.into(),
                    at_ms: 1,
                })
            };
            // One batch: the second key reuses the first one's token, which
            // the unique index refuses; the records around it are kept.
            db.send(seal("aa"));
            db.send(key(1, "t1"));
            db.send(key(2, "t1"));
            db.send(seal("bb"));
            db.send(error("after"));
            db.flush();
            assert_eq!(db.seal_checksum("s1").unwrap().as_deref(), Some("bb"));
            assert_eq!(db.count("errors").unwrap(), 1);
            assert_eq!(member_of(&db, "t1").unwrap(), Some(1));
            let group = db.write_sync(vec![error("in the group"), key(3, "t1")]);
            assert!(group.is_err(), "{group:?}");
            assert_eq!(db.count("errors").unwrap(), 1, "none of the group is kept");
        });
    }

    #[test]
    fn write_sync_is_committed_on_return_and_lost_uploads_leave_the_queue() {
        on_each_engine(|s| {
            let db = s.open();
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
            // Queued again: pending again.
            db.write_sync(vec![queued("file:///a")]).unwrap();
            assert_eq!(db.pending_uploads().unwrap().len(), 2);
        });
    }

    #[test]
    fn reopening_keeps_data_and_schema_version() {
        on_each_engine(|s| {
            {
                let db = s.open();
                db.send(Record::Error {
                    at_ms: 1,
                    component: "t".into(),
                    message: "m".into(),
                });
                db.flush();
            }
            let db = s.open();
            assert_eq!(db.count("errors").unwrap(), 1);
            let conn = s.location.connect().unwrap();
            assert_eq!(schema_version(&conn).unwrap(), MIGRATIONS.len() as i64);
            match conn.as_sqlite() {
                Some(c) => c.pragma_update(None, "user_version", 99).unwrap(),
                None => {
                    conn.execute("UPDATE callrec_schema SET version = 99", &[])
                        .unwrap();
                }
            }
            drop(conn);
            drop(db);
            assert!(matches!(
                Db::open_at(&s.location),
                Err(DbError::TooNew { found: 99, .. })
            ));
        });
    }

    #[test]
    fn upload_states_round_trip_and_an_unknown_one_is_an_error() {
        on_each_engine(|s| {
            let db = s.open();
            db.write_sync(vec![Record::UploadQueued {
                base_name: "s1".into(),
                target: "file:///a".into(),
                at_ms: 1,
            }])
            .unwrap();
            let conn = s.location.connect().unwrap();
            for state in [
                UploadState::Pending,
                UploadState::Done,
                UploadState::Lost,
                UploadState::Deleted,
            ] {
                conn.execute("UPDATE uploads SET state = ?1", &[&state])
                    .unwrap();
                let stored: String = conn
                    .query_one("SELECT state FROM uploads", &[])
                    .and_then(|r| r.get(0))
                    .unwrap();
                assert_eq!(stored, state.to_string());
                assert_eq!(db.uploads_of("s1").unwrap()[0].state, state);
            }
            conn.execute("UPDATE uploads SET state = 'uploading'", &[])
                .unwrap();
            let err = db.uploads().unwrap_err().to_string();
            assert!(err.contains("uploading"), "{err}");
        });
    }

    #[test]
    fn two_instances_on_one_database_see_each_others_records() {
        // Two handles (two instances' writers) on the same database.
        on_each_engine(|s| {
            let (a, b) = (s.open(), s.open());
            a.write_sync(vec![Record::UploadQueued {
                base_name: "from-a".into(),
                target: "file:///t".into(),
                at_ms: 1,
            }])
            .unwrap();
            b.write_sync(vec![Record::UploadQueued {
                base_name: "from-b".into(),
                target: "file:///t".into(),
                at_ms: 2,
            }])
            .unwrap();
            let names = |db: &Db| -> Vec<String> {
                db.uploads()
                    .unwrap()
                    .into_iter()
                    .map(|u| u.base_name)
                    .collect()
            };
            assert_eq!(names(&a), ["from-a", "from-b"]);
            assert_eq!(names(&b), names(&a));
        });
    }

    #[test]
    fn a_postgres_connection_closed_by_the_server_is_replaced_and_nothing_is_lost() {
        let s = ScratchDb::postgres();
        let db = s.open();
        let error = |m: &str| Record::Error {
            at_ms: 1,
            component: "t".into(),
            message: m.into(),
        };
        db.write_sync(vec![error("before")]).unwrap();
        assert_eq!(db.count("errors").unwrap(), 1);
        // The server ends every session of this database but the killer's own
        // (the writer's and the idle reader's), as a restart would.
        let killer = s.location.connect().unwrap();
        let killed: i64 = killer
            .query_one(
                "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()) t",
                &[],
            )
            .and_then(|r| r.get(0))
            .unwrap();
        assert!(
            killed >= 2,
            "writer and reader sessions expected, {killed} ended"
        );
        db.send(error("queued after"));
        db.write_sync(vec![error("synchronous after")]).unwrap();
        assert_eq!(db.count("errors").unwrap(), 3);
    }

    #[test]
    fn a_file_of_the_previous_version_loses_only_the_unused_group_logouts_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE_NAME);
        let before = MIGRATIONS.len() - 1;
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..before] {
                conn.execute_batch(&render(sql, Engine::Sqlite)).unwrap();
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
                c.query(
                    "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
                    &[],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect()
            })
            .unwrap();
        assert!(!tables.iter().any(|t| t == "group_logouts"), "{tables:?}");
        assert!(tables.iter().any(|t| t == "calls"), "{tables:?}");
        assert_eq!(db.count("decisions").unwrap(), 1);
        assert!(db.count("group_logouts").is_err());
    }
}
