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

/// `.<name>.tmp` beside `path`: where its next content is written first.
fn temp_sibling(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Replaces `path` atomically: writes a temporary sibling, fsyncs it, renames it, fsyncs the folder.
pub(crate) fn replace_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SealError> {
    let tmp = temp_sibling(path);
    write_synced(&tmp, bytes, mode)?;
    std::fs::rename(&tmp, path).map_err(SealError::io("rename into place", path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Replaces `path` atomically like [`replace_atomically`], but for a file
/// rewritten often (the chain head, once per group): the temporary sibling
/// and `path` swap names (`RENAME_EXCHANGE`), so the old content stays in
/// the temporary file and is overwritten in place next time. No inode is
/// created or freed per replace, which on a busy file system is most of an
/// atomic replace's cost. Falls back to a plain rename where the file system
/// cannot exchange or `path` does not exist yet.
pub(crate) fn replace_by_exchange(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SealError> {
    let tmp = temp_sibling(path);
    // The old content is overwritten in place only where nothing else links
    // to it (a backup made with hard links keeps its copy).
    #[cfg(unix)]
    if let Ok(meta) = std::fs::symlink_metadata(&tmp) {
        use std::os::unix::fs::MetadataExt;
        if meta.nlink() > 1 || !meta.is_file() {
            std::fs::remove_file(&tmp).map_err(SealError::io("remove", &tmp))?;
        }
    }
    if let Err(e) = write_synced(&tmp, bytes, mode) {
        // Left by another user (a run as root, say): the folder's owner
        // may still remove it and start a new one.
        if !matches!(&e, SealError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied)
        {
            return Err(e);
        }
        std::fs::remove_file(&tmp).map_err(SealError::io("remove", &tmp))?;
        write_synced(&tmp, bytes, mode)?;
    }
    if !exchange(&tmp, path) {
        std::fs::rename(&tmp, path).map_err(SealError::io("rename into place", path))?;
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Swaps the names of two existing files in one step; false when the file
/// system (or platform) cannot, or either is missing.
fn exchange(a: &Path, b: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let (Ok(ca), Ok(cb)) = (
            std::ffi::CString::new(a.as_os_str().as_bytes()),
            std::ffi::CString::new(b.as_os_str().as_bytes()),
        ) else {
            return false;
        };
        // SAFETY: both are valid NUL-terminated paths; the call reads nothing else.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        false
    }
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

/// Starts writing `file`'s unwritten data out, without waiting. Done for
/// every file of a group before the first fsync, the group's data goes out
/// together and its blocks are allocated in one journal transaction, which
/// the first fsync commits for all; the later fsyncs find little left to do.
pub(crate) fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for the call's duration; the call
        // only schedules writeback, and a failure here is caught by the fsync.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Makes `files` and the entries of `folders` durable: the writeback of all
/// files started, an fsync of each, then one of each folder however many
/// files it holds. (A `syncfs` would be one call, but it flushes everything
/// on the file system, the recordings still being written included, and new
/// calls' journal fsyncs would wait behind that.)
pub(crate) fn barrier<'a>(
    files: impl IntoIterator<Item = &'a Path>,
    folders: impl IntoIterator<Item = &'a Path>,
) -> Result<(), SealError> {
    let mut open = Vec::new();
    for path in files {
        let file = File::open(path).map_err(SealError::io("open", path))?;
        start_writeback(&file);
        open.push((path, file));
    }
    for (path, file) in open {
        file.sync_all().map_err(SealError::io("fsync", path))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_replace_by_exchange_reuses_two_inodes_and_spares_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let head = dir.path().join("head.json");
        let tmp = dir.path().join(".head.json.tmp");
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        replace_by_exchange(&head, b"one", 0o644).unwrap();
        let first = ino(&head);
        replace_by_exchange(&head, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&head).unwrap(), b"two");
        assert_eq!(
            std::fs::read(&tmp).unwrap(),
            b"one",
            "the old head swapped out"
        );
        let second = ino(&head);
        replace_by_exchange(&head, b"three", 0o644).unwrap();
        assert_eq!(std::fs::read(&head).unwrap(), b"three");
        assert_eq!(ino(&head), first, "the first inode again: none created");
        assert_eq!(ino(&tmp), second);

        // A backup hard-linked the swapped-out head: it keeps its content.
        let backup = dir.path().join("backup.json");
        std::fs::hard_link(&tmp, &backup).unwrap();
        replace_by_exchange(&head, b"four", 0o644).unwrap();
        assert_eq!(std::fs::read(&head).unwrap(), b"four");
        assert_eq!(std::fs::read(&backup).unwrap(), b"two");
    }

    /// The temporary head a run as another user (root, say) left behind is
    /// not writable for the folder's owner: it is removed and written anew.
    /// Root ignores file modes, so when the tests run as root the update
    /// itself runs in a copy of this test started as `nobody`.
    #[test]
    fn a_temp_head_left_by_another_user_is_replaced() {
        const CHILD: &str = "CALLREC_TEST_TEMP_HEAD_DIR";
        if let Ok(dir) = std::env::var(CHILD) {
            replace_by_exchange(&Path::new(&dir).join("head.json"), b"new", 0o644).unwrap();
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let head = dir.path().join("head.json");
        std::fs::write(&head, b"old").unwrap();
        let tmp = temp_sibling(&head);
        std::fs::write(&tmp, b"left by another user").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444)).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            use std::os::unix::process::CommandExt;
            const NOBODY: u32 = 65534;
            std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
            std::os::unix::fs::chown(&head, Some(NOBODY), Some(NOBODY)).unwrap();
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "seal::durable::tests::a_temp_head_left_by_another_user_is_replaced",
                    "--test-threads=1",
                ])
                .env(CHILD, dir.path())
                .uid(NOBODY)
                .gid(NOBODY)
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && said.contains("1 passed"),
                "the update as nobody failed:\n{said}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            replace_by_exchange(&head, b"new", 0o644).unwrap();
        }
        assert_eq!(std::fs::read(&head).unwrap(), b"new");
        assert_eq!(
            std::fs::read(&tmp).unwrap(),
            b"old",
            "the old head swapped out"
        );
    }
}
