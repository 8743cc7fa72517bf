//! The schema: the migration list and the code that opens a database and
//! brings it up to date. A new table or column is one new entry at the END of
//! [`MIGRATIONS`]; an entry, once released, is never edited. One list serves
//! both engines: write portable DDL, with `{id}` for an auto-increment row id
//! and `{blob}` for bytes; INTEGER columns hold i64 (BIGINT on PostgreSQL).
//! The version is SQLite's `user_version` in a file, and the one row of the
//! table `callrec_schema` on PostgreSQL.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::sql::{Conn, Engine, SqlError};
use super::DbError;

/// File name of the database below the data directory.
pub const DB_FILE_NAME: &str = "callrec.sqlite";

/// The schema, one entry per version; entry `i` brings version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE calls (
    id {id},
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
    id {id},
    call_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    recorded INTEGER NOT NULL,
    profile TEXT,
    reason TEXT NOT NULL
);
CREATE INDEX decisions_call_id ON decisions(call_id);
CREATE TABLE recordings (
    id {id},
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
    id {id},
    base_name TEXT NOT NULL UNIQUE,
    at_ms INTEGER NOT NULL,
    checksum_sha256 TEXT NOT NULL,
    files INTEGER NOT NULL
);
CREATE TABLE uploads (
    id {id},
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
    id {id},
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
    id {id},
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
    id {id},
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
    id {id},
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
    id {id},
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
    reply {blob} NOT NULL,
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
    // Group logouts live in the data dir's membership file (see
    // policy::membership); this table never received a row.
    r#"
DROP TABLE group_logouts;
"#,
    // The personal phone links (see phone::keys): one random token per directory member.
    r#"
CREATE TABLE phone_keys (
    user_id {id},
    token TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    rotated_ms INTEGER NOT NULL,
    -- The login under which the link was put on the member's phones (NULL: not on a phone).
    provisioned_login TEXT
);
"#,
    // Which instance sealed a set and owns its uploads, when instances share
    // the database (see crate::instance); rows written before stay NULL. Each
    // instance's certificate, so that any instance can verify and export the
    // sets of the others.
    r#"
ALTER TABLE recordings ADD COLUMN instance TEXT;
ALTER TABLE uploads ADD COLUMN instance TEXT;
CREATE INDEX uploads_instance ON uploads(instance, state);
CREATE TABLE instances (
    name TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    cert_pem TEXT NOT NULL,
    seen_ms INTEGER NOT NULL
);
"#,
    // Group logouts (see policy::membership), shared by every instance using this database.
    r#"
CREATE TABLE logged_out_members (
    group_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, user_id)
);
"#,
    // The transcription queue and the transcripts' word index (see transcribe::queue).
    crate::transcribe::queue::MIGRATION,
    // Time stamps of chain heads are keyed by the head's hash: instances sharing
    // the database each have a chain per profile, with the same numbers.
    r#"
CREATE TABLE chain_anchors (
    sha256 TEXT PRIMARY KEY,
    profile TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    reply {blob} NOT NULL
);
INSERT INTO chain_anchors (sha256, profile, seq, at_ms, reply) SELECT sha256, profile, seq, at_ms, reply FROM anchors;
DROP TABLE anchors;
ALTER TABLE chain_anchors RENAME TO anchors;
"#,
];

/// The migration `sql` as `engine` runs it: the tokens replaced, and on
/// PostgreSQL INTEGER widened to BIGINT (SQLite's INTEGER is 64-bit already).
pub fn render(sql: &str, engine: Engine) -> String {
    match engine {
        Engine::Sqlite => sql
            .replace("{id}", "INTEGER PRIMARY KEY")
            .replace("{blob}", "BLOB"),
        Engine::Postgres => sql
            .replace("INTEGER", "BIGINT")
            .replace(
                "{id}",
                "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
            )
            .replace("{blob}", "BYTEA"),
    }
}

/// Opens an SQLite file read-write in WAL mode.
pub(super) fn open_sqlite(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// Key of the advisory lock that lets one instance at a time migrate a
/// shared PostgreSQL database.
const MIGRATION_LOCK: i64 = 0x6361_6c6c_7265_6301;

/// The schema version stored in the database.
pub fn version(conn: &Conn) -> Result<i64, SqlError> {
    match conn.as_sqlite() {
        Some(c) => Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?),
        None => {
            conn.batch("CREATE TABLE IF NOT EXISTS callrec_schema (version BIGINT NOT NULL)")?;
            let v = conn.query_opt("SELECT version FROM callrec_schema", &[])?;
            Ok(v.map(|r| r.get(0)).transpose()?.unwrap_or(0))
        }
    }
}

fn store_version(conn: &Conn, v: i64) -> Result<(), SqlError> {
    match conn.as_sqlite() {
        Some(c) => Ok(c.pragma_update(None, "user_version", v)?),
        None => {
            conn.execute("DELETE FROM callrec_schema", &[])?;
            conn.execute("INSERT INTO callrec_schema (version) VALUES (?1)", &[&v])?;
            Ok(())
        }
    }
}

/// Brings the schema of `conn` up to date (see [`MIGRATIONS`]); `shown`
/// names the database in errors.
pub(crate) fn migrate(conn: &Conn, shown: &Path) -> Result<(), DbError> {
    let err = |op| {
        move |source| DbError::Open {
            path: shown.to_path_buf(),
            op,
            source,
        }
    };
    if conn.engine() == Engine::Postgres {
        // Several instances may start at once: one migrates, the others wait
        // for its commit and then find the schema current.
        conn.batch("BEGIN").map_err(err("begin migration"))?;
        let r = migrate_pg(conn, shown);
        let end = if r.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let done = conn.batch(end).map_err(err("commit migration"));
        return r.and(done);
    }
    let version = version(conn).map_err(err("read schema version"))?;
    check_known(version, shown)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        conn.write_transaction(|c| {
            c.batch(&render(sql, Engine::Sqlite))?;
            store_version(c, (i + 1) as i64)
        })
        .map_err(err("migrate"))?;
        tracing::info!(database = %shown.display(), version = i + 1, "protocol database migrated");
    }
    Ok(())
}

fn check_known(version: i64, shown: &Path) -> Result<(), DbError> {
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(DbError::TooNew {
            path: shown.to_path_buf(),
            found: version,
            known,
        });
    }
    Ok(())
}

fn migrate_pg(conn: &Conn, shown: &Path) -> Result<(), DbError> {
    let err = |op| {
        move |source| DbError::Open {
            path: shown.to_path_buf(),
            op,
            source,
        }
    };
    conn.query("SELECT pg_advisory_xact_lock(?1)", &[&MIGRATION_LOCK])
        .map_err(err("lock for migration"))?;
    let version = version(conn).map_err(err("read schema version"))?;
    check_known(version, shown)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        conn.batch(&render(sql, Engine::Postgres))
            .map_err(err("migrate"))?;
        store_version(conn, (i + 1) as i64).map_err(err("store schema version"))?;
        tracing::info!(database = %shown.display(), version = i + 1, "protocol database migrated");
    }
    Ok(())
}
