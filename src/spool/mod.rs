//! The spool (R6.6): sealed sets wait in `data_dir/spool/<base name>/` until every
//! target of their profile has confirmed every file.
//!
//! A set enters atomically: its files are hard-linked (or copied and fsynced) into
//! `spool/.incoming-<base>/` together with `spool.json` (the set's targets and
//! which of them are done), the folder is renamed to `spool/<base>/`, and only then
//! are the original files removed. The manifest is the queue's durable state; the
//! protocol database mirrors every queued upload and attempt (`callrec uploads
//! status`). On start the spool is rescanned, so a restart loses nothing.
//!
//! One worker task per target URL uploads the sets queued for it, one at a time,
//! retrying failures with exponential back-off (capped, ±20 % jitter). Nothing here
//! runs on the media path: [`Spool::enqueue`] does file-system work only and is
//! meant for the sealing task.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::db::{now_ms, Db, Record};
use crate::notify::{Notifier, UploadFailure};
use crate::seal::SealedSet;
use crate::storage::{open_target, Secrets, Target, TargetError, UploadSet};

/// Name of the manifest inside each spooled set's folder.
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
    /// A manifest could not be read.
    #[error(
        "spool: manifest {path} is unreadable: {detail}; fix or remove the set's folder by hand"
    )]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError {
    let path = path.to_path_buf();
    move |source| SpoolError::Io { op, path, source }
}

/// One target of a spooled set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestTarget {
    /// The target URL.
    pub url: String,
    /// True once every file was confirmed there.
    pub done: bool,
}

/// The durable state of one spooled set (`spool/<base>/spool.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Base name of the set.
    pub base_name: String,
    /// SHA-256 of the set's checksum file.
    pub checksum_sha256: String,
    /// File names of the set, signature last.
    pub files: Vec<String>,
    /// The targets and which of them hold the set.
    pub targets: Vec<ManifestTarget>,
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
    wake: Notify,
}

struct Inner {
    config: SpoolConfig,
    db: Db,
    secrets: Secrets,
    notifier: Option<Notifier>,
    workers: Mutex<HashMap<String, Arc<Worker>>>,
    manifest_lock: Mutex<()>,
    stop: watch::Sender<bool>,
}

/// Aborts the worker tasks when the last [`Spool`] handle is dropped.
struct TaskGuard {
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stop: watch::Sender<bool>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

/// The upload spool; cheap to clone. Dropping the last clone stops its workers.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
    guard: Arc<TaskGuard>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.inner.config.dir)
            .finish()
    }
}

fn write_manifest(folder: &Path, m: &Manifest) -> Result<(), SpoolError> {
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

fn read_manifest(folder: &Path) -> Result<Manifest, SpoolError> {
    let path = folder.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(io("read", &path))?;
    serde_json::from_slice(&bytes).map_err(|e| SpoolError::Manifest {
        path,
        detail: e.to_string(),
    })
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
    /// Opens the spool folder, resumes every pending set found there, and starts the workers.
    /// Needs a tokio runtime.
    pub fn start(
        config: SpoolConfig,
        db: Db,
        secrets: Secrets,
        notifier: Option<Notifier>,
    ) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(&config.dir).map_err(io("create", &config.dir))?;
        let (stop, _) = watch::channel(false);
        let spool = Spool {
            inner: Arc::new(Inner {
                config,
                db,
                secrets,
                notifier,
                workers: Mutex::new(HashMap::new()),
                manifest_lock: Mutex::new(()),
                stop: stop.clone(),
            }),
            guard: Arc::new(TaskGuard {
                tasks: Mutex::new(Vec::new()),
                stop,
            }),
        };
        spool.recover()?;
        let watcher = tokio::spawn(watch_retry_trigger(spool.inner.clone()));
        spool
            .guard
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(watcher);
        Ok(spool)
    }

    /// Starts the workers of `targets` now (instead of at their first set) and logs each
    /// target's state at INFO (R8.2).
    pub fn add_targets(&self, targets: &[String]) {
        for url in targets {
            let worker = self.worker(url);
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

    fn recover(&self) -> Result<(), SpoolError> {
        let dir = self.inner.config.dir.clone();
        let mut resumed = 0usize;
        let mut in_spool = std::collections::HashSet::new();
        let entries = std::fs::read_dir(&dir).map_err(io("list", &dir))?;
        for entry in entries {
            let entry = entry.map_err(io("list", &dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if !path.is_dir() {
                continue;
            }
            if name.starts_with(DELIVERED_PREFIX) {
                // Every target had confirmed this set; only the removal was interrupted.
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            if name.starts_with(INCOMING_PREFIX) {
                // Entering was interrupted before the rename: the originals are still in place.
                tracing::warn!(path = %path.display(), "spool: removing an interrupted entry (its source files were kept)");
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            let manifest = match read_manifest(&path) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(error = %e, "spool: skipping a folder without a usable manifest");
                    self.inner.db.send(Record::Error {
                        at_ms: now_ms(),
                        component: "spool".into(),
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            in_spool.insert(manifest.base_name.clone());
            for t in manifest.targets.iter().filter(|t| !t.done) {
                self.queue(&t.url, &manifest.base_name);
            }
            resumed += 1;
        }
        // Cross-check: uploads the database calls pending whose set is not in the spool.
        match self.inner.db.pending_uploads() {
            Ok(rows) => {
                for row in rows.iter().filter(|r| !in_spool.contains(&r.base_name)) {
                    let message = format!(
                        "set {} is pending for {} in the database but not in the spool {} (delivered just before a restart, or removed by hand); it is not uploaded again",
                        row.base_name,
                        row.target,
                        dir.display()
                    );
                    tracing::error!("{message}");
                    self.inner.db.send(Record::Error {
                        at_ms: now_ms(),
                        component: "spool".into(),
                        message,
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "spool: cannot cross-check pending uploads with the database")
            }
        }
        if resumed > 0 {
            tracing::info!(sets = resumed, dir = %dir.display(), "spool: resuming pending uploads");
        }
        Ok(())
    }

    /// Takes a sealed set into the spool for `targets` (URLs) and queues its uploads.
    ///
    /// The set's files are moved (hard link + remove, or copy + remove across file
    /// systems); a set already in `spool/<base>/` stays where it is. Blocks on
    /// file-system work: call it from the sealing task, not the media path.
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
        let mut seen = std::collections::HashSet::new();
        let manifest = Manifest {
            base_name: set.base_name.clone(),
            checksum_sha256: set.checksum_sha256.clone(),
            files: names.clone(),
            targets: targets
                .iter()
                .filter(|t| seen.insert(t.to_string()))
                .map(|t| ManifestTarget {
                    url: t.clone(),
                    done: false,
                })
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
            write_manifest(&dest, &manifest)?;
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
            write_manifest(&staging, &manifest)?;
            std::fs::rename(&staging, &dest).map_err(io("rename", &dest))?;
            sync_dir(spool_dir);
            for src in &upload.files {
                if let Err(e) = std::fs::remove_file(src) {
                    tracing::warn!(file = %src.display(), error = %e, "spool: original file not removed");
                }
            }
        }
        for t in &manifest.targets {
            self.inner.db.send(Record::UploadQueued {
                base_name: set.base_name.clone(),
                target: t.url.clone(),
                at_ms: now_ms(),
            });
            self.queue(&t.url, &set.base_name);
        }
        tracing::info!(set = %set.base_name, targets = manifest.targets.len(), "spool: set queued for upload");
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

    /// Sets still waiting for at least one target (read from the manifests).
    pub fn pending(&self) -> Vec<PendingSet> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.inner.config.dir) else {
            return out;
        };
        for entry in entries.flatten() {
            if let Ok(m) = read_manifest(&entry.path()) {
                out.push(PendingSet {
                    base_name: m.base_name,
                    waiting_for: m
                        .targets
                        .into_iter()
                        .filter(|t| !t.done)
                        .map(|t| t.url)
                        .collect(),
                });
            }
        }
        out.sort_by(|a, b| a.base_name.cmp(&b.base_name));
        out
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

    /// Retries every waiting upload now, without waiting for its back-off (`callrec uploads retry`).
    pub fn retry_now(&self) {
        retry_all(&self.inner);
    }

    /// Puts a set on a target's queue, starting the target's worker if needed.
    fn queue(&self, url: &str, base_name: &str) {
        let worker = self.worker(url);
        {
            let mut q = worker.queue.lock().unwrap_or_else(|p| p.into_inner());
            if !q.iter().any(|j| j.base_name == base_name) {
                q.push_back(Job {
                    base_name: base_name.to_string(),
                    attempts: 0,
                    not_before: Instant::now(),
                });
            }
        }
        worker.wake.notify_one();
    }

    /// The worker of a target URL, started on first use.
    fn worker(&self, url: &str) -> Arc<Worker> {
        {
            let mut workers = self.inner.workers.lock().unwrap_or_else(|p| p.into_inner());
            match workers.get(url) {
                Some(w) => w.clone(),
                None => {
                    let target = open_target(url, &self.inner.secrets);
                    if let Err(e) = &target {
                        tracing::error!(error = %e, "spool: target unusable; its uploads will fail until the configuration is fixed");
                    }
                    let w = Arc::new(Worker {
                        url: url.to_string(),
                        target,
                        queue: Mutex::new(VecDeque::new()),
                        wake: Notify::new(),
                    });
                    workers.insert(url.to_string(), w.clone());
                    let task = tokio::spawn(run_worker(self.inner.clone(), w.clone()));
                    self.guard
                        .tasks
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(task);
                    w
                }
            }
        }
    }
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
    let pending = rows.iter().filter(|r| r.state != "done").count();
    out.push_str(&format!("{pending} of {} uploads pending\n", rows.len()));
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
            retry_all(&inner);
        }
    }
}

/// Makes every queued job due now and wakes the workers.
fn retry_all(inner: &Inner) {
    let workers: Vec<_> = inner
        .workers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    for w in workers {
        for job in w.queue.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
            job.not_before = Instant::now();
        }
        w.wake.notify_one();
    }
}

/// Marks `url` done for a set; removes the set from the spool when every target is done.
fn mark_done(inner: &Inner, base_name: &str, url: &str) -> Result<bool, SpoolError> {
    let _lock = inner
        .manifest_lock
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let folder = inner.config.dir.join(base_name);
    let mut m = read_manifest(&folder)?;
    for t in m.targets.iter_mut().filter(|t| t.url == url) {
        t.done = true;
    }
    if m.targets.iter().all(|t| t.done) {
        // Rename first: a crash mid-way leaves no half set that looks pending.
        let gone = inner
            .config
            .dir
            .join(format!("{DELIVERED_PREFIX}{base_name}"));
        std::fs::rename(&folder, &gone).map_err(io("rename", &folder))?;
        sync_dir(&inner.config.dir);
        std::fs::remove_dir_all(&gone).map_err(io("remove", &gone))?;
        Ok(true)
    } else {
        write_manifest(&folder, &m)?;
        Ok(false)
    }
}

async fn attempt(
    inner: &Inner,
    worker: &Worker,
    base_name: &str,
) -> Result<(UploadSet, Manifest), (Option<UploadSet>, TargetError)> {
    let folder = inner.config.dir.join(base_name);
    let manifest = {
        let _lock = inner
            .manifest_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        read_manifest(&folder)
    };
    let manifest = manifest.map_err(|e| {
        (
            None,
            TargetError::Local {
                target: worker.url.clone(),
                path: folder.display().to_string(),
                detail: e.to_string(),
            },
        )
    })?;
    let files = manifest.files.iter().map(|n| folder.join(n)).collect();
    let set = UploadSet::new(base_name, files);
    let target = match &worker.target {
        Ok(t) => t.clone(),
        Err(e) => return Err((Some(set), e.clone())),
    };
    match tokio::time::timeout(inner.config.attempt_timeout, target.put(&set)).await {
        Ok(Ok(())) => Ok((set, manifest)),
        Ok(Err(e)) => Err((Some(set), e)),
        Err(_) => Err((
            Some(set),
            TargetError::Timeout {
                target: worker.url.clone(),
                seconds: inner.config.attempt_timeout.as_secs(),
            },
        )),
    }
}

async fn run_worker(inner: Arc<Inner>, worker: Arc<Worker>) {
    let mut stop = inner.stop.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        // The job that is due first.
        let next = {
            let q = worker.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.iter().map(|j| j.not_before).min()
        };
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
            let mut q = worker.queue.lock().unwrap_or_else(|p| p.into_inner());
            let i = q
                .iter()
                .enumerate()
                .min_by_key(|(_, j)| j.not_before)
                .map(|(i, _)| i);
            match i.and_then(|i| q.remove(i)) {
                Some(j) => j,
                None => continue,
            }
        };
        let started_ms = now_ms();
        let result = attempt(&inner, &worker, &job.base_name).await;
        let ended_ms = now_ms();
        match result {
            Ok((set, manifest)) => {
                inner.db.send(Record::UploadAttempt {
                    base_name: job.base_name.clone(),
                    target: worker.url.clone(),
                    started_ms,
                    ended_ms,
                    files: manifest.files.len() as u32,
                    bytes: set.total_bytes(),
                    error: None,
                });
                match mark_done(&inner, &job.base_name, &worker.url) {
                    Ok(true) => {
                        tracing::info!(set = %job.base_name, target = %worker.url, "upload confirmed; every target holds the set, removed from the spool")
                    }
                    Ok(false) => {
                        tracing::info!(set = %job.base_name, target = %worker.url, "upload confirmed; other targets pending")
                    }
                    Err(e) => {
                        tracing::error!(set = %job.base_name, error = %e, "spool: upload confirmed but the manifest could not be updated")
                    }
                }
            }
            Err((set, error)) => {
                let attempts = job.attempts + 1;
                let wait = backoff(
                    inner.config.initial_backoff,
                    inner.config.max_backoff,
                    attempts,
                );
                tracing::warn!(set = %job.base_name, target = %worker.url, attempt = attempts, retry_in_s = wait.as_secs_f64(), error = %error, "upload failed; the set stays in the spool");
                let files: Vec<String> = set
                    .as_ref()
                    .map(|s| {
                        s.files
                            .iter()
                            .map(|f| {
                                f.file_name()
                                    .map(|n| n.to_string_lossy().to_string())
                                    .unwrap_or_default()
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                inner.db.send(Record::UploadAttempt {
                    base_name: job.base_name.clone(),
                    target: worker.url.clone(),
                    started_ms,
                    ended_ms,
                    files: files.len() as u32,
                    bytes: set.as_ref().map(|s| s.total_bytes()).unwrap_or(0),
                    error: Some(error.to_string()),
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
                    // The set's folder or manifest is gone: nothing left to retry.
                    continue;
                }
                worker
                    .queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back(Job {
                        base_name: job.base_name,
                        attempts,
                        not_before: Instant::now() + wait,
                    });
            }
        }
    }
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
