//! Tests of the TCP connection table: slow readers, bounded queues, pings,
//! responses that never open connections.

use super::*;
use crate::sip::transport::{Transport, TrustedPeers};

const OPTIONS: &[u8] =
    b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n";

async fn transport(limits: TcpLimits) -> (Arc<Transport>, mpsc::Receiver<Inbound>) {
    let stats = Arc::new(TransportStats::default());
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Transport::bind(any, limits, TrustedPeers::default(), stats)
        .await
        .expect("bind")
}

#[tokio::test]
async fn a_peer_that_stops_reading_loses_its_connection_after_the_write_timeout() {
    let limits = TcpLimits {
        write_timeout: Duration::from_millis(500),
        send_queue: 100_000,
        send_queue_bytes: usize::MAX,
        ..Default::default()
    };
    let (t, mut rx) = transport(limits).await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut client = sock.connect(t.local_addr()).await.unwrap();
    client.write_all(OPTIONS).await.unwrap();
    let flow = rx.recv().await.expect("framed").flow;
    // Far more than the socket buffers hold; the client never reads.
    let big = vec![b'x'; 60_000];
    for _ in 0..300 {
        t.send(flow, big.clone())
            .await
            .expect("queued without waiting");
    }
    let slow = || t.stats().tcp_closed_slow.load(Ordering::Relaxed);
    let until = Instant::now() + Duration::from_secs(10);
    while slow() == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(slow(), 1, "the stalled write did not close the connection");
    let until = Instant::now() + Duration::from_secs(5);
    while t.stats().tcp_open.load(Ordering::Relaxed) != 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(t.stats().tcp_open.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn queued_bytes_are_bounded_for_a_peer_that_never_reads() {
    let limits = TcpLimits {
        write_timeout: Duration::from_secs(3600),
        send_queue: 100_000,
        send_queue_bytes: 200_000,
        ..Default::default()
    };
    let (t, mut rx) = transport(limits).await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut client = sock.connect(t.local_addr()).await.unwrap();
    client.write_all(OPTIONS).await.unwrap();
    let flow = rx.recv().await.expect("framed").flow;
    let big = vec![b'x'; 60_000];
    let mut refused = None;
    // The socket buffers take a few MB first; then the queue fills.
    for n in 0..1000 {
        if t.send(flow, big.clone()).await.is_err() {
            refused = Some(n);
            break;
        }
        // Let the writer move what the kernel takes.
        tokio::task::yield_now().await;
    }
    assert!(
        refused.is_some(),
        "60 MB queued for a peer that never reads"
    );
    assert_eq!(t.stats().tcp_closed_slow.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_double_crlf_ping_gets_one_crlf_pong() {
    let (t, _rx) = transport(TcpLimits::default()).await;
    let mut client = TcpStream::connect(t.local_addr()).await.unwrap();
    client.write_all(b"\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(3), client.read(&mut buf))
        .await
        .expect("pong in time")
        .unwrap();
    assert_eq!(&buf[..n], b"\r\n");
}

#[tokio::test]
async fn a_response_never_opens_a_connection() {
    let (t, _rx) = transport(TcpLimits::default()).await;
    let nowhere = Flow {
        addr: SocketAddr::from(([127, 0, 0, 1], 9)),
        proto: Proto::Tcp,
    };
    let r = t.send(nowhere, b"SIP/2.0 200 OK\r\n\r\n".to_vec()).await;
    assert!(r.is_err());
    assert_eq!(t.stats().tcp_open.load(Ordering::Relaxed), 0);
}
