//! Durable file writes for sets and state: write (+ fsync), atomic replace,
//! directory fsync, and the file-system barrier of a group commit.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::SealError;

/// Creates (or truncates) `path` and writes `bytes`, without waiting for the
/// disk: a later [`barrier`] makes it durable.
pub(crate) fn write_unsynced(path: &Path, bytes: &[u8], mode: u32) -> Result<File, SealError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = opts.open(path).map_err(SealError::io("create", path))?;
    file.write_all(bytes)
        .map_err(SealError::io("write", path))?;
    Ok(file)
}

/// Creates (or truncates) `path`, writes `bytes` and fsyncs the file.
pub(crate) fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SealError> {
    let file = write_unsynced(path, bytes, mode)?;
    file.sync_all().map_err(SealError::io("fsync", path))?;
    Ok(())
}

/// Replaces `path` atomically: writes a temporary sibling, fsyncs it, renames it, fsyncs the folder.
pub(crate) fn replace_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SealError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    write_synced(&tmp, bytes, mode)?;
    std::fs::rename(&tmp, path).map_err(SealError::io("rename into place", path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Fsyncs a directory so that created and renamed entries survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SealError> {
    #[cfg(unix)]
    {
        let d = File::open(dir).map_err(SealError::io("open folder", dir))?;
        d.sync_all().map_err(SealError::io("fsync folder", dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Makes everything written so far on the file system of each folder durable
/// (files and folder entries alike) with one `syncfs` per folder: one call
/// for a whole group of sets instead of an fsync per file and folder. Since
/// Linux 5.8 `syncfs` reports write-back errors, so a failed disk is seen.
pub(crate) fn barrier<'a>(folders: impl IntoIterator<Item = &'a Path>) -> Result<(), SealError> {
    let mut done: Vec<&Path> = Vec::new();
    for folder in folders {
        if done.contains(&folder) {
            continue;
        }
        done.push(folder);
        syncfs(folder).map_err(SealError::io("flush to disk (syncfs)", folder))?;
    }
    Ok(())
}

/// `syncfs(2)` on the file system holding `folder`: everything written there
/// so far, file data and folder entries, is on disk when it returns.
pub fn syncfs(folder: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let d = File::open(folder)?;
    // SAFETY: `d` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
