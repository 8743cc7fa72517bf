//! The recorder threads: a few long-lived lanes (one per core), each serving
//! many recordings. Packets wait in their recording's queue and a lane takes
//! them in one batch per tick, so a lane wakes 10 times a second however many
//! calls it carries instead of once per packet (the relay only pushes into a
//! queue nobody is blocked on, which costs no wake-up). A tick touches every
//! recording's state, mostly out of the cache by then; five packets per
//! party per tick pay for that once instead of one each. Start, codec and finish
//! commands wake the lane at once. The arrival instant travels with each
//! packet, so batching delays the work, not the packet's place in the audio.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::worker::{Watch, Worker};
use super::{PayloadMap, RecorderError, Side};

/// How often a lane takes the queued packets of its recordings. Placement
/// does not depend on it (the arrival instant does, and the reorder window
/// bounds lateness); it sets how much waits in a queue (100 ms of packets)
/// and how soon a queue overflow is reported.
pub(crate) const TICK: Duration = Duration::from_millis(100);
/// Upper bound on lanes, whatever the core count.
const MAX_LANES: usize = 8;

/// A lane's answer to a finish: the worker with every queued packet placed,
/// for the finishing thread to finalise (so the lane never waits on fsync).
pub(crate) type Finished = Result<Worker, RecorderError>;

/// What a recording's owner asks of its lane.
pub(crate) enum Command {
    /// Serve a new recording.
    Start { id: u64, worker: Box<Worker> },
    /// Codec table of one party (at start, after a re-INVITE).
    PayloadMap(u64, Side, Box<PayloadMap>),
    /// Who is told about the recording's failures.
    Watch(u64, Box<Watch>),
    /// Place everything queued and hand the worker back; with an instant, the
    /// audio runs (silent if need be) up to it. Without a reply channel the
    /// lane finalises the files itself (the owner dropped the recorder).
    Finish {
        id: u64,
        end: Option<Instant>,
        reply: Option<SyncSender<Finished>>,
    },
}

/// The lanes of this process.
pub(crate) struct Pool {
    lanes: Vec<Sender<Command>>,
    next_lane: AtomicUsize,
    next_id: AtomicU64,
}

impl Pool {
    /// The process's pool, its threads started on first use.
    pub(crate) fn get() -> Result<&'static Pool, RecorderError> {
        static POOL: OnceLock<Pool> = OnceLock::new();
        if let Some(p) = POOL.get() {
            return Ok(p);
        }
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, MAX_LANES);
        let mut lanes = Vec::with_capacity(n);
        for i in 0..n {
            // Unbounded: start, finish and one codec table per SDP of each
            // recording; packets travel in each recording's bounded queue.
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new()
                .name(format!("recorder-{i}"))
                .spawn(move || Lane::default().run(rx))
                .map_err(RecorderError::Spawn)?;
            lanes.push(tx);
        }
        // Two first callers racing both build a pool; the loser's lanes end when
        // its senders are dropped here.
        Ok(POOL.get_or_init(|| Pool {
            lanes,
            next_lane: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        }))
    }

    /// Hands a recording to the next lane; returns its id and the lane's sender.
    pub(crate) fn assign(&self, worker: Worker) -> Result<(u64, Sender<Command>), RecorderError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let lane = &self.lanes[self.next_lane.fetch_add(1, Ordering::Relaxed) % self.lanes.len()];
        lane.send(Command::Start {
            id,
            worker: Box::new(worker),
        })
        .map_err(|_| RecorderError::WorkerPanicked)?;
        Ok((id, lane.clone()))
    }
}

/// One recording as its lane holds it.
struct Entry {
    worker: Box<Worker>,
}

/// One recorder thread and the recordings it serves.
#[derive(Default)]
struct Lane {
    recordings: HashMap<u64, Entry>,
}

impl Lane {
    fn run(mut self, commands: Receiver<Command>) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            let cmd = if self.recordings.is_empty() {
                // Idle: no ticks, sleep until there is work.
                match commands.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                }
            } else {
                match commands.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            match cmd {
                Some(c) => {
                    if self.recordings.is_empty() {
                        next_tick = Instant::now() + TICK;
                    }
                    self.command(c);
                }
                None => {
                    self.tick();
                    next_tick += TICK;
                    let now = Instant::now();
                    if next_tick <= now {
                        // Fell behind (machine overloaded): do not tick in a burst.
                        next_tick = now + TICK;
                    }
                }
            }
        }
    }

    /// Places every queued packet of every recording.
    fn tick(&mut self) {
        let mut failed = Vec::new();
        for (&id, e) in self.recordings.iter_mut() {
            if guarded(id, || e.worker.take_queued()).is_err() {
                failed.push(id);
            }
        }
        for id in failed {
            self.abandon(id);
        }
    }

    /// Drops a recording whose step panicked; its forks take nothing more.
    fn abandon(&mut self, id: u64) {
        if let Some(e) = self.recordings.remove(&id) {
            e.worker.close_queue();
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Start { id, worker } => {
                self.recordings.insert(id, Entry { worker });
            }
            Command::Watch(id, watch) => {
                if let Some(e) = self.recordings.get_mut(&id) {
                    e.worker.set_watch(*watch);
                }
            }
            Command::PayloadMap(id, party, map) => {
                if let Some(e) = self.recordings.get_mut(&id) {
                    // Packets queued before the change were sent under the old table.
                    let res = guarded(id, || {
                        e.worker.take_queued();
                        e.worker.set_payload_map(party, *map);
                    });
                    if res.is_err() {
                        self.abandon(id);
                    }
                }
            }
            Command::Finish { id, end, reply } => {
                let Some(mut e) = self.recordings.remove(&id) else {
                    // Removed after a panic: the files are incomplete.
                    if let Some(r) = reply {
                        let _ = r.send(Err(RecorderError::WorkerPanicked));
                    }
                    return;
                };
                let placed = guarded(id, || {
                    e.worker.take_queued();
                    e.worker.run_to(end);
                });
                match (placed, reply) {
                    (Err(()), Some(r)) => {
                        let _ = r.send(Err(RecorderError::WorkerPanicked));
                    }
                    (Err(()), None) => {}
                    (Ok(()), Some(r)) => {
                        let _ = r.send(Ok(*e.worker));
                    }
                    (Ok(()), None) => {
                        let _ = guarded(id, || {
                            if let Err(err) = e.worker.finalize() {
                                tracing::error!("recording dropped without finish: {err}");
                            }
                        });
                    }
                }
            }
        }
    }
}

/// Runs one recording's step so that a bug in it cannot take down the lane's
/// other recordings; a panicking recording is dropped (its owner gets
/// `WorkerPanicked` at finish).
fn guarded<T>(id: u64, f: impl FnOnce() -> T) -> Result<T, ()> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| {
        tracing::error!(
            recording = id,
            "recorder panicked on this recording; it is abandoned, its files are incomplete"
        );
    })
}
