//! Locks between instances (and the offline commands) that share one
//! database, for work that must never run twice at once, e.g. purging.
//! PostgreSQL: a session advisory lock (`pg_try_advisory_lock`) held by a
//! connection of its own. SQLite: an exclusive `flock` on a file beside the
//! database; not the database file's own write lock, since the instance's
//! writer thread must go on writing (the purge's deletion records among
//! them) while the lock is held. Either way the operating system or the
//! server releases the lock when its holder dies.

use std::os::fd::AsRawFd;

use super::sql::{Conn, SqlError};
use super::{Db, DbError, Location};

/// What a lock guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockName {
    /// Deleting sets past their retention period (retention and `callrec purge`).
    Purge,
}

impl LockName {
    fn key(self) -> i64 {
        // Fixed numbers in the advisory lock space: "callrec" and a serial.
        match self {
            LockName::Purge => 0x6361_6c6c_7265_6302,
        }
    }

    fn file_suffix(self) -> &'static str {
        match self {
            LockName::Purge => ".purge-lock",
        }
    }
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct ExclusiveLock {
    held: Held,
}

#[derive(Debug)]
enum Held {
    // Never read: kept open, since closing it releases the flock.
    #[allow(dead_code)]
    File(std::fs::File),
    Session(Box<Conn>, i64),
}

impl Drop for ExclusiveLock {
    fn drop(&mut self) {
        match &self.held {
            // Closing the file releases the flock.
            Held::File(_) => {}
            Held::Session(conn, key) => {
                let _ = conn.query("SELECT pg_advisory_unlock(?1)", &[key]);
            }
        }
    }
}

impl Db {
    /// Takes `name`'s lock without waiting; `None` when another holder (an
    /// instance or command sharing this database) has it.
    pub fn try_lock(&self, name: LockName) -> Result<Option<ExclusiveLock>, DbError> {
        let err = |source: SqlError| DbError::Query {
            path: self.path().to_path_buf(),
            source,
        };
        match self.location() {
            Location::Sqlite(path) => {
                let mut lock_path = path.as_os_str().to_owned();
                lock_path.push(name.file_suffix());
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .map_err(|e| err(SqlError::Other(format!("{lock_path:?}: {e}"))))?;
                // SAFETY: flock only reads the descriptor, which `file` keeps open.
                let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
                if rc == 0 {
                    return Ok(Some(ExclusiveLock {
                        held: Held::File(file),
                    }));
                }
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    Ok(None)
                } else {
                    Err(err(SqlError::Other(format!("lock {lock_path:?}: {e}"))))
                }
            }
            location @ Location::Postgres(_) => {
                let conn = location.connect().map_err(err)?;
                let got: bool = conn
                    .query_one("SELECT pg_try_advisory_lock(?1)", &[&name.key()])
                    .and_then(|r| r.get(0))
                    .map_err(err)?;
                Ok(got.then(|| ExclusiveLock {
                    held: Held::Session(Box::new(conn), name.key()),
                }))
            }
        }
    }
}
