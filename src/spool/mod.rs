//! The spool: sealed sets wait in `data_dir/spool/<base name>/` until every
//! target of their profile has confirmed every file.
//!
//! The upload queue lives in the protocol database (table `uploads`): one row per
//! set and target with its state (`db::UploadState`), attempts, next retry
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
//!
//! Each instance sharing a database uploads only its own rows (`uploads.instance`):
//! the other instances' sets are in their spools. `adopt` takes over the
//! pending sets of an instance that is gone for good.
//!
//! Files: `intake` (a set enters), `recovery` (start-up), `worker` (uploads and
//! retries), `spare_folder` (delivered folders reused for entering sets), `cli`
//! (status text and the retry trigger), `adopt` (taking over).

mod adopt;
mod cli;
mod intake;
mod recovery;
mod spare_folder;
mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::db::{now_ms, Db, DbError, Record};
use crate::notify::Notifier;
use crate::storage::Secrets;

pub use adopt::{adopt, AdoptError, AdoptReport};
pub use cli::{request_retry, status_text};
pub use recovery::rebuild_queue;
use recovery::set_folders;
use spare_folder::SpareFolders;
use worker::{retry_all, watch_retry_trigger, worker, Worker};

/// Name of the entry marker inside each spooled set's folder (written once, never updated).
pub const MANIFEST: &str = "spool.json";
/// Prefix of a set's folder while it enters the spool.
const INCOMING_PREFIX: &str = ".incoming-";
/// Prefix of a delivered set's folder while it was removed (before spare folders; cleared at start).
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
    /// The runtime the spool was started on. Sets are enqueued on the sealing
    /// thread, which has no runtime: a worker started there is spawned through this.
    runtime: tokio::runtime::Handle,
    /// Delivered sets' folders kept for the next sets to enter through.
    spares: SpareFolders,
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

/// Makes a rename or removal in `dir` durable.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
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
    /// Must be called on a tokio runtime; the workers run on it, whichever thread
    /// enqueues later.
    pub fn start(
        config: SpoolConfig,
        db: Db,
        secrets: Secrets,
        notifier: Option<Notifier>,
    ) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(&config.dir).map_err(io("create", &config.dir))?;
        let config_dir = config.dir.clone();
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
            runtime: tokio::runtime::Handle::current(),
            spares: SpareFolders::new(&config_dir),
        });
        let spool = Spool {
            _guard: Arc::new(TaskGuard {
                inner: inner.clone(),
            }),
            inner,
        };
        spool.recover()?;
        let watcher = spool
            .inner
            .runtime
            .spawn(watch_retry_trigger(spool.inner.clone()));
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
