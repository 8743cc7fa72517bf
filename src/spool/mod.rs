//! The spool: sealed sets wait in `data_dir/spool/<base name>/` until every
//! target of their profile has confirmed every file.
//!
//! The upload queue lives in the protocol database (table `uploads`): one row per
//! set and target with its state (`pending`, `done`, `lost`), attempts, next retry
//! time and last error. The spool folder holds only the files, plus `spool.json`,
//! an entry marker written once when the set enters and never updated (base name,
//! checksum hash, files, the targets asked for at entry). The marker is read in
//! one case only: a set folder without any `uploads` row (a crash between moving
//! the files and committing the rows) gets its rows re-created from it.
//!
//! A set enters atomically: its files are hard-linked (or copied and fsynced) into
//! `spool/.incoming-<base>/` with the marker, the folder is renamed to
//! `spool/<base>/`, the originals are removed, and the set's rows are committed
//! with a synchronous database write; from that commit on the set counts as
//! queued. On start the queue is read back from the database (pending rows,
//! their attempts and next retry time), so a restart loses nothing; a pending row
//! whose set folder is gone becomes `lost` (logged and kept as an error).
//!
//! One worker task per target URL uploads the sets queued for it, one at a time,
//! retrying failures with exponential back-off (capped, ±20 % jitter). Before each
//! attempt the worker checks that the row is still pending, so a row removed from
//! the database is not uploaded. A confirmation is committed before the set's
//! folder is removed. Nothing here runs on the media path: [`Spool::enqueue`]
//! does file-system work and one database commit and is meant for the sealing task.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::db::{now_ms, Db, DbError, Record, UploadRow, UploadState};
use crate::notify::{Notifier, UploadFailure};
use crate::seal::SealedSet;
use crate::storage::{open_target, Secrets, Target, TargetError, UploadSet};

/// Name of the entry marker inside each spooled set's folder (written once, never updated).
pub const MANIFEST: &str = "spool.json";
/// Prefix of a set's folder while it enters the spool.
const INCOMING_PREFIX: &str = ".incoming-";
/// Prefix of a delivered set's folder while it is being removed.
const DELIVERED_PREFIX: &str = ".delivered-";
/// File whose presence asks a running spool to retry every waiting upload now.
pub const RETRY_TRIGGER: &str = ".retry-now";
/// How often a running spool looks for [`RETRY_TRIGGER`].
const TRIGGER_POLL: Duration = Duration::from_secs(1);

/// Settings of the spool.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The spool folder, normally `data_dir/spool`.
    pub dir: PathBuf,
    /// Wait before the first retry.
    pub initial_backoff: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
    /// Longest time one upload attempt of one set may take.
    pub attempt_timeout: Duration,
    /// Warn (log and mail) when the spool's disk has less free space than this.
    pub low_disk_bytes: u64,
}

impl SpoolConfig {
    /// Defaults for `data_dir`: back-off 10 s … 15 min, 1 h per attempt, warn below 1 GiB free.
    pub fn new(data_dir: &Path) -> SpoolConfig {
        SpoolConfig {
            dir: data_dir.join("spool"),
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(15 * 60),
            attempt_timeout: Duration::from_secs(3600),
            low_disk_bytes: 1 << 30,
        }
    }
}

/// What went wrong with the spool itself (not with a target).
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file-system operation in the spool failed.
    #[error("spool: {op} {path} failed: {source}; check that the data directory is writable and has free space")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A set was given without targets.
    #[error(
        "spool: set {base_name} has no targets; configure at least one --target for its profile"
    )]
    NoTargets {
        /// Base name of the set.
        base_name: String,
    },
    /// A set with this base name is already spooled.
    #[error("spool: set {base_name} is already in the spool; a base name must be unique")]
    AlreadySpooled {
        /// Base name of the set.
        base_name: String,
    },
    /// An entry marker could not be read or written.
    #[error(
        "spool: entry marker {path} is unusable: {detail}; fix or remove the set's folder by hand"
    )]
    Manifest {
        /// The marker file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The upload queue in the protocol database could not be read or written.
    #[error("spool: the upload queue of set {base_name} in the database failed: {source}; the files stay in the spool and are queued again from spool.json at the next start")]
    Queue {
        /// Base name of the set ("*" for the whole queue).
        base_name: String,
        /// The database error.
        source: Box<DbError>,
    },
}

/// Maps a database error about set `base_name` to [`SpoolError::Queue`].
fn queue_err(base_name: &str) -> impl FnOnce(DbError) -> SpoolError {
    let base_name = base_name.to_string();
    move |source| SpoolError::Queue {
        base_name,
        source: Box::new(source),
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError {
    let path = path.to_path_buf();
    move |source| SpoolError::Io { op, path, source }
}

/// The entry marker `spool/<base>/spool.json`: what a set was queued for when it entered.
///
/// Written once, never updated; the queue's state is in the database. Read only to
/// re-create the rows of a set folder the database does not know.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryMarker {
    /// Base name of the set.
    pub base_name: String,
    /// SHA-256 of the set's checksum file.
    pub checksum_sha256: String,
    /// File names of the set, signature last.
    pub files: Vec<String>,
    /// The target URLs the set was queued for.
    pub targets: Vec<String>,
    /// When the set entered the spool (RFC 3339).
    pub queued_at: String,
}

/// A set waiting in the spool, as [`Spool::pending`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSet {
    /// Base name of the set.
    pub base_name: String,
    /// Targets that do not hold it yet.
    pub waiting_for: Vec<String>,
}

#[derive(Debug, Clone)]
struct Job {
    base_name: String,
    attempts: u32,
    not_before: Instant,
}

struct Worker {
    url: String,
    target: Result<Arc<dyn Target>, TargetError>,
    queue: Mutex<VecDeque<Job>>,
    /// The set being uploaded right now, so a reload does not queue it twice.
    current: Mutex<Option<String>>,
    wake: Notify,
}

struct Inner {
    config: SpoolConfig,
    db: Db,
    secrets: Secrets,
    notifier: Option<Notifier>,
    workers: Mutex<HashMap<String, Arc<Worker>>>,
    /// Held while a confirmation is committed and a delivered set removed, and while
    /// [`Spool::pending`] reads, so nobody sees a set neither pending nor gone.
    set_lock: Mutex<()>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Aborts the worker tasks when the last [`Spool`] handle is dropped.
struct TaskGuard {
    inner: Arc<Inner>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let _ = self.inner.stop.send(true);
        for t in lock(&self.inner.tasks).drain(..) {
            t.abort();
        }
    }
}

/// Locks a mutex, taking over the data of a poisoned one.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The upload spool; cheap to clone. Dropping the last clone stops its workers.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
    _guard: Arc<TaskGuard>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.inner.config.dir)
            .finish()
    }
}

fn write_marker(folder: &Path, m: &EntryMarker) -> Result<(), SpoolError> {
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

fn read_marker(folder: &Path) -> Result<EntryMarker, SpoolError> {
    let path = folder.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(io("read", &path))?;
    serde_json::from_slice(&bytes).map_err(|e| SpoolError::Manifest {
        path,
        detail: e.to_string(),
    })
}

/// The set's files in its spool folder: every regular file but the marker and hidden ones.
fn set_files(folder: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(folder)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || name.starts_with(MANIFEST) || !e.file_type()?.is_file() {
            continue;
        }
        files.push(e.path());
    }
    files.sort();
    Ok(files)
}

/// The base names of the set folders in the spool (no hidden or staging folders).
fn set_folders(dir: &Path) -> Result<Vec<String>, SpoolError> {
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
fn rows_from_marker(dir: &Path, base: &str, db: &Db) -> Result<Option<Vec<String>>, SpoolError> {
    let folder = dir.join(base);
    let marker = match read_marker(&folder) {
        Ok(m) if !m.targets.is_empty() => m,
        Ok(_) | Err(_) => {
            let message = format!("set folder {} has no rows in the uploads table and no usable {MANIFEST}; it is not uploaded: add its rows (state pending) or remove the folder", folder.display());
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
fn due_at(next_ms: Option<i64>) -> Instant {
    let wait = next_ms.map(|n| n - now_ms()).unwrap_or(0).max(0);
    Instant::now() + Duration::from_millis(wait as u64)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Free bytes on the file system holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    (rc == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
}

/// Wait before retry number `attempts` (1 = first retry): doubling from `initial`, capped, ±20 % jitter.
pub fn backoff(initial: Duration, max: Duration, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << exp).min(max);
    let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 0.8..1.2);
    base.mul_f64(jitter).min(max)
}

impl Spool {
    /// Opens the spool folder, takes the upload queue from the database (see the
    /// module docs for sets the database does not know), and starts the workers.
    /// Needs a tokio runtime.
    pub fn start(
        config: SpoolConfig,
        db: Db,
        secrets: Secrets,
        notifier: Option<Notifier>,
    ) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(&config.dir).map_err(io("create", &config.dir))?;
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            config,
            db,
            secrets,
            notifier,
            workers: Mutex::new(HashMap::new()),
            set_lock: Mutex::new(()),
            stop,
            tasks: Mutex::new(Vec::new()),
        });
        let spool = Spool {
            _guard: Arc::new(TaskGuard {
                inner: inner.clone(),
            }),
            inner,
        };
        spool.recover()?;
        let watcher = tokio::spawn(watch_retry_trigger(spool.inner.clone()));
        lock(&spool.inner.tasks).push(watcher);
        Ok(spool)
    }

    /// Starts the workers of `targets` now (instead of at their first set) and logs each
    /// target's state at INFO.
    pub fn add_targets(&self, targets: &[String]) {
        for url in targets {
            let worker = worker(&self.inner, url);
            match &worker.target {
                Ok(t) => tracing::info!(target_url = %t.describe(), "storage target configured"),
                Err(e) => tracing::error!(error = %e, "storage target unusable"),
            }
        }
    }

    /// The spool folder.
    pub fn dir(&self) -> &Path {
        &self.inner.config.dir
    }

    /// Clears interrupted entries and removals, then queues what the database calls pending.
    fn recover(&self) -> Result<(), SpoolError> {
        let inner = &self.inner;
        let dir = inner.config.dir.clone();
        for entry in std::fs::read_dir(&dir).map_err(io("list", &dir))?.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if !path.is_dir() {
                continue;
            }
            if name.starts_with(DELIVERED_PREFIX) {
                // Every target had confirmed this set; only the removal was interrupted.
                let _ = std::fs::remove_dir_all(&path);
            } else if name.starts_with(INCOMING_PREFIX) {
                // Entering was interrupted before the rename: the originals are still in place.
                tracing::warn!(path = %path.display(), "spool: removing an interrupted entry (its source files were kept)");
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        let mut rows: HashMap<String, Vec<UploadRow>> = HashMap::new();
        for r in inner.db.uploads().map_err(queue_err("*"))? {
            rows.entry(r.base_name.clone()).or_default().push(r);
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

    /// Sets still waiting for at least one target, read from the database's upload queue.
    ///
    /// When the database cannot be read, every set folder counts as pending.
    pub fn pending(&self) -> Vec<PendingSet> {
        let _lock = lock(&self.inner.set_lock);
        let rows = match self.inner.db.pending_uploads() {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "spool: upload queue unreadable; counting every set folder as pending");
                return set_folders(&self.inner.config.dir)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|base_name| PendingSet {
                        base_name,
                        waiting_for: vec![format!("(database unreadable: {e})")],
                    })
                    .collect();
            }
        };
        let mut by_set: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for r in rows {
            by_set.entry(r.base_name).or_default().push(r.target);
        }
        by_set
            .into_iter()
            .map(|(base_name, waiting_for)| PendingSet {
                base_name,
                waiting_for,
            })
            .collect()
    }

    /// Waits until the spool is empty or `timeout` passes; true when empty.
    pub async fn wait_empty(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if self.pending().is_empty() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Re-reads the queue from the database and retries every waiting upload now,
    /// without waiting for its back-off (`callrec uploads retry`).
    pub fn retry_now(&self) {
        retry_all(&self.inner);
    }
}

/// Logs an error of the spool and keeps it in the database's error table.
fn report_error(inner: &Inner, message: String) {
    tracing::error!("spool: {message}");
    inner.db.send(Record::Error {
        at_ms: now_ms(),
        component: "spool".into(),
        message,
    });
}

/// Puts a set on a target's queue, starting the target's worker if needed.
fn queue_job(inner: &Arc<Inner>, url: &str, base_name: &str, attempts: u32, not_before: Instant) {
    let worker = worker(inner, url);
    {
        // Same lock order as the worker: queue, then current.
        let mut q = lock(&worker.queue);
        let busy = lock(&worker.current).as_deref() == Some(base_name);
        if !busy && !q.iter().any(|j| j.base_name == base_name) {
            q.push_back(Job {
                base_name: base_name.to_string(),
                attempts,
                not_before,
            });
        }
    }
    worker.wake.notify_one();
}

/// The worker of a target URL, started on first use.
fn worker(inner: &Arc<Inner>, url: &str) -> Arc<Worker> {
    let mut workers = lock(&inner.workers);
    if let Some(w) = workers.get(url) {
        return w.clone();
    }
    let target = open_target(url, &inner.secrets);
    if let Err(e) = &target {
        tracing::error!(error = %e, "spool: target unusable; its uploads will fail until the configuration is fixed");
    }
    let w = Arc::new(Worker {
        url: url.to_string(),
        target,
        queue: Mutex::new(VecDeque::new()),
        current: Mutex::new(None),
        wake: Notify::new(),
    });
    workers.insert(url.to_string(), w.clone());
    let task = tokio::spawn(run_worker(inner.clone(), w.clone()));
    lock(&inner.tasks).push(task);
    w
}

/// Asks the spool running on `spool_dir` (in another process) to retry every waiting
/// upload now, without waiting for its back-off: `callrec uploads retry`.
pub fn request_retry(spool_dir: &Path) -> Result<(), SpoolError> {
    let path = spool_dir.join(RETRY_TRIGGER);
    std::fs::write(&path, b"retry\n").map_err(io("write", &path))
}

/// The upload queue as text for `callrec uploads status`: one line per set and target.
pub fn status_text(rows: &[crate::db::UploadRow]) -> String {
    let mut out = String::from("STATE    ATTEMPTS  SET  TARGET  LAST ERROR\n");
    for r in rows {
        out.push_str(&format!(
            "{:<8} {:>8}  {}  {}  {}\n",
            r.state,
            r.attempts,
            r.base_name,
            r.target,
            r.last_error.as_deref().unwrap_or("-")
        ));
    }
    let pending = rows
        .iter()
        .filter(|r| r.state == UploadState::Pending)
        .count();
    out.push_str(&format!("{pending} of {} uploads pending\n", rows.len()));
    let lost = rows.iter().filter(|r| r.state == UploadState::Lost).count();
    if lost > 0 {
        out.push_str(&format!(
            "{lost} uploads lost (their files left the spool)\n"
        ));
    }
    out
}

/// Retries everything when [`RETRY_TRIGGER`] appears in the spool folder.
async fn watch_retry_trigger(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let path = inner.config.dir.join(RETRY_TRIGGER);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TRIGGER_POLL) => {}
            _ = stop.changed() => return,
        }
        if std::fs::remove_file(&path).is_ok() {
            tracing::info!("spool: retry requested; retrying every waiting upload now");
            let inner = inner.clone();
            let _ = tokio::task::spawn_blocking(move || retry_all(&inner)).await;
        }
    }
}

/// Queues every pending row of the database whose set is in the spool (rows added
/// by hand included), makes every queued job due now and wakes the workers.
fn retry_all(inner: &Arc<Inner>) {
    match inner.db.pending_uploads() {
        Ok(rows) => {
            for r in rows {
                if inner.config.dir.join(&r.base_name).is_dir() {
                    queue_job(inner, &r.target, &r.base_name, r.attempts, Instant::now());
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "spool: cannot re-read the upload queue; retrying what is queued")
        }
    }
    let workers: Vec<_> = lock(&inner.workers).values().cloned().collect();
    for w in workers {
        for job in lock(&w.queue).iter_mut() {
            job.not_before = Instant::now();
        }
        w.wake.notify_one();
    }
}

/// Renames a delivered set's folder out of the way and removes it.
fn remove_delivered(inner: &Inner, base_name: &str) -> Result<(), SpoolError> {
    let folder = inner.config.dir.join(base_name);
    // Rename first: a crash mid-way leaves no half set that looks pending.
    let gone = inner
        .config
        .dir
        .join(format!("{DELIVERED_PREFIX}{base_name}"));
    std::fs::rename(&folder, &gone).map_err(io("rename", &folder))?;
    sync_dir(&inner.config.dir);
    std::fs::remove_dir_all(&gone).map_err(io("remove", &gone))
}

/// Commits a confirmed attempt; removes the set from the spool when no upload of it
/// is pending any more. True when removed.
fn mark_done(inner: &Inner, base_name: &str, confirmed: Record) -> Result<bool, SpoolError> {
    let _lock = lock(&inner.set_lock);
    inner
        .db
        .write_sync(vec![confirmed])
        .map_err(queue_err(base_name))?;
    settle(inner, base_name)
}

/// Removes a set from the spool when every upload row of it is done; true when
/// removed. The caller holds `set_lock`.
fn settle(inner: &Inner, base_name: &str) -> Result<bool, SpoolError> {
    let rows = inner
        .db
        .uploads_of(base_name)
        .map_err(queue_err(base_name))?;
    if rows.is_empty() || rows.iter().any(|r| r.state != UploadState::Done) {
        return Ok(false);
    }
    remove_delivered(inner, base_name)?;
    Ok(true)
}

/// What one turn of a worker came to.
enum Outcome {
    /// The database no longer lists this upload as pending: nothing to do.
    Skipped,
    /// Every file is confirmed on the target.
    Confirmed(UploadSet),
    /// The attempt failed; `None` when the set's files are gone from the spool.
    Failed(Option<UploadSet>, TargetError),
}

async fn attempt(inner: &Arc<Inner>, worker: &Worker, base_name: &str) -> Outcome {
    // The database is the queue: a row that was removed or is no longer pending is skipped.
    let still_pending = {
        let (db, base) = (inner.db.clone(), base_name.to_string());
        tokio::task::spawn_blocking(move || db.uploads_of(&base)).await
    };
    match still_pending {
        Ok(Ok(rows)) => {
            if !rows
                .iter()
                .any(|r| r.target == worker.url && r.state == UploadState::Pending)
            {
                return Outcome::Skipped;
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(set = %base_name, error = %e, "spool: upload queue unreadable; uploading anyway")
        }
        Err(e) => tracing::warn!(set = %base_name, error = %e, "spool: queue check failed"),
    }
    let folder = inner.config.dir.join(base_name);
    let files = match set_files(&folder) {
        Ok(f) if !f.is_empty() => f,
        other => {
            let detail = match other {
                Err(e) => e.to_string(),
                Ok(_) => "no files".into(),
            };
            return Outcome::Failed(
                None,
                TargetError::Local {
                    target: worker.url.clone(),
                    path: folder.display().to_string(),
                    detail,
                },
            );
        }
    };
    let set = UploadSet::new(base_name, files);
    let target = match &worker.target {
        Ok(t) => t.clone(),
        Err(e) => return Outcome::Failed(Some(set), e.clone()),
    };
    match tokio::time::timeout(inner.config.attempt_timeout, target.put(&set)).await {
        Ok(Ok(())) => Outcome::Confirmed(set),
        Ok(Err(e)) => Outcome::Failed(Some(set), e),
        Err(_) => Outcome::Failed(
            Some(set),
            TargetError::Timeout {
                target: worker.url.clone(),
                seconds: inner.config.attempt_timeout.as_secs(),
            },
        ),
    }
}

/// File names of a set, for mails.
fn names_of(set: Option<&UploadSet>) -> Vec<String> {
    set.map(|s| {
        s.files
            .iter()
            .map(|f| {
                f.file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default()
            })
            .collect()
    })
    .unwrap_or_default()
}

async fn run_worker(inner: Arc<Inner>, worker: Arc<Worker>) {
    let mut stop = inner.stop.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        // The job that is due first.
        let next = lock(&worker.queue).iter().map(|j| j.not_before).min();
        let now = Instant::now();
        match next {
            None => {
                tokio::select! {
                    _ = worker.wake.notified() => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            Some(t) if t > now => {
                tokio::select! {
                    _ = tokio::time::sleep_until(t.into()) => {}
                    _ = worker.wake.notified() => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            Some(_) => {}
        }
        let job = {
            let mut q = lock(&worker.queue);
            let i = q
                .iter()
                .enumerate()
                .min_by_key(|(_, j)| j.not_before)
                .map(|(i, _)| i);
            match i.and_then(|i| q.remove(i)) {
                Some(j) => {
                    *lock(&worker.current) = Some(j.base_name.clone());
                    j
                }
                None => continue,
            }
        };
        handle(&inner, &worker, job).await;
        *lock(&worker.current) = None;
    }
}

/// Runs one attempt of `job` and records its outcome.
async fn handle(inner: &Arc<Inner>, worker: &Worker, job: Job) {
    let started_ms = now_ms();
    let result = attempt(inner, worker, &job.base_name).await;
    let ended_ms = now_ms();
    match result {
        Outcome::Skipped => {
            tracing::info!(set = %job.base_name, target = %worker.url, "upload no longer pending in the database; skipped");
            let (inner, base) = (inner.clone(), job.base_name.clone());
            let settled = tokio::task::spawn_blocking(move || {
                let _lock = lock(&inner.set_lock);
                settle(&inner, &base)
            })
            .await;
            if let Ok(Err(e)) = settled {
                tracing::warn!(set = %job.base_name, error = %e, "spool: could not remove a set no target waits for");
            }
        }
        Outcome::Confirmed(set) => {
            let confirmed = Record::UploadAttempt {
                base_name: job.base_name.clone(),
                target: worker.url.clone(),
                started_ms,
                ended_ms,
                files: set.files.len() as u32,
                bytes: set.total_bytes(),
                error: None,
                next_ms: None,
            };
            let done = {
                let (inner, base) = (inner.clone(), job.base_name.clone());
                tokio::task::spawn_blocking(move || mark_done(&inner, &base, confirmed)).await
            };
            match done {
                Ok(Ok(true)) => {
                    tracing::info!(set = %job.base_name, target = %worker.url, "upload confirmed; every target holds the set, removed from the spool")
                }
                Ok(Ok(false)) => {
                    tracing::info!(set = %job.base_name, target = %worker.url, "upload confirmed; other targets pending")
                }
                Ok(Err(e)) => {
                    // Not committed: upload again later rather than lose the confirmation.
                    tracing::error!(set = %job.base_name, error = %e, "spool: upload confirmed but not recorded; it is retried");
                    requeue(inner, worker, job);
                }
                Err(e) => {
                    tracing::error!(set = %job.base_name, error = %e, "spool: recording a confirmation failed; it is retried");
                    requeue(inner, worker, job);
                }
            }
        }
        Outcome::Failed(set, error) => {
            let attempts = job.attempts + 1;
            let wait = backoff(
                inner.config.initial_backoff,
                inner.config.max_backoff,
                attempts,
            );
            let files = names_of(set.as_ref());
            inner.db.send(Record::UploadAttempt {
                base_name: job.base_name.clone(),
                target: worker.url.clone(),
                started_ms,
                ended_ms,
                files: files.len() as u32,
                bytes: set.as_ref().map(|s| s.total_bytes()).unwrap_or(0),
                error: Some(error.to_string()),
                next_ms: set.as_ref().map(|_| ended_ms + wait.as_millis() as i64),
            });
            if let Some(n) = &inner.notifier {
                n.upload_failed(UploadFailure {
                    target: worker.url.clone(),
                    base_name: job.base_name.clone(),
                    files,
                    error: error.to_string(),
                    at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                });
            }
            if set.is_none() {
                // The set's files are gone from the spool: nothing left to retry.
                let reason = format!(
                    "set {} left the spool before it reached {}: {error}",
                    job.base_name, worker.url
                );
                inner.db.send(Record::UploadLost {
                    base_name: job.base_name.clone(),
                    target: worker.url.clone(),
                    reason: reason.clone(),
                });
                report_error(inner, reason);
                return;
            }
            tracing::warn!(set = %job.base_name, target = %worker.url, attempt = attempts, retry_in_s = wait.as_secs_f64(), error = %error, "upload failed; the set stays in the spool");
            lock(&worker.queue).push_back(Job {
                base_name: job.base_name,
                attempts,
                not_before: Instant::now() + wait,
            });
        }
    }
}

/// Puts a job back after its back-off.
fn requeue(inner: &Inner, worker: &Worker, job: Job) {
    let attempts = job.attempts + 1;
    let wait = backoff(
        inner.config.initial_backoff,
        inner.config.max_backoff,
        attempts,
    );
    lock(&worker.queue).push_back(Job {
        base_name: job.base_name,
        attempts,
        not_before: Instant::now() + wait,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let i = Duration::from_secs(10);
        let m = Duration::from_secs(100);
        let b1 = backoff(i, m, 1);
        assert!(b1 >= Duration::from_secs(8) && b1 <= Duration::from_secs(12));
        let b3 = backoff(i, m, 3);
        assert!(b3 >= Duration::from_secs(32) && b3 <= Duration::from_secs(48));
        assert!(backoff(i, m, 40) <= m);
    }
}
