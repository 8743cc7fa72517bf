//! Durable file writes for sets and state: write + fsync, atomic replace, directory fsync.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::SealError;

/// Creates (or truncates) `path`, writes `bytes` and fsyncs the file.
pub(crate) fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SealError> {
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
