//! Recovery at start: interrupted entries and removals are cleared, the queue is
//! read back from the database, a set folder the database does not know is
//! queued again from its entry marker, and a pending row without files is lost.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use super::spare_folder::SPARE_PREFIX;
use super::worker::{queue_job, remove_delivered};
use super::{
    io, queue_err, report_error, EntryMarker, Spool, SpoolError, DELIVERED_PREFIX, INCOMING_PREFIX,
    MANIFEST,
};
use crate::db::{now_ms, Db, Record, UploadRow, UploadState};

impl Spool {
    /// Clears interrupted entries and removals, then queues what the database calls pending.
    pub(super) fn recover(&self) -> Result<(), SpoolError> {
        let inner = &self.inner;
        let dir = inner.config.dir.clone();
        for entry in std::fs::read_dir(&dir).map_err(io("list", &dir))?.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if !path.is_dir() {
                continue;
            }
            if name.starts_with(DELIVERED_PREFIX) || name.starts_with(SPARE_PREFIX) {
                // Every target had confirmed this set and only the removal was
                // interrupted (older runs), or a spare folder of the last run.
                let _ = std::fs::remove_dir_all(&path);
            } else if name.starts_with(INCOMING_PREFIX) {
                // Entering was interrupted before the rename: the originals are still in place.
                tracing::warn!(path = %path.display(), "spool: removing an interrupted entry (its source files were kept)");
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        // Rows from before instances were named are this instance's: it had the
        // database to itself then.
        inner
            .db
            .write_sync(vec![Record::UploadsClaimed])
            .map_err(queue_err("*"))?;
        // Only this instance's rows: another instance sharing the database keeps
        // its sets in its own spool, so their absence here says nothing.
        let me = inner.db.instance();
        let mut rows: HashMap<String, Vec<UploadRow>> = HashMap::new();
        for r in inner.db.uploads().map_err(queue_err("*"))? {
            if r.instance.as_deref() == Some(me) {
                rows.entry(r.base_name.clone()).or_default().push(r);
            }
        }
        let folders = set_folders(&dir)?;
        let mut resumed = 0usize;
        for base in &folders {
            match rows.get(base) {
                Some(rs) if rs.iter().any(|r| r.state == UploadState::Pending) => {
                    for r in rs.iter().filter(|r| r.state == UploadState::Pending) {
                        queue_job(inner, &r.target, base, r.attempts, due_at(r.next_ms));
                    }
                    resumed += 1;
                }
                Some(rs) if rs.iter().all(|r| r.state == UploadState::Done) => {
                    // Every target confirmed it; only the removal was interrupted.
                    tracing::info!(set = %base, "spool: removing a set every target already holds");
                    if let Err(e) = remove_delivered(inner, base) {
                        report_error(inner, e.to_string());
                    }
                }
                Some(_) => {
                    let message = format!("set {base} is in the spool {} but none of its uploads is pending (some are lost); it is left in place: re-queue it with a pending row in the uploads table or remove the folder", dir.display());
                    report_error(inner, message);
                }
                None => {
                    if self.requeue_from_marker(base)? {
                        resumed += 1;
                    }
                }
            }
        }
        // Pending rows whose set folder is gone can never be uploaded.
        let present: HashSet<&String> = folders.iter().collect();
        for r in rows
            .values()
            .flatten()
            .filter(|r| r.state == UploadState::Pending && !present.contains(&r.base_name))
        {
            let reason = format!(
                "set {} is pending for {} in the database but its files are not in the spool {} (removed by hand?); marked lost",
                r.base_name,
                r.target,
                dir.display()
            );
            inner.db.send(Record::UploadLost {
                base_name: r.base_name.clone(),
                target: r.target.clone(),
                reason: reason.clone(),
            });
            report_error(inner, reason);
        }
        if resumed > 0 {
            tracing::info!(sets = resumed, dir = %dir.display(), "spool: resuming pending uploads from the database");
        }
        Ok(())
    }

    /// Re-creates the rows of a set folder the database does not know from its entry
    /// marker (a crash between entering and committing); true when queued.
    fn requeue_from_marker(&self, base: &str) -> Result<bool, SpoolError> {
        let inner = &self.inner;
        let Some(targets) = rows_from_marker(&inner.config.dir, base, &inner.db)? else {
            return Ok(false);
        };
        for t in &targets {
            queue_job(inner, t, base, 0, Instant::now());
        }
        Ok(true)
    }
}

pub(super) fn read_marker(folder: &Path) -> Result<EntryMarker, SpoolError> {
    let path = folder.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(io("read", &path))?;
    serde_json::from_slice(&bytes).map_err(|e| SpoolError::Manifest {
        path,
        detail: e.to_string(),
    })
}

/// The base names of the set folders in the spool (no hidden or staging folders).
pub(super) fn set_folders(dir: &Path) -> Result<Vec<String>, SpoolError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let entry = entry.map_err(io("list", dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if entry.path().is_dir() && !name.starts_with('.') {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Commits pending upload rows for the set folder `base` from its entry marker
/// and returns the marker's targets; None (logged and kept as an error) when
/// the marker is missing or names no target.
pub(super) fn rows_from_marker(
    dir: &Path,
    base: &str,
    db: &Db,
) -> Result<Option<Vec<String>>, SpoolError> {
    let folder = dir.join(base);
    let marker = match read_marker(&folder) {
        // A marker naming another set is not this folder's.
        Ok(m) if !m.targets.is_empty() && m.base_name == base => m,
        Ok(_) | Err(_) => {
            let message = format!("set folder {} has no rows in the uploads table and no usable {MANIFEST} (missing, unreadable, naming no target or another set); it is not uploaded: add its rows (state pending) or remove the folder", folder.display());
            tracing::error!("spool: {message}");
            db.send(Record::Error {
                at_ms: now_ms(),
                component: "spool".into(),
                message,
            });
            return Ok(None);
        }
    };
    tracing::warn!(set = %base, targets = marker.targets.len(), "spool: set folder unknown to the database (crash while entering, or a recovered database); queued again from {MANIFEST}");
    let at_ms = now_ms();
    let records = marker
        .targets
        .iter()
        .map(|t| Record::UploadQueued {
            base_name: base.to_string(),
            target: t.clone(),
            at_ms,
        })
        .collect();
    db.write_sync(records).map_err(queue_err(base))?;
    Ok(Some(marker.targets))
}

/// Rebuilds the upload queue of the spool folder `dir` in `db` without starting
/// any upload: every set folder the database has no upload row for is queued
/// again for the targets of its entry marker (as a running spool does at
/// start). Returns the sets queued. For `callrec db recover`.
pub fn rebuild_queue(dir: &Path, db: &Db) -> Result<Vec<String>, SpoolError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut queued = Vec::new();
    for base in set_folders(dir)? {
        if !db.uploads_of(&base).map_err(queue_err(&base))?.is_empty() {
            continue;
        }
        if rows_from_marker(dir, &base, db)?.is_some() {
            queued.push(base);
        }
    }
    Ok(queued)
}

/// The instant a retry stored as `next_ms` (ms since epoch) is due; now when unknown or past.
pub(super) fn due_at(next_ms: Option<i64>) -> Instant {
    let wait = next_ms.map(|n| n - now_ms()).unwrap_or(0).max(0);
    Instant::now() + Duration::from_millis(wait as u64)
}
