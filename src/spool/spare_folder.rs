//! Spare folders: a delivered set's spool folder, emptied but for its entry
//! marker, kept for the next set to enter through, so that a set passing
//! through the spool costs no new inode (folder, marker) and frees none.
//! Creating inodes where others were freed recently is a file system's
//! slowest common path (ext4 without a journal skips every inode freed in the
//! last half minute), and the spool saw two of each per call.
//!
//! A spare is a folder `spool/.spare-<n>/` holding nothing or only a stale
//! `spool.json`, which the next set's marker overwrites in place before the
//! folder is renamed into view. Leftovers of an earlier run are removed at
//! start (see `recovery`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{lock, MANIFEST};

/// Prefix of a spare folder's name in the spool.
pub(super) const SPARE_PREFIX: &str = ".spare-";

/// Spare folders kept at most; more are removed (bounds the spool after a peak).
const MAX_SPARES: usize = 1024;

/// The spare folders of one spool.
#[derive(Debug)]
pub(super) struct SpareFolders {
    dir: PathBuf,
    free: Mutex<Vec<PathBuf>>,
    next: AtomicU64,
}

impl SpareFolders {
    pub(super) fn new(dir: &Path) -> SpareFolders {
        SpareFolders {
            dir: dir.to_path_buf(),
            free: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
        }
    }

    /// Makes `to` an empty folder (but for a stale marker the caller
    /// overwrites): a spare renamed there, or a new folder.
    pub(super) fn take_as(&self, to: &Path) -> std::io::Result<()> {
        // Something left at `to` would refuse every spare's rename.
        if std::fs::symlink_metadata(to).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a staging folder of that name is still there",
            ));
        }
        loop {
            let Some(spare) = lock(&self.free).pop() else {
                return std::fs::create_dir(to);
            };
            if std::fs::rename(&spare, to).is_ok() {
                return Ok(());
            }
            let _ = std::fs::remove_dir_all(&spare);
        }
    }

    /// Takes a delivered set's folder out of view and keeps it as a spare.
    /// The rename comes first, so a set is never seen half removed. Every
    /// entry but the marker is removed; a folder that cannot be emptied is
    /// removed whole instead of kept, so a spare never brings old files
    /// into a new set.
    pub(super) fn retire(&self, folder: &Path) -> std::io::Result<()> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let spare = self.dir.join(format!("{SPARE_PREFIX}{n}"));
        std::fs::rename(folder, &spare)?;
        let emptied = empty_but_marker(&spare);
        if emptied.is_err() || lock(&self.free).len() >= MAX_SPARES {
            std::fs::remove_dir_all(&spare)?;
            return emptied;
        }
        lock(&self.free).push(spare);
        Ok(())
    }
}

/// Removes every entry of `folder` except the entry marker (a plain file).
fn empty_but_marker(folder: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(folder)? {
        let entry = entry?;
        // Kept for overwriting in place only where nothing else links to it.
        let is_marker = entry.file_name() == MANIFEST
            && entry.file_type()?.is_file()
            && std::os::unix::fs::MetadataExt::nlink(&entry.metadata()?) == 1;
        if !is_marker {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retired_folder_is_the_next_staging_folder_with_only_its_marker() {
        let dir = tempfile::tempdir().unwrap();
        let spares = SpareFolders::new(dir.path());
        let set = dir.path().join("set-a");
        std::fs::create_dir(&set).unwrap();
        std::fs::write(set.join("a.wav"), b"audio").unwrap();
        std::fs::write(set.join(MANIFEST), b"{old}").unwrap();
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&set).unwrap().ino();
        spares.retire(&set).unwrap();
        assert!(!set.exists(), "the delivered set is out of view");

        let staging = dir.path().join(".incoming-b");
        spares.take_as(&staging).unwrap();
        assert_eq!(
            std::fs::metadata(&staging).unwrap().ino(),
            ino,
            "the same folder, no new inode"
        );
        let names: Vec<_> = std::fs::read_dir(&staging)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            names,
            vec![MANIFEST.to_string()],
            "only the stale marker is left"
        );
        // With no spare left, a new folder.
        let other = dir.path().join(".incoming-c");
        spares.take_as(&other).unwrap();
        assert_eq!(std::fs::read_dir(&other).unwrap().count(), 0);
    }

    #[test]
    fn a_leftover_staging_folder_is_refused_and_the_spares_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let spares = SpareFolders::new(dir.path());
        let set = dir.path().join("set-a");
        std::fs::create_dir(&set).unwrap();
        spares.retire(&set).unwrap();
        let left = dir.path().join(".incoming-b");
        std::fs::create_dir(&left).unwrap();
        std::fs::write(left.join("x.wav"), b"old").unwrap();
        let err = spares.take_as(&left).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(left.join("x.wav")).unwrap(), b"old");
        assert_eq!(lock(&spares.free).len(), 1, "the spare is still there");
        spares.take_as(&dir.path().join(".incoming-c")).unwrap();
        assert!(lock(&spares.free).is_empty());
    }

    #[test]
    fn a_folder_named_like_the_marker_is_emptied_too() {
        let dir = tempfile::tempdir().unwrap();
        let spares = SpareFolders::new(dir.path());
        let set = dir.path().join("set-a");
        std::fs::create_dir(&set).unwrap();
        // A marker that is a folder is not a marker: removed with the rest.
        std::fs::create_dir(set.join(MANIFEST)).unwrap();
        std::fs::write(set.join(MANIFEST).join("x"), b"x").unwrap();
        spares.retire(&set).unwrap();
        let staging = dir.path().join(".incoming-b");
        spares.take_as(&staging).unwrap();
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    }
}
