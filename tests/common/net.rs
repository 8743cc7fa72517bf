//! Loopback ports for parallel tests and the kernel's socket table: which
//! UDP/TCP sockets are bound, and RTP arrival proven by receive queues
//! (`RtpWatch`), plus the polling helper `wait_until`.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Ports handed out by `free_ports` come from this window, below Linux's
/// ephemeral range (32768-60999) so that the kernel's own client ports never
/// collide with them.
const PORT_WINDOW: (u32, u32) = (20000, 32000);

/// `n` consecutive ports, each free for UDP and TCP on every address at the
/// moment of the check, returned as the first one. Each process starts at its
/// own offset and never hands out a port twice, so parallel tests (and other
/// test processes on the machine) do not collide.
pub fn free_ports(n: u16) -> u16 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let span = PORT_WINDOW.1 - PORT_WINDOW.0;
    let next = NEXT.get_or_init(|| AtomicU32::new((std::process::id().wrapping_mul(7919)) % span));
    let n = u32::from(n.max(1));
    for _ in 0..2000 {
        let offset = next.fetch_add(n, Ordering::Relaxed) % span;
        if offset + n > span {
            continue;
        }
        let base = PORT_WINDOW.0 + offset;
        let mut held = Vec::new();
        let all_free = (base..base + n).all(|p| {
            let p = p as u16;
            let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, p));
            match (UdpSocket::bind(any), TcpListener::bind(any)) {
                (Ok(u), Ok(t)) => {
                    held.push((u, t));
                    true
                }
                _ => false,
            }
        });
        drop(held);
        if all_free {
            return base as u16;
        }
    }
    panic!("no block of {n} free ports found in {PORT_WINDOW:?}");
}

/// One free port (UDP and TCP).
pub fn free_port() -> u16 {
    free_ports(1)
}

// ---------------------------------------------------------------------------
// The kernel's socket table
// ---------------------------------------------------------------------------

/// One UDP socket's queue as /proc/net/udp shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpSocketStats {
    /// Bytes waiting in the receive queue (kernel accounting).
    pub rx_queue: u64,
    /// Datagrams dropped because the queue was full.
    pub drops: u64,
}

fn parse_proc_addr(field: &str) -> Option<SocketAddrV4> {
    let (ip, port) = field.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The kernel prints the address as a host-order number of the
    // network-order bytes; our machines are little-endian.
    Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_le_bytes()), port))
}

/// Queue state of the UDP socket(s) bound to exactly `addr` (summed when
/// several share it), or None when nothing is bound there.
pub fn udp_socket_stats(addr: SocketAddrV4) -> Option<UdpSocketStats> {
    let table = fs::read_to_string("/proc/net/udp").ok()?;
    let mut found: Option<UdpSocketStats> = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 13 || parse_proc_addr(f[1]) != Some(addr) {
            continue;
        }
        let rx = f[4]
            .split_once(':')
            .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok())
            .unwrap_or(0);
        let drops = f[f.len() - 1].parse().unwrap_or(0);
        let s = found.get_or_insert_with(UdpSocketStats::default);
        s.rx_queue += rx;
        s.drops += drops;
    }
    found
}

/// Whether something is bound to `addr` over UDP (or listening over TCP).
pub fn is_bound(addr: SocketAddrV4, tcp: bool) -> bool {
    if !tcp {
        return udp_socket_stats(addr).is_some();
    }
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() > 3 && f[3] == "0A" && parse_proc_addr(f[1]) == Some(addr)
    })
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// What arrived at one RTP port while it was watched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaSeen {
    pub addr: Option<SocketAddrV4>,
    /// Largest receive queue seen (bytes).
    pub max_rx_queue: u64,
    /// Datagrams dropped for a full queue (last value seen).
    pub drops: u64,
    /// Number of samples in which the socket existed.
    pub samples: u32,
}

impl MediaSeen {
    /// True when datagrams reached the port.
    pub fn received(&self) -> bool {
        self.max_rx_queue > 0 || self.drops > 0
    }
}

/// Watches RTP ports in the background to prove that packets reached them.
///
/// SIPp 3.6.1 streams `rtp_stream` audio from its `-mp` socket, the port it
/// writes into the SDP via `[rtpstream_audio_port]`, and never reads that
/// socket: its "RTP IN" counter stays 0. The kernel's receive queue (and its
/// drop counter, once the queue is full) on that socket is the evidence that
/// the peer's RTP arrived at the advertised m= port.
pub struct RtpWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<MediaSeen>>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl RtpWatch {
    pub fn start(addrs: &[SocketAddrV4]) -> RtpWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(
            addrs
                .iter()
                .map(|a| MediaSeen {
                    addr: Some(*a),
                    ..MediaSeen::default()
                })
                .collect::<Vec<_>>(),
        ));
        let (stop2, seen2, addrs) = (stop.clone(), seen.clone(), addrs.to_vec());
        let handle = thread::spawn(move || loop {
            for (i, a) in addrs.iter().enumerate() {
                if let Some(s) = udp_socket_stats(*a) {
                    let mut seen = seen2.lock().unwrap();
                    let m = &mut seen[i];
                    m.max_rx_queue = m.max_rx_queue.max(s.rx_queue);
                    m.drops = m.drops.max(s.drops);
                    m.samples += 1;
                }
            }
            if stop2.load(Ordering::Relaxed) {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        });
        RtpWatch {
            stop,
            seen,
            handle: Some(handle),
        }
    }

    /// Stops watching; one entry per address, in the order given to `start`.
    pub fn finish(mut self) -> Vec<MediaSeen> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for RtpWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A TCP connection to `to` from loopback address `from` (std cannot bind
/// before connecting; tokio's TcpSocket can, on a small private runtime),
/// as a blocking std stream.
pub fn tcp_from(from: [u8; 4], to: SocketAddr) -> std::net::TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::from((from, 0))).unwrap();
        s.connect(to).await.unwrap().into_std().unwrap()
    });
    s.set_nonblocking(false).unwrap();
    s
}
