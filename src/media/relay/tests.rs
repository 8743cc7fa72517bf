//! The relay against real sockets on loopback: who is relayed, who is dropped
//! and counted, and how a source is learned.

use super::*;
use crate::media::ports::PortPool;
use tokio::net::UdpSocket;

fn pcma() -> PayloadTypes {
    PayloadTypes::from_formats(&["8".into(), "101".into()])
}

fn start(pool: &Arc<PortPool>, learning: Learning) -> Stream {
    Stream::start(
        pool.allocate().unwrap(),
        pool.allocate().unwrap(),
        None,
        learning,
    )
    .unwrap()
}

/// Waits (bounded, 5 s: a stall test may hold the shared media thread for
/// most of a second) until `f` holds; the relay counts on its own thread.
pub(super) async fn settle(f: impl Fn() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running stream between the signalled caller `a` and callee `b`, and
/// a stranger on another loopback address.
struct Peers {
    s: Stream,
    a: UdpSocket,
    b: UdpSocket,
    stranger: UdpSocket,
}

impl Peers {
    async fn new(pool: &Arc<PortPool>, learning: Learning) -> Peers {
        let s = start(pool, learning);
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let stranger = UdpSocket::bind("127.0.0.9:0").await.unwrap();
        s.set_peer(Side::Caller, Some(a.local_addr().unwrap()), None, pcma());
        s.set_peer(Side::Callee, Some(b.local_addr().unwrap()), None, pcma());
        Peers { s, a, b, stranger }
    }

    /// The stream's port facing the caller.
    fn caller_side(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.s.caller_port).into()
    }

    /// The stream's port facing the callee.
    fn callee_side(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.s.callee_port).into()
    }

    fn count(&self, counter: &[AtomicU64; 2], side: usize) -> u64 {
        counter[side].load(Ordering::Relaxed)
    }
}

/// Whether a datagram waits at `sock`, asked of the kernel itself: tokio's
/// `try_recv_from` answers "nothing" without asking while its reactor has
/// not yet seen the socket become readable.
pub(super) fn holds_datagram(sock: &UdpSocket) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    // SAFETY: a one-byte buffer that outlives the call, on a socket we own;
    // MSG_PEEK leaves the datagram where it is.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_DONTWAIT | libc::MSG_PEEK,
        )
    };
    n >= 0
}

/// The next datagram `sock` receives (2 s at most), with its sender.
async fn recv(sock: &UdpSocket, what: &str) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 256];
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("nothing received: {what}"))
        .unwrap();
    (buf[..n].to_vec(), from)
}

#[tokio::test]
async fn relays_between_the_signalled_peers_and_drops_a_stranger() {
    let pool = PortPool::new("127.0.0.1".parse().unwrap(), 32000, 32010);
    let learning = Learning::default();
    let total = learning.foreign_total.clone();
    let p = Peers::new(&pool, learning).await;
    let pkt = [0x80u8, 8, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4, 0xd5, 0xd5];
    p.a.send_to(&pkt, p.caller_side()).await.unwrap();
    let (got, from) = recv(&p.b, "relayed to the callee").await;
    assert_eq!(got, pkt);
    assert_eq!(from, p.callee_side());
    p.b.send_to(&pkt, p.callee_side()).await.unwrap();
    assert_eq!(recv(&p.a, "relayed to the caller").await.0, pkt);
    // A stranger sending to the caller-facing port is dropped and counted.
    p.stranger.send_to(&pkt, p.caller_side()).await.unwrap();
    let st = &p.s.stats;
    settle(|| p.count(&st.foreign_dropped, 0) == 1).await;
    assert_eq!(p.count(&st.foreign_dropped, 0), 1);
    assert_eq!(p.count(&st.foreign_dropped, 1), 0);
    assert_eq!(total.load(Ordering::Relaxed), 1);
    assert_eq!(p.count(&st.rtp_packets, 0), 1);
    assert_eq!(p.count(&st.rtp_packets, 1), 1);
    // The media thread closes the sockets when it takes the stop; another
    // test may be holding it just now.
    drop(p);
    settle(|| pool.in_use() == 0).await;
    assert_eq!(pool.in_use(), 0);
}
#[tokio::test]
async fn telephone_events_and_muxed_rtcp_pass_unchanged() {
    let pool = PortPool::new("127.0.0.1".parse().unwrap(), 32100, 32110);
    let s = start(&pool, Learning::default());
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // rtcp-mux on both sides: the RTCP address is the RTP address.
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    s.set_peer(Side::Caller, Some(a_addr), Some(a_addr), pcma());
    s.set_peer(Side::Callee, Some(b_addr), Some(b_addr), pcma());
    let to_proxy: SocketAddr = ([127, 0, 0, 1], s.caller_port).into();
    // RFC 4733 event (PT 101, marker, digit 5, end bit) and an RTCP SR (PT 200).
    let dtmf = [
        0x80u8, 0xE5, 0, 9, 0, 0, 1, 0, 1, 2, 3, 4, 5, 0x8A, 0x03, 0x20,
    ];
    let sr = [
        0x80u8, 200, 0, 6, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    for pkt in [&dtmf[..], &sr[..]] {
        a.send_to(pkt, to_proxy).await.unwrap();
        assert_eq!(recv(&b, "relayed").await.0, pkt, "relayed bytes differ");
    }
    settle(|| s.stats.rtcp_packets[0].load(Ordering::Relaxed) == 1).await;
    assert_eq!(s.stats.rtp_packets[0].load(Ordering::Relaxed), 1);
    assert_eq!(s.stats.rtcp_packets[0].load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_stranger_never_takes_over_a_silent_peer() {
    let pool = PortPool::new("127.0.0.1".parse().unwrap(), 32300, 32310);
    let p = Peers::new(&pool, Learning::default()).await;
    let st = &p.s.stats;
    let pkt = [0x80u8, 8, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4, 0xd5];
    p.a.send_to(&pkt, p.caller_side()).await.unwrap();
    settle(|| p.count(&st.rtp_packets, 0) == 1).await;
    // The caller goes silent (a hold) for longer than any quiet period;
    // a stranger sends valid RTP with the negotiated payload type.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for seq in 2..12u8 {
        let foreign = [0x80u8, 8, 0, seq, 0, 0, 0, 160, 9, 9, 9, 9, 0xaa];
        p.stranger.send_to(&foreign, p.caller_side()).await.unwrap();
    }
    // Every one of them handled (and dropped), however long the media
    // thread was busy elsewhere: the checks below are not made too early.
    settle(|| p.count(&st.foreign_dropped, 0) == 10).await;
    assert_eq!(
        p.count(&st.foreign_dropped, 0),
        10,
        "the stranger was relayed"
    );
    assert_eq!(p.count(&st.rtp_packets, 0), 1, "the stranger was relayed");
    // The callee's media still goes to the caller, and the stranger has none
    // (loopback delivers during the relay's send: nothing is on its way).
    p.b.send_to(&pkt, p.callee_side()).await.unwrap();
    assert_eq!(recv(&p.a, "the callee's media to the caller").await.0, pkt);
    assert!(
        !holds_datagram(&p.stranger),
        "the stranger received the callee's media"
    );
    // The caller itself is still heard.
    p.a.send_to(&pkt, p.caller_side()).await.unwrap();
    assert_eq!(recv(&p.b, "the caller is relayed").await.0, pkt);
}
#[tokio::test]
async fn an_sdp_that_keeps_the_address_opens_no_door() {
    let pool = PortPool::new("127.0.0.1".parse().unwrap(), 32400, 32410);
    let p = Peers::new(&pool, Learning::default()).await;
    let pkt = [0x80u8, 8, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4, 0xd5];
    p.a.send_to(&pkt, p.caller_side()).await.unwrap();
    recv(&p.b, "the caller's first packet").await;
    // A re-INVITE with the same address; the stranger's packet comes first.
    p.s.set_peer(Side::Caller, Some(p.a.local_addr().unwrap()), None, pcma());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let foreign = [0x80u8, 8, 0, 7, 0, 0, 0, 160, 9, 9, 9, 9, 0xaa];
    p.stranger.send_to(&foreign, p.caller_side()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = [0x80u8, 8, 0, 2, 0, 0, 0, 160, 1, 2, 3, 4, 0xd5];
    p.a.send_to(&second, p.caller_side()).await.unwrap();
    assert_eq!(
        recv(&p.b, "the caller after the re-INVITE").await.0,
        second,
        "the callee got the stranger's packet after the caller's re-INVITE"
    );
}
#[tokio::test]
async fn foreign_packets_do_not_keep_a_silent_call_alive() {
    let pool = PortPool::new("127.0.0.1".parse().unwrap(), 32600, 32610);
    let p = Peers::new(&pool, Learning::default()).await;
    let st = &p.s.stats;
    let quiet_since = st.last_rx_ms.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let pkt = [0x80u8, 8, 0, 1, 0, 0, 0, 160, 9, 9, 9, 9, 0xaa];
    for port in [
        p.s.caller_port,
        p.s.caller_port + 1,
        p.s.callee_port,
        p.s.callee_port + 1,
    ] {
        p.stranger
            .send_to(&pkt, SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap();
    }
    let dropped = || p.count(&st.foreign_dropped, 0) + p.count(&st.foreign_dropped, 1);
    settle(|| dropped() == 4).await;
    assert_eq!(dropped(), 4);
    assert_eq!(
        st.last_rx_ms.load(Ordering::Relaxed),
        quiet_since,
        "a stranger's packets count as the call's media (RTP timeout never fires)"
    );
}
#[tokio::test]
async fn a_peer_behind_nat_is_learned_only_after_the_window() {
    let pool = PortPool::new("127.0.0.1".parse().unwrap(), 32200, 32210);
    let learning = Learning {
        // Long enough that the first packet is handled inside it on a busy machine.
        window: Duration::from_millis(1000),
        ..Learning::default()
    };
    let s = start(&pool, learning);
    // The caller's SDP names an address nothing sends from (a private one
    // behind its NAT); its packets leave from `nat`.
    let named = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let nat = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.set_peer(
        Side::Caller,
        Some(named.local_addr().unwrap()),
        None,
        pcma(),
    );
    s.set_peer(Side::Callee, Some(b.local_addr().unwrap()), None, pcma());
    let to_proxy: SocketAddr = ([127, 0, 0, 1], s.caller_port).into();
    let rtp = |seq: u8| [0x80u8, 8, 0, seq, 0, 0, 0, 160, 1, 2, 3, 4, 0xd5];
    nat.send_to(&rtp(1), to_proxy).await.unwrap();
    settle(|| s.stats.foreign_dropped[0].load(Ordering::Relaxed) == 1).await;
    assert_eq!(
        s.stats.rtp_packets[0].load(Ordering::Relaxed),
        0,
        "learned inside the window"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for seq in 2..6 {
        nat.send_to(&rtp(seq), to_proxy).await.unwrap();
    }
    // Learned on the third packet in sequence: that one and the next are relayed.
    settle(|| s.stats.rtp_packets[0].load(Ordering::Relaxed) == 2).await;
    assert_eq!(s.stats.rtp_packets[0].load(Ordering::Relaxed), 2);
    // The callee's media now goes to the learned source.
    b.send_to(&rtp(1), SocketAddr::from(([127, 0, 0, 1], s.callee_port)))
        .await
        .unwrap();
    recv(&nat, "to the learned source").await;
}

#[tokio::test]
async fn a_new_address_in_an_sdp_replaces_the_old_source() {
    let pool = PortPool::new("127.0.0.1".parse().unwrap(), 32500, 32510);
    let s = start(&pool, Learning::default());
    let old = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let new = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.set_peer(Side::Caller, Some(old.local_addr().unwrap()), None, pcma());
    s.set_peer(Side::Callee, Some(b.local_addr().unwrap()), None, pcma());
    let to_proxy: SocketAddr = ([127, 0, 0, 1], s.caller_port).into();
    let pkt = [0x80u8, 8, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4, 0xd5];
    old.send_to(&pkt, to_proxy).await.unwrap();
    settle(|| s.stats.rtp_packets[0].load(Ordering::Relaxed) == 1).await;
    s.set_peer(Side::Caller, Some(new.local_addr().unwrap()), None, pcma());
    tokio::time::sleep(Duration::from_millis(50)).await;
    old.send_to(&pkt, to_proxy).await.unwrap();
    settle(|| s.stats.foreign_dropped[0].load(Ordering::Relaxed) == 1).await;
    assert_eq!(
        s.stats.foreign_dropped[0].load(Ordering::Relaxed),
        1,
        "the old source still counts"
    );
    new.send_to(&pkt, to_proxy).await.unwrap();
    settle(|| s.stats.rtp_packets[0].load(Ordering::Relaxed) == 2).await;
    assert_eq!(s.stats.rtp_packets[0].load(Ordering::Relaxed), 2);
    b.send_to(&pkt, SocketAddr::from(([127, 0, 0, 1], s.callee_port)))
        .await
        .unwrap();
    recv(&new, "to the new address").await;
}

#[tokio::test]
async fn a_burst_with_a_stranger_inside_is_relayed_whole_and_in_order() {
    // The relay takes several queued datagrams per system call: a stranger's
    // packet in the middle of a burst must be dropped alone, and the party's
    // packets before and after it all relayed, in order.
    let pool = PortPool::new("127.0.0.1".parse().unwrap(), 32800, 32810);
    let p = Peers::new(&pool, Learning::default()).await;
    let st = &p.s.stats;
    let pkt = |seq: u8| [0x80u8, 8, 0, seq, 0, 0, 0, 160, 1, 2, 3, 4, 0xd5];
    // One packet first, so the caller's source is fixed before the burst.
    p.a.send_to(&pkt(0), p.caller_side()).await.unwrap();
    assert_eq!(recv(&p.b, "first packet").await.0, pkt(0));
    for seq in 1..=40u8 {
        p.a.send_to(&pkt(seq), p.caller_side()).await.unwrap();
        if seq % 3 == 0 {
            p.stranger
                .send_to(&pkt(200), p.caller_side())
                .await
                .unwrap();
        }
    }
    for seq in 1..=40u8 {
        assert_eq!(recv(&p.b, "burst packet").await.0, pkt(seq), "packet {seq}");
    }
    // The relay counts a packet just after sending it: the counts may trail
    // what `b` received by a moment (longer on a busy machine).
    settle(|| p.count(&st.foreign_dropped, 0) == 13 && p.count(&st.rtp_packets, 0) == 41).await;
    assert_eq!(p.count(&st.foreign_dropped, 0), 13);
    assert_eq!(p.count(&st.rtp_packets, 0), 41);
}

/// A recorder's tap that notes when each packet arrived, hands it on to a
/// recording if there is one, and stalls the media thread once, at the
/// `at`-th packet, as a thread the machine does not run for a while would.
struct StallOnce {
    fork: Option<crate::recorder::Fork>,
    at: usize,
    stall: Duration,
    arrivals: std::sync::Mutex<Vec<Instant>>,
}

impl StallOnce {
    fn new(fork: Option<crate::recorder::Fork>, at: usize, stall: Duration) -> Arc<StallOnce> {
        Arc::new(StallOnce {
            fork,
            at,
            stall,
            arrivals: Default::default(),
        })
    }

    fn seen(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }
}

impl Tap for StallOnce {
    fn offer(&self, from: Side, packet: Bytes, arrival: Instant) {
        if let Some(fork) = &self.fork {
            fork.offer(from, packet, arrival);
        }
        let seen = {
            let mut a = self.arrivals.lock().unwrap();
            a.push(arrival);
            a.len()
        };
        if seen == self.at {
            std::thread::sleep(self.stall);
        }
    }
}

#[tokio::test]
async fn packets_keep_their_arrival_time_through_a_stall_of_the_relay() {
    let pool = PortPool::new("127.0.0.1".parse().unwrap(), 32900, 32910);
    let p = Peers::new(&pool, Learning::default()).await;
    let tap = StallOnce::new(None, 1, Duration::from_millis(400));
    p.s.set_tap(Some(tap.clone()));
    let arrived = || tap.seen();
    let rtp = |seq: u8| [0x80u8, 8, 0, seq, 0, 0, 0, 160, 1, 2, 3, 4, 0xd5];
    p.a.send_to(&rtp(1), p.caller_side()).await.unwrap();
    settle(|| arrived() == 1).await;
    // The media thread now stands still; ten packets arrive 20 ms apart.
    for seq in 2..12 {
        p.a.send_to(&rtp(seq), p.caller_side()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    settle(|| arrived() == 11).await;
    let a = tap.arrivals.lock().unwrap().clone();
    assert_eq!(a.len(), 11, "every packet reached the tap");
    // The recorder places audio by arrival: a burst stamped when the thread
    // got going again would be late for its place and dropped.
    let spread = a[10].saturating_duration_since(a[1]);
    assert!(
        spread >= Duration::from_millis(150),
        "packets that arrived over ~200 ms during a stall of the relay were stamped {spread:?} apart"
    );
}

#[tokio::test]
async fn a_stall_of_the_relay_costs_no_audio_in_the_recording() {
    use crate::recorder::{encode_alaw, PayloadMap, Recorder, RecordingSpec};
    use crate::vocab::ChannelMode;
    let dir = tempfile::tempdir().unwrap();
    let pool = PortPool::new("127.0.0.1".parse().unwrap(), 32920, 32930);
    let p = Peers::new(&pool, Learning::default()).await;
    let mut spec = RecordingSpec::new(dir.path(), "stall", ChannelMode::Stereo);
    let t0 = Instant::now();
    spec.start = t0;
    let rec = Recorder::start(spec).unwrap();
    let map = PayloadMap::from_sdp("v=0\r\nm=audio 4000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n");
    rec.set_payload_map(Side::Caller, map);
    // Longer than the recorder's reorder window (200 ms).
    let stall = Duration::from_millis(450);
    let tap = StallOnce::new(Some(rec.fork()), 50, stall);
    p.s.set_tap(Some(tap.clone()));
    // Three seconds of the caller's audio, a packet every 20 ms (the first
    // 100 ms after the recording's start, so that all of its audio is after it).
    let value = encode_alaw(8000);
    for k in 0..150u32 {
        let mut pkt = vec![0x80u8, 8];
        pkt.extend_from_slice(&(k as u16).to_be_bytes());
        pkt.extend_from_slice(&(k * 160).to_be_bytes());
        pkt.extend_from_slice(&7u32.to_be_bytes());
        pkt.extend(std::iter::repeat_n(value, 160));
        tokio::time::sleep_until((t0 + Duration::from_millis(100 + 20 * u64::from(k))).into())
            .await;
        p.a.send_to(&pkt, p.caller_side()).await.unwrap();
    }
    // Every packet through the tap before the stream goes (another test may
    // be stalling the same media thread just now).
    for _ in 0..300 {
        if tap.seen() == 150 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(p);
    let out = rec.finish().unwrap();
    assert_eq!(out.caller.packets, 150, "{:?}", out.caller);
    // This test's own sends may run late on a busy machine (real delay to
    // the recorder, which may cost a packet or two); the stall's backlog
    // stamped at one instant cost 250 ms.
    let left_out_ms = out.caller.late_dropped * 20 + out.caller.trimmed_ms;
    assert!(
        left_out_ms <= 40,
        "audio that arrived during the stall was left out: {:?}",
        out.caller
    );
    let wav = out
        .files
        .iter()
        .find(|f| f.extension().is_some_and(|e| e == "wav"))
        .unwrap();
    let mut reader = hound::WavReader::open(wav).unwrap();
    let left: Vec<i16> = reader
        .samples::<i16>()
        .step_by(2)
        .map(|s| s.unwrap())
        .collect();
    let voiced = left.iter().filter(|s| s.unsigned_abs() > 4000).count() as u64;
    assert!(
        voiced + left_out_ms * 8 >= 150 * 160,
        "the caller's three seconds: {voiced} samples voiced, {left_out_ms} ms counted as left out"
    );
}

/// A recorder's tap that fails on the first packet it is offered.
struct Fails;

impl Tap for Fails {
    fn offer(&self, _: Side, _: Bytes, _: Instant) {
        panic!("a tap that fails (test)");
    }
}

#[tokio::test]
async fn a_stream_that_fails_takes_no_other_stream_down() {
    let pool = PortPool::new("127.0.0.1".parse().unwrap(), 33100, 33140);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // One more stream than there are media threads after the failing one:
    // at least one of them shares its thread.
    let failing = Peers::new(&pool, Learning::default()).await;
    failing.s.set_tap(Some(Arc::new(Fails)));
    let mut others = Vec::new();
    for _ in 0..threads {
        others.push(Peers::new(&pool, Learning::default()).await);
    }
    let rtp = |seq: u8| [0x80u8, 8, 0, seq, 0, 0, 0, 160, 1, 2, 3, 4, 0xd5];
    failing
        .a
        .send_to(&rtp(1), failing.caller_side())
        .await
        .unwrap();
    // The failing stream relays its packet, then fails in the tap and stops.
    recv(&failing.b, "the packet before the failure").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    for seq in 2..=4 {
        for p in &others {
            p.a.send_to(&rtp(seq), p.caller_side()).await.unwrap();
            assert_eq!(recv(&p.b, "another stream's packet").await.0, rtp(seq));
            p.b.send_to(&rtp(seq), p.callee_side()).await.unwrap();
            assert_eq!(recv(&p.a, "another stream's packet back").await.0, rtp(seq));
        }
    }
    // The failed stream was ended: its sockets are closed and its ports
    // back in the pool, so nothing can reach it and nothing is relayed.
    let ports_of_others = 2 * others.len();
    settle(|| pool.in_use() == ports_of_others).await;
    assert_eq!(
        pool.in_use(),
        ports_of_others,
        "the failed stream's ports are still held"
    );
    failing
        .a
        .send_to(&rtp(5), failing.caller_side())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let late =
        tokio::time::timeout(Duration::from_millis(200), failing.b.recv_from(&mut buf)).await;
    assert!(late.is_err(), "a failed stream relayed on");
    drop(failing);
}

/// A recorder's tap that holds the media thread on every packet it is offered.
struct Stalls(Duration);

impl Tap for Stalls {
    fn offer(&self, _: Side, _: Bytes, _: Instant) {
        std::thread::sleep(self.0);
    }
}

#[tokio::test]
async fn an_sdp_given_before_a_packet_arrives_applies_to_it_while_the_thread_is_busy() {
    let pool = PortPool::new("127.0.0.1".parse().unwrap(), 33200, 33240);
    let on_first_thread = || {
        let thread = MediaThreads::get().unwrap().first();
        let (caller, callee) = (pool.allocate().unwrap(), pool.allocate().unwrap());
        Stream::start_on(thread, caller, callee, None, Learning::default()).unwrap()
    };
    // Two streams on one media thread; the first holds the thread 300 ms
    // on each packet it relays.
    let busy = on_first_thread();
    let s = on_first_thread();
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let (busy_a, busy_b) = (
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    );
    busy.set_peer(
        Side::Caller,
        Some(busy_a.local_addr().unwrap()),
        None,
        pcma(),
    );
    busy.set_peer(
        Side::Callee,
        Some(busy_b.local_addr().unwrap()),
        None,
        pcma(),
    );
    busy.set_tap(Some(Arc::new(Stalls(Duration::from_millis(300)))));
    let (old, moved, b) = (
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    );
    let stranger = UdpSocket::bind("127.0.0.9:0").await.unwrap();
    s.set_peer(Side::Caller, Some(old.local_addr().unwrap()), None, pcma());
    s.set_peer(Side::Callee, Some(b.local_addr().unwrap()), None, pcma());
    let rtp = |seq: u8| [0x80u8, 8, 0, seq, 0, 0, 0, 160, 1, 2, 3, 4, 0xd5];
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The first packet holds the thread; meanwhile the busy stream's next
    // packet and a stranger's at the other stream make both ready for the
    // thread's next turn, in that order.
    busy_a
        .send_to(&rtp(1), addr(busy.caller_port))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    busy_a
        .send_to(&rtp(2), addr(busy.caller_port))
        .await
        .unwrap();
    stranger
        .send_to(&rtp(1), addr(s.caller_port))
        .await
        .unwrap();
    // In that turn the busy stream's packet holds the thread again; while it
    // does, the caller of the other stream moves (an SDP) and sends from
    // its new address.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.set_peer(
        Side::Caller,
        Some(moved.local_addr().unwrap()),
        None,
        pcma(),
    );
    moved.send_to(&rtp(2), addr(s.caller_port)).await.unwrap();
    assert_eq!(recv(&b, "the moved caller's packet").await.0, rtp(2));
    assert_eq!(
        s.stats.foreign_dropped[0].load(Ordering::Relaxed),
        1,
        "only the stranger's packet is foreign"
    );
}
