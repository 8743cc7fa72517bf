//! Hostile SIP framing and start lines against the real proxy: an overflowing
//! Content-Length over TCP must neither spin the CPU nor keep the connection,
//! conflicting Content-Lengths and control characters in the Request-URI are
//! answered 400 with nothing reaching the PBX, a double-CRLF keep-alive is
//! answered with CRLF, and Max-Forwards 0 is refused with 483 on every path
//! into a call, including an INVITE a finished call hands back to the router.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

/// utime + stime of a process in clock ticks (fields 14 and 15 of /proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // The command name may contain spaces; fields are counted after its ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Reads from a TCP stream until the peer closes it or `wait` passes; returns
/// what arrived and whether it was closed.
fn read_until_close(s: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    let end = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => break,
        }
    }
    (got, false)
}

/// A request with the headers every SIP request needs; `extra` lines go
/// before the blank line (include Content-Length there when wanted).
fn request(
    start: &str,
    proto: &str,
    me: SocketAddr,
    branch: &str,
    cid: &str,
    extra: &str,
) -> String {
    let method = start.split(' ').next().unwrap();
    format!(
        "{start}\r\n\
         Via: SIP/2.0/{proto} {me};branch={branch}\r\n\
         From: <sip:mallory@{me}>;tag=t{branch}\r\n\
         To: <sip:200@127.0.0.1>\r\n\
         Call-ID: {cid}\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sip:mallory@{me}>\r\n\
         {extra}\r\n"
    )
}

fn sdp(me: SocketAddr) -> String {
    let ip = me.ip();
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    )
}

/// Status codes of the SIP responses in a UDP socket's queue within `wait`
/// (stops early at a final response), with the raw texts.
fn udp_codes(sock: &UdpSocket, wait: Duration) -> Vec<(u16, String)> {
    let end = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            break;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let code = text
            .strip_prefix("SIP/2.0 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        out.push((code, text));
        if code >= 200 {
            break;
        }
    }
    out
}

/// Whatever arrives at a socket within `wait`.
fn udp_drain(sock: &UdpSocket, wait: Duration) -> Vec<String> {
    udp_codes(sock, wait).into_iter().map(|(_, t)| t).collect()
}

#[test]
fn overflowing_content_length_over_tcp_neither_spins_nor_stops_calls() {
    let proxy = Proxy::start();
    let sip = proxy.sip_addr();
    // 2^64 - 52: added to the header length it wraps to an empty frame.
    let attack = b"OPTIONS sip:a@b SIP/2.0\r\nl: 18446744073709551564\r\n\r\n";
    let mut conns: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect_timeout(&sip, Duration::from_secs(3)).expect("connect");
            s.write_all(attack).expect("write");
            s
        })
        .collect();
    // The same attack with the headers a 400 needs: answered, then closed.
    let me = SocketAddr::from((PROXY_IP, 5));
    let answerable = request(
        "OPTIONS sip:a@b SIP/2.0",
        "TCP",
        me,
        "z9hG4bK-wrap",
        "wrap@x",
        "l: 18446744073709551564\r\n",
    );
    let mut fifth = TcpStream::connect_timeout(&sip, Duration::from_secs(3)).expect("connect");
    fifth.write_all(answerable.as_bytes()).expect("write");

    let hz = clock_ticks_per_second();
    let before = cpu_ticks(proxy.pid());
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(3));
    let used = (cpu_ticks(proxy.pid()) - before) as f64 / hz as f64;
    let share = used / t0.elapsed().as_secs_f64();

    let mut open = 0;
    for s in conns.iter_mut() {
        if !read_until_close(s, Duration::from_secs(2)).1 {
            open += 1;
        }
    }
    let (answer, closed) = read_until_close(&mut fifth, Duration::from_secs(2));
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        share < 0.3,
        "the proxy used {:.0} % of a core for 3 s after the overflowing Content-Length\n{}",
        share * 100.0,
        proxy.log_tail(30)
    );
    assert_eq!(open, 0, "{open} of 4 attacking connections were left open");
    assert!(
        answer.starts_with("SIP/2.0 400 "),
        "no 400 for an answerable overflowing request: {answer:?}\n{}",
        proxy.log_tail(30)
    );
    assert!(closed, "the connection stayed open after the 400");

    // Calls still go through.
    let out = proxy.call(pair("basic")).run();
    out.assert_success();
}

#[test]
fn double_crlf_keepalive_is_answered_and_a_request_after_it_works() {
    let proxy = Proxy::start();
    let sip = proxy.sip_addr();
    let mut s = TcpStream::connect_timeout(&sip, Duration::from_secs(3)).expect("connect");
    s.write_all(b"\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut pong = [0u8; 2];
    s.read_exact(&mut pong)
        .expect("an answer to the CRLFCRLF ping");
    assert_eq!(&pong, b"\r\n");
    let me = s.local_addr().unwrap();
    let opt = request(
        "OPTIONS sip:a@127.0.0.1 SIP/2.0",
        "TCP",
        me,
        "z9hG4bK-ka",
        "ka@x",
        "Content-Length: 0\r\n",
    );
    // Leading CRLFs before a request are allowed.
    s.write_all(format!("\r\n{opt}").as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).expect("an answer to OPTIONS");
    assert!(
        buf[..n].starts_with(b"SIP/2.0 200 "),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

/// Requests that must be refused with 400 and never reach the PBX.
#[test]
fn bare_cr_in_uri_and_conflicting_content_lengths_get_400() {
    let proxy = Proxy::start();
    let sip = proxy.sip_addr();
    let pbx = UdpSocket::bind(proxy.pbx_addr()).expect("bind PBX address");
    let caller = UdpSocket::bind((TRUNK_IP, 0)).unwrap();
    let me = caller.local_addr().unwrap();
    let body = sdp(me);
    let cases = [
        (
            "bare CR in the Request-URI",
            request(
                &format!("INVITE sip:100\r@{sip} SIP/2.0"),
                "UDP",
                me,
                "z9hG4bK-cr",
                "cr@x",
                &format!(
                    "Max-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n",
                    body.len()
                ),
            ) + &body,
        ),
        (
            "NUL in the Request-URI",
            request(
                &format!("INVITE sip:100\0@{sip} SIP/2.0"),
                "UDP",
                me,
                "z9hG4bK-nul",
                "nul@x",
                &format!(
                    "Max-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n",
                    body.len()
                ),
            ) + &body,
        ),
        (
            "two Content-Length headers",
            request(
                &format!("INVITE sip:100@{sip} SIP/2.0"),
                "UDP",
                me,
                "z9hG4bK-two",
                "two@x",
                &format!(
                    "Max-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\nl: 0\r\n",
                    body.len()
                ),
            ) + &body,
        ),
    ];
    let mut failures = Vec::new();
    for (what, text) in &cases {
        caller.send_to(text.as_bytes(), sip).unwrap();
        let got = udp_codes(&caller, Duration::from_secs(2));
        if got.last().map(|(c, _)| *c) != Some(400) {
            failures.push(format!(
                "{what}: expected 400, got {:?}",
                got.iter().map(|(c, _)| c).collect::<Vec<_>>()
            ));
        }
    }
    let leaked = udp_drain(&pbx, Duration::from_secs(1));
    assert!(
        failures.is_empty() && leaked.is_empty(),
        "{}\nreached the PBX: {leaked:#?}\n{}",
        failures.join("\n"),
        proxy.log_tail(30)
    );

    // Over TCP the conflicting lengths cannot be framed: 400, then close.
    let mut s = TcpStream::connect_timeout(&sip, Duration::from_secs(3)).expect("connect");
    let tme = s.local_addr().unwrap();
    let text = request(
        "OPTIONS sip:a@127.0.0.1 SIP/2.0",
        "TCP",
        tme,
        "z9hG4bK-tcp2",
        "tcp2@x",
        "Content-Length: 0\r\nContent-Length: 20\r\n",
    );
    s.write_all(text.as_bytes()).unwrap();
    let (answer, closed) = read_until_close(&mut s, Duration::from_secs(3));
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("SIP/2.0 400 "), "{answer:?}");
    assert!(
        closed,
        "connection left open after conflicting Content-Lengths"
    );
}

/// A new INVITE with Max-Forwards 0 is refused; so is one that reuses the
/// Call-ID of a call that has ended (after a 401), which a finished call
/// hands back to the router.
#[test]
fn max_forwards_zero_gets_483_on_new_and_rerouted_invites() {
    let proxy = Proxy::start();
    let sip = proxy.sip_addr();
    let pbx = UdpSocket::bind(proxy.pbx_addr()).expect("bind PBX address");
    let caller = UdpSocket::bind((TRUNK_IP, 0)).unwrap();
    let me = caller.local_addr().unwrap();
    let body = sdp(me);
    let invite = |branch: &str, cseq: u32, mf: u8| {
        request(
            &format!("INVITE sip:100@{sip} SIP/2.0"),
            "UDP",
            me,
            branch,
            "reroute@x",
            &format!(
                "Max-Forwards: {mf}\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n",
                body.len()
            ),
        )
        .replace("CSeq: 1 INVITE", &format!("CSeq: {cseq} INVITE"))
            + &body
    };

    // A fresh INVITE with Max-Forwards 0.
    let fresh = invite("z9hG4bK-mf0", 1, 0).replace("reroute@x", "fresh@x");
    caller.send_to(fresh.as_bytes(), sip).unwrap();
    let got = udp_codes(&caller, Duration::from_secs(2));
    assert_eq!(got.last().map(|(c, _)| *c), Some(483), "{got:?}");

    // A call the PBX answers 401.
    caller
        .send_to(invite("z9hG4bK-first", 1, 70).as_bytes(), sip)
        .unwrap();
    let mut buf = [0u8; 65536];
    pbx.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let (n, from) = pbx.recv_from(&mut buf).expect("the INVITE reaches the PBX");
    let inv = String::from_utf8_lossy(&buf[..n]).into_owned();
    let header = |name: &str| {
        inv.lines()
            .find(|l| {
                l.to_ascii_lowercase()
                    .starts_with(&format!("{}:", name.to_ascii_lowercase()))
            })
            .unwrap_or_else(|| panic!("no {name} in {inv}"))
            .to_string()
    };
    let unauthorized = format!(
        "SIP/2.0 401 Unauthorized\r\n{}\r\n{}\r\n{};tag=pbx1\r\n{}\r\n{}\r\n\
         WWW-Authenticate: Digest realm=\"x\", nonce=\"1\"\r\nContent-Length: 0\r\n\r\n",
        header("Via"),
        header("From"),
        header("To"),
        header("Call-ID"),
        header("CSeq"),
    );
    pbx.send_to(unauthorized.as_bytes(), from).unwrap();
    let got = udp_codes(&caller, Duration::from_secs(3));
    let (code, text) = got.last().cloned().unwrap_or_default();
    assert_eq!(code, 401, "the caller did not get the 401: {got:?}");
    let to = text
        .lines()
        .find(|l| l.starts_with("To:"))
        .expect("To in 401")
        .to_string();
    let ack = format!(
        "ACK sip:100@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-first\r\n\
         Max-Forwards: 70\r\nFrom: <sip:mallory@{me}>;tag=tz9hG4bK-first\r\n{to}\r\n\
         Call-ID: reroute@x\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    caller.send_to(ack.as_bytes(), sip).unwrap();
    thread::sleep(Duration::from_millis(300));

    // The retry on the same Call-ID, with Max-Forwards 0.
    let retry = invite("z9hG4bK-second", 2, 0).replace("tag=tz9hG4bK-second", "tag=tz9hG4bK-first");
    caller.send_to(retry.as_bytes(), sip).unwrap();
    let got = udp_codes(&caller, Duration::from_secs(3));
    let codes: Vec<u16> = got.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        codes.last(),
        Some(&483),
        "the re-routed INVITE with Max-Forwards 0 was not refused: {codes:?}\n{}",
        proxy.log_tail(40)
    );
    let leaked: Vec<String> = udp_drain(&pbx, Duration::from_millis(500))
        .into_iter()
        .filter(|m| m.starts_with("INVITE "))
        .collect();
    assert!(leaked.is_empty(), "forwarded to the PBX: {leaked:#?}");
}
