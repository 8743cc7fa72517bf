//! Health and repair of the protocol database file: the check `callrec run`
//! makes before it takes calls (a damaged file stops the start with a message
//! that says what to do), `callrec db check` (SQLite's integrity check), and
//! `callrec db recover`: every row SQLite can still read is copied into a
//! fresh file, the damaged file is kept beside it, and the upload queue is
//! rebuilt from the spool's entry markers.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::db::{Db, DbError, DB_FILE_NAME};

/// Most findings of an integrity check that are kept.
const MAX_FINDINGS: usize = 100;

/// What went wrong while recovering a database.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// The database could not be opened or written.
    #[error("{0}")]
    Db(#[from] DbError),
    /// The spool could not be read back into the upload queue.
    #[error("{0}")]
    Spool(#[from] crate::spool::SpoolError),
    /// There is no database to recover.
    #[error("no protocol database {0}; give the --data-dir that `callrec run` uses")]
    Missing(PathBuf),
    /// A file operation failed.
    #[error("{what} {path}: {source}; check permissions and free space in the data directory")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process (a running callrec) has the database open.
    #[error("protocol database {0} is open in another process (is callrec running?); stop callrec first, then recover")]
    InUse(PathBuf),
    /// Writing the fresh database failed.
    #[error("fresh database {path}: {source}; check free space in the data directory")]
    Fresh {
        /// The fresh file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
}

/// True for SQLite errors that mean the file's contents are damaged (as
/// opposed to a missing permission or a locked file).
pub fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// The folder holding a database file (for messages that name `--data-dir`).
fn data_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// What the operator reads when the database is damaged: the file, the
/// damage, and the way out.
pub(crate) fn corrupt_message(path: &Path, findings: &[String]) -> String {
    let dir = data_dir(path).display();
    let shown: Vec<&str> = findings.iter().take(5).map(String::as_str).collect();
    format!(
        "protocol database {} is damaged: {}. callrec does not start on a damaged database \
         (exit status 2; the systemd unit does not restart on it). See the damage with \
         `callrec db check --data-dir {dir}`, then, with callrec stopped, run \
         `callrec db recover --data-dir {dir}`: it copies what is still readable into a \
         fresh file, keeps the damaged one beside it as {DB_FILE_NAME}.corrupt-<time> and \
         rebuilds the upload queue from the spool",
        path.display(),
        shown.join("; ")
    )
}

/// A damaged file is `Corrupt`, whatever step found it; other failures stay as they are.
pub(crate) fn classify(e: DbError) -> DbError {
    match e {
        DbError::Open {
            path,
            source: crate::db::SqlError::Sqlite(source),
            ..
        } if is_damage(&source) => DbError::Corrupt {
            path,
            findings: vec![source.to_string()],
        },
        e => e,
    }
}

/// The file is shorter than its own header says: cut off by a full disk, a
/// bad copy or a truncation. Read from the header alone, so it costs nothing.
fn truncation(path: &Path) -> Option<String> {
    use std::io::Read;
    // A crash during a checkpoint leaves the header ahead of the file while
    // the write-ahead log still holds the pages; SQLite finishes it from the
    // log, and the integrity checks read them there.
    if std::fs::metadata(companion(path, "-wal")).is_ok_and(|m| m.len() > 0) {
        return None;
    }
    let mut header = [0u8; 100];
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.read_exact(&mut header).ok()?;
    if &header[..16] != b"SQLite format 3\0" {
        return None;
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        n => u64::from(n),
    };
    let pages = u64::from(u32::from_be_bytes([
        header[28], header[29], header[30], header[31],
    ]));
    // The page count is valid only while the change counter matches it.
    let valid = header[24..28] == header[92..96];
    let want = pages * page_size;
    (valid && want > len).then(|| {
        format!("the file has {len} bytes but its header says {pages} pages of {page_size} bytes ({want} bytes): it was cut off")
    })
}

/// Runs `PRAGMA quick_check` (or the slower `integrity_check` with `full`):
/// an empty list when the file is sound, else SQLite's findings.
fn integrity(conn: &Connection, full: bool) -> rusqlite::Result<Vec<String>> {
    let pragma = if full {
        "integrity_check"
    } else {
        "quick_check"
    };
    let mut stmt = conn.prepare(&format!("PRAGMA {pragma}({MAX_FINDINGS})"))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(if rows.len() == 1 && rows[0] == "ok" {
        Vec::new()
    } else {
        rows
    })
}

/// Damage found in the database of an open connection: its header and
/// SQLite's quick check. Empty when sound. Used by `callrec run` before any
/// call is taken.
pub fn damage_on_open(conn: &Connection, path: &Path) -> Result<Vec<String>, DbError> {
    let mut found: Vec<String> = truncation(path).into_iter().collect();
    match integrity(conn, false) {
        Ok(f) => found.extend(f),
        Err(e) if is_damage(&e) => found.push(e.to_string()),
        Err(source) => {
            return Err(DbError::Open {
                path: path.to_path_buf(),
                op: "check",
                source: source.into(),
            })
        }
    }
    Ok(found)
}

/// The result of `callrec db check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The database file.
    pub path: PathBuf,
    /// What is wrong; empty when the file is sound.
    pub findings: Vec<String>,
}

/// `callrec db check`: SQLite's full integrity check of `data_dir`'s database,
/// read-only. A file SQLite cannot read at all is a finding, not an error.
pub fn check(data_dir: &Path) -> Result<CheckReport, RepairError> {
    let path = data_dir.join(DB_FILE_NAME);
    if !path.is_file() {
        return Err(RepairError::Missing(path));
    }
    let mut findings: Vec<String> = truncation(&path).into_iter().collect();
    let opened = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| integrity(&c, true));
    match opened {
        Ok(f) => findings.extend(f),
        Err(e) if is_damage(&e) => findings.push(e.to_string()),
        Err(source) => {
            return Err(DbError::Open {
                path,
                op: "check",
                source: source.into(),
            }
            .into())
        }
    }
    Ok(CheckReport { path, findings })
}

impl std::fmt::Display for CheckReport {
    /// What `callrec db check` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.findings.is_empty() {
            return writeln!(f, "{}: ok", self.path.display());
        }
        writeln!(f, "{}: DAMAGED", self.path.display())?;
        for x in &self.findings {
            writeln!(f, "  {x}")?;
        }
        writeln!(
            f,
            "stop callrec and run `callrec db recover --data-dir {}` to copy what is readable into a fresh file",
            data_dir(&self.path).display()
        )
    }
}

/// What one table gave up during a recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCopy {
    /// The table.
    pub table: String,
    /// Rows copied into the fresh file.
    pub rows: usize,
    /// Whether reading it hit damage (some rows may be lost).
    pub damaged: bool,
}

/// The result of `callrec db recover`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverReport {
    /// The fresh database, now in use.
    pub path: PathBuf,
    /// Where the damaged file was kept.
    pub kept: PathBuf,
    /// Per table of the schema: what was copied.
    pub tables: Vec<TableCopy>,
    /// Sets in the spool put back on the upload queue from their entry markers.
    pub requeued: Vec<String>,
}

impl std::fmt::Display for RecoverReport {
    /// What `callrec db recover` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for t in &self.tables {
            let note = if t.damaged {
                " (damaged: rows may be lost)"
            } else {
                ""
            };
            writeln!(f, "{:<16} {} row(s) copied{note}", t.table, t.rows)?;
        }
        for b in &self.requeued {
            writeln!(f, "queued again from the spool: {b}")?;
        }
        writeln!(
            f,
            "recovered into {}; the damaged file is kept as {}",
            self.path.display(),
            self.kept.display()
        )
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RepairError {
    let path = path.to_path_buf();
    move |source| RepairError::Io { what, path, source }
}

/// Removes `path` and its `-wal` and `-shm` companions, if present.
fn remove_with_companions(path: &Path) -> Result<(), RepairError> {
    for p in [
        path.to_path_buf(),
        companion(path, "-wal"),
        companion(path, "-shm"),
    ] {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("remove", &p)(e));
            }
            _ => {}
        }
    }
    Ok(())
}

fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Whether another process has the database open: every SQLite connection
/// in WAL mode holds a shared lock on the file's lock bytes while it is open.
/// Asked with F_GETLK, which takes no lock (and sees only other processes').
fn in_use(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    // SQLite's lock bytes: the shared range starts two bytes after the
    // pending byte at 1 GiB and is 510 bytes long.
    const SHARED_FIRST: libc::off_t = 0x4000_0000 + 2;
    const SHARED_SIZE: libc::off_t = 510;
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: all-zero is a valid `flock`; the fields that matter are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = SHARED_FIRST;
    fl.l_len = SHARED_SIZE;
    // SAFETY: `f` is an open file and `fl` a properly initialised out-parameter.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
    rc == 0 && i32::from(fl.l_type) != libc::F_UNLCK
}

/// Copies the database `path` (with its write-ahead log, if any) to `to`.
fn scratch_copy(path: &Path, to: &Path) -> Result<PathBuf, RepairError> {
    remove_with_companions(to)?;
    std::fs::copy(path, to).map_err(io("copy", path))?;
    let wal = companion(path, "-wal");
    if wal.is_file() {
        std::fs::copy(&wal, companion(to, "-wal")).map_err(io("copy", &wal))?;
    }
    forget_page_count(to)?;
    Ok(to.to_path_buf())
}

/// Makes SQLite size the file by its length instead of its header's page
/// count: with a cut-off file that count names pages that are gone, and
/// SQLite refuses every table. The header's count is valid only while the
/// "version valid for" field equals the change counter, so that field is
/// changed.
fn forget_page_count(path: &Path) -> Result<(), RepairError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io("open", path))?;
    let mut header = [0u8; 100];
    if f.read_exact(&mut header).is_err() || &header[..16] != b"SQLite format 3\0" {
        return Ok(());
    }
    let mut valid_for = [header[24], header[25], header[26], header[27]];
    valid_for[0] ^= 0xff;
    f.seek(SeekFrom::Start(92))
        .and_then(|_| f.write_all(&valid_for))
        .map_err(io("write", path))
}

/// Column names of `table` in `conn`, in order.
fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info(\"{table}\")"))?;
    let cols = stmt
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(cols)
}

/// Copies the rows of `table` that `old` can still read into `new`: a scan
/// forwards until it hits damage, then one backwards from the end until it
/// hits damage again (or meets the rows already copied). Returns the rows
/// copied and whether damage was met.
fn copy_table(old: &Connection, new: &Connection, table: &str) -> (usize, bool) {
    let wanted = match columns(new, table) {
        Ok(c) => c,
        Err(_) => return (0, true),
    };
    let have: HashSet<String> = match columns(old, table) {
        Ok(c) if !c.is_empty() => c.into_iter().collect(),
        // Not in the old file (an older schema) or unreadable.
        Ok(_) => return (0, false),
        Err(_) => return (0, true),
    };
    let cols: Vec<&String> = wanted.iter().filter(|c| have.contains(*c)).collect();
    if cols.is_empty() {
        return (0, false);
    }
    let list = cols
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let marks = vec!["?"; cols.len()].join(", ");
    let insert = format!("INSERT OR IGNORE INTO \"{table}\" ({list}) VALUES ({marks})");
    let mut seen: HashSet<i64> = HashSet::new();
    let mut copied = 0usize;
    let mut damaged = false;
    for order in ["ASC", "DESC"] {
        let sql = format!("SELECT rowid, {list} FROM \"{table}\" ORDER BY rowid {order}");
        let pass = (|| -> rusqlite::Result<()> {
            let mut stmt = old.prepare(&sql)?;
            let mut ins = new.prepare_cached(&insert)?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let rowid: i64 = r.get(0)?;
                if !seen.insert(rowid) {
                    // The backward scan met the forward one: nothing in between.
                    return Ok(());
                }
                let values = (1..=cols.len())
                    .map(|i| r.get::<_, Value>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                copied += ins.execute(rusqlite::params_from_iter(values))?;
            }
            Ok(())
        })();
        match pass {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(table, error = %e, "recover: reading stopped at damage");
                damaged = true;
            }
        }
    }
    // A scan can also end early without an error where a lost page reads as
    // an empty one: the table's largest rowid (its rightmost page) must then
    // be among those copied, or rows are missing.
    if !damaged {
        let max = old.query_row(&format!("SELECT max(rowid) FROM \"{table}\""), [], |r| {
            r.get::<_, Option<i64>>(0)
        });
        damaged = match max {
            Ok(Some(m)) => !seen.contains(&m),
            Ok(None) => false,
            Err(_) => true,
        };
    }
    (copied, damaged)
}

/// The tables of the current schema, in a fresh file.
fn schema_tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(names)
}

/// `callrec db recover`: copies what SQLite can still read from `data_dir`'s
/// database into a fresh file with the current schema, keeps the damaged file
/// as `callrec.sqlite.corrupt-<UTC time>` (with its `-wal`), puts the fresh
/// one in its place, and rebuilds the upload queue from the spool's entry
/// markers. callrec must not be running.
pub fn recover(data_dir: &Path) -> Result<RecoverReport, RepairError> {
    let path = data_dir.join(DB_FILE_NAME);
    if !path.is_file() {
        return Err(RepairError::Missing(path));
    }
    // Renaming the file under a running callrec would leave it writing into
    // the kept copy while the fresh one misses everything.
    if in_use(&path) {
        return Err(RepairError::InUse(path));
    }
    let fresh = data_dir.join(format!("{DB_FILE_NAME}.recovering"));
    remove_with_companions(&fresh)?;
    let fresh_err = |source| RepairError::Fresh {
        path: fresh.clone(),
        source,
    };
    let tables = {
        let new = crate::db::Conn::sqlite(Connection::open(&fresh).map_err(fresh_err)?);
        crate::db::migrate(&new, &fresh)?;
        let mut new = new.into_sqlite().expect("an SQLite connection");
        // Read from a scratch copy: SQLite reads more of a damaged file through a
        // read-write connection than a read-only one, and the kept file stays
        // exactly as it was found. Whatever fails to open is nothing to copy.
        let scratch = scratch_copy(&path, &data_dir.join(format!("{DB_FILE_NAME}.scratch")))?;
        let old = Connection::open(&scratch).ok();
        if let Some(old) = &old {
            // Lets SQLite read the tables whose schema entries are sound when
            // others name pages that are gone (it would refuse every table).
            let _ = old.pragma_update(None, "writable_schema", true);
        }
        let tx = new.transaction().map_err(fresh_err)?;
        let mut tables = Vec::new();
        for table in schema_tables(&tx).map_err(fresh_err)? {
            let (rows, damaged) = match &old {
                Some(old) => copy_table(old, &tx, &table),
                None => (0, true),
            };
            tables.push(TableCopy {
                table,
                rows,
                damaged,
            });
        }
        tx.commit().map_err(fresh_err)?;
        drop(old);
        remove_with_companions(&scratch)?;
        tables
    };
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let kept = data_dir.join(format!("{DB_FILE_NAME}.corrupt-{stamp}"));
    std::fs::rename(&path, &kept).map_err(io("rename", &path))?;
    // A log with content belongs to the damaged file and stays with it; an
    // empty one (left by a failed start) is only noise.
    let wal = companion(&path, "-wal");
    match std::fs::metadata(&wal).map(|m| m.len()) {
        Ok(0) => std::fs::remove_file(&wal).map_err(io("remove", &wal))?,
        Ok(_) => std::fs::rename(&wal, companion(&kept, "-wal")).map_err(io("rename", &wal))?,
        Err(_) => {}
    }
    let _ = std::fs::remove_file(companion(&path, "-shm"));
    std::fs::rename(&fresh, &path).map_err(io("rename", &fresh))?;
    if let Ok(d) = std::fs::File::open(data_dir) {
        let _ = d.sync_all();
    }
    let db = Db::open(&path)?;
    let requeued = crate::spool::rebuild_queue(&data_dir.join("spool"), &db)?;
    db.flush();
    Ok(RecoverReport {
        path,
        kept,
        tables,
        requeued,
    })
}

#[cfg(test)]
mod tests;
