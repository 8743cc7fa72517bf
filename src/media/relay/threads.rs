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
//! queue is read after every receive from a socket and before what it
//! received is looked at, so an SDP sent before a packet arrived applies to
//! that packet, however long the thread was busy with other streams.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use tracing::error;

use super::io::BATCH as BATCH_OF_SOCKET;
use super::{Control, Relay};

/// Upper bound on media threads, whatever the core count.
const MAX_THREADS: usize = 8;
/// How long a media thread gathers packets before it looks at its sockets
/// again: adds at most this much delay to a relayed packet (well inside
/// the jitter a phone's buffer absorbs), and bounds the thread's wake-ups
/// to about one per interval however many calls it carries.
const BATCH: Duration = Duration::from_micros(1000);
/// Batches read from one socket in one turn at most: a socket with more
/// queued (a flood) is read again in the next turn, after every other ready
/// socket of the thread had its turn.
const BATCHES_PER_TURN: usize = 16;
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

    /// The first thread, for tests that need streams on one thread.
    #[cfg(test)]
    pub(super) fn first(&self) -> &MediaThread {
        &self.threads[0]
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
        self.send(Message::Start(id, Box::new(relay)))?;
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
        let _ = self.send(Message::Control(id, c));
    }

    /// Ends a stream: its sockets close and its ports go back to the pool.
    pub(super) fn stop(&self, id: u64) {
        let _ = self.send(Message::Stop(id));
    }

    fn send(&self, m: Message) -> io::Result<()> {
        // The thread holds the receiver for the life of the process (its
        // failure stops the process); this error is for completeness.
        self.queue
            .send(m)
            .map_err(|_| io::Error::other("the media thread has stopped"))?;
        // Once queued the message is the thread's: a failed wake-up (an
        // eventfd that cannot be written, never seen) must not make the
        // caller think otherwise, or a started stream would have no handle.
        if let Err(e) = self.waker.wake() {
            error!(error = %e, "cannot wake a media thread; it takes the message at its next turn");
        }
        Ok(())
    }
}

/// A stream on its thread, the deadline it has in the timer heap, and
/// which of its sockets wait in `Streams::more` (bit `side << 1 | kind`).
struct Served {
    relay: Box<Relay>,
    scheduled: Option<Instant>,
    in_more: u8,
}

/// Stream ids count up from 1 and are never reused: a multiplication
/// spreads them over the table's bits, without hashing them as SipHash would.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The thread's streams, their timers, and the sockets left unread.
#[derive(Default)]
struct Streams {
    by_id: HashMap<u64, Served, BuildHasherDefault<IdHasher>>,
    /// (deadline, stream id); an entry whose stream has since moved its
    /// deadline is passed over when it comes up.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Sockets read only in part (no new event will come for them), each
    /// once, to be read again in the next turn; and last turn's list.
    more: Vec<Token>,
    spare: Vec<Token>,
}

/// A socket's stream id and its side and kind, from its token.
fn split(token: Token) -> (u64, usize, usize) {
    ((token.0 >> 2) as u64, (token.0 >> 1) & 1, token.0 & 1)
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
                self.end(id);
                None
            }
        }
    }

    /// Drops stream `id`: its sockets close, its kernel flows are taken
    /// back, its ports go back to the pool. A failure there is the
    /// stream's alone too.
    fn end(&mut self, id: u64) {
        if let Some(served) = self.by_id.remove(&id) {
            if catch_unwind(AssertUnwindSafe(move || drop(served))).is_err() {
                error!(
                    stream = id,
                    "ending a media stream failed; the thread's other streams go on"
                );
            }
        }
    }

    /// Takes every message the calls have queued.
    fn take_queued(&mut self, inbox: &mpsc::Receiver<Message>) {
        while let Ok(m) = inbox.try_recv() {
            match m {
                Message::Start(id, relay) => {
                    let served = Served {
                        relay,
                        scheduled: None,
                        in_more: 0,
                    };
                    self.by_id.insert(id, served);
                    self.with(id, |_| ());
                }
                Message::Control(id, c) => {
                    self.with(id, |r| r.control(c));
                }
                Message::Stop(id) => self.end(id),
            }
        }
    }

    /// Reads and relays what a ready socket holds, a bounded number of
    /// batches; a socket with more is read again in the next turn.
    fn readable(&mut self, token: Token, inbox: &mpsc::Receiver<Message>) {
        let (id, side, kind) = split(token);
        for _ in 0..BATCHES_PER_TURN {
            let Some(received) = self.with(id, |r| r.receive(side, kind)) else {
                return;
            };
            // A change the call sent before these datagrams arrived is in
            // the queue now: it applies to them, as the call expects.
            self.take_queued(inbox);
            // A receive error (none expected on an unconnected UDP socket)
            // uses up one batch of the turn.
            let Ok(n) = received else { continue };
            if self.with(id, |r| r.relay(side, kind, n)).is_none() || n < BATCH_OF_SOCKET {
                return;
            }
        }
        if let Some(served) = self.by_id.get_mut(&id) {
            let bit = 1 << (token.0 & 3);
            if served.in_more & bit == 0 {
                served.in_more |= bit;
                self.more.push(token);
            }
        }
    }

    /// Reads the sockets left from last turn, then those `events` name.
    fn turn(&mut self, events: &Events, inbox: &mpsc::Receiver<Message>) {
        let mut last = std::mem::replace(&mut self.more, std::mem::take(&mut self.spare));
        for &token in &last {
            let (id, ..) = split(token);
            if let Some(served) = self.by_id.get_mut(&id) {
                served.in_more &= !(1 << (token.0 & 3));
                self.readable(token, inbox);
            }
        }
        last.clear();
        self.spare = last;
        for e in events.iter() {
            let token = e.token();
            if token == WAKE {
                continue;
            }
            // Already read this turn as far as a socket's share goes.
            let (id, ..) = split(token);
            let waiting = self
                .by_id
                .get(&id)
                .is_some_and(|s| s.in_more & (1 << (token.0 & 3)) != 0);
            if !waiting {
                self.readable(token, inbox);
            }
        }
    }

    fn due(&mut self, now: Instant) {
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            // An entry the stream has since moved past is passed over.
            match self.by_id.get_mut(&id) {
                Some(s) if s.scheduled == Some(t) => s.scheduled = None,
                _ => continue,
            }
            self.with(id, |r| r.on_timer(now));
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

/// A media thread's loop; runs for the life of the process. A failure of
/// the loop itself (not of one stream, see `Streams::with`) stops the
/// process: the thread's streams are gone with it, and the restart's
/// recovery seals what they had recorded, where a live process would
/// leave their calls silent without a word.
fn serve(mut poll: Poll, inbox: mpsc::Receiver<Message>) {
    let run = AssertUnwindSafe(move || {
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
            streams.take_queued(&inbox);
            streams.turn(&events, &inbox);
            streams.due(Instant::now());
        }
    });
    if catch_unwind(run).is_err() {
        error!("a media thread failed; stopping the process so that its recordings are recovered at the next start");
        std::process::abort();
    }
}

fn start_error(e: &io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("cannot start the media relay threads: {e} (check the process's thread limit)"),
    )
}
