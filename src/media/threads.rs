//! The media threads: one single-threaded tokio runtime per core, each with its
//! own epoll, running the relay tasks of the streams assigned to it. A thread
//! that wakes handles every socket that became ready in one pass and never
//! hands a stream to another thread, so a packet costs no cross-thread
//! wake-up; signalling and everything else stay on the main runtime, out of
//! the packets' way. Before a thread goes to sleep on its epoll it first
//! waits a short batching interval, so one wake-up serves every packet of
//! that interval instead of one wake-up per packet (each costs a context
//! switch and an epoll call; under load, most of a packet's cost).
//!
//! A new stream goes to the first thread that carries fewer than
//! [`FILL`] streams, and to the least loaded one once all carry that many.
//! A wake-up costs the same however few packets it finds, so a light load
//! packed onto one thread wakes half as often as one spread over two.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::runtime::Handle;

/// Upper bound on media threads, whatever the core count.
const MAX_THREADS: usize = 8;
/// How long a media thread gathers packets before it looks at its sockets
/// again: adds at most this much delay to a relayed packet (well inside
/// the jitter a phone's buffer absorbs), and bounds the thread's wake-ups
/// to about one per interval however many calls it carries.
const BATCH: std::time::Duration = std::time::Duration::from_micros(1000);
/// Streams a thread takes before the next one is used: a recorded call's
/// stream is 100 packets a second each way, so this many keep a thread at
/// about a fifth of a core with the userspace relay.
pub const FILL: usize = 256;

/// The media threads of this process.
pub struct MediaThreads {
    handles: Vec<Handle>,
    placement: Placement,
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
            placement: Placement::new(handles.len(), FILL),
            handles,
        }))
    }

    /// The thread the next stream goes to, and its place there (held for as
    /// long as the stream runs).
    pub fn pick(&self) -> (&Handle, Seat) {
        let seat = self.placement.take();
        (&self.handles[seat.thread], seat)
    }
}

/// How many streams each thread carries, and where the next one goes.
#[derive(Debug)]
pub struct Placement {
    carried: Vec<Arc<AtomicUsize>>,
    fill: usize,
}

/// A stream's place on a thread; gives it back when dropped.
#[derive(Debug)]
pub struct Seat {
    /// Index of the thread.
    pub thread: usize,
    carried: Arc<AtomicUsize>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.carried.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Placement {
    /// `threads` threads, each filled to `fill` streams before the next is used.
    pub fn new(threads: usize, fill: usize) -> Placement {
        Placement {
            carried: (0..threads.max(1)).map(|_| Arc::default()).collect(),
            fill,
        }
    }

    /// A seat on the first thread below the fill mark, else on the least
    /// loaded. Two streams starting at once may both land on a thread at the
    /// mark; it is a soft bound.
    pub fn take(&self) -> Seat {
        let load = |c: &Arc<AtomicUsize>| c.load(Ordering::Relaxed);
        let thread = self
            .carried
            .iter()
            .position(|c| load(c) < self.fill)
            .unwrap_or_else(|| {
                (0..self.carried.len())
                    .min_by_key(|&i| load(&self.carried[i]))
                    .unwrap_or(0)
            });
        let carried = self.carried[thread].clone();
        carried.fetch_add(1, Ordering::Relaxed);
        Seat { thread, carried }
    }
}

fn start_error(e: &io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("cannot start the media relay threads: {e} (check the process's thread limit)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_fill_one_thread_before_the_next_and_spread_once_all_are_full() {
        let p = Placement::new(2, 3);
        let mut first: Vec<Seat> = (0..3).map(|_| p.take()).collect();
        assert!(
            first.iter().all(|s| s.thread == 0),
            "a light load stays on one thread"
        );
        let fourth = p.take();
        assert_eq!(fourth.thread, 1, "the next thread once the first is full");
        first.pop();
        let refill = p.take();
        assert_eq!(refill.thread, 0, "a stream that ended makes room");
        let more: Vec<Seat> = (0..2).map(|_| p.take()).collect();
        assert!(more.iter().all(|s| s.thread == 1));
        // Both at the mark (3 and 3): the least loaded takes each next one.
        let over: Vec<Seat> = (0..4).map(|_| p.take()).collect();
        let over: Vec<usize> = over.iter().map(|s| s.thread).collect();
        let on_each = |t| over.iter().filter(|&&x| x == t).count();
        assert_eq!((on_each(0), on_each(1)), (2, 2), "{over:?}");
    }
}
