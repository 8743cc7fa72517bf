//! The sealing stage as a service: one thread owns the `Sealer` (and with it
//! the chain head), takes finished recordings from a channel in the order
//! calls end, seals them, and hands each sealed set to the next stage. Calls
//! never wait for it.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::{SealedSet, Sealer};

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
}

/// What happens to a set once it is sealed (the spool, or a test's collector).
pub type SealedSink = Box<dyn FnMut(SealedSet) + Send>;

/// Handle to the sealing thread.
pub struct SealService {
    tx: Option<mpsc::Sender<SealJob>>,
    thread: Option<JoinHandle<()>>,
}

impl SealService {
    /// Starts the sealing thread; `sink` receives every sealed set.
    pub fn start(mut sealer: Sealer, mut sink: SealedSink) -> SealService {
        let (tx, rx) = mpsc::channel::<SealJob>();
        let thread = std::thread::Builder::new()
            .name("callrec-seal".into())
            .spawn(move || {
                for job in rx {
                    match sealer.seal(&job.folder, &job.base_name, job.metadata, &job.files) {
                        Ok(set) => {
                            tracing::info!(set = %set.base_name, sha256 = %set.checksum_sha256, "recording sealed");
                            sink(set);
                        }
                        Err(e) => tracing::error!(
                            set = %job.base_name,
                            "cannot seal recording in {}: {e}",
                            job.folder.display()
                        ),
                    }
                }
            })
            .expect("cannot start the sealing thread");
        SealService {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// A sender for jobs; cheap to clone.
    pub fn sender(&self) -> mpsc::Sender<SealJob> {
        self.tx.clone().expect("seal service running")
    }
}

impl Drop for SealService {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
