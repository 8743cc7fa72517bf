//! TCP signalling under attack: a peer that never reads, thousands of idle
//! connections, slowloris, descriptor exhaustion. Each test plays the attacker
//! against the real binary over loopback and checks what a user would notice:
//! calls over UDP still go through, the proxy closes the offending connections,
//! its descriptors and CPU stay bounded, and the counters on /metrics say why.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// Opens TCP connections from a chosen loopback address (std cannot bind
/// before connecting; tokio's TcpSocket can, on a small private runtime).
struct Dialer {
    rt: tokio::runtime::Runtime,
}

impl Dialer {
    fn new() -> Dialer {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Dialer { rt }
    }

    /// A blocking stream from `ip` to `to`; `rcvbuf` shrinks the receive
    /// buffer so that a client that never reads fills up quickly.
    fn connect(
        &self,
        ip: Ipv4Addr,
        to: SocketAddr,
        rcvbuf: Option<u32>,
    ) -> std::io::Result<TcpStream> {
        self.rt.block_on(async {
            let s = tokio::net::TcpSocket::new_v4()?;
            if let Some(n) = rcvbuf {
                s.set_recv_buffer_size(n)?;
            }
            s.bind(SocketAddr::from((ip, 0)))?;
            let st = tokio::time::timeout(Duration::from_secs(3), s.connect(to))
                .await
                .map_err(|_| std::io::Error::new(ErrorKind::TimedOut, "connect timed out"))??;
            let st = st.into_std()?;
            st.set_nonblocking(false)?;
            Ok(st)
        })
    }
}

/// An out-of-dialog OPTIONS over TCP; `pad` extra Via headers of ~500 bytes
/// each make the proxy's answer (which echoes every Via) as large.
fn options(from: SocketAddr, to: SocketAddr, n: usize, pad: usize) -> Vec<u8> {
    let mut m = format!(
        "OPTIONS sip:ping@{to} SIP/2.0\r\n\
         Via: SIP/2.0/TCP {from};branch=z9hG4bK-tcp-{n}\r\n"
    );
    for i in 0..pad {
        m.push_str(&format!(
            "Via: SIP/2.0/TCP 127.0.0.9:5060;branch=z9hG4bK-pad-{n}-{i};x={}\r\n",
            "p".repeat(440)
        ));
    }
    m.push_str(&format!(
        "Max-Forwards: 70\r\n\
         From: <sip:probe@{from}>;tag=t{n}\r\n\
         To: <sip:ping@{to}>\r\n\
         Call-ID: tcp-limits-{n}-{}@{}\r\n\
         CSeq: {} OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        from.port(),
        from.ip(),
        n + 1
    ));
    m.into_bytes()
}

/// Reads one response (our OPTIONS answers carry no body); None on timeout or close.
fn read_response(s: &mut TcpStream, wait: Duration) -> Option<String> {
    let end = Instant::now() + wait;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        s.set_read_timeout(Some(
            end.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .ok()?;
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(String::from_utf8_lossy(&raw[..p]).into_owned());
        }
    }
    None
}

/// Reads (and discards) until the proxy closes the connection; false if it
/// is still open after `wait`.
fn wait_closed(s: &mut TcpStream, wait: Duration) -> bool {
    let end = Instant::now() + wait;
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < end {
        let _ = s.set_read_timeout(Some(
            end.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ));
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Open file descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(usize::MAX)
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // Fields after the ")" that ends the command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// CPU share of one core the process used over `span`.
fn cpu_share(pid: u32, span: Duration) -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let t0 = cpu_ticks(pid);
    thread::sleep(span);
    (cpu_ticks(pid) - t0) as f64 / hz / span.as_secs_f64()
}

/// A TCP client at the trunk's address that floods requests and never reads
/// its answers must not stall signalling: a SIPp call over UDP still
/// succeeds, and the proxy closes the flooding connection.
#[test]
fn client_that_never_reads_cannot_stall_signalling() {
    let proxy = Proxy::start();
    let sip = proxy.sip_addr();
    let dialer = Dialer::new();
    let mut flood = dialer
        .connect(TRUNK_IP, sip, Some(4096))
        .expect("connect from the trunk address");
    let from = flood.local_addr().unwrap();
    let mut writer = flood.try_clone().unwrap();
    let sender = thread::spawn(move || {
        // Stops when the proxy stops reading (write blocks) or closes it.
        let _ = writer.set_write_timeout(Some(Duration::from_secs(3)));
        let mut sent = 0usize;
        for n in 0..6000 {
            if writer.write_all(&options(from, sip, n, 16)).is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    // Let the proxy's answers pile up before the call.
    thread::sleep(Duration::from_secs(2));
    let out = proxy
        .call(pair("basic"))
        .timeout(Duration::from_secs(25))
        .run();
    let sent = sender.join().unwrap();
    eprintln!("flooding client sent {sent} requests");
    out.assert_success();
    assert!(
        wait_closed(&mut flood, Duration::from_secs(30)),
        "the proxy kept the connection of a client that never reads\n{}",
        proxy.log_tail(40)
    );
    let m = proxy.metrics();
    assert!(
        metric_sum(&m, "callrec_tcp_closed_slow_total") >= 1.0,
        "closing the slow reader was not counted: {m:#?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || metric_sum(
            &proxy.metrics(),
            "callrec_tcp_connections_open"
        ) == 0.0),
        "open TCP connection gauge did not return to 0"
    );
}

/// 2,000 idle TCP connections from ten addresses: the connection limits hold
/// (the proxy's descriptors stay bounded), the trunk can still connect over
/// TCP, OPTIONS over UDP is answered and a SIPp call succeeds.
#[test]
fn two_thousand_idle_connections_are_bounded() {
    let max_total = 300usize;
    let proxy = Proxy::builder()
        .arg("--tcp-max-connections")
        .arg(&max_total.to_string())
        .arg("--tcp-max-per-source")
        .arg("50")
        .start();
    let pid = proxy.pid();
    let sip = proxy.sip_addr();
    let baseline = fd_count(pid);
    let dialer = Dialer::new();
    let mut held = Vec::new();
    let mut failed = 0usize;
    let mut peak = 0usize;
    for i in 0..2000u32 {
        let ip = Ipv4Addr::new(127, 0, 0, 10 + (i % 10) as u8);
        match dialer.connect(ip, sip, None) {
            Ok(s) => held.push(s),
            Err(_) => failed += 1,
        }
        if i % 100 == 0 {
            peak = peak.max(fd_count(pid));
        }
    }
    thread::sleep(Duration::from_secs(2));
    for _ in 0..5 {
        peak = peak.max(fd_count(pid));
        thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "held {} connections ({failed} connects failed); proxy fds: baseline {baseline}, peak {peak}",
        held.len()
    );
    assert!(
        peak <= baseline + max_total + 20,
        "the proxy holds {peak} descriptors (baseline {baseline}, limit {max_total} connections)"
    );
    let m = proxy.metrics();
    assert!(
        metric_sum(&m, "callrec_tcp_connections_open") <= max_total as f64,
        "{m:#?}"
    );
    assert!(
        metric_sum(&m, "callrec_tcp_refused_total") >= 1000.0,
        "refusals not counted: {m:#?}"
    );
    // The trunk still gets a connection and an answer while strangers fill the table.
    let mut trunk = dialer.connect(TRUNK_IP, sip, None).expect("trunk connects");
    let from = trunk.local_addr().unwrap();
    trunk.write_all(&options(from, sip, 1, 0)).unwrap();
    let r = read_response(&mut trunk, Duration::from_secs(5));
    assert!(
        r.as_deref().is_some_and(|r| r.starts_with("SIP/2.0 200")),
        "the trunk got no answer over TCP: {r:?}\n{}",
        proxy.log_tail(30)
    );
    assert!(
        sip_options_answered(sip, Duration::from_secs(3)),
        "UDP OPTIONS unanswered"
    );
    let out = proxy
        .call(pair("basic"))
        .timeout(Duration::from_secs(25))
        .run();
    out.assert_success();
    drop(held);
}

/// Slowloris: a message whose header trickles in a byte at a time, and a
/// stranger's connection that never sends anything, are closed after the
/// header timeout; a connection idle after a complete message is closed
/// after the idle timeout. Connections from the trunk's address are kept.
#[test]
fn slow_and_idle_connections_are_closed_but_not_the_trunks() {
    let proxy = Proxy::builder()
        .arg("--tcp-header-timeout")
        .arg("2")
        .arg("--tcp-idle-timeout")
        .arg("4")
        .start();
    let sip = proxy.sip_addr();
    let dialer = Dialer::new();

    let mut slow = dialer
        .connect(Ipv4Addr::new(127, 0, 0, 30), sip, None)
        .unwrap();
    let mut trickle = slow.try_clone().unwrap();
    let trickler = thread::spawn(move || {
        let _ = trickle.write_all(b"OPTIONS sip:a@b SIP/2.0\r\nSubject: ");
        for _ in 0..30 {
            thread::sleep(Duration::from_millis(500));
            if trickle.write_all(b"a").is_err() {
                break;
            }
        }
    });
    let mut silent = dialer
        .connect(Ipv4Addr::new(127, 0, 0, 31), sip, None)
        .unwrap();
    let mut idle = dialer
        .connect(Ipv4Addr::new(127, 0, 0, 32), sip, None)
        .unwrap();
    let idle_from = idle.local_addr().unwrap();
    idle.write_all(&options(idle_from, sip, 1, 0)).unwrap();
    assert!(read_response(&mut idle, Duration::from_secs(5)).is_some());
    let mut trunk = dialer.connect(TRUNK_IP, sip, None).unwrap();
    let trunk_from = trunk.local_addr().unwrap();
    trunk.write_all(&options(trunk_from, sip, 2, 0)).unwrap();
    assert!(read_response(&mut trunk, Duration::from_secs(5)).is_some());
    let trunk_last = Instant::now();
    // The trunk may open a connection ahead of need and send nothing yet.
    let mut trunk_early = dialer.connect(TRUNK_IP, sip, None).unwrap();

    assert!(
        wait_closed(&mut slow, Duration::from_secs(10)),
        "a header trickling in a byte at a time kept the connection open\n{}",
        proxy.log_tail(30)
    );
    assert!(
        wait_closed(&mut silent, Duration::from_secs(10)),
        "a connection that never sent anything was kept"
    );
    assert!(
        wait_closed(&mut idle, Duration::from_secs(12)),
        "an idle connection from a stranger was kept past the idle timeout"
    );
    let early_from = trunk_early.local_addr().unwrap();
    trunk_early
        .write_all(&options(early_from, sip, 4, 0))
        .unwrap();
    let r = read_response(&mut trunk_early, Duration::from_secs(5));
    assert!(
        r.as_deref().is_some_and(|r| r.starts_with("SIP/2.0 200")),
        "the trunk's silent connection was closed by the header timeout: {r:?}"
    );
    // Well past the idle timeout since the trunk's last message: still open.
    let quiet = Duration::from_secs(9);
    if let Some(rest) = quiet.checked_sub(trunk_last.elapsed()) {
        thread::sleep(rest);
    }
    trunk.write_all(&options(trunk_from, sip, 3, 0)).unwrap();
    let r = read_response(&mut trunk, Duration::from_secs(5));
    assert!(
        r.as_deref().is_some_and(|r| r.starts_with("SIP/2.0 200")),
        "the trunk's idle connection was closed: {r:?}\n{}",
        proxy.log_tail(30)
    );
    trickler.join().unwrap();
    let m = proxy.metrics();
    assert!(
        metric_sum(&m, "callrec_tcp_header_timeouts_total") >= 2.0,
        "{m:#?}"
    );
    assert!(
        metric_sum(&m, "callrec_tcp_idle_timeouts_total") >= 1.0,
        "{m:#?}"
    );
}

/// RFC 5626 keep-alive: a double-CRLF ping on TCP gets a single CRLF pong,
/// and the connection still carries requests afterwards.
#[test]
fn double_crlf_ping_gets_crlf_pong() {
    let proxy = Proxy::start();
    let sip = proxy.sip_addr();
    let mut s = Dialer::new()
        .connect(Ipv4Addr::new(127, 0, 0, 33), sip, None)
        .unwrap();
    s.write_all(b"\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(&buf[..n], b"\r\n", "no CRLF pong to a double-CRLF ping");
    let from = s.local_addr().unwrap();
    s.write_all(&options(from, sip, 1, 0)).unwrap();
    let r = read_response(&mut s, Duration::from_secs(5));
    assert!(r.is_some_and(|r| r.starts_with("SIP/2.0 200")));
}

/// Descriptor exhaustion: with the proxy's RLIMIT_NOFILE just above what it
/// uses, connections beyond it make accept() fail with EMFILE; the proxy must
/// back off instead of spinning, and serve TCP again once descriptors free up.
#[test]
fn accept_failure_backs_off_and_recovers() {
    let mut proxy = Proxy::builder()
        .arg("--tcp-max-connections")
        .arg("5000")
        .arg("--tcp-max-per-source")
        .arg("5000")
        .start();
    let pid = proxy.pid();
    let sip = proxy.sip_addr();
    let soft = fd_count(pid) + 16;
    let st = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={soft}:{soft}"),
        ])
        .status()
        .expect("run prlimit");
    assert!(st.success(), "prlimit failed");
    let dialer = Dialer::new();
    let mut held = Vec::new();
    for _ in 0..60 {
        if let Ok(s) = dialer.connect(Ipv4Addr::new(127, 0, 0, 40), sip, None) {
            held.push(s);
        }
    }
    thread::sleep(Duration::from_secs(1));
    assert!(
        fd_count(pid) >= soft - 1,
        "the proxy never ran out of descriptors"
    );
    let share = cpu_share(pid, Duration::from_secs(3));
    eprintln!(
        "proxy CPU while out of descriptors: {:.0} % of a core",
        share * 100.0
    );
    assert!(
        share < 0.15,
        "the proxy spins when accept() fails: {:.0} % of a core over 3 s",
        share * 100.0
    );
    assert!(proxy.is_running());
    drop(held);
    let mut ok = false;
    let end = Instant::now() + Duration::from_secs(15);
    while !ok && Instant::now() < end {
        thread::sleep(Duration::from_millis(500));
        if let Ok(mut s) = dialer.connect(Ipv4Addr::new(127, 0, 0, 41), sip, None) {
            let from = s.local_addr().unwrap();
            let _ = s.write_all(&options(from, sip, 1, 0));
            ok = read_response(&mut s, Duration::from_secs(2))
                .is_some_and(|r| r.starts_with("SIP/2.0 200"));
        }
    }
    assert!(
        ok,
        "no TCP answer after descriptors were freed\n{}",
        proxy.log_tail(30)
    );
    let m = proxy.metrics();
    assert!(
        metric_sum(&m, "callrec_tcp_accept_errors_total") >= 1.0,
        "{m:#?}"
    );
}

/// A Content-Length near the top of the integer range (the sum with the
/// header length overflows) is a framing error: each such connection is
/// closed, the proxy does not spin, and a call still goes through.
#[test]
fn overflowing_content_length_is_closed_without_spinning() {
    let proxy = Proxy::start();
    let pid = proxy.pid();
    let sip = proxy.sip_addr();
    let dialer = Dialer::new();
    let mut conns = Vec::new();
    for i in 0..4 {
        let mut s = dialer
            .connect(Ipv4Addr::new(127, 0, 0, 50 + i), sip, None)
            .unwrap();
        s.write_all(b"OPTIONS sip:a@b SIP/2.0\r\nl: 18446744073709551564\r\n\r\n")
            .unwrap();
        conns.push(s);
    }
    thread::sleep(Duration::from_secs(1));
    let share = cpu_share(pid, Duration::from_secs(3));
    assert!(
        share < 0.15,
        "the proxy spins on an overflowing Content-Length: {:.0} % of a core",
        share * 100.0
    );
    for s in &mut conns {
        assert!(
            wait_closed(s, Duration::from_secs(5)),
            "a connection with an unframeable Content-Length stayed open\n{}",
            proxy.log_tail(30)
        );
    }
    proxy
        .call(pair("basic"))
        .timeout(Duration::from_secs(25))
        .run()
        .assert_success();
}
