//! The transcription workers: a queue of sealed sets (kept in the database,
//! resumed at start) and at most N worker threads at a lowered priority, each
//! with its own engine. The sealing thread only links the set's files into a
//! staging folder with a job file and queues a row
//! ([`TranscribeService::on_sealed`]); the audio is sealed and spooled without
//! waiting for any of this. A start resumes the rows and the staged sets
//! whose row was lost.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::channels::read_parties;
use super::document::{Made, Transcript};
use super::queue::{Job, QueueChange};
use super::{Segment, TranscribeError, TranscribeSettings, TRANSCRIPT_KIND, TRANSCRIPT_TXT_SUFFIX};
use crate::db::{Db, Record};
use crate::recorder::failure::{FailureReason, FailureReporter, RecordingFailure};
use crate::seal::{Identity, SealedSet, CHECKSUM_SUFFIX, SIGNATURE_SUFFIX};

/// What turns one party's samples into segments (the engine; tests give their own).
pub trait Transcriber {
    /// Mono samples of one party at `sample_rate`, in `language`.
    fn transcribe(
        &self,
        samples: &[i16],
        sample_rate: u32,
        language: &str,
    ) -> Result<Vec<Segment>, TranscribeError>;
}

impl Transcriber for super::Engine {
    fn transcribe(
        &self,
        samples: &[i16],
        sample_rate: u32,
        language: &str,
    ) -> Result<Vec<Segment>, TranscribeError> {
        super::Engine::transcribe(self, samples, sample_rate, language)
    }
}

/// Makes a worker's engine, on the worker's thread (so it runs at its priority).
pub type Loader = Arc<dyn Fn() -> Result<Box<dyn Transcriber>, String> + Send + Sync>;
/// Hands a sealed transcript addendum to the spool for the given targets.
pub type Deliver = Arc<dyn Fn(&SealedSet, &[String]) -> Result<(), String> + Send + Sync>;

/// What the workers need besides the engine.
pub struct Deps {
    /// The protocol database (queue rows, word index).
    pub db: Db,
    /// Signs the addenda (the instance's sealing key).
    pub identity: Identity,
    /// Where a failed transcript is reported (log, metric, database, mail).
    pub failures: FailureReporter,
    /// Where a sealed addendum goes.
    pub deliver: Deliver,
    /// Folder below which each queued set gets a staging folder of links.
    pub staging: PathBuf,
    /// Local folders where a set is looked for when its staging folder is gone.
    pub roots: Vec<PathBuf>,
    /// The model's name and the engine settings, written into each transcript.
    pub model: String,
    /// See `model`.
    pub engine: serde_json::Value,
}

struct Inner {
    queue: Mutex<VecDeque<Job>>,
    wake: Condvar,
    stop: AtomicBool,
    /// Set once a worker could not load its engine: reported once, not per worker.
    load_failed: AtomicBool,
    done: AtomicU64,
    failed: AtomicU64,
    deps: Deps,
}

/// The running workers; dropping it stops them after the set each is working on.
pub struct TranscribeService {
    inner: Arc<Inner>,
    /// Profile name → language, for the profiles with `transcribe = true`.
    languages: HashMap<String, String>,
}

impl TranscribeService {
    /// Starts `settings.jobs` workers (at least one) and resumes the queue kept in the database.
    pub fn start(
        settings: &TranscribeSettings,
        languages: HashMap<String, String>,
        loader: Loader,
        deps: Deps,
    ) -> TranscribeService {
        let mut resumed = super::queue::pending(&deps.db).unwrap_or_else(|e| {
            tracing::error!("transcription: cannot read the queue: {e}");
            Vec::new()
        });
        // Instances sharing one database each resume only their own sets.
        resumed.retain(|j| j.folder.starts_with(&deps.staging));
        if !resumed.is_empty() {
            tracing::info!(sets = resumed.len(), "transcription: resuming the queue");
        }
        // Staged, but the process ended before the queue row was committed.
        let unqueued = super::staged::unqueued(&deps.db, &deps.staging);
        for job in &unqueued.jobs {
            tracing::warn!(set = %job.base_name, "transcription: staged before the last stop but not in the queue; queued again");
            deps.db
                .send(Record::Transcript(QueueChange::Queued(job.clone())));
        }
        resumed.extend(unqueued.jobs);
        let inner = Arc::new(Inner {
            queue: Mutex::new(resumed.into()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            load_failed: AtomicBool::new(false),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            deps,
        });
        for (folder, e) in unqueued.unreadable {
            // Left in place: callrec cannot tell what it is; the set's own
            // files are in the recordings and at its targets, not only here.
            let base = folder.file_name().map(|n| n.to_string_lossy().into_owned());
            inner.report(
                base.as_deref(),
                None,
                format!(
                    "a set staged for transcription in {} cannot be queued again: {e}; it is not transcribed; the folder holds only links and is left for inspection (delete it once checked)",
                    folder.display()
                ),
            );
        }
        for i in 0..settings.jobs.max(1) {
            let (inner, loader, nice) = (inner.clone(), loader.clone(), settings.nice);
            let spawned = std::thread::Builder::new()
                .name(format!("callrec-transcribe-{i}"))
                .spawn(move || worker(&inner, &loader, nice));
            if let Err(e) = spawned {
                tracing::error!("transcription: cannot start worker thread: {e}");
            }
        }
        TranscribeService { inner, languages }
    }

    /// Queues a set just sealed when its profile transcribes: links its files
    /// into a staging folder (no copy, no fsync) and writes the queue row.
    /// Called on the sealing thread, before the set goes to the spool.
    pub fn on_sealed(&self, set: &SealedSet, targets: &[String]) {
        let Some(profile) = set.position.as_ref().map(|p| p.profile.clone()) else {
            return;
        };
        let Some(language) = self.languages.get(&profile) else {
            return;
        };
        let job = Job {
            base_name: set.base_name.clone(),
            folder: self.inner.deps.staging.join(&set.base_name),
            profile: Some(profile),
            language: language.clone(),
            targets: targets.to_vec(),
            queued_ms: crate::db::now_ms(),
        };
        let folder = &job.folder;
        // The job file first: a folder with links always says what to do with them.
        let staged = super::staged::write_job(&job).and_then(|()| link_files(&set.files, folder));
        if let Err(e) = staged {
            self.inner.report(
                Some(&set.base_name),
                None,
                format!(
                    "cannot stage the set for transcription in {}: {e}",
                    folder.display()
                ),
            );
            return;
        }
        self.inner
            .deps
            .db
            .send(Record::Transcript(QueueChange::Queued(job.clone())));
        self.inner
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(job);
        self.inner.wake.notify_one();
    }

    /// Transcripts finished and failed since start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.inner.done.load(Ordering::Relaxed),
            self.inner.failed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for TranscribeService {
    fn drop(&mut self) {
        // Workers are not joined: a transcription may run for minutes; what is
        // unfinished stays queued in the database for the next start.
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.wake.notify_all();
    }
}

impl Inner {
    /// Logs, counts, keeps and mails a transcription failure of `base`.
    fn report(&self, base: Option<&str>, call_id: Option<String>, detail: String) {
        self.failures_of().report(RecordingFailure::now(
            call_id.as_deref().unwrap_or("-"),
            base,
            FailureReason::TranscriptionFailed,
            detail,
        ));
    }

    fn failures_of(&self) -> &FailureReporter {
        &self.deps.failures
    }

    /// The next job, or `None` once stopping.
    fn next(&self) -> Option<Job> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(j) = q.pop_front() {
                return Some(j);
            }
            q = self
                .wake
                .wait_timeout(q, std::time::Duration::from_secs(5))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Lowers the calling thread's priority to `nice` (Linux: nice is per thread,
/// and threads the engine starts from here inherit it).
fn lower_priority(nice: i32) {
    // SAFETY: gettid and setpriority on our own thread touch no memory of ours.
    let r = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS as _, tid, nice)
    };
    if r != 0 {
        tracing::warn!(nice, error = %std::io::Error::last_os_error(), "transcription: cannot lower the worker's priority");
    }
}

fn worker(inner: &Inner, loader: &Loader, nice: i32) {
    lower_priority(nice);
    let engine = match loader() {
        Ok(e) => e,
        Err(e) => {
            if !inner.load_failed.swap(true, Ordering::Relaxed) {
                inner.report(
                    None,
                    None,
                    format!("transcription is off until this is fixed and callrec restarted: {e}; recordings are made, sealed and uploaded as usual, their transcripts wait in the queue"),
                );
            }
            return;
        }
    };
    while let Some(job) = inner.next() {
        let span = tracing::info_span!("transcript", set = %job.base_name);
        let _g = span.enter();
        match transcribe_set(inner, engine.as_ref(), &job) {
            Ok(addendum) => {
                inner.done.fetch_add(1, Ordering::Relaxed);
                tracing::info!(sha256 = %addendum.checksum_sha256, "transcript sealed and spooled");
            }
            Err((call_id, detail)) => {
                inner.failed.fetch_add(1, Ordering::Relaxed);
                inner.deps.db.send(Record::Transcript(QueueChange::Failed {
                    base_name: job.base_name.clone(),
                    detail: detail.clone(),
                    at_ms: crate::db::now_ms(),
                }));
                inner.report(Some(&job.base_name), call_id, detail);
            }
        }
        // The staging links are not needed any more (the spool has its own).
        let _ = std::fs::remove_dir_all(&job.folder);
    }
}

/// Transcribes one set and hands its sealed addendum to the spool; on error
/// the set's Call-ID (when known) and what failed.
fn transcribe_set(
    inner: &Inner,
    engine: &dyn Transcriber,
    job: &Job,
) -> Result<SealedSet, (Option<String>, String)> {
    let deps = &inner.deps;
    let base = &job.base_name;
    let sums = job.folder.join(format!("{base}{CHECKSUM_SUFFIX}"));
    // The signature is linked last: without it the staging was cut short.
    if !job
        .folder
        .join(format!("{base}{CHECKSUM_SUFFIX}{SIGNATURE_SUFFIX}"))
        .is_file()
    {
        restage(base, &deps.roots, &job.folder).map_err(|e| (None, e))?;
    }
    // Only what verifies is transcribed and signed: a transcript vouches for the audio it names.
    let problems = crate::seal::verify_set(&sums, None);
    if let Some(p) = problems.first() {
        return Err((
            None,
            format!("the set does not verify, not transcribed: {p}"),
        ));
    }
    if let Some((addendum, text)) = super::staged::sealed_transcript(&job.folder, base) {
        tracing::info!(
            "transcript sealed before the last stop; handed on as it is, not made twice"
        );
        return hand_on(deps, job, addendum, &text).map_err(|e| (None, e));
    }
    let json = job.folder.join(format!("{base}.json"));
    let meta: serde_json::Value = std::fs::read(&json)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| (None, format!("cannot read {}: {e}", json.display())))?;
    let call_id = meta
        .pointer("/call_ids/caller_leg")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let fail = |d: String| (call_id.clone(), d);
    let parties = read_parties(&job.folder, &meta).map_err(|e| fail(e.to_string()))?;
    let mut per_party = Vec::with_capacity(parties.len());
    for p in &parties {
        let segments = engine
            .transcribe(&p.samples, p.sample_rate, &job.language)
            .map_err(|e| fail(format!("speech engine: {e}")))?;
        per_party.push((p.party, segments));
    }
    let made = Made {
        language: job.language.clone(),
        model: deps.model.clone(),
        engine: deps.engine.clone(),
    };
    let transcript = Transcript::new(base, made, per_party);
    let txt_name = format!(
        "{}{TRANSCRIPT_TXT_SUFFIX}",
        crate::seal::addendum_base(base, TRANSCRIPT_KIND)
    );
    let addendum = crate::seal::seal_addendum(
        &deps.identity,
        &job.folder,
        base,
        TRANSCRIPT_KIND,
        transcript.to_json(),
        &[(txt_name, transcript.to_text().into_bytes())],
    )
    .map_err(|e| fail(format!("cannot seal the transcript: {e}")))?;
    hand_on(deps, job, addendum, &transcript.all_text()).map_err(fail)
}

/// Hands a sealed transcript addendum to the spool and marks the job done,
/// with the transcript's words for the index.
fn hand_on(deps: &Deps, job: &Job, addendum: SealedSet, text: &str) -> Result<SealedSet, String> {
    (deps.deliver)(&addendum, &job.targets)
        .map_err(|e| format!("cannot spool the transcript: {e}"))?;
    deps.db.send(Record::Transcript(QueueChange::Done {
        base_name: job.base_name.clone(),
        checksum_sha256: addendum.checksum_sha256.clone(),
        words: super::search::words(text),
        at_ms: crate::db::now_ms(),
    }));
    Ok(addendum)
}

/// Hard-links `files` into `folder` (created); these are links, not copies,
/// so staging costs the sealing thread no data I/O.
fn link_files(files: &[PathBuf], folder: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(folder)?;
    for f in files {
        let Some(name) = f.file_name() else { continue };
        let to = folder.join(name);
        let _ = std::fs::remove_file(&to);
        std::fs::hard_link(f, &to)?;
    }
    Ok(())
}

/// Links the files of a set found in a local folder into `folder`, for a job
/// whose staging folder was lost (a crash before the links reached the disk).
fn restage(base: &str, roots: &[PathBuf], folder: &Path) -> Result<(), String> {
    let sums = crate::archive::locate(base, roots).ok_or_else(|| {
        format!(
            "the set's files are neither in {} nor in a local recordings folder",
            folder.display()
        )
    })?;
    let files = crate::archive::set_files(&sums).map_err(|e| e.to_string())?;
    let own: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| {
            let n = f.file_name().unwrap_or_default().to_string_lossy();
            !n.starts_with(&crate::seal::addendum_base(base, TRANSCRIPT_KIND))
        })
        .collect();
    link_files(&own, folder)
        .or_else(|_| {
            // Another file system: copy instead (off the call path, in the worker).
            std::fs::create_dir_all(folder)?;
            for f in &own {
                std::fs::copy(f, folder.join(f.file_name().unwrap_or_default()))?;
            }
            Ok::<(), std::io::Error>(())
        })
        .map_err(|e| format!("cannot link the set from {}: {e}", sums.display()))
}
