//! Shared helpers for callrec's integration tests: real SIPp peers on loopback
//! (`Sipp`, `CallRun`), the proxy binary as a child process (`Proxy`), RTP
//! arrival checks from the kernel's socket table (`RtpWatch`), and a plain
//! `GET /metrics` with a Prometheus text parser.
//!
//! Nothing here uses the callrec library: tests drive the built binary and
//! observe it from outside, like a user would.
//!
//! Addresses follow the project's loopback plan: the proxy on 127.0.0.1, the
//! PBX side on 127.0.0.2, the trunk side on 127.0.0.3. Ports are picked per
//! test (bound and released) so tests run in parallel.

#![allow(dead_code)]

pub mod audio;
pub mod console;
pub mod raw;
pub mod ua;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the proxy listens in tests.
pub const PROXY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// The PBX side: calls from here are outgoing.
pub const PBX_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The trunk side: calls from here are incoming.
pub const TRUNK_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// The crate's root folder.
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `sip-scenarios/`: SIPp runs with this as its working folder, because the
/// scenarios name their audio files relative to it.
pub fn scenarios_dir() -> PathBuf {
    repo_dir().join("sip-scenarios")
}

// ---------------------------------------------------------------------------
// Temporary folders
// ---------------------------------------------------------------------------

/// A fresh folder under the system temp dir. Removed on drop, except when the
/// thread is panicking (a failing test): then it is kept and its path printed.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(prefix: &str) -> TestDir {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join("callrec-tests").join(format!(
            "{prefix}-{}-{}-{nanos:x}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// SIPp
// ---------------------------------------------------------------------------

/// The sipp binary, or a panic telling how to install it.
pub fn require_sipp() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("sipp"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "sipp (Debian package sip-tester) is not installed: run ./deploy/test.sh, \
             which installs the test peers and then runs the tests"
        )
    })
}

/// One SIPp process, described flag by flag. Build with the setters, then
/// `spawn()`. Output (stdout screens, stderr, error log, message log, `<log>`
/// actions) goes into `trace_dir`, and `SippOutcome::report()` shows it.
#[derive(Debug, Clone)]
pub struct Sipp {
    name: String,
    scenario: PathBuf,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    media: Option<(IpAddr, u16)>,
    calls: u32,
    rate: Option<f64>,
    limit: Option<u32>,
    timeout: Duration,
    service: Option<String>,
    keys: Vec<(String, String)>,
    transport: String,
    trace_msg: bool,
    extra: Vec<String>,
    trace_dir: Option<PathBuf>,
}

impl Sipp {
    /// `scenario` is a path relative to `sip-scenarios/` (e.g.
    /// `"basic/caller.xml"`) or absolute. `name` prefixes the trace files.
    pub fn new(name: &str, scenario: impl AsRef<Path>) -> Sipp {
        Sipp {
            name: name.to_string(),
            scenario: scenarios_dir().join(scenario.as_ref()),
            local: None,
            remote: None,
            media: None,
            calls: 1,
            rate: None,
            limit: None,
            timeout: Duration::from_secs(30),
            service: None,
            keys: Vec::new(),
            transport: "u1".into(),
            trace_msg: true,
            extra: Vec::new(),
            trace_dir: None,
        }
    }

    /// Own SIP address: `-i IP -p PORT -bind_local` (so packets leave from this IP).
    pub fn local(mut self, addr: SocketAddr) -> Sipp {
        self.local = Some(addr);
        self
    }

    /// Where a caller sends its requests (positional `HOST:PORT`). Not for a callee.
    pub fn remote(mut self, addr: SocketAddr) -> Sipp {
        self.remote = Some(addr);
        self
    }

    /// Media address and port: `-mi IP -mp PORT`. SIPp 3.6.1 binds PORT and
    /// PORT+2 at start and streams RTP from PORT, which is also the m= port.
    pub fn media(mut self, ip: IpAddr, port: u16) -> Sipp {
        self.media = Some((ip, port));
        self
    }

    /// `-m`: stop after this many calls (default 1).
    pub fn calls(mut self, m: u32) -> Sipp {
        self.calls = m;
        self
    }

    /// `-r`: calls per second (caller only).
    pub fn rate(mut self, r: f64) -> Sipp {
        self.rate = Some(r);
        self
    }

    /// `-l`: most simultaneous calls.
    pub fn limit(mut self, l: u32) -> Sipp {
        self.limit = Some(l);
        self
    }

    /// `-timeout Ns -timeout_error`: SIPp gives up and fails after this long
    /// (default 30 s); `wait()` kills it a little later if it still runs.
    pub fn timeout(mut self, t: Duration) -> Sipp {
        self.timeout = t;
        self
    }

    /// `-s`: the dialled number (user part of the request URI and To).
    pub fn service(mut self, s: &str) -> Sipp {
        self.service = Some(s.to_string());
        self
    }

    /// `-key NAME VALUE`; the callers need `caller` (the From user).
    pub fn key(mut self, name: &str, value: &str) -> Sipp {
        self.keys.push((name.to_string(), value.to_string()));
        self
    }

    /// `-t`: `u1` (UDP, default) or `t1` (TCP).
    pub fn transport(mut self, t: &str) -> Sipp {
        self.transport = t.to_string();
        self
    }

    /// Whether to write the full SIP message log (default on).
    pub fn trace_messages(mut self, on: bool) -> Sipp {
        self.trace_msg = on;
        self
    }

    /// Any further sipp argument.
    pub fn arg(mut self, a: &str) -> Sipp {
        self.extra.push(a.to_string());
        self
    }

    /// Folder for the trace files (default: a new `TestDir` that is leaked,
    /// i.e. kept).
    pub fn trace_dir(mut self, dir: &Path) -> Sipp {
        self.trace_dir = Some(dir.to_path_buf());
        self
    }

    fn file(&self, dir: &Path, what: &str) -> PathBuf {
        dir.join(format!("{}_{what}", self.name))
    }

    /// The argument list `spawn` passes to sipp (without the program name).
    pub fn args(&self, dir: &Path) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        if let Some(r) = self.remote {
            a.push(r.to_string());
        }
        a.extend(["-sf".into(), self.scenario.display().to_string()]);
        if let Some(l) = self.local {
            a.extend([
                "-i".into(),
                l.ip().to_string(),
                "-p".into(),
                l.port().to_string(),
                "-bind_local".into(),
            ]);
        }
        if let Some((ip, port)) = self.media {
            a.extend(["-mi".into(), ip.to_string(), "-mp".into(), port.to_string()]);
        }
        a.extend(["-t".into(), self.transport.clone()]);
        a.extend(["-m".into(), self.calls.to_string()]);
        if let Some(r) = self.rate {
            a.extend(["-r".into(), format!("{r}")]);
        }
        if let Some(l) = self.limit {
            a.extend(["-l".into(), l.to_string()]);
        }
        if let Some(s) = &self.service {
            a.extend(["-s".into(), s.clone()]);
        }
        for (k, v) in &self.keys {
            a.extend(["-key".into(), k.clone(), v.clone()]);
        }
        a.extend([
            "-timeout".into(),
            format!("{}s", self.timeout.as_secs().max(1)),
            "-timeout_error".into(),
            "-nostdin".into(),
            "-trace_err".into(),
            "-error_file".into(),
            self.file(dir, "errors.log").display().to_string(),
            "-trace_logs".into(),
            "-log_file".into(),
            self.file(dir, "logs.log").display().to_string(),
        ]);
        if self.trace_msg {
            a.extend([
                "-trace_msg".into(),
                "-message_file".into(),
                self.file(dir, "messages.log").display().to_string(),
            ]);
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Starts sipp as a child (not `-bg`) with `sip-scenarios/` as working folder.
    pub fn spawn(self) -> SippProcess {
        let sipp = require_sipp();
        let dir = match &self.trace_dir {
            Some(d) => d.clone(),
            None => {
                let d = TestDir::new(&format!("sipp-{}", self.name));
                let p = d.path().to_path_buf();
                std::mem::forget(d);
                p
            }
        };
        let args = self.args(&dir);
        let stdout = File::create(self.file(&dir, "stdout.log")).expect("sipp stdout file");
        let stderr = File::create(self.file(&dir, "stderr.log")).expect("sipp stderr file");
        let command = format!("sipp {}", args.join(" "));
        let child = Command::new(sipp)
            .args(&args)
            .current_dir(scenarios_dir())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
        SippProcess {
            child,
            deadline: Instant::now() + self.timeout + Duration::from_secs(10),
            command,
            dir,
            sipp: self,
        }
    }
}

/// A running sipp.
pub struct SippProcess {
    child: Child,
    sipp: Sipp,
    command: String,
    dir: PathBuf,
    deadline: Instant,
}

impl SippProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn command(&self) -> &str {
        &self.command
    }

    /// Waits until the SIP socket is bound (UDP, or TCP listening for `t1`),
    /// so a peer can send to it. False if sipp exited or `timeout` passed.
    pub fn wait_ready(&mut self, timeout: Duration) -> bool {
        let Some(SocketAddr::V4(local)) = self.sipp.local else {
            thread::sleep(Duration::from_millis(300));
            return true;
        };
        let tcp = self.sipp.transport.starts_with('t');
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            if is_bound(local, tcp) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Whether it already exited.
    pub fn finished(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits for the exit (up to its own -timeout plus 10 s, then kills it).
    pub fn wait(self) -> SippOutcome {
        let deadline = self.deadline;
        self.wait_until(deadline)
    }

    /// Waits at most `grace`, then kills it (used for a callee whose caller
    /// already failed, so the test does not sit out the whole timeout).
    pub fn wait_at_most(self, grace: Duration) -> SippOutcome {
        let deadline = (Instant::now() + grace).min(self.deadline);
        self.wait_until(deadline)
    }

    fn wait_until(mut self, deadline: Instant) -> SippOutcome {
        let mut killed = false;
        let status: Option<ExitStatus> = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    killed = true;
                    break self.child.wait().ok();
                }
                Ok(None) => thread::sleep(Duration::from_millis(50)),
                Err(_) => break None,
            }
        };
        SippOutcome {
            name: self.sipp.name.clone(),
            command: self.command.clone(),
            code: status.and_then(|s| s.code()),
            killed,
            dir: self.dir.clone(),
        }
    }
}

impl Drop for SippProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How a sipp run ended, with its files for the failure report.
#[derive(Debug, Clone)]
pub struct SippOutcome {
    pub name: String,
    pub command: String,
    /// The exit code (None when killed by a signal).
    pub code: Option<i32>,
    /// True when the helper had to kill it.
    pub killed: bool,
    pub dir: PathBuf,
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    let mut out = String::new();
    if from > 0 {
        let _ = writeln!(out, "[... {from} lines before ...]");
    }
    for l in &all[from..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// What sipp's exit code means (from `sipp -h`).
pub fn sipp_exit_meaning(code: Option<i32>) -> &'static str {
    match code {
        Some(0) => "all calls successful",
        Some(1) => "at least one call failed",
        Some(97) => "exit on internal command",
        Some(99) => "normal exit without calls processed",
        Some(255) => "fatal error",
        Some(254) => "fatal error binding a socket",
        None => "killed by a signal",
        _ => "unknown",
    }
}

impl SippOutcome {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.killed
    }

    pub fn file(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{}_{what}", self.name))
    }

    pub fn read(&self, what: &str) -> String {
        fs::read(self.file(what))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// A cumulative counter of sipp's final statistics screen, e.g.
    /// "Successful call" or "Failed call".
    pub fn stat(&self, counter: &str) -> Option<u64> {
        let out = self.read("stdout.log");
        out.lines()
            .rev()
            .find(|l| l.trim_start().starts_with(counter) && l.contains('|'))
            .and_then(|l| l.rsplit('|').next())
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn successful_calls(&self) -> Option<u64> {
        self.stat("Successful call")
    }

    pub fn failed_calls(&self) -> Option<u64> {
        self.stat("Failed call")
    }

    /// Everything useful to see why it failed: command, exit code, stderr,
    /// the error log, the final screens and the end of the message log.
    pub fn report(&self) -> String {
        let mut r = String::new();
        let _ = writeln!(
            r,
            "=== sipp {}: exit {:?} ({}){}",
            self.name,
            self.code,
            sipp_exit_meaning(self.code),
            if self.killed {
                ", killed after its timeout"
            } else {
                ""
            }
        );
        let _ = writeln!(
            r,
            "command (in {}): {}",
            scenarios_dir().display(),
            self.command
        );
        for (what, lines) in [
            ("stderr.log", 40),
            ("errors.log", 60),
            ("logs.log", 20),
            ("stdout.log", 80),
            ("messages.log", 120),
        ] {
            let text = self.read(what);
            if !text.trim().is_empty() {
                let _ = writeln!(
                    r,
                    "--- {} ---\n{}",
                    self.file(what).display(),
                    tail(&text, lines)
                );
            }
        }
        r
    }

    /// Panics with the report unless sipp exited 0.
    pub fn assert_success(&self) {
        assert!(
            self.success(),
            "sipp {} failed\n{}",
            self.name,
            self.report()
        );
    }
}

// ---------------------------------------------------------------------------
// Scenario pairs
// ---------------------------------------------------------------------------

/// Which way a call goes through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Trunk (127.0.0.3) calls the PBX (127.0.0.2).
    Incoming,
    /// PBX (127.0.0.2) calls the trunk (127.0.0.3).
    Outgoing,
}

impl Direction {
    pub fn caller_ip(self) -> Ipv4Addr {
        match self {
            Direction::Incoming => TRUNK_IP,
            Direction::Outgoing => PBX_IP,
        }
    }

    pub fn callee_ip(self) -> Ipv4Addr {
        match self {
            Direction::Incoming => PBX_IP,
            Direction::Outgoing => TRUNK_IP,
        }
    }

    /// Default (caller number, dialled number) for the direction.
    pub fn numbers(self) -> (&'static str, &'static str) {
        match self {
            Direction::Incoming => ("03012345678", "200"),
            Direction::Outgoing => ("201", "004989123456"),
        }
    }
}

/// A caller/callee scenario pair in `sip-scenarios/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    pub name: &'static str,
    /// Folder under sip-scenarios/ holding caller.xml and callee.xml.
    pub dir: &'static str,
    /// Whether both sides send RTP once the call is up.
    pub media: bool,
    pub direction: Direction,
}

/// Every pair: name, folder, RTP both ways?, default direction.
pub const PAIRS: &[Pair] = &[
    Pair {
        name: "basic",
        dir: "basic",
        media: true,
        direction: Direction::Incoming,
    },
    Pair {
        name: "callee-bye",
        dir: "callee-bye",
        media: true,
        direction: Direction::Incoming,
    },
    Pair {
        name: "cancel",
        dir: "cancel",
        media: false,
        direction: Direction::Incoming,
    },
    Pair {
        name: "busy",
        dir: "busy",
        media: false,
        direction: Direction::Incoming,
    },
    Pair {
        name: "early-media",
        dir: "early-media",
        media: true,
        direction: Direction::Incoming,
    },
    Pair {
        name: "hold",
        dir: "hold",
        media: true,
        direction: Direction::Incoming,
    },
    Pair {
        name: "callee-hold",
        dir: "callee-hold",
        media: true,
        direction: Direction::Incoming,
    },
    Pair {
        name: "late-offer",
        dir: "late-offer",
        media: true,
        direction: Direction::Incoming,
    },
    // The basic pair with the sides swapped: the PBX calls the trunk.
    Pair {
        name: "outgoing",
        dir: "basic",
        media: true,
        direction: Direction::Outgoing,
    },
    // The basic pair with 1 s of media, for -r 20 -m 200.
    Pair {
        name: "load",
        dir: "load",
        media: true,
        direction: Direction::Incoming,
    },
    // In-dialog INFO, MESSAGE, NOTIFY from the caller; INFO and UPDATE (hold)
    // from the callee. Signalling only.
    Pair {
        name: "dialog",
        dir: "dialog",
        media: false,
        direction: Direction::Incoming,
    },
    // REFER from the callee, 202, NOTIFY (sipfrag) back, the callee hangs up.
    Pair {
        name: "refer",
        dir: "refer",
        media: false,
        direction: Direction::Incoming,
    },
    // 100rel: reliable 183, PRACK whose RAck must name the callee leg's CSeq.
    Pair {
        name: "prack",
        dir: "prack",
        media: false,
        direction: Direction::Incoming,
    },
    // Compact header forms and two Via values in one line from the caller.
    Pair {
        name: "compact",
        dir: "compact",
        media: false,
        direction: Direction::Incoming,
    },
    // Reliable 183 + PRACK, then an UPDATE (hold) from the callee in the early dialog.
    Pair {
        name: "early-update",
        dir: "early-update",
        media: false,
        direction: Direction::Incoming,
    },
];

/// The pair called `name` (panics on an unknown name).
pub fn pair(name: &str) -> Pair {
    *PAIRS.iter().find(|p| p.name == name).unwrap_or_else(|| {
        panic!(
            "no scenario pair {name:?}; known: {:?}",
            PAIRS.iter().map(|p| p.name).collect::<Vec<_>>()
        )
    })
}

/// One run of a pair: callee first (waits until its socket is bound), then
/// the caller, both watched for RTP arrival on their m= ports.
///
/// `CallRun::direct(pair)` connects caller and callee without a proxy;
/// `Proxy::call(pair)` builds one that goes through the proxy.
#[derive(Debug, Clone)]
pub struct CallRun {
    pub pair: Pair,
    pub direction: Direction,
    /// Caller's own SIP address.
    pub caller_sip: SocketAddr,
    /// Callee's SIP address.
    pub callee_sip: SocketAddr,
    /// Where the caller sends its INVITEs (the proxy, or the callee directly).
    pub send_to: SocketAddr,
    pub caller_media_port: u16,
    pub callee_media_port: u16,
    pub calls: u32,
    pub rate: Option<f64>,
    pub limit: Option<u32>,
    pub timeout: Duration,
    /// sipp `-t` of the caller and of the callee: `u1` (UDP) or `t1` (TCP).
    pub caller_transport: String,
    pub callee_transport: String,
    pub caller_number: String,
    pub dialled: String,
}

impl CallRun {
    /// A run of `pair` in its own direction with every port freshly picked;
    /// `send_to` is the callee itself until changed with `via`.
    pub fn direct(pair: Pair) -> CallRun {
        let d = pair.direction;
        let callee_sip = SocketAddr::from((d.callee_ip(), free_port()));
        let (caller_number, dialled) = d.numbers();
        let load = pair.name == "load";
        CallRun {
            pair,
            direction: d,
            caller_sip: SocketAddr::from((d.caller_ip(), free_port())),
            callee_sip,
            send_to: callee_sip,
            caller_media_port: free_ports(4),
            callee_media_port: free_ports(4),
            calls: if load { 200 } else { 1 },
            rate: if load { Some(20.0) } else { None },
            limit: None,
            timeout: Duration::from_secs(if load { 90 } else { 30 }),
            caller_transport: "u1".into(),
            callee_transport: "u1".into(),
            caller_number: caller_number.into(),
            dialled: dialled.into(),
        }
    }

    /// Send the caller's requests to `addr` (the proxy).
    pub fn via(mut self, addr: SocketAddr) -> CallRun {
        self.send_to = addr;
        self
    }

    pub fn caller_at(mut self, addr: SocketAddr) -> CallRun {
        self.caller_sip = addr;
        self
    }

    pub fn callee_at(mut self, addr: SocketAddr) -> CallRun {
        self.callee_sip = addr;
        self
    }

    pub fn calls(mut self, m: u32) -> CallRun {
        self.calls = m;
        self
    }

    pub fn rate(mut self, r: f64) -> CallRun {
        self.rate = Some(r);
        self
    }

    pub fn limit(mut self, l: u32) -> CallRun {
        self.limit = Some(l);
        self
    }

    pub fn timeout(mut self, t: Duration) -> CallRun {
        self.timeout = t;
        self
    }

    /// `u1` (UDP) or `t1` (TCP), for both sides.
    pub fn transport(mut self, t: &str) -> CallRun {
        self.caller_transport = t.into();
        self.callee_transport = t.into();
        self
    }

    /// `u1` or `t1` for the caller only (e.g. TCP from the trunk, UDP to the PBX).
    pub fn caller_transport(mut self, t: &str) -> CallRun {
        self.caller_transport = t.into();
        self
    }

    pub fn numbers(mut self, caller: &str, dialled: &str) -> CallRun {
        self.caller_number = caller.into();
        self.dialled = dialled.into();
        self
    }

    pub fn caller_media(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.direction.caller_ip(), self.caller_media_port)
    }

    pub fn callee_media(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.direction.callee_ip(), self.callee_media_port)
    }

    /// The callee's sipp, as `run` starts it.
    pub fn callee_sipp(&self, dir: &Path) -> Sipp {
        Sipp::new(
            &format!("{}-callee", self.pair.name),
            format!("{}/callee.xml", self.pair.dir),
        )
        .local(self.callee_sip)
        .media(
            IpAddr::V4(self.direction.callee_ip()),
            self.callee_media_port,
        )
        .calls(self.calls)
        .timeout(self.timeout)
        .transport(&self.callee_transport)
        .trace_messages(self.calls <= 20)
        .trace_dir(dir)
    }

    /// The caller's sipp, as `run` starts it.
    pub fn caller_sipp(&self, dir: &Path) -> Sipp {
        let mut s = Sipp::new(
            &format!("{}-caller", self.pair.name),
            format!("{}/caller.xml", self.pair.dir),
        )
        .remote(self.send_to)
        .local(self.caller_sip)
        .media(
            IpAddr::V4(self.direction.caller_ip()),
            self.caller_media_port,
        )
        .calls(self.calls)
        .timeout(self.timeout)
        .transport(&self.caller_transport)
        .key("caller", &self.caller_number)
        .service(&self.dialled)
        .trace_messages(self.calls <= 20)
        .trace_dir(dir);
        if let Some(r) = self.rate {
            s = s.rate(r);
        }
        if let Some(l) = self.limit {
            s = s.limit(l);
        }
        s
    }

    /// Runs the pair to the end. Files go to a `TestDir` kept on failure.
    pub fn run(self) -> CallOutcome {
        let dir = TestDir::new(&format!("pair-{}", self.pair.name));
        let mut callee = self.callee_sipp(dir.path()).spawn();
        let ready = callee.wait_ready(Duration::from_secs(10));
        let watch = RtpWatch::start(&[self.caller_media(), self.callee_media()]);
        if !ready {
            let callee = callee.wait_at_most(Duration::from_secs(1));
            panic!(
                "callee sipp never bound {}\n{}",
                self.callee_sip,
                callee.report()
            );
        }
        let caller = self.caller_sipp(dir.path()).spawn().wait();
        let callee = if caller.success() {
            callee.wait()
        } else {
            callee.wait_at_most(Duration::from_secs(5))
        };
        let seen = watch.finish();
        CallOutcome {
            run: self,
            caller,
            callee,
            caller_media: seen[0],
            callee_media: seen[1],
            dir,
        }
    }
}

/// Both sides of a finished `CallRun`.
pub struct CallOutcome {
    pub run: CallRun,
    pub caller: SippOutcome,
    pub callee: SippOutcome,
    /// RTP that reached the caller's m= port (sent by the callee, or relayed).
    pub caller_media: MediaSeen,
    /// RTP that reached the callee's m= port.
    pub callee_media: MediaSeen,
    pub dir: TestDir,
}

impl CallOutcome {
    pub fn report(&self) -> String {
        format!(
            "pair {} ({:?}), {} call(s): caller {} -> {} , callee at {}\n\
             RTP at caller m= port {}: {:?}\nRTP at callee m= port {}: {:?}\n{}\n{}",
            self.run.pair.name,
            self.run.direction,
            self.run.calls,
            self.run.caller_sip,
            self.run.send_to,
            self.run.callee_sip,
            self.run.caller_media(),
            self.caller_media,
            self.run.callee_media(),
            self.callee_media,
            self.caller.report(),
            self.callee.report()
        )
    }

    /// Both sipp exit codes are 0 and both count every call as successful.
    pub fn assert_success(&self) {
        let n = u64::from(self.run.calls);
        let ok = self.caller.success()
            && self.callee.success()
            && self.caller.successful_calls() == Some(n)
            && self.callee.successful_calls() == Some(n)
            && self.caller.failed_calls() == Some(0)
            && self.callee.failed_calls() == Some(0);
        assert!(
            ok,
            "pair {} did not succeed: caller exit {:?} ({} ok / {:?} failed), callee exit {:?} ({} ok / {:?} failed), expected {n} calls\n{}",
            self.run.pair.name,
            self.caller.code,
            self.caller.successful_calls().map_or("?".into(), |v| v.to_string()),
            self.caller.failed_calls(),
            self.callee.code,
            self.callee.successful_calls().map_or("?".into(), |v| v.to_string()),
            self.callee.failed_calls(),
            self.report()
        );
    }

    /// RTP reached the m= ports of both sides.
    pub fn assert_media_both_ways(&self) {
        assert!(
            self.caller_media.received() && self.callee_media.received(),
            "pair {}: RTP did not arrive both ways (caller port got {:?}, callee port got {:?})\n{}",
            self.run.pair.name,
            self.caller_media,
            self.callee_media,
            self.report()
        );
    }
}

// ---------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------

/// Options for starting the proxy; `Proxy::start()` uses the defaults.
#[derive(Debug, Clone, Default)]
pub struct ProxyBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    rtp_span: Option<u16>,
    ready_timeout: Option<Duration>,
    data_dir: Option<PathBuf>,
    trunk: Option<(SocketAddr, String)>,
}

impl ProxyBuilder {
    /// An extra command-line argument after the standard ones.
    pub fn arg(mut self, a: &str) -> ProxyBuilder {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> ProxyBuilder {
        self.env.push((k.into(), v.into()));
        self
    }

    /// A trunk at `addr` given to `--trunk` as `spec` (e.g. "tls://localhost:5061").
    pub fn trunk(mut self, addr: SocketAddr, spec: &str) -> ProxyBuilder {
        self.trunk = Some((addr, spec.into()));
        self
    }

    /// How many RTP ports to give it (default 400).
    pub fn rtp_ports(mut self, n: u16) -> ProxyBuilder {
        self.rtp_span = Some(n);
        self
    }

    /// Use this data directory (kept by the test, e.g. across a restart)
    /// instead of a fresh one.
    pub fn data_dir(mut self, dir: &Path) -> ProxyBuilder {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// How long to wait for it to answer (default 20 s).
    pub fn ready_timeout(mut self, t: Duration) -> ProxyBuilder {
        self.ready_timeout = Some(t);
        self
    }

    /// Starts `callrec run --listen 127.0.0.1:P --pbx 127.0.0.2:P --trunk
    /// 127.0.0.3:P --media-ip 127.0.0.1 --rtp-ports LO-HI --data-dir DIR/data
    /// --admin-listen 127.0.0.1:P --log-level debug ARGS…` and waits until its
    /// SIP port answers an OPTIONS (or the admin port accepts while the SIP
    /// UDP port is bound). Panics with the log if it exits or never answers.
    pub fn start(self) -> Proxy {
        let dir = TestDir::new("proxy");
        let sip = SocketAddr::from((PROXY_IP, free_port()));
        let pbx = SocketAddr::from((PBX_IP, free_port()));
        let (trunk, trunk_spec) = self.trunk.clone().unwrap_or_else(|| {
            let a = SocketAddr::from((TRUNK_IP, free_port()));
            (a, a.to_string())
        });
        let admin = SocketAddr::from((PROXY_IP, free_port()));
        let span = self.rtp_span.unwrap_or(400);
        let rtp_lo = free_ports(span);
        let rtp = (rtp_lo, rtp_lo + span - 1);
        let data_dir = self.data_dir.clone().unwrap_or_else(|| dir.join("data"));
        let log_path = dir.join("callrec.log");
        let log = File::create(&log_path).expect("proxy log file");
        let mut args: Vec<String> = vec![
            "run".into(),
            "--listen".into(),
            sip.to_string(),
            "--pbx".into(),
            pbx.to_string(),
            "--trunk".into(),
            trunk_spec,
            "--media-ip".into(),
            PROXY_IP.to_string(),
            "--rtp-ports".into(),
            format!("{}-{}", rtp.0, rtp.1),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--admin-listen".into(),
            admin.to_string(),
            "--log-level".into(),
            "debug".into(),
        ];
        args.extend(self.args.iter().cloned());
        // CALLREC_TEST_BIN runs the tests against another build (e.g. release).
        let bin = std::env::var("CALLREC_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_callrec").to_string());
        let command = format!("{bin} {}", args.join(" "));
        let mut cmd = Command::new(&bin);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        // A developer's own CALLREC_* settings must not leak into tests.
        for (k, _) in std::env::vars() {
            if k.starts_with("CALLREC_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("CALLREC_ADMIN_TOKEN", TEST_ADMIN_TOKEN);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
        let mut proxy = Proxy {
            child,
            command,
            sip,
            pbx,
            trunk,
            admin,
            rtp,
            data_dir,
            log_path,
            dir,
        };
        proxy.wait_ready(self.ready_timeout.unwrap_or(Duration::from_secs(20)));
        proxy
    }
}

/// The callrec binary running as a child. Killed on drop; its log is printed
/// when the test is failing.
pub struct Proxy {
    child: Child,
    command: String,
    sip: SocketAddr,
    pbx: SocketAddr,
    trunk: SocketAddr,
    admin: SocketAddr,
    rtp: (u16, u16),
    data_dir: PathBuf,
    log_path: PathBuf,
    dir: TestDir,
}

/// A minimal out-of-dialog OPTIONS; true when any SIP response comes back.
pub fn sip_options_answered(to: SocketAddr, wait: Duration) -> bool {
    let Ok(sock) = UdpSocket::bind((PROXY_IP, 0)) else {
        return false;
    };
    let local = sock.local_addr().expect("local addr");
    let branch = format!("z9hG4bK-ping-{}-{}", std::process::id(), local.port());
    let msg = format!(
        "OPTIONS sip:ping@{to} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{local}>;tag=probe{port}\r\n\
         To: <sip:ping@{to}>\r\n\
         Call-ID: probe-{branch}@{ip}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Contact: <sip:probe@{local}>\r\n\
         Accept: application/sdp\r\n\
         Content-Length: 0\r\n\r\n",
        port = local.port(),
        ip = local.ip(),
    );
    if sock.send_to(msg.as_bytes(), to).is_err() {
        return false;
    }
    let _ = sock.set_read_timeout(Some(wait));
    let mut buf = [0u8; 4096];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => buf[..n].starts_with(b"SIP/2.0 "),
        Err(_) => false,
    }
}

impl Proxy {
    /// A proxy with the standard flags (see `ProxyBuilder::start`).
    pub fn start() -> Proxy {
        ProxyBuilder::default().start()
    }

    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::default()
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        let SocketAddr::V4(sip4) = self.sip else {
            unreachable!("the proxy listens on IPv4 in tests")
        };
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "callrec exited during start-up ({status})\ncommand: {}\n{}",
                    self.command,
                    self.log_tail(200)
                );
            }
            if sip_options_answered(self.sip, Duration::from_millis(200)) {
                return;
            }
            if is_bound(sip4, false)
                && TcpStream::connect_timeout(&self.admin, Duration::from_millis(200)).is_ok()
            {
                return;
            }
            if Instant::now() >= end {
                panic!(
                    "callrec did not answer OPTIONS on {} nor accept on admin {} within {timeout:?}\ncommand: {}\n{}",
                    self.sip,
                    self.admin,
                    self.command,
                    self.log_tail(200)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The SIP address (UDP and TCP) both sides send to.
    pub fn sip_addr(&self) -> SocketAddr {
        self.sip
    }

    /// `--pbx`: where an incoming call's callee must listen.
    pub fn pbx_addr(&self) -> SocketAddr {
        self.pbx
    }

    /// `--trunk`: where an outgoing call's callee must listen.
    pub fn trunk_addr(&self) -> SocketAddr {
        self.trunk
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `--rtp-ports` as (first, last).
    pub fn rtp_ports(&self) -> (u16, u16) {
        self.rtp
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn command(&self) -> &str {
        &self.command
    }

    /// The proxy's stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "--- {} ---\n{}",
            self.log_path.display(),
            tail(&self.log(), lines)
        )
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A run of `pair` through this proxy in the pair's own direction: the
    /// callee listens on `--pbx` (incoming) or `--trunk` (outgoing), the
    /// caller sends from the other side's address and port to `--listen`.
    pub fn call(&self, pair: Pair) -> CallRun {
        let (caller, callee) = match pair.direction {
            Direction::Incoming => (self.trunk, self.pbx),
            Direction::Outgoing => (self.pbx, self.trunk),
        };
        CallRun::direct(pair)
            .caller_at(caller)
            .callee_at(callee)
            .via(self.sip)
    }

    /// The same pair the other way round (e.g. "hold" from the PBX side).
    pub fn call_reversed(&self, pair: Pair) -> CallRun {
        let direction = match pair.direction {
            Direction::Incoming => Direction::Outgoing,
            Direction::Outgoing => Direction::Incoming,
        };
        self.call(Pair { direction, ..pair })
    }

    /// `GET /metrics` from the admin port, parsed.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        metrics(self.admin)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("callrec command: {}\n{}", self.command, self.log_tail(400));
        }
    }
}

// ---------------------------------------------------------------------------
// Admin HTTP
// ---------------------------------------------------------------------------

/// A plain HTTP/1.1 GET over a TcpStream: (status, body). Handles
/// Content-Length, chunked and close-delimited bodies.
/// The admin token every test proxy is started with (env CALLREC_ADMIN_TOKEN).
pub const TEST_ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, Some(TEST_ADMIN_TOKEN))
}

/// One HTTP/1.1 request with an optional bearer token; returns status and body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // a server that resets after sending its whole answer
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of HTTP headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no HTTP status"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("bad chunk"))?;
            let size_text = String::from_utf8_lossy(&rest[..eol]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size {
                return Err(bad("short chunk"));
            }
            out.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or(&[]);
        }
        body = out;
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.truncate(len);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Prometheus text format → map from `name{labels}` (exactly as written, or
/// just `name` without labels) to value; comment and blank lines carry no value.
pub fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The series ends at the closing brace when there are labels (label
        // values may contain spaces), else at the first space.
        let (series, rest) = match (line.find('{'), line.rfind('}')) {
            (Some(o), Some(c)) if o < c && line[..o].find(' ').is_none() => line.split_at(c + 1),
            _ => match line.split_once(char::is_whitespace) {
                Some((s, r)) => (s, r),
                None => continue,
            },
        };
        let value = rest.split_whitespace().next().and_then(|v| match v {
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            "NaN" => Some(f64::NAN),
            v => v.parse().ok(),
        });
        if let Some(v) = value {
            m.insert(series.trim().to_string(), v);
        }
    }
    m
}

/// `GET http://ADDR/metrics`, parsed; panics on a transport error or non-200.
pub fn metrics(admin: SocketAddr) -> BTreeMap<String, f64> {
    let (status, body) =
        http_get(admin, "/metrics").unwrap_or_else(|e| panic!("GET http://{admin}/metrics: {e}"));
    assert_eq!(status, 200, "GET http://{admin}/metrics → {status}\n{body}");
    parse_prometheus(&body)
}

/// Sum of every series of metric `name` (all label sets; the bare name too).
pub fn metric_sum(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| *k == name || (k.starts_with(name) && k[name.len()..].starts_with('{')))
        .map(|(_, v)| *v)
        .sum()
}

/// The value of one series, e.g. `metric(&m, "callrec_calls_active")` or
/// `metric(&m, r#"callrec_rtp_packets_total{direction="in"}"#)`.
pub fn metric(m: &BTreeMap<String, f64>, series: &str) -> Option<f64> {
    m.get(series).copied()
}

// ---------------------------------------------------------------------------
// Process and call-history probes (robustness and leak tests)
// ---------------------------------------------------------------------------

impl Proxy {
    /// The proxy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The proxy's resident set size in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {path}:\n{status}"))
    }

    /// `GET /api/calls/recent`: the finished calls, oldest first.
    pub fn recent_calls(&self) -> Vec<serde_json::Value> {
        let (status, body) = http_get(self.admin, "/api/calls/recent")
            .unwrap_or_else(|e| panic!("GET http://{}/api/calls/recent: {e}", self.admin));
        assert_eq!(status, 200, "GET /api/calls/recent → {status}\n{body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET /api/calls/recent is not a JSON list ({e}): {body}"))
    }

    /// `kill -9`: the process dies at once, nothing is finished or flushed.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `wait` for the exit; returns the exit code.
    pub fn terminate(&mut self, wait: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let end = std::time::Instant::now() + wait;
        while std::time::Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

/// Runs an offline `callrec` subcommand; returns its exit code and its
/// standard output and error together. The settings a developer's shell may
/// export (data dir, config, mail) are removed, so only `args` count.
pub fn callrec_cli(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callrec"))
        .args(args)
        .env_remove("CALLREC_DATA_DIR")
        .env_remove("CALLREC_CONFIG")
        .env_remove("CALLREC_SMTP")
        .env_remove("CALLREC_NOTIFY_EMAIL")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
