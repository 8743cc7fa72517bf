//! The relay between an SRTP side and a plain side on loopback: what each
//! side receives, what the recorder gets, and that a forged, tampered or
//! replayed packet is counted and goes nowhere.

use std::sync::Mutex;

use super::tests::{holds_datagram, settle};
use super::*;
use crate::media::ports::PortPool;
use crate::media::srtp::{MasterKey, Protection, Suite};
use tokio::net::UdpSocket;

/// Keeps every packet offered for recording.
#[derive(Default)]
struct Keep(Mutex<Vec<(Side, Vec<u8>)>>);

impl Tap for Keep {
    fn offer(&self, from: Side, packet: Bytes, _arrival: Instant) {
        self.0.lock().unwrap().push((from, packet.to_vec()));
    }
}

fn rtp(seq: u16, ssrc: u32, fill: u8) -> Vec<u8> {
    let mut p = vec![0x80, 8];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend(std::iter::repeat_n(fill, 160));
    p
}

async fn recv(sock: &UdpSocket, what: &str) -> Vec<u8> {
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("nothing received: {what}"))
        .unwrap();
    buf[..n].to_vec()
}

#[tokio::test]
async fn srtp_caller_plain_callee_records_the_clear_audio_and_drops_forgeries() {
    let pool = PortPool::new("127.0.0.1".parse().unwrap(), 32700, 32710);
    let keep = Arc::new(Keep::default());
    let s = Stream::start(
        pool.allocate().unwrap(),
        pool.allocate().unwrap(),
        Some(keep.clone()),
        Learning::default(),
    )
    .unwrap();
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let pts = PayloadTypes::from_formats(&["8".into()]);
    s.set_peer(Side::Caller, Some(a.local_addr().unwrap()), None, pts);
    s.set_peer(Side::Callee, Some(b.local_addr().unwrap()), None, pts);
    let caller_key = MasterKey::fresh(Suite::AesCm128HmacSha1_80);
    let ours = MasterKey::fresh(Suite::AesCm128HmacSha1_80);
    s.set_keys(
        Side::Caller,
        LegKeys::Keys {
            rx: caller_key.clone(),
            tx: ours.clone(),
        },
    );
    s.set_keys(Side::Callee, LegKeys::Plain);
    let to_caller_port: SocketAddr = ([127, 0, 0, 1], s.caller_port).into();
    let to_callee_port: SocketAddr = ([127, 0, 0, 1], s.callee_port).into();
    let mut caller_tx = Protection::new(caller_key.clone());
    let mut caller_rx = Protection::new(ours);
    // Sequence numbers cross the wrap.
    for (i, seq) in [65534u16, 65535, 0, 1].into_iter().enumerate() {
        let plain = rtp(seq, 0xabc, 0x10 + i as u8);
        let sealed = caller_tx.protect(&plain, false).unwrap();
        a.send_to(&sealed, to_caller_port).await.unwrap();
        assert_eq!(
            recv(&b, "the callee gets plain RTP").await,
            plain,
            "seq {seq}"
        );
    }
    // The callee's plain RTP reaches the caller encrypted with our key.
    let plain = rtp(9, 0xdef, 0x55);
    b.send_to(&plain, to_callee_port).await.unwrap();
    let got = recv(&a, "the caller gets SRTP").await;
    assert_ne!(
        &got[12..172],
        &plain[12..],
        "plain payload sent to the SRTP side"
    );
    assert_eq!(&caller_rx.unprotect(&got, false).unwrap()[..], &plain[..]);
    // A tampered packet, a replay and one under another key: counted, not relayed.
    let sealed = caller_tx.protect(&rtp(2, 0xabc, 0x77), false).unwrap();
    let mut tampered = sealed.to_vec();
    tampered[30] ^= 0x40;
    let mut forger = Protection::new(MasterKey::fresh(Suite::AesCm128HmacSha1_80));
    let forged = forger.protect(&rtp(3, 0xabc, 0x66), false).unwrap();
    for bad in [&tampered[..], &forged[..]] {
        a.send_to(bad, to_caller_port).await.unwrap();
    }
    a.send_to(&sealed, to_caller_port).await.unwrap();
    assert_eq!(recv(&b, "the genuine packet").await, rtp(2, 0xabc, 0x77));
    a.send_to(&sealed, to_caller_port).await.unwrap();
    settle(|| s.stats.auth_failed[0].load(Ordering::Relaxed) == 3).await;
    assert_eq!(s.stats.auth_failed[0].load(Ordering::Relaxed), 3);
    let mut buf = [0u8; 512];
    let nothing = tokio::time::timeout(Duration::from_millis(200), b.recv_from(&mut buf)).await;
    assert!(nothing.is_err(), "a refused packet was relayed");
    // The recorder saw the clear packets only: never a tampered or forged one.
    let kept = keep.0.lock().unwrap().clone();
    let from_caller: Vec<u8> = kept
        .iter()
        .filter(|(s, _)| *s == Side::Caller)
        .map(|(_, p)| p[12])
        .collect();
    assert_eq!(from_caller, vec![0x10, 0x11, 0x12, 0x13, 0x77]);
    assert!(kept.iter().any(|(s, p)| *s == Side::Callee && *p == plain));
}

#[tokio::test]
async fn an_srtp_side_without_keys_yet_passes_nothing() {
    let pool = PortPool::new("127.0.0.1".parse().unwrap(), 32720, 32730);
    // Two streams on one media thread: the second, plain on both sides,
    // tells when the thread is done with what reached the first.
    let on_first_thread = || {
        let thread = MediaThreads::get().unwrap().first();
        let (caller, callee) = (pool.allocate().unwrap(), pool.allocate().unwrap());
        Stream::start_on(thread, caller, callee, None, Learning::default()).unwrap()
    };
    let (s, barrier) = (on_first_thread(), on_first_thread());
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let pts = PayloadTypes::from_formats(&["8".into()]);
    s.set_peer(Side::Caller, Some(a.local_addr().unwrap()), None, pts);
    s.set_peer(Side::Callee, Some(b.local_addr().unwrap()), None, pts);
    s.set_keys(Side::Callee, LegKeys::Pending);
    let (c, d) = (
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    );
    barrier.set_peer(Side::Caller, Some(c.local_addr().unwrap()), None, pts);
    barrier.set_peer(Side::Callee, Some(d.local_addr().unwrap()), None, pts);
    let heard_before = s.stats.last_rx_ms.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let plain = rtp(1, 1, 0x20);
    a.send_to(&plain, SocketAddr::from(([127, 0, 0, 1], s.caller_port)))
        .await
        .unwrap();
    // The relay has taken the caller's packet (however long its thread was
    // busy elsewhere) once it counts the caller as heard.
    settle(|| s.stats.last_rx_ms.load(Ordering::Relaxed) != heard_before).await;
    assert_ne!(
        s.stats.last_rx_ms.load(Ordering::Relaxed),
        heard_before,
        "the caller's packet was never taken"
    );
    // The thread finishes with that packet before it reads another socket,
    // and a send on loopback is delivered before it returns: once the
    // barrier's packet is through, the first packet went wherever it went.
    let through = rtp(1, 2, 0x30);
    c.send_to(
        &through,
        SocketAddr::from(([127, 0, 0, 1], barrier.caller_port)),
    )
    .await
    .unwrap();
    assert_eq!(recv(&d, "the barrier stream's packet").await, through);
    assert!(
        !holds_datagram(&b),
        "plain RTP went to a side that negotiated SRTP"
    );
}
