//! The media threads: one per core, each an event loop over its own epoll
//! that owns the relay state of the streams assigned to it. A thread that
//! wakes hands every socket that became ready straight to its stream's
//! state, in one pass, and never hands a stream to another thread, so a
//! packet costs no cross-thread wake-up and no task machinery; signalling
//! and everything else stay on the tokio runtime, out of the packets' way.
//! Before a thread goes to sleep on its epoll it first waits a short
//! batching interval, so one wake-up serves every packet of that interval
//! instead of one wake-up per packet (each costs a context switch and an
//! epoll call; under load, most of a packet's cost).
//!
//! The call talks to its stream through the thread's queue (start, changes,
//! stop), and the thread's waker makes it look at the queue at once. The
//! queue is read before the sockets in every turn, so an SDP sent before a
//! packet arrived is applied before that packet is looked at.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use tracing::error;

use super::{Control, Drained, Relay};

/// Upper bound on media threads, whatever the core count.
const MAX_THREADS: usize = 8;
/// How long a media thread gathers packets before it looks at its sockets
/// again: adds at most this much delay to a relayed packet (well inside
/// the jitter a phone's buffer absorbs), and bounds the thread's wake-ups
/// to about one per interval however many calls it carries.
const BATCH: Duration = Duration::from_micros(1000);
/// The token of the waker; a socket's token is its stream's id shifted
/// left by two, with its side and kind in the two low bits.
const WAKE: Token = Token(usize::MAX);

/// What the call side asks of a media thread.
enum Message {
    Start(u64, Box<Relay>),
    Control(u64, Control),
    Stop(u64),
}

/// One media thread as the call side sees it.
#[derive(Debug)]
pub(super) struct MediaThread {
    queue: mpsc::Sender<Message>,
    waker: Waker,
    registry: Registry,
}

/// The media threads of this process.
pub(super) struct MediaThreads {
    threads: Vec<MediaThread>,
    next: AtomicUsize,
}

impl MediaThreads {
    /// The process's media threads, started on first use.
    pub(super) fn get() -> io::Result<&'static MediaThreads> {
        static THREADS: OnceLock<MediaThreads> = OnceLock::new();
        if let Some(t) = THREADS.get() {
            return Ok(t);
        }
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, MAX_THREADS);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let poll = Poll::new().map_err(|e| start_error(&e))?;
            let waker = Waker::new(poll.registry(), WAKE).map_err(|e| start_error(&e))?;
            let registry = poll.registry().try_clone().map_err(|e| start_error(&e))?;
            let (queue, inbox) = mpsc::channel();
            std::thread::Builder::new()
                .name(format!("callrec-media-{i}"))
                .spawn(move || serve(poll, inbox))
                .map_err(|e| start_error(&e))?;
            threads.push(MediaThread {
                queue,
                waker,
                registry,
            });
        }
        // Two first callers racing both start threads; the loser's stay idle.
        Ok(THREADS.get_or_init(|| MediaThreads {
            threads,
            next: AtomicUsize::new(0),
        }))
    }

    /// The thread the next stream goes to (round robin).
    pub(super) fn pick(&self) -> &MediaThread {
        &self.threads[self.next.fetch_add(1, Ordering::Relaxed) % self.threads.len()]
    }
}

impl MediaThread {
    /// Hands a stream to this thread; returns the id its messages carry.
    pub(super) fn start(&self, relay: Relay) -> io::Result<u64> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let fds = relay.raw_fds();
        // Queued before its sockets are registered: an event for them can
        // only come after the thread can find the stream. The sockets stay
        // open meanwhile, as only `stop` below ends the stream.
        self.send(Message::Start(id, Box::new(relay)));
        for (side, pair) in fds.iter().enumerate() {
            for (kind, fd) in pair.iter().enumerate() {
                let token = Token(((id as usize) << 2) | (side << 1) | kind);
                if let Err(e) = self
                    .registry
                    .register(&mut SourceFd(fd), token, Interest::READABLE)
                {
                    self.stop(id);
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot watch a media socket: {e} (check the process's limits)"),
                    ));
                }
            }
        }
        Ok(id)
    }

    /// Applies a change to a running stream.
    pub(super) fn control(&self, id: u64, c: Control) {
        self.send(Message::Control(id, c));
    }

    /// Ends a stream: its sockets close and its ports go back to the pool.
    pub(super) fn stop(&self, id: u64) {
        self.send(Message::Stop(id));
    }

    fn send(&self, m: Message) {
        // The thread holds the receiver for the life of the process.
        let _ = self.queue.send(m);
        let _ = self.waker.wake();
    }
}

/// A stream on its thread, and the deadline it has in the timer heap.
struct Served {
    relay: Box<Relay>,
    scheduled: Option<Instant>,
}

/// The thread's streams, their timers, and the sockets left unread.
#[derive(Default)]
struct Streams {
    by_id: HashMap<u64, Served>,
    /// (deadline, stream id); an entry whose stream has since moved its
    /// deadline is passed over when it comes up.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Sockets read only in part last turn (no new event will come for them).
    more: Vec<Token>,
}

impl Streams {
    /// Runs `f` on stream `id`, if it still runs. A stream that panics is
    /// ended alone (its sockets closed, its kernel flows taken back); the
    /// thread's other streams go on.
    fn with<R>(&mut self, id: u64, f: impl FnOnce(&mut Relay) -> R) -> Option<R> {
        let served = self.by_id.get_mut(&id)?;
        match catch_unwind(AssertUnwindSafe(|| f(&mut served.relay))) {
            Ok(r) => {
                let due = served.relay.deadline();
                if due != served.scheduled {
                    served.scheduled = due;
                    if let Some(t) = due {
                        self.timers.push(Reverse((t, id)));
                    }
                }
                Some(r)
            }
            Err(_) => {
                error!(stream = id, "a media stream's relay failed and was stopped; the call's other streams and calls go on");
                self.by_id.remove(&id);
                None
            }
        }
    }

    fn take(&mut self, m: Message) {
        match m {
            Message::Start(id, relay) => {
                self.by_id.insert(
                    id,
                    Served {
                        relay,
                        scheduled: None,
                    },
                );
                self.with(id, |_| ());
            }
            Message::Control(id, c) => {
                self.with(id, |r| r.control(c));
            }
            Message::Stop(id) => {
                self.by_id.remove(&id);
            }
        }
    }

    fn readable(&mut self, token: Token) {
        let id = (token.0 >> 2) as u64;
        let (side, kind) = ((token.0 >> 1) & 1, token.0 & 1);
        if self.with(id, |r| r.on_readable(side, kind)) == Some(Drained::More) {
            self.more.push(token);
        }
    }

    fn due(&mut self, now: Instant) {
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let current = self.by_id.get(&id).is_some_and(|s| s.scheduled == Some(t));
            if current {
                if let Some(s) = self.by_id.get_mut(&id) {
                    s.scheduled = None;
                }
                self.with(id, |r| r.on_timer(now));
            }
        }
    }

    /// How long the thread may wait for its sockets.
    fn timeout(&self) -> Option<Duration> {
        if !self.more.is_empty() {
            return Some(Duration::ZERO);
        }
        let Reverse((t, _)) = self.timers.peek()?;
        Some(t.saturating_duration_since(Instant::now()))
    }
}

/// A media thread's loop; runs for the life of the process.
fn serve(mut poll: Poll, inbox: mpsc::Receiver<Message>) {
    let mut events = Events::with_capacity(1024);
    let mut streams = Streams::default();
    loop {
        if streams.more.is_empty() {
            std::thread::sleep(BATCH);
        }
        if let Err(e) = poll.poll(&mut events, streams.timeout()) {
            if e.kind() != io::ErrorKind::Interrupted {
                error!(error = %e, "a media thread cannot wait for its sockets; trying again");
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        while let Ok(m) = inbox.try_recv() {
            streams.take(m);
        }
        for token in std::mem::take(&mut streams.more) {
            streams.readable(token);
        }
        for e in events.iter() {
            if e.token() != WAKE {
                streams.readable(e.token());
            }
        }
        streams.due(Instant::now());
    }
}

fn start_error(e: &io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("cannot start the media relay threads: {e} (check the process's thread limit)"),
    )
}
