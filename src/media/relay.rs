//! One anchored media stream (one `m=` line): four sockets (RTP and RTCP facing
//! the caller, RTP and RTCP facing the callee) served by one task that owns all
//! of the stream's state. Each socket latches onto the first source that sends
//! to it (symmetric RTP, for NATed peers); a different source takes over only
//! after the latched one has been quiet for a while, so a stray packet cannot
//! hijack the stream. Counters are atomics the call reads; nothing on the
//! packet path locks, logs, allocates (unless a recorder takes a copy) or
//! waits on anything but the sockets. The task runs on one of the media
//! threads (`threads`), never on the signalling runtime.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::ports::PortPair;
use super::threads::MediaThreads;
use super::Side;

/// How long a latched source must be silent before another source may take over.
pub const RELATCH_QUIET: Duration = Duration::from_millis(1000);

/// Receives a copy of every RTP packet for recording; must never block.
pub trait Tap: Send + Sync {
    /// Offers one RTP packet (whole, header included) that `from` sent.
    fn offer(&self, from: Side, packet: Bytes, arrival: Instant);
}

/// Per-stream counters, readable while the stream runs.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// RTP packets relayed, index 0 = sent by the caller, 1 = by the callee.
    pub rtp_packets: [AtomicU64; 2],
    /// RTP bytes relayed, same indexing.
    pub rtp_bytes: [AtomicU64; 2],
    /// RTCP packets relayed, same indexing.
    pub rtcp_packets: [AtomicU64; 2],
    /// Packets from a source other than the latched one, dropped.
    pub foreign_dropped: AtomicU64,
    /// Milliseconds since `epoch()` of the last packet received on any socket.
    pub last_rx_ms: AtomicU64,
}

/// Process-wide reference instant for `last_rx_ms`.
pub fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since `epoch()`.
pub fn now_ms() -> u64 {
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
    },
    /// Start (or stop, with None) forking RTP to a recorder.
    Tap(Option<Arc<dyn Tap>>),
    /// Play these RTP packets to the caller, one every 20 ms; `done` fires after the last.
    Play(Vec<Bytes>, tokio::sync::oneshot::Sender<()>),
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
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream {
    /// Starts relaying between the two port pairs on one of the media threads.
    pub fn start(
        mut caller: PortPair,
        mut callee: PortPair,
        tap: Option<Arc<dyn Tap>>,
    ) -> std::io::Result<Stream> {
        let thread = MediaThreads::get()?.pick();
        // The sockets register with the epoll of the thread that will serve them.
        let sockets = {
            let _on_thread = thread.enter();
            let (a, b) = caller.take_sockets()?;
            let (c, d) = callee.take_sockets()?;
            [[a, b], [c, d]]
        };
        let stats = Arc::new(StreamStats::default());
        stats.last_rx_ms.store(now_ms(), Ordering::Relaxed);
        // Unbounded but small: the call sends one message per SDP it accepts
        // (itself bounded by its SIP queue), and this task handles each at once.
        let (tx, rx) = mpsc::unbounded_channel();
        let caller_port = caller.port;
        let callee_port = callee.port;
        let task = thread.spawn(run([caller, callee], sockets, rx, stats.clone(), tap));
        Ok(Stream {
            caller_port,
            callee_port,
            stats,
            control: tx,
            task,
        })
    }

    /// Tells the stream where a side wants its media.
    pub fn set_peer(&self, side: Side, rtp: Option<SocketAddr>, rtcp: Option<SocketAddr>) {
        let _ = self.control.send(Control::Peer { side, rtp, rtcp });
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

    /// Local RTP port facing `side`.
    pub fn port_facing(&self, side: Side) -> u16 {
        match side {
            Side::Caller => self.caller_port,
            Side::Callee => self.callee_port,
        }
    }
}

/// Latching state of one socket.
#[derive(Debug, Default)]
struct Latch {
    signalled: Option<SocketAddr>,
    latched: Option<SocketAddr>,
    last_seen: Option<Instant>,
}

impl Latch {
    /// Whether a packet from `src` is accepted (and latches if so).
    fn accept(&mut self, src: SocketAddr, now: Instant) -> bool {
        let ok = match (self.latched, self.last_seen) {
            (None, _) => true,
            (Some(l), _) if l == src => true,
            (Some(_), Some(seen)) => now.duration_since(seen) >= RELATCH_QUIET,
            (Some(_), None) => true,
        };
        if ok {
            self.latched = Some(src);
            self.last_seen = Some(now);
        }
        ok
    }

    /// Where to send packets for this peer.
    fn target(&self) -> Option<SocketAddr> {
        self.latched.or(self.signalled)
    }
}

/// True for RTCP packet types (RFC 5761 §4) arriving on an RTP port (rtcp-mux).
fn is_rtcp(pkt: &[u8]) -> bool {
    pkt.len() >= 2 && (192..=223).contains(&pkt[1])
}

/// Largest datagram relayed; RTP over UDP stays far below it.
const MAX_DATAGRAM: usize = 2048;

async fn run(
    // Keeps both ports reserved until the task ends (after the sockets closed).
    _ports: [PortPair; 2],
    // Index 0 faces the caller, 1 the callee; each [rtp, rtcp].
    socks: [[UdpSocket; 2]; 2],
    mut control: mpsc::UnboundedReceiver<Control>,
    stats: Arc<StreamStats>,
    mut tap: Option<Arc<dyn Tap>>,
) {
    let mut latch: [[Latch; 2]; 2] = Default::default();
    // One receive buffer per socket, reused for every packet.
    let mut bufs = Box::new([[[0u8; MAX_DATAGRAM]; 2]; 2]);
    // An announcement being played to the caller: packets left, next send time.
    let mut player: Option<(
        std::collections::VecDeque<Bytes>,
        tokio::time::Instant,
        tokio::sync::oneshot::Sender<()>,
    )> = None;
    loop {
        let next_play = player.as_ref().map(|p| p.1);
        let [[b00, b01], [b10, b11]] = &mut *bufs;
        let (side, kind, res) = tokio::select! {
            r = socks[0][0].recv_from(b00) => (0, 0, r),
            r = socks[1][0].recv_from(b10) => (1, 0, r),
            r = socks[0][1].recv_from(b01) => (0, 1, r),
            r = socks[1][1].recv_from(b11) => (1, 1, r),
            _ = tokio::time::sleep_until(next_play.unwrap_or_else(tokio::time::Instant::now)), if next_play.is_some() => {
                if let Some((queue, next, _)) = player.as_mut() {
                    if let (Some(pkt), Some(dst)) = (queue.pop_front(), latch[0][0].target()) {
                        let _ = socks[0][0].send_to(&pkt, dst).await;
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
                match c {
                    Some(Control::Peer { side, rtp, rtcp }) => {
                        let i = side.index();
                        if rtp.is_some() { latch[i][0].signalled = rtp; }
                        if rtcp.is_some() { latch[i][1].signalled = rtcp; }
                        // A new address from signalling (re-INVITE) may move the peer.
                        for l in latch[i].iter_mut() { l.last_seen = None; }
                        continue;
                    }
                    Some(Control::Tap(t)) => { tap = t; continue; }
                    Some(Control::Play(packets, done)) => {
                        player = Some((packets.into(), tokio::time::Instant::now(), done));
                        continue;
                    }
                    None => return,
                }
            }
        };
        let (len, src) = match res {
            Ok(r) => r,
            // ICMP errors surface as receive errors on Linux; skip them.
            Err(_) => continue,
        };
        let pkt = &bufs[side][kind][..len];
        let now = Instant::now();
        stats.last_rx_ms.store(
            now.saturating_duration_since(epoch()).as_millis() as u64,
            Ordering::Relaxed,
        );
        if !latch[side][kind].accept(src, now) {
            stats.foreign_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let other = 1 - side;
        let Some(dst) = latch[other][kind].target() else {
            continue;
        };
        if socks[other][kind].send_to(pkt, dst).await.is_err() {
            continue;
        }
        let rtcp = kind == 1 || is_rtcp(pkt);
        if rtcp {
            stats.rtcp_packets[side].fetch_add(1, Ordering::Relaxed);
        } else {
            stats.rtp_packets[side].fetch_add(1, Ordering::Relaxed);
            stats.rtp_bytes[side].fetch_add(pkt.len() as u64, Ordering::Relaxed);
            if let Some(tap) = &tap {
                tap.offer(Side::from_index(side), Bytes::copy_from_slice(pkt), now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ports::PortPool;

    #[tokio::test]
    async fn relays_and_latches() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 32000, 32010);
        let s = Stream::start(pool.allocate().unwrap(), pool.allocate().unwrap(), None).unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to_caller_side: SocketAddr = ([127, 0, 0, 1], s.caller_port).into();
        let to_callee_side: SocketAddr = ([127, 0, 0, 1], s.callee_port).into();
        s.set_peer(Side::Callee, Some(b.local_addr().unwrap()), None);
        let pkt = [0x80u8, 8, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4, 0xd5, 0xd5];
        a.send_to(&pkt, to_caller_side).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = b.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &pkt);
        assert_eq!(from, to_callee_side);
        // The callee answers without signalling: it goes to the caller's latched source.
        b.send_to(&pkt, to_callee_side).await.unwrap();
        let (n, _) = a.recv_from(&mut buf).await.unwrap();
        assert_eq!(n, pkt.len());
        // A stranger sending to the caller-facing port right away is ignored.
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(&pkt, to_caller_side).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(s.stats.foreign_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(s.stats.rtp_packets[0].load(Ordering::Relaxed), 1);
        assert_eq!(s.stats.rtp_packets[1].load(Ordering::Relaxed), 1);
        drop(s);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.in_use(), 0);
    }

    #[tokio::test]
    async fn telephone_events_and_muxed_rtcp_pass_unchanged() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 32100, 32110);
        let s = Stream::start(pool.allocate().unwrap(), pool.allocate().unwrap(), None).unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // rtcp-mux on the callee's side: its RTCP address is its RTP address.
        let b_addr = b.local_addr().unwrap();
        s.set_peer(Side::Callee, Some(b_addr), Some(b_addr));
        let to_proxy: SocketAddr = ([127, 0, 0, 1], s.caller_port).into();
        // RFC 4733 event (PT 101, marker, digit 5, end bit) and an RTCP SR (PT 200).
        let dtmf = [
            0x80u8, 0xE5, 0, 9, 0, 0, 1, 0, 1, 2, 3, 4, 5, 0x8A, 0x03, 0x20,
        ];
        let sr = [
            0x80u8, 200, 0, 6, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0,
        ];
        let mut buf = [0u8; 64];
        for pkt in [&dtmf[..], &sr[..]] {
            a.send_to(pkt, to_proxy).await.unwrap();
            let (n, _) = tokio::time::timeout(Duration::from_secs(2), b.recv_from(&mut buf))
                .await
                .expect("relayed")
                .unwrap();
            assert_eq!(&buf[..n], pkt, "relayed bytes differ");
        }
        // The relay counts on its media thread after the send: give it a moment.
        for _ in 0..100 {
            if s.stats.rtcp_packets[0].load(Ordering::Relaxed) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(s.stats.rtp_packets[0].load(Ordering::Relaxed), 1);
        assert_eq!(s.stats.rtcp_packets[0].load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_new_source_takes_over_only_after_a_quiet_period() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 32200, 32210);
        let s = Stream::start(pool.allocate().unwrap(), pool.allocate().unwrap(), None).unwrap();
        let first = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let moved = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.set_peer(Side::Callee, Some(b.local_addr().unwrap()), None);
        let to_proxy: SocketAddr = ([127, 0, 0, 1], s.caller_port).into();
        let pkt = [0x80u8, 8, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4, 0xd5];
        first.send_to(&pkt, to_proxy).await.unwrap();
        moved.send_to(&pkt, to_proxy).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(s.stats.foreign_dropped.load(Ordering::Relaxed), 1);
        // After the latched source has been quiet, the new one (a NAT rebinding) is taken.
        tokio::time::sleep(RELATCH_QUIET).await;
        moved.send_to(&pkt, to_proxy).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(s.stats.rtp_packets[0].load(Ordering::Relaxed), 2);
        // Packets for the caller now go to the new source.
        b.send_to(&pkt, SocketAddr::from(([127, 0, 0, 1], s.callee_port)))
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), moved.recv_from(&mut buf))
            .await
            .expect("to the new source")
            .unwrap();
        assert_eq!(n, pkt.len());
    }
}
