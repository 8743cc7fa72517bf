//! Spare files: emptied files kept in the work folder for reuse, so that the
//! short-lived files of every call (its journal, its disk reserve) cost no
//! new inode and no deletion each. Creating an inode is a file system's
//! slowest common operation under churn (ext4 without a journal skips every
//! inode freed in the last half minute when it allocates one); at 400 calls
//! per second it was the largest item in callrec's profile.
//!
//! A spare is a file named `.spare-<n>` in the folder, empty while it waits.
//! A call's journal is written into a spare and keeps the spare's name while
//! the call records (see `journal`): the pool remembers which spare holds
//! which set's journal. Leftovers of an earlier run are removed at start
//! with the other dot-files of `work/`, or, when one holds a journal, taken
//! up by recovery (see `recovery`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Prefix of a spare file's name.
pub const SPARE_PREFIX: &str = ".spare-";

/// Spares kept at most; more are deleted (bounds the folder at the end of a peak).
const MAX_SPARES: usize = 4096;

/// The spare files of one folder; shared by the calls recording into it.
#[derive(Debug)]
pub struct Spares {
    dir: PathBuf,
    free: Mutex<Vec<PathBuf>>,
    next: AtomicU64,
    /// Spares holding a running set's journal, by the set's base name.
    journals: Mutex<HashMap<String, PathBuf>>,
}

/// A spare opened for writing, empty; its name is durable in the folder.
#[derive(Debug)]
pub struct Taken {
    /// Its path (`.spare-<n>` in the pool's folder).
    pub path: PathBuf,
    /// Open for writing, truncated.
    pub file: File,
}

impl Spares {
    /// No spares yet in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Spares {
        Spares {
            dir: dir.into(),
            free: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
            journals: Mutex::new(HashMap::new()),
        }
    }

    /// The folder the spares live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens a spare for writing, empty: a kept one, or a new file whose
    /// name is made durable at once (a folder fsync, paid only while the
    /// pool grows), so that whatever is written into a spare later, a
    /// journal say, needs only its own fsync.
    pub fn take(&self) -> std::io::Result<Taken> {
        let kept = self.lock().pop();
        let created = kept.is_none();
        let path = kept.unwrap_or_else(|| {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            self.dir.join(format!("{SPARE_PREFIX}{n}"))
        });
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        if created {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(Taken { path, file })
    }

    /// Notes that the spare at `path` holds the journal of set `base_name`.
    pub fn hold_journal(&self, base_name: &str, path: PathBuf) {
        lock(&self.journals).insert(base_name.to_string(), path);
    }

    /// The spare holding set `base_name`'s journal, no longer noted as such.
    pub fn release_journal(&self, base_name: &str) -> Option<PathBuf> {
        lock(&self.journals).remove(base_name)
    }

    /// Takes `path` (a file in this folder: a spare, or a journal done with)
    /// back as a spare: renamed to a spare's name when it has another one,
    /// then emptied. Removed instead when enough spares are kept or it
    /// cannot be renamed.
    pub fn give_back(&self, path: &Path) {
        self.put_back(path, false);
    }

    /// Like [`Spares::give_back`], but the emptying is made durable (an
    /// fsync of the file), for content a power cut must not bring back.
    pub fn give_back_durably(&self, path: &Path) {
        self.put_back(path, true);
    }

    fn put_back(&self, path: &Path, durable: bool) {
        let is_spare = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(SPARE_PREFIX));
        if self.lock().len() >= MAX_SPARES {
            if durable {
                let _ = empty(path, true);
            }
            let _ = std::fs::remove_file(path);
            return;
        }
        let spare = if is_spare {
            path.to_path_buf()
        } else {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let spare = self.dir.join(format!("{SPARE_PREFIX}{n}"));
            if std::fs::rename(path, &spare).is_err() {
                let _ = std::fs::remove_file(path);
                return;
            }
            spare
        };
        // Emptied so that no call's data waits in it (and its blocks are free).
        match empty(&spare, durable) {
            Ok(()) => self.lock().push(spare),
            Err(_) => {
                let _ = std::fs::remove_file(&spare);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        lock(&self.free)
    }
}

/// Empties the file at `path`, and with `durable` fsyncs it.
fn empty(path: &Path, durable: bool) -> std::io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(0)?;
    if durable {
        f.sync_all()?;
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere leaves paths, still valid.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Allocates `len` bytes for `file` (the disk reserve) without writing them
/// where the file system can; else writes zeros.
pub fn allocate(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `file` is an open descriptor for the duration of the call.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    use std::io::Write;
    let mut f = file;
    f.write_all(&vec![0u8; len as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_given_back_is_emptied_and_reused_under_its_spare_name() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::new(dir.path());
        let journal = dir.path().join("a.journal");
        std::fs::write(&journal, "whose call it was").unwrap();
        spares.give_back(&journal);
        assert!(!journal.exists(), "the journal's name is gone");
        let Taken { path, .. } = spares.take().unwrap();
        assert!(path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(SPARE_PREFIX));
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            0,
            "no call's data kept"
        );
        use std::os::unix::fs::MetadataExt;
        let fresh = spares.take().unwrap().path;
        assert_ne!(
            fresh, path,
            "a second take while the first is out is another file"
        );
        spares.give_back(&path);
        let ino = std::fs::metadata(&path).unwrap().ino();
        let again = spares.take().unwrap().path;
        assert_eq!(
            std::fs::metadata(&again).unwrap().ino(),
            ino,
            "the same inode, reused"
        );
    }

    #[test]
    fn a_reserve_holds_its_blocks_until_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::new(dir.path());
        let Taken { path, file: f, .. } = spares.take().unwrap();
        allocate(&f, 64 * 1024).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 >= 64 * 1024);
        spares.give_back(&path);
        assert_eq!(std::fs::metadata(&path).unwrap().blocks(), 0);
    }
}
