//! A media thread's turn on loopback: a flood at one stream's socket is read
//! a bounded share at a time, so the thread's other streams are relayed in
//! between and a caller who floods delays nobody else's audio.

use super::tests::settle;
use super::*;
use crate::media::ports::PortPool;
use tokio::net::UdpSocket;

/// Holds the media thread once, on the first packet it is offered, so that
/// what arrives meanwhile waits in the sockets for the thread's next turns.
struct HoldFirst(AtomicU64);

impl Tap for HoldFirst {
    fn offer(&self, _: Side, _: Bytes, _: Instant) {
        if self.0.fetch_add(1, Ordering::Relaxed) == 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

#[tokio::test]
async fn a_flood_at_one_stream_does_not_hold_back_another_on_its_thread() {
    const FLOOD: u8 = 120;
    let pool = PortPool::new("127.0.0.1".parse().unwrap(), 33300, 33320);
    let on_first_thread = || {
        let thread = MediaThreads::get().unwrap().first();
        let (caller, callee) = (pool.allocate().unwrap(), pool.allocate().unwrap());
        Stream::start_on(thread, caller, callee, None, Learning::default()).unwrap()
    };
    let pcma = PayloadTypes::from_formats(&["8".into()]);
    let (flooded, quiet) = (on_first_thread(), on_first_thread());
    let (flooder, caller) = (
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    );
    // Both streams relay to one socket: the order in which it receives
    // their packets is the order in which the thread relayed them.
    let callee = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to_callee = Some(callee.local_addr().unwrap());
    flooded.set_peer(
        Side::Caller,
        Some(flooder.local_addr().unwrap()),
        None,
        pcma,
    );
    flooded.set_peer(Side::Callee, to_callee, None, pcma);
    quiet.set_peer(Side::Caller, Some(caller.local_addr().unwrap()), None, pcma);
    quiet.set_peer(Side::Callee, to_callee, None, pcma);
    let hold = Arc::new(HoldFirst(AtomicU64::new(0)));
    flooded.set_tap(Some(hold.clone()));
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    // The SSRC's last byte tells the streams apart.
    let rtp = |seq: u8, ssrc: u8| [0x80u8, 8, 0, seq, 0, 0, 0, 160, 0, 0, 0, ssrc, 0xd5];

    flooder
        .send_to(&rtp(0, 1), addr(flooded.caller_port))
        .await
        .unwrap();
    settle(|| hold.0.load(Ordering::Relaxed) == 1).await;
    assert_eq!(
        hold.0.load(Ordering::Relaxed),
        1,
        "the first packet reached the tap"
    );
    // The thread stands still: a flood queues at one stream, then one
    // packet at the other.
    for seq in 1..=FLOOD {
        flooder
            .send_to(&rtp(seq, 1), addr(flooded.caller_port))
            .await
            .unwrap();
    }
    caller
        .send_to(&rtp(1, 2), addr(quiet.caller_port))
        .await
        .unwrap();

    let mut flood_before = 0;
    let mut buf = [0u8; 64];
    loop {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), callee.recv_from(&mut buf))
            .await
            .expect("the quiet stream's packet was never relayed")
            .unwrap();
        if buf[..n] == rtp(1, 2) {
            break;
        }
        flood_before += 1;
    }
    // The rest of the flood follows: it was all queued (none lost, else
    // the order would prove nothing).
    let mut flood_after = 0;
    while flood_before + flood_after < usize::from(FLOOD) + 1 {
        tokio::time::timeout(Duration::from_secs(5), callee.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of the flood's {} packets were relayed",
                    flood_before + flood_after,
                    FLOOD + 1
                )
            })
            .unwrap();
        flood_after += 1;
    }
    // A turn reads a socket's share (16 batches of 2) and then the other
    // ready sockets; the whole flood first would put all of it ahead.
    assert!(
        flood_before < usize::from(FLOOD) / 2,
        "{flood_before} of the flood's {} packets were relayed before the other stream's one",
        FLOOD + 1
    );
}
