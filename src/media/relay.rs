//! One anchored media stream (one `m=` line): four sockets (RTP and RTCP facing
//! the caller, RTP and RTCP facing the callee) whose state (`state::Relay`)
//! one of the media threads (`relay::threads`) owns, never the signalling runtime;
//! the call holds a `Stream` and changes the stream through the thread.
//! Each socket accepts packets only from the source its
//! peer's SDP signalled, or one learned for a peer behind NAT (`latch`); a
//! packet from anywhere else is counted as foreign and dropped: never relayed,
//! never recorded. Counters are atomics the call reads; nothing on the packet
//! path locks, allocates (unless a recorder takes a copy) or waits on anything
//! but the sockets. A side that speaks SRTP has its packets
//! authenticated and decrypted before anything else looks at them (a packet
//! that fails is counted and dropped); the recorder gets the plain packet,
//! and the other side gets it encrypted with its own leg's key, or plain.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::latch::{LearningMode, PayloadTypes, LEARNING_WINDOW};
use super::ports::PortPair;
use super::sdes::LegKeys;
use super::Side;
use io::RelaySocket;
use offload::Offload;
use state::Relay;
use threads::{MediaThread, MediaThreads};

mod io;
mod offload;
mod state;
mod threads;

/// How often the counters of kernel-relayed flows are added to the stream's
/// (the RTP timeout reads them; it counts in tens of seconds).
const KERNEL_SYNC: Duration = Duration::from_secs(1);

/// How the streams of a call learn their peers' sources, and the process-wide
/// counter of foreign packets.
#[derive(Debug, Clone)]
pub struct Learning {
    /// Strict (signalled address only) or heuristic (NAT learning).
    pub mode: LearningMode,
    /// How long after the offer/answer only the signalled address counts.
    pub window: Duration,
    /// Foreign packets dropped by every stream of the process.
    pub foreign_total: Arc<AtomicU64>,
    /// SRTP packets that failed authentication (or replayed), process-wide.
    pub auth_failed_total: Arc<AtomicU64>,
}

impl Default for Learning {
    fn default() -> Learning {
        Learning {
            mode: LearningMode::default(),
            window: LEARNING_WINDOW,
            foreign_total: Arc::default(),
            auth_failed_total: Arc::default(),
        }
    }
}

pub use super::tap::Tap;

/// Per-stream counters, readable while the stream runs.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// RTP packets relayed, index 0 = sent by the caller, 1 = by the callee.
    pub rtp_packets: [AtomicU64; 2],
    /// RTP bytes relayed, same indexing.
    pub rtp_bytes: [AtomicU64; 2],
    /// RTCP packets relayed, same indexing.
    pub rtcp_packets: [AtomicU64; 2],
    /// Packets from a source other than the accepted one, dropped; index 0 =
    /// at the ports facing the caller, 1 = facing the callee.
    pub foreign_dropped: [AtomicU64; 2],
    /// SRTP/SRTCP packets that failed authentication or were replays, dropped;
    /// index 0 = sent by the caller, 1 = by the callee.
    pub auth_failed: [AtomicU64; 2],
    /// Milliseconds since `epoch()` of the last accepted packet on any socket.
    pub last_rx_ms: AtomicU64,
}

/// Process-wide reference instant for `last_rx_ms`.
pub fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Monotonic milliseconds since `epoch()`: the clock of `last_rx_ms`, not wall-clock
/// time (that is `db::now_ms`).
pub fn monotonic_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// Changes sent to a running stream.
pub enum Control {
    /// New addresses from an offer or answer of `side`.
    Peer {
        /// Whose SDP it was.
        side: Side,
        /// RTP address (None: keep what was latched).
        rtp: Option<SocketAddr>,
        /// RTCP address.
        rtcp: Option<SocketAddr>,
        /// Payload types of the stream's `m=` line in that SDP.
        pts: PayloadTypes,
    },
    /// Start (or stop, with None) forking RTP to a recorder.
    Tap(Option<Arc<dyn Tap>>),
    /// Play these RTP packets to the caller, one every 20 ms; `done` fires after the last.
    Play(Vec<Bytes>, tokio::sync::oneshot::Sender<()>),
    /// Plain RTP or SRTP keys for a side.
    Keys(Side, LegKeys),
}

/// The call's handle on a running stream; dropping it stops the relay and
/// frees the ports.
#[derive(Debug)]
pub struct Stream {
    /// Local RTP port facing the caller.
    pub caller_port: u16,
    /// Local RTP port facing the callee.
    pub callee_port: u16,
    /// Counters.
    pub stats: Arc<StreamStats>,
    thread: &'static MediaThread,
    id: u64,
    offload: Offload,
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Before the relay goes: the kernel stops relaying at once and its
        // last counts are in `stats` when this returns.
        self.offload.finish();
        self.thread.stop(self.id);
    }
}

impl Stream {
    /// Starts relaying between the two port pairs on one of the media threads.
    pub fn start(
        caller: PortPair,
        callee: PortPair,
        tap: Option<Arc<dyn Tap>>,
        learning: Learning,
    ) -> std::io::Result<Stream> {
        Stream::start_on(MediaThreads::get()?.pick(), caller, callee, tap, learning)
    }

    fn start_on(
        thread: &'static MediaThread,
        mut caller: PortPair,
        mut callee: PortPair,
        tap: Option<Arc<dyn Tap>>,
        learning: Learning,
    ) -> std::io::Result<Stream> {
        let (a, b) = caller.take_sockets()?;
        let (c, d) = callee.take_sockets()?;
        let sockets = [
            [RelaySocket::new(a)?, RelaySocket::new(b)?],
            [RelaySocket::new(c)?, RelaySocket::new(d)?],
        ];
        let stats = Arc::new(StreamStats::default());
        stats.last_rx_ms.store(monotonic_ms(), Ordering::Relaxed);
        let caller_port = caller.port;
        let callee_port = callee.port;
        let offload = Offload::new(&stats);
        let relay = Relay::new(
            [caller, callee],
            sockets,
            stats.clone(),
            tap,
            learning,
            offload.clone(),
            // The relay's log lines carry the call's span.
            tracing::Span::current(),
        );
        let id = thread.start(relay)?;
        Ok(Stream {
            caller_port,
            callee_port,
            stats,
            thread,
            id,
            offload,
        })
    }

    /// Tells the stream where a side wants its media.
    pub fn set_peer(
        &self,
        side: Side,
        rtp: Option<SocketAddr>,
        rtcp: Option<SocketAddr>,
        pts: PayloadTypes,
    ) {
        self.thread.control(
            self.id,
            Control::Peer {
                side,
                rtp,
                rtcp,
                pts,
            },
        );
    }

    /// Sets how `side`'s packets are protected.
    pub fn set_keys(&self, side: Side, keys: LegKeys) {
        self.thread.control(self.id, Control::Keys(side, keys));
    }

    /// Starts or stops forking this stream's RTP into a recorder.
    pub fn set_tap(&self, tap: Option<Arc<dyn Tap>>) {
        self.thread.control(self.id, Control::Tap(tap));
    }

    /// Plays RTP packets to the caller from the caller-facing port.
    pub fn play(&self, packets: Vec<Bytes>) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.thread.control(self.id, Control::Play(packets, tx));
        rx
    }

    /// Takes this stream's flows back from the kernel for good: its last
    /// counts are in `stats` and its last copies in the recorder when this
    /// returns; the userspace relay carries whatever comes after. Call it
    /// before reading the final counters and closing the recording.
    pub fn finish_kernel_relay(&self) {
        self.offload.finish();
    }

    /// Local RTP port facing `side`.
    pub fn port_facing(&self, side: Side) -> u16 {
        match side {
            Side::Caller => self.caller_port,
            Side::Callee => self.callee_port,
        }
    }
}

#[cfg(test)]
mod srtp_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod turn_tests;
