//! One stream's relay state and what it does when one of its sockets is
//! readable, when the call changes it, and when one of its timers is due. It
//! never waits: the media thread's event loop (`relay::threads`) owns it and
//! calls it when its epoll says so. Each socket accepts packets only from
//! the source its peer's SDP signalled, or one learned for a peer behind NAT
//! (`latch`); a packet from anywhere else is counted as foreign and dropped.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{info, warn};

use super::io::{self, RelaySocket};
use super::offload::{Direction, Offload};
use super::{epoch, Control, Learning, StreamStats, Tap, KERNEL_SYNC};
use crate::media::latch::{Carries, Latch, PayloadTypes};
use crate::media::ports::PortPair;
use crate::media::sdes::LegKeys;
use crate::media::srtp::Protection;
use crate::media::Side;

/// A side's packet protection as the relay holds it.
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

/// An announcement being played to the caller.
struct Player {
    queue: VecDeque<Bytes>,
    next: Instant,
    done: tokio::sync::oneshot::Sender<()>,
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

/// Everything one stream's relay holds. Index 0 faces the caller, 1 the
/// callee; each side's sockets and latches are [rtp, rtcp].
pub(super) struct Relay {
    socks: [[RelaySocket; 2]; 2],
    stats: Arc<StreamStats>,
    tap: Option<Arc<dyn Tap>>,
    learning: Learning,
    offload: Offload,
    latch: [[Latch; 2]; 2],
    /// Payload types each side's SDP listed for this stream.
    pts: [PayloadTypes; 2],
    /// Whether the first foreign packet at each side's ports was logged.
    warned: [bool; 2],
    /// Receive buffers per socket, reused for every packet, and the length,
    /// source and arrival of what each holds.
    bufs: Box<[[io::Bufs; 2]; 2]>,
    from: [[[io::Received; io::BATCH]; 2]; 2],
    player: Option<Player>,
    crypto: [Crypto; 2],
    /// Whether the first packet failing authentication from each side was logged.
    warned_auth: [bool; 2],
    /// The RTP sockets' own addresses, by side: where the kernel path matches
    /// and what it writes as the source.
    local: [Option<SocketAddr>; 2],
    /// Whether the kernel relays anything for this stream now, and when its
    /// counters are next added to the stream's.
    in_kernel: bool,
    next_sync: Instant,
    // However the relay ends (its call drops the handle, or it panics), the
    // kernel stops relaying for it; after the sockets, the ports go back.
    _kernel: FinishOnDrop,
    _ports: [PortPair; 2],
    /// The call's span, entered for the relay's log lines.
    span: tracing::Span,
}

impl Relay {
    /// The state of a new stream over sockets taken from `ports`.
    pub(super) fn new(
        ports: [PortPair; 2],
        socks: [[RelaySocket; 2]; 2],
        stats: Arc<StreamStats>,
        tap: Option<Arc<dyn Tap>>,
        learning: Learning,
        offload: Offload,
        span: tracing::Span,
    ) -> Relay {
        let none = (0, SocketAddr::from(([0, 0, 0, 0], 0)), Instant::now());
        let local = [socks[0][0].local_addr().ok(), socks[1][0].local_addr().ok()];
        Relay {
            socks,
            stats,
            tap,
            learning,
            _kernel: FinishOnDrop(offload.clone()),
            offload,
            latch: Default::default(),
            pts: [PayloadTypes::default(); 2],
            warned: [false; 2],
            bufs: Box::new([[[[0u8; io::MAX_DATAGRAM]; io::BATCH]; 2]; 2]),
            from: [[[none; io::BATCH]; 2]; 2],
            player: None,
            crypto: [Crypto::Plain, Crypto::Plain],
            warned_auth: [false; 2],
            local,
            in_kernel: false,
            next_sync: Instant::now() + KERNEL_SYNC,
            _ports: ports,
            span,
        }
    }

    /// The stream's sockets' descriptors, by [side][kind], for the epoll.
    pub(super) fn raw_fds(&self) -> [[std::os::fd::RawFd; 2]; 2] {
        self.socks
            .each_ref()
            .map(|s| s.each_ref().map(|k| k.raw_fd()))
    }

    /// When this stream next needs `on_timer`, if at all.
    pub(super) fn deadline(&self) -> Option<Instant> {
        let play = self.player.as_ref().map(|p| p.next);
        let sync = self.in_kernel.then_some(self.next_sync);
        match (play, sync) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Applies one change from the call.
    pub(super) fn control(&mut self, c: Control) {
        match c {
            Control::Peer {
                side,
                rtp,
                rtcp,
                pts,
            } => {
                let i = side.index();
                self.latch[i][0].signal(rtp);
                self.latch[i][1].signal(rtcp);
                self.pts[i] = pts;
                // Media is due once both sides' SDP are known: the learning
                // window runs from then, not from an offer that may ring for a minute.
                if self.latch[0][0].is_signalled() && self.latch[1][0].is_signalled() {
                    let until = Instant::now() + self.learning.window;
                    self.latch
                        .iter_mut()
                        .flatten()
                        .for_each(|l| l.start_window(until));
                }
            }
            Control::Tap(t) => self.tap = t,
            Control::Play(packets, done) => {
                self.player = Some(Player {
                    queue: packets.into(),
                    next: Instant::now(),
                    done,
                });
            }
            Control::Keys(side, keys) => {
                let i = side.index();
                let old = std::mem::replace(&mut self.crypto[i], Crypto::Plain);
                self.crypto[i] = old.update(keys);
            }
        }
        self.replan();
    }

    /// Looks again at what the kernel may relay for this stream.
    fn replan(&mut self) {
        if self.offload.available() {
            let wanted = kernel_directions(&self.latch, &self.crypto, &self.local);
            self.in_kernel = self.offload.plan(wanted, &self.tap);
        }
    }

    /// Does what is due at `now`: the announcement's next packet, the
    /// kernel's counters.
    pub(super) fn on_timer(&mut self, now: Instant) {
        if let Some(p) = self.player.as_mut().filter(|p| p.next <= now) {
            if let (Some(pkt), Some(dst)) = (p.queue.pop_front(), self.latch[0][0].target()) {
                let out = match &mut self.crypto[0] {
                    Crypto::Plain => Some(pkt),
                    Crypto::Pending => None,
                    Crypto::On { tx, .. } => tx.protect(&pkt, false),
                };
                if let Some(out) = out {
                    let _ = self.socks[0][0].send_to(&out, dst);
                }
            }
            p.next += Duration::from_millis(20);
            if p.queue.is_empty() {
                if let Some(p) = self.player.take() {
                    let _ = p.done.send(());
                }
            }
        }
        if self.in_kernel && self.next_sync <= now {
            self.offload.sync();
            self.next_sync = now + KERNEL_SYNC;
        }
    }

    /// Receives up to a batch of the datagrams queued at the socket facing
    /// `side` for `kind` (0 RTP, 1 RTCP), without waiting; `relay` then
    /// handles them. Fewer than `io::BATCH` means the queue is empty.
    pub(super) fn receive(&mut self, side: usize, kind: usize) -> std::io::Result<usize> {
        let bufs = &mut self.bufs[side][kind];
        let from = &mut self.from[side][kind];
        self.socks[side][kind].recv_batch(bufs, from)
    }

    /// Relays the `n` datagrams just received on the socket [side][kind].
    pub(super) fn relay(&mut self, side: usize, kind: usize, n: usize) {
        let now = Instant::now();
        let mut replan = false;
        for i in 0..n {
            let (len, src, arrival) = self.from[side][kind][i];
            let pkt = &self.bufs[side][kind][i][..len];
            let rtcp = kind == 1 || is_rtcp(pkt);
            // Authenticated before the latch sees it, so that only packets that
            // authenticate may fix or use a source.
            let decrypted;
            let pkt: &[u8] = match &mut self.crypto[side] {
                Crypto::Plain => pkt,
                Crypto::Pending => continue,
                Crypto::On { rx, .. } => match rx.unprotect(pkt, rtcp) {
                    Ok(p) => {
                        decrypted = p;
                        &decrypted
                    }
                    Err(_) => {
                        self.stats.auth_failed[side].fetch_add(1, Ordering::Relaxed);
                        self.learning
                            .auth_failed_total
                            .fetch_add(1, Ordering::Relaxed);
                        if !self.warned_auth[side] {
                            self.warned_auth[side] = true;
                            let _in_call = self.span.enter();
                            warn!(%src, "dropping SRTP from the {}'s side that fails authentication (or is a replay)", Side::from_index(side).name());
                        }
                        continue;
                    }
                },
            };
            let carries = if kind == 0 {
                Carries::Rtp(self.pts[0].union(self.pts[1]))
            } else {
                Carries::Rtcp(self.latch[side][0].source().map(|s| s.ip()))
            };
            let latch = &mut self.latch[side][kind];
            let was_fixed = latch.source().is_some();
            if !latch.accept(src, pkt, now, self.learning.mode, carries) {
                self.stats.foreign_dropped[side].fetch_add(1, Ordering::Relaxed);
                self.learning.foreign_total.fetch_add(1, Ordering::Relaxed);
                if !self.warned[side] {
                    self.warned[side] = true;
                    let _in_call = self.span.enter();
                    let port = self.socks[side][kind]
                        .local_addr()
                        .map(|a| a.port())
                        .unwrap_or(0);
                    warn!(%src, port, "dropping media from a source that is not the {}'s", Side::from_index(side).name());
                }
                continue;
            }
            // Only the parties' media shows the call is alive (RTP timeout).
            self.stats.last_rx_ms.store(
                now.saturating_duration_since(epoch()).as_millis() as u64,
                Ordering::Relaxed,
            );
            if !was_fixed && kind == 0 {
                replan = true;
            }
            if !was_fixed && latch.learned() {
                let _in_call = self.span.enter();
                info!(%src, "learned the {}'s media source (not the address its SDP named)", Side::from_index(side).name());
            }
            let other = 1 - side;
            let Some(dst) = self.latch[other][kind].target() else {
                continue;
            };
            let encrypted;
            let out: &[u8] = match &mut self.crypto[other] {
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
            if self.socks[other][kind].send_to(out, dst).is_err() {
                continue;
            }
            if rtcp {
                self.stats.rtcp_packets[side].fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.rtp_packets[side].fetch_add(1, Ordering::Relaxed);
                self.stats.rtp_bytes[side].fetch_add(pkt.len() as u64, Ordering::Relaxed);
                if let Some(tap) = &self.tap {
                    tap.offer(Side::from_index(side), Bytes::copy_from_slice(pkt), arrival);
                }
            }
        }
        if replan {
            self.replan();
        }
    }
}
