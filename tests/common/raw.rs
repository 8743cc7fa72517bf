//! Raw SIP over UDP for tests that play a peer themselves (a stranger, or a
//! PBX whose received INVITE is inspected): sockets, a G.711 INVITE and an
//! OPTIONS, and collecting what arrives.

use super::ua::Msg;
use super::{metric_sum, Proxy};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A loopback address that is neither the proxy, the PBX nor the trunk.
pub const STRANGER: &str = "127.0.0.9";

/// A UDP socket on `ip` (any port) with a short read timeout.
pub fn sock(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).expect("bind test socket");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// Every SIP message `s` receives within `dur`.
pub fn receive(s: &UdpSocket, dur: Duration) -> Vec<Msg> {
    let end = Instant::now() + dur;
    let mut buf = [0u8; 65536];
    let mut out = Vec::new();
    while Instant::now() < end {
        if let Ok(n) = s.recv(&mut buf) {
            out.push(Msg(String::from_utf8_lossy(&buf[..n]).to_string()));
        }
    }
    out
}

/// The start lines of `msgs`.
pub fn first_lines(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .map(|m| m.0.lines().next().unwrap_or("").to_string())
        .collect()
}

/// An INVITE with a PCMA offer from `me` (user `from`) to `to`@proxy, plus `extra` header lines.
pub fn invite(
    me: SocketAddr,
    proxy: SocketAddr,
    call_id: &str,
    from: &str,
    to: &str,
    extra: &str,
) -> String {
    let ip = me.ip();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    );
    format!(
        "INVITE sip:{to}@{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{call_id};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{from}@{ip}>;tag=t-{call_id}\r\nTo: <sip:{to}@{proxy}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:{from}@{me}>\r\n{extra}\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// An out-of-dialog OPTIONS from `me` to the proxy.
pub fn options(me: SocketAddr, proxy: SocketAddr, call_id: &str) -> String {
    format!(
        "OPTIONS sip:ping@{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{call_id};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=p-{call_id}\r\nTo: <sip:ping@{proxy}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// `callrec_untrusted_requests_total` of `proxy`.
pub fn untrusted_count(proxy: &Proxy) -> f64 {
    metric_sum(&proxy.metrics(), "callrec_untrusted_requests_total")
}

/// The INVITE the PBX-side (or trunk-side) socket receives for the call from `from_user`.
pub fn relayed_invite(at: &UdpSocket, from_user: &str) -> Msg {
    let end = Instant::now() + Duration::from_secs(3);
    let mut seen = Vec::new();
    while Instant::now() < end {
        for m in receive(at, Duration::from_millis(200)) {
            if m.0.starts_with("INVITE ") && m.header("From").is_some_and(|f| f.contains(from_user))
            {
                return m;
            }
            seen.push(m);
        }
    }
    panic!(
        "no INVITE from {from_user} arrived; saw {:?}",
        first_lines(&seen)
    );
}
