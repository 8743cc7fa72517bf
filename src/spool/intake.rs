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
    /// Takes a sealed set into the spool for `targets` (URLs) and queues its
    /// uploads: [`Spool::enqueue_group`] with one set.
    pub fn enqueue(&self, set: &SealedSet, targets: &[String]) -> Result<PathBuf, SpoolError> {
        self.enqueue_group(&[(set, targets)])
            .pop()
            .expect("one result per set")
    }

    /// Takes sealed sets into the spool, each for its targets (URLs), and
    /// queues their uploads; one result per set, in order.
    ///
    /// Each set's files are moved (hard link + remove, or copy + remove across
    /// file systems) into a staging folder with the entry marker; the markers
    /// and staging folders are made durable, the folders are renamed into
    /// place (one folder fsync for all), and the rows of all sets
    /// are committed in one database transaction, which this waits for: from
    /// then on the sets count as queued. A set already in `spool/<base>/`
    /// stays where it is. Blocks on file-system and database work: call it
    /// from the sealing task, not the media path.
    pub fn enqueue_group(
        &self,
        sets: &[(&SealedSet, &[String])],
    ) -> Vec<Result<PathBuf, SpoolError>> {
        let spool_dir = &self.inner.config.dir;
        let mut results: Vec<Option<Result<PathBuf, SpoolError>>> =
            sets.iter().map(|_| None).collect();
        // (index, marker, staging folder or None when already in place, originals)
        let mut staged: Vec<(usize, EntryMarker, Option<PathBuf>, Vec<PathBuf>)> = Vec::new();
        for (i, (set, targets)) in sets.iter().enumerate() {
            if sets[..i].iter().any(|(s, _)| s.base_name == set.base_name) {
                results[i] = Some(Err(SpoolError::AlreadySpooled {
                    base_name: set.base_name.clone(),
                }));
                continue;
            }
            match self.stage(set, targets) {
                Ok(s) => staged.push((i, s.0, s.1, s.2)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        // The markers and staging folders durable before any is renamed into
        // place; all markers' writeback started before the first fsync.
        let flushed: std::io::Result<()> = (|| {
            let mut markers = Vec::new();
            for st in staged
                .iter()
                .filter_map(|(_, _, staging, _)| staging.as_ref())
            {
                let f = std::fs::File::open(st.join(MANIFEST))?;
                crate::seal::start_writeback(&f);
                markers.push((st, f));
            }
            for (st, f) in markers {
                f.sync_all()?;
                std::fs::File::open(st).and_then(|d| d.sync_all())?;
            }
            Ok(())
        })();
        if let Err(e) = flushed {
            for (i, _, staging, _) in staged.drain(..) {
                if let Some(st) = staging {
                    let _ = std::fs::remove_dir_all(&st);
                }
                let e = std::io::Error::new(e.kind(), e.to_string());
                results[i] = Some(Err(io(
                    "open and fsync the staging folders and markers in",
                    spool_dir,
                )(e)));
            }
        }
        let mut entered = Vec::new();
        for (i, marker, staging, originals) in staged {
            let dest = spool_dir.join(&marker.base_name);
            if let Some(st) = &staging {
                if let Err(e) = std::fs::rename(st, &dest) {
                    let _ = std::fs::remove_dir_all(st);
                    results[i] = Some(Err(io("rename", &dest)(e)));
                    continue;
                }
            }
            entered.push((i, marker, staging.is_some(), originals, dest));
        }
        if entered.iter().any(|e| e.2) {
            sync_dir(spool_dir);
        }
        for (_, marker, moved, originals, _) in &entered {
            if !moved {
                continue;
            }
            for src in originals {
                if let Err(e) = std::fs::remove_file(src) {
                    tracing::warn!(set = %marker.base_name, file = %src.display(), error = %e, "spool: original file not removed");
                }
            }
        }
        let at_ms = now_ms();
        let records: Vec<Record> = entered
            .iter()
            .flat_map(|(_, m, _, _, _)| {
                m.targets.iter().map(|t| Record::UploadQueued {
                    base_name: m.base_name.clone(),
                    target: t.clone(),
                    at_ms,
                })
            })
            .collect();
        let committed = if records.is_empty() {
            Ok(())
        } else {
            self.inner.db.write_sync(records)
        };
        for (i, marker, _, _, dest) in entered {
            results[i] = Some(match &committed {
                Ok(()) => {
                    for t in &marker.targets {
                        queue_job(&self.inner, t, &marker.base_name, 0, Instant::now());
                    }
                    tracing::info!(set = %marker.base_name, targets = marker.targets.len(), "spool: set queued for upload");
                    Ok(dest)
                }
                // The folder is in place: the next start re-creates its rows
                // from the entry marker.
                Err(e) => Err(queue_err(&marker.base_name)(crate::db::DbError::Write {
                    path: self.inner.db.path().to_path_buf(),
                    detail: e.to_string(),
                })),
            });
        }
        self.check_disk();
        results.into_iter().map(Option::unwrap).collect()
    }

    /// Checks a set and puts its files and entry marker into a staging folder
    /// (nothing flushed yet); `None` for the folder when the set is already in
    /// its spool folder (then only the marker is written, durably). Returns
    /// the marker, the staging folder and the files to remove once it is in place.
    #[allow(clippy::type_complexity)]
    fn stage(
        &self,
        set: &SealedSet,
        targets: &[String],
    ) -> Result<(EntryMarker, Option<PathBuf>, Vec<PathBuf>), SpoolError> {
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
            return Ok((marker, None, Vec::new()));
        }
        if dest.exists() {
            return Err(SpoolError::AlreadySpooled {
                base_name: set.base_name.clone(),
            });
        }
        let staging = spool_dir.join(format!("{INCOMING_PREFIX}{}", set.base_name));
        let _ = std::fs::remove_dir_all(&staging);
        self.inner
            .spares
            .take_as(&staging)
            .map_err(io("create", &staging))?;
        for (src, name) in upload.files.iter().zip(&names) {
            let to = staging.join(name);
            if std::fs::hard_link(src, &to).is_err() {
                std::fs::copy(src, &to).map_err(io("copy into the spool", src))?;
                std::fs::File::open(&to)
                    .and_then(|f| f.sync_all())
                    .map_err(io("fsync", &to))?;
            }
        }
        // The staging folder is invisible until renamed: the marker needs no
        // temporary name (it overwrites a spare folder's stale one in place);
        // it is fsynced with the group's other markers.
        let json = serde_json::to_vec_pretty(&marker).map_err(|e| SpoolError::Manifest {
            path: staging.join(MANIFEST),
            detail: e.to_string(),
        })?;
        let path = staging.join(MANIFEST);
        std::fs::write(&path, json).map_err(io("write", &path))?;
        Ok((marker, Some(staging), upload.files))
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
