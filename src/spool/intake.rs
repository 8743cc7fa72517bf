//! Intake: a sealed set enters the spool atomically (staging folder, entry
//! marker, rename, then its upload rows committed) and its uploads are queued.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::worker::queue_job;
use super::{io, queue_err, sync_dir, EntryMarker, Spool, SpoolError, INCOMING_PREFIX, MANIFEST};
use crate::db::{now_ms, Record};
use crate::seal::SealedSet;
use crate::storage::UploadSet;

impl Spool {
    /// Takes a sealed set into the spool for `targets` (URLs) and queues its uploads.
    ///
    /// The set's files are moved (hard link + remove, or copy + remove across file
    /// systems); a set already in `spool/<base>/` stays where it is. The set counts
    /// as queued once its rows are committed to the database, which this waits for.
    /// Blocks on file-system and database work: call it from the sealing task, not
    /// the media path.
    pub fn enqueue(&self, set: &SealedSet, targets: &[String]) -> Result<PathBuf, SpoolError> {
        if targets.is_empty() {
            return Err(SpoolError::NoTargets {
                base_name: set.base_name.clone(),
            });
        }
        let spool_dir = &self.inner.config.dir;
        let dest = spool_dir.join(&set.base_name);
        let upload = UploadSet::from_sealed(set);
        let names: Vec<String> = upload
            .files
            .iter()
            .map(|f| {
                f.file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default()
            })
            .collect();
        let mut seen = HashSet::new();
        let marker = EntryMarker {
            base_name: set.base_name.clone(),
            checksum_sha256: set.checksum_sha256.clone(),
            files: names.clone(),
            targets: targets
                .iter()
                .filter(|t| seen.insert(t.to_string()))
                .cloned()
                .collect(),
            queued_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        let same_folder = std::fs::canonicalize(&set.folder).ok()
            == std::fs::canonicalize(&dest).ok()
            && dest.exists();
        if same_folder {
            if dest.join(MANIFEST).exists() {
                return Err(SpoolError::AlreadySpooled {
                    base_name: set.base_name.clone(),
                });
            }
            write_marker(&dest, &marker)?;
        } else {
            if dest.exists() {
                return Err(SpoolError::AlreadySpooled {
                    base_name: set.base_name.clone(),
                });
            }
            let staging = spool_dir.join(format!("{INCOMING_PREFIX}{}", set.base_name));
            let _ = std::fs::remove_dir_all(&staging);
            std::fs::create_dir_all(&staging).map_err(io("create", &staging))?;
            for (src, name) in upload.files.iter().zip(&names) {
                let to = staging.join(name);
                if std::fs::hard_link(src, &to).is_err() {
                    std::fs::copy(src, &to).map_err(io("copy into the spool", src))?;
                    std::fs::File::open(&to)
                        .and_then(|f| f.sync_all())
                        .map_err(io("fsync", &to))?;
                }
            }
            write_marker(&staging, &marker)?;
            std::fs::rename(&staging, &dest).map_err(io("rename", &dest))?;
            sync_dir(spool_dir);
            for src in &upload.files {
                if let Err(e) = std::fs::remove_file(src) {
                    tracing::warn!(file = %src.display(), error = %e, "spool: original file not removed");
                }
            }
        }
        let at_ms = now_ms();
        let records = marker
            .targets
            .iter()
            .map(|t| Record::UploadQueued {
                base_name: set.base_name.clone(),
                target: t.clone(),
                at_ms,
            })
            .collect();
        self.inner
            .db
            .write_sync(records)
            .map_err(queue_err(&set.base_name))?;
        for t in &marker.targets {
            queue_job(&self.inner, t, &set.base_name, 0, Instant::now());
        }
        tracing::info!(set = %set.base_name, targets = marker.targets.len(), "spool: set queued for upload");
        self.check_disk();
        Ok(dest)
    }

    fn check_disk(&self) {
        let dir = &self.inner.config.dir;
        if let Some(free) = free_bytes(dir) {
            if free < self.inner.config.low_disk_bytes {
                tracing::warn!(
                    dir = %dir.display(),
                    free_mib = free / (1024 * 1024),
                    "spool: disk low on space; check the targets (callrec uploads status)"
                );
                if let Some(n) = &self.inner.notifier {
                    n.low_disk(
                        &dir.display().to_string(),
                        free,
                        self.inner.config.low_disk_bytes,
                    );
                }
            }
        }
    }
}

pub(super) fn write_marker(folder: &Path, m: &EntryMarker) -> Result<(), SpoolError> {
    let tmp = folder.join(format!("{MANIFEST}.tmp"));
    let dest = folder.join(MANIFEST);
    let json = serde_json::to_vec_pretty(m).map_err(|e| SpoolError::Manifest {
        path: dest.clone(),
        detail: e.to_string(),
    })?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io("write", &tmp))?;
        f.write_all(&json).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
    }
    std::fs::rename(&tmp, &dest).map_err(io("rename", &dest))?;
    sync_dir(folder);
    Ok(())
}

/// Free bytes on the file system holding `path`.
pub(super) fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    (rc == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
}
