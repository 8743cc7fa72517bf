//! Upload workers: one task per target URL takes that target's jobs in due
//! order, checks the database still lists each as pending, uploads, records the
//! attempt, and retries failures with back-off. A confirmation is committed
//! before the set's folder is removed.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use super::{
    backoff, io, lock, queue_err, report_error, Inner, SpoolError, MANIFEST, RETRY_TRIGGER,
    TRIGGER_POLL,
};
use crate::db::{now_ms, Record, UploadState};
use crate::notify::UploadFailure;
use crate::storage::{open_target, Target, TargetError, UploadSet};

#[derive(Debug, Clone)]
pub(super) struct Job {
    pub(super) base_name: String,
    pub(super) attempts: u32,
    pub(super) not_before: Instant,
}

pub(super) struct Worker {
    pub(super) url: String,
    pub(super) target: Result<Arc<dyn Target>, TargetError>,
    pub(super) queue: Mutex<VecDeque<Job>>,
    /// The set being uploaded right now, so a reload does not queue it twice.
    pub(super) current: Mutex<Option<String>>,
    pub(super) wake: Notify,
}

/// Puts a set on a target's queue, starting the target's worker if needed.
pub(super) fn queue_job(
    inner: &Arc<Inner>,
    url: &str,
    base_name: &str,
    attempts: u32,
    not_before: Instant,
) {
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
pub(super) fn worker(inner: &Arc<Inner>, url: &str) -> Arc<Worker> {
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
    // Through the spool's runtime: this runs on the sealing thread too, which has none.
    let task = inner.runtime.spawn(run_worker(inner.clone(), w.clone()));
    lock(&inner.tasks).push(task);
    w
}

/// Retries everything when [`RETRY_TRIGGER`] appears in the spool folder.
pub(super) async fn watch_retry_trigger(inner: Arc<Inner>) {
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
pub(super) fn retry_all(inner: &Arc<Inner>) {
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

/// Takes a delivered set's folder out of the spool (kept as a spare folder).
/// No folder fsync: the database already says every target holds the set,
/// and a folder that reappears after a crash is removed at the next start.
pub(super) fn remove_delivered(inner: &Inner, base_name: &str) -> Result<(), SpoolError> {
    let folder = inner.config.dir.join(base_name);
    inner.spares.retire(&folder).map_err(io("remove", &folder))
}

/// Commits a confirmed attempt; removes the set from the spool when no upload of it
/// is pending any more. True when removed.
pub(super) fn mark_done(
    inner: &Inner,
    base_name: &str,
    confirmed: Record,
) -> Result<bool, SpoolError> {
    let _lock = lock(&inner.set_lock);
    inner
        .db
        .write_sync(vec![confirmed])
        .map_err(queue_err(base_name))?;
    settle(inner, base_name)
}

/// Removes a set from the spool when every upload row of it is done; true when
/// removed. The caller holds `set_lock`.
pub(super) fn settle(inner: &Inner, base_name: &str) -> Result<bool, SpoolError> {
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
pub(super) enum Outcome {
    /// The database no longer lists this upload as pending: nothing to do.
    Skipped,
    /// Every file is confirmed on the target.
    Confirmed(UploadSet),
    /// The attempt failed; `None` when the set's files are gone from the spool.
    Failed(Option<UploadSet>, TargetError),
}

pub(super) async fn attempt(inner: &Arc<Inner>, worker: &Worker, base_name: &str) -> Outcome {
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

/// The set's files in its spool folder: every regular file but the marker and hidden ones.
pub(super) fn set_files(folder: &Path) -> std::io::Result<Vec<PathBuf>> {
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

/// File names of a set, for mails.
pub(super) fn names_of(set: Option<&UploadSet>) -> Vec<String> {
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

pub(super) async fn run_worker(inner: Arc<Inner>, worker: Arc<Worker>) {
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
pub(super) async fn handle(inner: &Arc<Inner>, worker: &Worker, job: Job) {
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
pub(super) fn requeue(inner: &Inner, worker: &Worker, job: Job) {
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
