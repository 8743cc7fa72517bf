//! The media threads: one single-threaded tokio runtime per core, each with its
//! own epoll, running the relay tasks of the streams assigned to it. A thread
//! that wakes handles every socket that became ready in one pass and never
//! hands a stream to another thread, so a packet costs no cross-thread
//! wake-up; signalling and everything else stay on the main runtime, out of
//! the packets' way. Before a thread goes to sleep on its epoll it first
//! waits a short batching interval, so one wake-up serves every packet of
//! that interval instead of one wake-up per packet (each costs a context
//! switch and an epoll call; under load, most of a packet's cost).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::runtime::Handle;

/// Upper bound on media threads, whatever the core count.
const MAX_THREADS: usize = 8;
/// How long a media thread gathers packets before it looks at its sockets
/// again: adds at most this much delay to a relayed packet (well inside
/// the jitter a phone's buffer absorbs), and bounds the thread's wake-ups
/// to about one per interval however many calls it carries.
const BATCH: std::time::Duration = std::time::Duration::from_micros(1000);

/// The media threads of this process.
pub struct MediaThreads {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

impl MediaThreads {
    /// The process's media threads, started on first use.
    pub fn get() -> io::Result<&'static MediaThreads> {
        static THREADS: OnceLock<MediaThreads> = OnceLock::new();
        if let Some(t) = THREADS.get() {
            return Ok(t);
        }
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, MAX_THREADS);
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // Called only when nothing is left to run, right before epoll_wait.
                .on_thread_park(|| std::thread::sleep(BATCH))
                .build()
                .map_err(|e| start_error(&e))?;
            handles.push(rt.handle().clone());
            std::thread::Builder::new()
                .name(format!("callrec-media-{i}"))
                // A current-thread runtime runs its tasks while a thread blocks on it.
                .spawn(move || rt.block_on(std::future::pending::<()>()))
                .map_err(|e| start_error(&e))?;
        }
        // Two first callers racing both start threads; the loser's stay idle.
        Ok(THREADS.get_or_init(|| MediaThreads {
            handles,
            next: AtomicUsize::new(0),
        }))
    }

    /// The thread the next stream goes to (round robin).
    pub fn pick(&self) -> &Handle {
        &self.handles[self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len()]
    }
}

fn start_error(e: &io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("cannot start the media relay threads: {e} (check the process's thread limit)"),
    )
}
