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

/// Makes `files` and the entries of `folders` durable: an fsync of each
/// file, then one of each folder however many files it holds. (A `syncfs`
/// would be one call, but it flushes everything on the file system, the
/// recordings still being written included, and new calls' journal fsyncs
/// would wait behind that.)
pub(crate) fn barrier<'a>(
    files: impl IntoIterator<Item = &'a Path>,
    folders: impl IntoIterator<Item = &'a Path>,
) -> Result<(), SealError> {
    for file in files {
        File::open(file)
            .and_then(|f| f.sync_all())
            .map_err(SealError::io("fsync", file))?;
    }
    let mut done: Vec<&Path> = Vec::new();
    for folder in folders {
        if !done.contains(&folder) {
            sync_dir(folder)?;
            done.push(folder);
        }
    }
    Ok(())
}
