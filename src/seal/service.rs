//! The sealing stage as a service: one thread owns the `Sealer` (and with it
//! the chain head), takes finished recordings from a channel in the order
//! calls end, seals what has queued up as one group, and hands each sealed
//! set to the next stage. Calls never wait for it.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::{SealRequest, SealedSet, Sealer};

/// A finished recording waiting to be sealed.
#[derive(Debug)]
pub struct SealJob {
    /// Folder holding the audio files.
    pub folder: PathBuf,
    /// Base name shared by the set's files.
    pub base_name: String,
    /// Metadata (the sealer adds the chain reference and writes `<base>.json`).
    pub metadata: serde_json::Value,
    /// Audio files (then the transcript, if any), inside `folder`.
    pub files: Vec<PathBuf>,
    /// Where the sealed set goes next (the profile's storage targets), passed to the sink.
    pub targets: Vec<String>,
}

/// Most sets sealed as one group. The fsyncs saved per set are those of the
/// folder and the chain head (three of seven in a large group, 2.75 at 16);
/// a longer group only delays its first set's hand-over to the spool and
/// makes a longer burst of file creations in the work folder, whose lock the
/// calls starting meanwhile need for their journals.
const MAX_GROUP: usize = 16;

/// Seals `jobs` as one group and hands each sealed set to `sink`.
fn seal_group(sealer: &mut Sealer, sink: &mut SealedSink, jobs: Vec<SealJob>) {
    if jobs.is_empty() {
        return;
    }
    let (requests, targets): (Vec<SealRequest>, Vec<(PathBuf, Vec<String>)>) = jobs
        .into_iter()
        .map(|j| {
            let request = SealRequest {
                folder: j.folder,
                base_name: j.base_name,
                metadata: j.metadata,
                files: j.files,
            };
            let folder = request.folder.clone();
            (request, (folder, j.targets))
        })
        .unzip();
    let names: Vec<String> = requests.iter().map(|r| r.base_name.clone()).collect();
    let results = sealer.seal_group(requests);
    let mut sealed = Vec::with_capacity(results.len());
    for ((result, (folder, targets)), name) in results.into_iter().zip(targets).zip(names) {
        match result {
            Ok(set) => {
                tracing::info!(set = %set.base_name, sha256 = %set.checksum_sha256, "recording sealed");
                sealed.push((set, targets));
            }
            Err(e) => tracing::error!(
                set = %name,
                "cannot seal recording in {}: {e}",
                folder.display()
            ),
        }
    }
    if !sealed.is_empty() {
        sink(sealed);
    }
}

/// What the sealing thread receives.
enum Msg {
    /// Seal this.
    Job(SealJob),
    /// Everything sent before has been sealed: stop.
    Stop,
}

/// The sealing thread has stopped (the proxy is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the sealing service has stopped; the recording stays unsealed in its folder")]
pub struct SealingStopped;

/// Hands jobs to the sealing thread; cheap to clone.
#[derive(Clone)]
pub struct SealSender(mpsc::Sender<Msg>);

impl SealSender {
    /// Queues a finished recording; fails only when the sealing thread is gone.
    pub fn send(&self, job: SealJob) -> Result<(), SealingStopped> {
        self.0.send(Msg::Job(job)).map_err(|_| SealingStopped)
    }
}

/// What happens to sets once they are sealed (the spool, or a test's
/// collector): the sets of one group, each with its targets, in chain order.
pub type SealedSink = Box<dyn FnMut(Vec<(SealedSet, Vec<String>)>) + Send>;

/// Handle to the sealing thread.
pub struct SealService {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
}

impl SealService {
    /// Starts the sealing thread; `sink` receives every sealed set.
    pub fn start(mut sealer: Sealer, mut sink: SealedSink) -> SealService {
        // Unbounded: one job per finished recording, bounded by the calls
        // admitted; a recording must never be dropped for want of room.
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread = std::thread::Builder::new()
            .name("callrec-seal".into())
            .spawn(move || {
                // Group commit: whatever has queued up while the last group was
                // being sealed is sealed together (see `Sealer::seal_group`).
                let mut stopping = false;
                while !stopping {
                    let Ok(first) = rx.recv() else { break };
                    let mut jobs = Vec::new();
                    let mut next = Some(first);
                    while let Some(msg) = next.take() {
                        match msg {
                            Msg::Job(j) => jobs.push(j),
                            Msg::Stop => stopping = true,
                        }
                        if !stopping && jobs.len() < MAX_GROUP {
                            next = rx.try_recv().ok();
                        }
                    }
                    seal_group(&mut sealer, &mut sink, jobs);
                }
            })
            .expect("cannot start the sealing thread");
        SealService {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// A sender for jobs; cheap to clone.
    pub fn sender(&self) -> SealSender {
        SealSender(self.tx.clone().expect("seal service running"))
    }
}

impl Drop for SealService {
    /// Seals everything queued so far, then stops the thread (other senders
    /// may still exist; jobs they send later are refused).
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
