//! Which instance this process is. Several instances may share one protocol
//! database; each keeps its own data directory (keystore, chain, spool). The
//! instance name says which of them sealed a set and owns an upload row; the
//! lock file in the data directory tells a running instance from a gone one
//! (`callrec spool adopt` refuses to take over from a running one).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// File in the data directory that a running instance holds locked; it also
/// holds the instance's name.
pub const LOCK_FILE: &str = "instance.lock";

/// Longest instance name accepted.
const MAX_NAME: usize = 64;

/// What went wrong with an instance name or lock.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// The name is empty, too long, or has characters other than letters, digits, '.', '-', '_'.
    #[error("instance name {0:?} is not usable: give 1 to 64 letters, digits, '.', '-' or '_' with --instance-name")]
    BadName(String),
    /// Another process holds the data directory.
    #[error("the data directory {dir} is in use by a running callrec (instance {name:?}); stop it first, or give another --data-dir")]
    Busy {
        /// The data directory.
        dir: PathBuf,
        /// The name the running instance wrote into its lock file.
        name: String,
    },
    /// The lock file could not be opened or written.
    #[error("cannot lock {path}: {source}; check that the data directory is writable")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The default instance name: the host name (stable across restarts).
pub fn default_name() -> String {
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A host name with characters a name may not hold keeps its usable part.
    let cleaned: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(MAX_NAME)
        .collect();
    if cleaned.is_empty() {
        "callrec".into()
    } else {
        cleaned
    }
}

/// Checks that `name` can name an instance (it goes into file names, JSON and pages).
pub fn check_name(name: &str) -> Result<(), InstanceError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(InstanceError::BadName(name.to_string()))
    }
}

/// The lock a running instance holds on its data directory; released when
/// dropped or when the process ends (however it ends).
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

/// Whether the data directory `dir` is held by a running instance, and the
/// name its lock file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    /// No lock file: no instance has run with this data directory.
    Absent,
    /// An instance of this name ran here and is gone.
    Free(String),
    /// An instance of this name runs here now.
    Held(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstanceError {
    let path = path.to_path_buf();
    move |source| InstanceError::Io { path, source }
}

/// Tries an exclusive, non-blocking lock; false when another process holds it.
fn try_flock(f: &File) -> std::io::Result<bool> {
    // SAFETY: `f` is an open file; flock takes no pointers.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

fn read_name(f: &mut File) -> String {
    let mut s = String::new();
    let _ = f.rewind().and_then(|_| f.read_to_string(&mut s));
    s.trim().to_string()
}

impl InstanceLock {
    /// Locks `data_dir` for the instance `name` and writes the name into the lock
    /// file; fails when another process holds it.
    pub fn acquire(data_dir: &Path, name: &str) -> Result<InstanceLock, InstanceError> {
        check_name(name)?;
        let path = data_dir.join(LOCK_FILE);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        if !try_flock(&f).map_err(io(&path))? {
            return Err(InstanceError::Busy {
                dir: data_dir.to_path_buf(),
                name: read_name(&mut f),
            });
        }
        f.set_len(0)
            .and_then(|_| f.rewind())
            .and_then(|_| writeln!(f, "{name}"))
            .and_then(|_| f.sync_all())
            .map_err(io(&path))?;
        Ok(InstanceLock { _file: f })
    }
}

/// Looks at the lock of `data_dir` without keeping it.
pub fn lock_state(data_dir: &Path) -> Result<LockState, InstanceError> {
    let path = data_dir.join(LOCK_FILE);
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LockState::Absent),
        Err(e) => return Err(io(&path)(e)),
    };
    let name = read_name(&mut f);
    // Taking the lock (and dropping it with the file at once) is how to ask.
    if try_flock(&f).map_err(io(&path))? {
        Ok(LockState::Free(name))
    } else {
        Ok(LockState::Held(name))
    }
}

/// An instance as the shared database knows it: registered by `run` at every start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    /// Its name.
    pub name: String,
    /// Its sealing identity's id (what its sets' chain positions name).
    pub instance_id: String,
    /// Its certificate (PEM): what its sets' signatures verify against.
    pub cert_pem: String,
    /// When it last started (ms since epoch).
    pub seen_ms: i64,
}

/// Stores (or refreshes) an instance's row; run by the database writer.
pub(crate) fn upsert(tx: &crate::db::Conn, row: &InstanceRow) -> Result<(), crate::db::SqlError> {
    tx.execute(
        "INSERT INTO instances (name, instance_id, cert_pem, seen_ms) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (name) DO UPDATE SET instance_id = excluded.instance_id, cert_pem = excluded.cert_pem, seen_ms = excluded.seen_ms",
        &[&row.name, &row.instance_id, &row.cert_pem, &row.seen_ms],
    )?;
    Ok(())
}

/// Every instance that has registered in the database, by name.
pub fn known(db: &crate::db::Db) -> Result<Vec<InstanceRow>, crate::db::DbError> {
    db.read(|c| {
        c.query(
            "SELECT name, instance_id, cert_pem, seen_ms FROM instances ORDER BY name",
            &[],
        )?
        .iter()
        .map(|r| {
            Ok(InstanceRow {
                name: r.get(0)?,
                instance_id: r.get(1)?,
                cert_pem: r.get(2)?,
                seen_ms: r.get(3)?,
            })
        })
        .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_the_host_name_is_a_valid_default() {
        check_name(&default_name()).unwrap();
        for ok in ["a", "pbx-rec-1", "host.example.com", "x_y"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "a b", "a/b", "<script>", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_held_lock_is_seen_and_refused_and_free_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(lock_state(dir.path()).unwrap(), LockState::Absent);
        let lock = InstanceLock::acquire(dir.path(), "rec-a").unwrap();
        assert_eq!(
            lock_state(dir.path()).unwrap(),
            LockState::Held("rec-a".into())
        );
        let err = InstanceLock::acquire(dir.path(), "rec-b").unwrap_err();
        assert!(
            matches!(err, InstanceError::Busy { ref name, .. } if name == "rec-a"),
            "{err}"
        );
        drop(lock);
        assert_eq!(
            lock_state(dir.path()).unwrap(),
            LockState::Free("rec-a".into())
        );
    }
}
