//! `callrec db migrate --to postgres://…`: copies an SQLite protocol
//! database, every table and every row (ids included, so the chain, tombstone
//! and access-log history keep their order and references), into an empty
//! PostgreSQL database, in one transaction: all of it or nothing.

use std::path::Path;

use super::sql::{Conn, Engine, SqlError, Value};
use super::{Db, DbError, Location};

/// Rows read and written per round.
const PAGE: i64 = 2000;

/// What was copied: rows per table, in the order copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// (table, rows).
    pub tables: Vec<(String, u64)>,
}

impl std::fmt::Display for CopyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (t, n) in &self.tables {
            writeln!(f, "{t}: {n} row(s)")?;
        }
        let total: u64 = self.tables.iter().map(|(_, n)| n).sum();
        writeln!(f, "{} table(s), {total} row(s) copied", self.tables.len())
    }
}

/// Copies the SQLite file `from` (brought to the current schema first) into
/// the PostgreSQL database `to`, which must hold no table yet.
pub fn copy_sqlite_into(from: &Path, to: &Location) -> Result<CopyReport, DbError> {
    let shown = std::path::PathBuf::from(to.shown());
    let err = |op: &'static str| {
        let shown = shown.clone();
        move |source| DbError::Open {
            path: shown,
            op,
            source,
        }
    };
    if to.engine() != Engine::Postgres {
        return Err(DbError::Location {
            detail: "db migrate: --to must be a postgres:// URL".into(),
        });
    }
    if !from.exists() {
        return Err(DbError::Location {
            detail: format!("db migrate: no SQLite database at {}", from.display()),
        });
    }
    let source = Db::open(from)?;
    let target = to.connect().map_err(err("connect"))?;
    let existing: i64 = target
        .query_one(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()",
            &[],
        )
        .and_then(|r| r.get(0))
        .map_err(err("look for tables"))?;
    if existing > 0 {
        return Err(DbError::Location {
            detail: format!(
                "db migrate: {} already holds {existing} table(s); copy only into an empty database (create a new one with createdb)",
                to.shown()
            ),
        });
    }
    super::migrate(&target, &shown)?;
    let tables: Vec<String> = source.read(|c| {
        c.query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid",
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect()
    })?;
    let mut report = CopyReport::default();
    target
        .write_transaction(|t| {
            for table in &tables {
                let n = copy_table(&source, t, table)?;
                report.tables.push((table.clone(), n));
            }
            Ok(())
        })
        .map_err(err("copy"))?;
    Ok(report)
}

fn copy_table(source: &Db, target: &Conn, table: &str) -> Result<u64, SqlError> {
    let query_err = |e: DbError| SqlError::Other(e.to_string());
    let columns: Vec<String> = source
        .read(|c| {
            c.query(
                &format!("SELECT name FROM pragma_table_info('{table}')"),
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect()
        })
        .map_err(query_err)?;
    let list = columns.join(", ");
    let marks: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    let insert = format!("INSERT INTO {table} ({list}) VALUES ({})", marks.join(", "));
    let select =
        format!("SELECT rowid, {list} FROM {table} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2");
    let (mut after, mut copied) = (i64::MIN, 0u64);
    loop {
        let page = source
            .read(|c| c.query(&select, &[&after, &PAGE]))
            .map_err(query_err)?;
        let Some(last) = page.last() else { break };
        after = last.get(0)?;
        for row in &page {
            let vals: Vec<&dyn super::ToValue> = row.0[1..]
                .iter()
                .map(|v| v as &dyn super::ToValue)
                .collect();
            target.execute(&insert, &vals)?;
            copied += 1;
        }
    }
    if columns.iter().any(|c| c == "id") {
        // Rows came with their ids: the identity goes on after the highest.
        target.query(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"
            ),
            &[],
        )?;
    }
    Ok(copied)
}

/// The rows of `table` in both databases, in id (else rowid or key) order,
/// for checking a copy.
pub fn table_rows(conn: &Conn, table: &str, order: &str) -> Result<Vec<Vec<Value>>, SqlError> {
    Ok(conn
        .query(&format!("SELECT * FROM {table} ORDER BY {order}"), &[])?
        .into_iter()
        .map(|r| r.0)
        .collect())
}
