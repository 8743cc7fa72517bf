//! One anchored media stream (one `m=` line): four sockets (RTP and RTCP facing
//! the caller, RTP and RTCP facing the callee) served by one task that owns all
//! of the stream's state. Each socket accepts packets only from the source its
//! peer's SDP signalled, or one learned for a peer behind NAT (`latch`); a
//! packet from anywhere else is counted as foreign and dropped: never relayed,
//! never recorded. Counters are atomics the call reads; nothing on the packet
//! path locks, allocates (unless a recorder takes a copy) or waits on anything
//! but the sockets. The task runs on one of the media threads (`threads`),
//! never on the signalling runtime. A side that speaks SRTP has its packets
//! authenticated and decrypted before anything else looks at them (a packet
//! that fails is counted and dropped); the recorder gets the plain packet,
//! and the other side gets it encrypted with its own leg's key, or plain.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::latch::{Carries, Latch, LearningMode, PayloadTypes, LEARNING_WINDOW};
use super::ports::PortPair;
use super::sdes::LegKeys;
use super::srtp::Protection;
use super::threads::MediaThreads;
use super::Side;
use io::RelaySocket;
use offload::{Direction, Offload};

mod io;
mod offload;

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

/// A side's packet protection as the task holds it.
enum Crypto {
    Plain,
    /// SRTP negotiated but no keys yet: nothing passes to or from the side.
    Pending,
    On {
        rx: Box<Protection>,
        tx: Box<Protection>,
    },
}

impl Crypto {
    /// The state for `keys`, keeping the contexts (and so their rollover
    /// counters and replay windows) of a key that did not change.
    fn update(self, keys: LegKeys) -> Crypto {
        match (self, keys) {
            (_, LegKeys::Plain) => Crypto::Plain,
            (_, LegKeys::Pending) => Crypto::Pending,
            (
                Crypto::On {
                    rx: old_rx,
                    tx: old_tx,
                },
                LegKeys::Keys { rx, tx },
            ) => Crypto::On {
                rx: if *old_rx.key() == rx {
                    old_rx
                } else {
                    Box::new(Protection::new(rx))
                },
                tx: if *old_tx.key() == tx {
                    old_tx
                } else {
                    Box::new(Protection::new(tx))
                },
            },
            (_, LegKeys::Keys { rx, tx }) => Crypto::On {
                rx: Box::new(Protection::new(rx)),
                tx: Box::new(Protection::new(tx)),
            },
        }
    }
}

/// The call's handle on a running stream; dropping it stops the task and frees the ports.
#[derive(Debug)]
pub struct Stream {
    /// Local RTP port facing the caller.
    pub caller_port: u16,
    /// Local RTP port facing the callee.
    pub callee_port: u16,
    /// Counters.
    pub stats: Arc<StreamStats>,
    control: mpsc::UnboundedSender<Control>,
    task: tokio::task::JoinHandle<()>,
    offload: Offload,
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Before the task goes: the kernel stops relaying at once and its
        // last counts are in `stats` when this returns.
        self.offload.finish();
        self.task.abort();
    }
}

impl Stream {
    /// Starts relaying between the two port pairs on one of the media threads.
    pub fn start(
        mut caller: PortPair,
        mut callee: PortPair,
        tap: Option<Arc<dyn Tap>>,
        learning: Learning,
    ) -> std::io::Result<Stream> {
        let thread = MediaThreads::get()?.pick();
        // The sockets register with the epoll of the thread that will serve them.
        let sockets = {
            let _on_thread = thread.enter();
            let (a, b) = caller.take_sockets()?;
            let (c, d) = callee.take_sockets()?;
            [
                [RelaySocket::new(a)?, RelaySocket::new(b)?],
                [RelaySocket::new(c)?, RelaySocket::new(d)?],
            ]
        };
        let stats = Arc::new(StreamStats::default());
        stats.last_rx_ms.store(monotonic_ms(), Ordering::Relaxed);
        // Unbounded but small: the call sends one message per SDP it accepts
        // (itself bounded by its SIP queue), and this task handles each at once.
        let (tx, rx) = mpsc::unbounded_channel();
        let caller_port = caller.port;
        let callee_port = callee.port;
        let offload = Offload::new(&stats);
        let task = thread.spawn(run(
            [caller, callee],
            sockets,
            rx,
            stats.clone(),
            tap,
            learning,
            offload.clone(),
        ));
        Ok(Stream {
            caller_port,
            callee_port,
            stats,
            control: tx,
            task,
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
        let _ = self.control.send(Control::Peer {
            side,
            rtp,
            rtcp,
            pts,
        });
    }

    /// Sets how `side`'s packets are protected.
    pub fn set_keys(&self, side: Side, keys: LegKeys) {
        let _ = self.control.send(Control::Keys(side, keys));
    }

    /// Starts or stops forking this stream's RTP into a recorder.
    pub fn set_tap(&self, tap: Option<Arc<dyn Tap>>) {
        let _ = self.control.send(Control::Tap(tap));
    }

    /// Plays RTP packets to the caller from the caller-facing port.
    pub fn play(&self, packets: Vec<Bytes>) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.control.send(Control::Play(packets, tx));
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

/// Takes a stream's flows back from the kernel when dropped.
struct FinishOnDrop(Offload);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// True for RTCP packet types (RFC 5761 §4) arriving on an RTP port (rtcp-mux).
fn is_rtcp(pkt: &[u8]) -> bool {
    pkt.len() >= 2 && (192..=223).contains(&pkt[1])
}

/// An announcement being played to the caller: packets left, next send time,
/// and who waits for the end.
type Player = Option<(
    std::collections::VecDeque<Bytes>,
    tokio::time::Instant,
    tokio::sync::oneshot::Sender<()>,
)>;

/// The directions the kernel may relay: plain RTP on both sides, the
/// sender's source fixed, and the other party's destination known.
fn kernel_directions(
    latch: &[[Latch; 2]; 2],
    crypto: &[Crypto; 2],
    local: &[Option<SocketAddr>; 2],
) -> [Option<Direction>; 2] {
    if !crypto.iter().all(|c| matches!(c, Crypto::Plain)) {
        return [None, None];
    }
    [0, 1].map(|s| {
        let o = 1 - s;
        Some(Direction {
            side: Side::from_index(s),
            from: latch[s][0].source()?,
            arrives_at: local[s]?,
            leaves_from: local[o]?,
            target: latch[o][0].target()?,
        })
    })
}

/// Applies one change from the call to the stream's state.
fn apply(
    c: Control,
    latch: &mut [[Latch; 2]; 2],
    pts: &mut [PayloadTypes; 2],
    tap: &mut Option<Arc<dyn Tap>>,
    player: &mut Player,
    crypto: &mut [Crypto; 2],
    window: Duration,
) {
    match c {
        Control::Peer {
            side,
            rtp,
            rtcp,
            pts: p,
        } => {
            let i = side.index();
            latch[i][0].signal(rtp);
            latch[i][1].signal(rtcp);
            pts[i] = p;
            // Media is due once both sides' SDP are known: the learning
            // window runs from then, not from an offer that may ring for a minute.
            if latch[0][0].is_signalled() && latch[1][0].is_signalled() {
                let until = Instant::now() + window;
                latch
                    .iter_mut()
                    .flatten()
                    .for_each(|l| l.start_window(until));
            }
        }
        Control::Tap(t) => *tap = t,
        Control::Play(packets, done) => {
            *player = Some((packets.into(), tokio::time::Instant::now(), done));
        }
        Control::Keys(side, keys) => {
            let i = side.index();
            let old = std::mem::replace(&mut crypto[i], Crypto::Plain);
            crypto[i] = old.update(keys);
        }
    }
}

async fn run(
    // Keeps both ports reserved until the task ends (after the sockets closed).
    _ports: [PortPair; 2],
    // Index 0 faces the caller, 1 the callee; each [rtp, rtcp].
    socks: [[RelaySocket; 2]; 2],
    mut control: mpsc::UnboundedReceiver<Control>,
    stats: Arc<StreamStats>,
    mut tap: Option<Arc<dyn Tap>>,
    learning: Learning,
    mut offload: Offload,
) {
    // However the task ends (the call's handle drops it, or it panics),
    // the kernel stops relaying for it.
    let _kernel = FinishOnDrop(offload.clone());
    // Index [side][kind] like the sockets.
    let mut latch: [[Latch; 2]; 2] = Default::default();
    // Payload types each side's SDP listed for this stream.
    let mut pts = [PayloadTypes::default(); 2];
    // Whether the first foreign packet at each side's ports was logged.
    let mut warned = [false; 2];
    // Receive buffers per socket, reused for every packet, and the length
    // and source of what each holds.
    let mut bufs: Box<[[io::Bufs; 2]; 2]> =
        Box::new([[[[0u8; io::MAX_DATAGRAM]; io::BATCH]; 2]; 2]);
    let none = (0, SocketAddr::from(([0, 0, 0, 0], 0)), Instant::now());
    let mut from = [[[none; io::BATCH]; 2]; 2];
    // An announcement being played to the caller: packets left, next send time.
    let mut player: Player = None;
    // Each side's SRTP state, by side index.
    let mut crypto = [Crypto::Plain, Crypto::Plain];
    // Whether the first packet failing authentication from each side was logged.
    let mut warned_auth = [false; 2];
    // The RTP sockets' own addresses, by side: where the kernel path matches
    // and what it writes as the source.
    let local = [socks[0][0].local_addr().ok(), socks[1][0].local_addr().ok()];
    // Whether what the kernel may relay has to be looked at again, and
    // whether it relays anything for this stream now.
    let mut replan = false;
    let mut in_kernel = false;
    let mut next_sync = tokio::time::Instant::now() + KERNEL_SYNC;
    loop {
        if replan {
            replan = false;
            in_kernel = offload.plan(kernel_directions(&latch, &crypto, &local), &tap);
        }
        let next_play = player.as_ref().map(|p| p.1);
        let [[b00, b01], [b10, b11]] = &mut *bufs;
        let [[f00, f01], [f10, f11]] = &mut from;
        let (side, kind, res) = tokio::select! {
            r = socks[0][0].recv_batch(b00, f00) => (0, 0, r),
            r = socks[1][0].recv_batch(b10, f10) => (1, 0, r),
            r = socks[0][1].recv_batch(b01, f01) => (0, 1, r),
            r = socks[1][1].recv_batch(b11, f11) => (1, 1, r),
            _ = tokio::time::sleep_until(next_play.unwrap_or_else(tokio::time::Instant::now)), if next_play.is_some() => {
                if let Some((queue, next, _)) = player.as_mut() {
                    if let (Some(pkt), Some(dst)) = (queue.pop_front(), latch[0][0].target()) {
                        let out = match &mut crypto[0] {
                            Crypto::Plain => Some(pkt),
                            Crypto::Pending => None,
                            Crypto::On { tx, .. } => tx.protect(&pkt, false),
                        };
                        if let Some(out) = out {
                            let _ = socks[0][0].send_to(&out, dst);
                        }
                    }
                    *next += Duration::from_millis(20);
                    if queue.is_empty() {
                        if let Some((_, _, done)) = player.take() {
                            let _ = done.send(());
                        }
                    }
                }
                continue;
            }
            c = control.recv() => {
                let Some(c) = c else { return };
                apply(c, &mut latch, &mut pts, &mut tap, &mut player, &mut crypto, learning.window);
                replan = offload.available();
                continue;
            }
            _ = tokio::time::sleep_until(next_sync), if in_kernel => {
                offload.sync();
                next_sync = tokio::time::Instant::now() + KERNEL_SYNC;
                continue;
            }
        };
        let n = match res {
            Ok(n) => n,
            // ICMP errors surface as receive errors on Linux; pass them over.
            Err(_) => continue,
        };
        let now = Instant::now();
        // The SDP naming this packet's sender may have been sent before the
        // packet arrived; select! does not promise to deliver it first.
        loop {
            match control.try_recv() {
                Ok(c) => {
                    apply(
                        c,
                        &mut latch,
                        &mut pts,
                        &mut tap,
                        &mut player,
                        &mut crypto,
                        learning.window,
                    );
                    replan = offload.available();
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        for (i, &(len, src, arrival)) in from[side][kind][..n].iter().enumerate() {
            let pkt = &bufs[side][kind][i][..len];
            let rtcp = kind == 1 || is_rtcp(pkt);
            // Authenticated before the latch sees it, so that only packets that
            // authenticate may fix or use a source.
            let decrypted;
            let pkt: &[u8] = match &mut crypto[side] {
                Crypto::Plain => pkt,
                Crypto::Pending => continue,
                Crypto::On { rx, .. } => match rx.unprotect(pkt, rtcp) {
                    Ok(p) => {
                        decrypted = p;
                        &decrypted
                    }
                    Err(_) => {
                        stats.auth_failed[side].fetch_add(1, Ordering::Relaxed);
                        learning.auth_failed_total.fetch_add(1, Ordering::Relaxed);
                        if !warned_auth[side] {
                            warned_auth[side] = true;
                            warn!(%src, "dropping SRTP from the {}'s side that fails authentication (or is a replay)", Side::from_index(side).name());
                        }
                        continue;
                    }
                },
            };
            let carries = if kind == 0 {
                Carries::Rtp(pts[0].union(pts[1]))
            } else {
                Carries::Rtcp(latch[side][0].source().map(|s| s.ip()))
            };
            let was_fixed = latch[side][kind].source().is_some();
            if !latch[side][kind].accept(src, pkt, now, learning.mode, carries) {
                stats.foreign_dropped[side].fetch_add(1, Ordering::Relaxed);
                learning.foreign_total.fetch_add(1, Ordering::Relaxed);
                if !warned[side] {
                    warned[side] = true;
                    let port = socks[side][kind]
                        .local_addr()
                        .map(|a| a.port())
                        .unwrap_or(0);
                    warn!(%src, port, "dropping media from a source that is not the {}'s", Side::from_index(side).name());
                }
                continue;
            }
            // Only the parties' media shows the call is alive (RTP timeout).
            stats.last_rx_ms.store(
                now.saturating_duration_since(epoch()).as_millis() as u64,
                Ordering::Relaxed,
            );
            if !was_fixed && kind == 0 {
                replan = offload.available();
            }
            if !was_fixed && latch[side][kind].learned() {
                info!(%src, "learned the {}'s media source (not the address its SDP named)", Side::from_index(side).name());
            }
            let other = 1 - side;
            let Some(dst) = latch[other][kind].target() else {
                continue;
            };
            let encrypted;
            let out: &[u8] = match &mut crypto[other] {
                Crypto::Plain => pkt,
                Crypto::Pending => continue,
                Crypto::On { tx, .. } => match tx.protect(pkt, rtcp) {
                    Some(p) => {
                        encrypted = p;
                        &encrypted
                    }
                    None => continue,
                },
            };
            if socks[other][kind].send_to(out, dst).is_err() {
                continue;
            }
            if rtcp {
                stats.rtcp_packets[side].fetch_add(1, Ordering::Relaxed);
            } else {
                stats.rtp_packets[side].fetch_add(1, Ordering::Relaxed);
                stats.rtp_bytes[side].fetch_add(pkt.len() as u64, Ordering::Relaxed);
                if let Some(tap) = &tap {
                    tap.offer(Side::from_index(side), Bytes::copy_from_slice(pkt), arrival);
                }
            }
        }
    }
}

#[cfg(test)]
mod srtp_tests;
#[cfg(test)]
mod tests;
