//! The callrec binary as a child process (`ProxyBuilder`, `Proxy`): started
//! with loopback addresses and a fresh data folder, probed (OPTIONS, RSS,
//! recent calls), stopped; and offline subcommands (`callrec_cli`).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::*;

/// How a set's signature file ends: `<base>.sha256.SHA256withRSA.sig`.
pub const SET_SIGNATURE_SUFFIX: &str = ".sha256.SHA256withRSA.sig";

/// Options for starting the proxy; `Proxy::start()` uses the defaults.
#[derive(Debug, Clone, Default)]
pub struct ProxyBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    rtp_span: Option<u16>,
    ready_timeout: Option<Duration>,
    data_dir: Option<PathBuf>,
    relative_data_dir: bool,
    pbx: Option<SocketAddr>,
    trunk: Option<(SocketAddr, String)>,
    ip: Option<std::net::Ipv4Addr>,
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

    /// `--pbx` at `addr` instead of a fresh port on 127.0.0.2 (several
    /// proxies in front of one callee).
    pub fn pbx(mut self, addr: SocketAddr) -> ProxyBuilder {
        self.pbx = Some(addr);
        self
    }

    /// A trunk at `addr` given to `--trunk` as `spec` (e.g. "tls://localhost:5061").
    pub fn trunk(mut self, addr: SocketAddr, spec: &str) -> ProxyBuilder {
        self.trunk = Some((addr, spec.into()));
        self
    }

    /// SIP and media on `ip` instead of 127.0.0.1 (an address the test gave
    /// an interface of its own); the admin API stays on 127.0.0.1.
    pub fn on_ip(mut self, ip: std::net::Ipv4Addr) -> ProxyBuilder {
        self.ip = Some(ip);
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

    /// Starts it in its test folder with `--data-dir data`, a path relative
    /// to its working directory, as an operator might write it.
    pub fn relative_data_dir(mut self) -> ProxyBuilder {
        self.relative_data_dir = true;
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
        let ip = self.ip.unwrap_or(PROXY_IP);
        let sip = SocketAddr::from((ip, free_port()));
        let pbx = self
            .pbx
            .unwrap_or_else(|| SocketAddr::from((PBX_IP, free_port())));
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
            ip.to_string(),
            "--rtp-ports".into(),
            format!("{}-{}", rtp.0, rtp.1),
            "--data-dir".into(),
            if self.relative_data_dir {
                "data".into()
            } else {
                data_dir.display().to_string()
            },
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
        if self.relative_data_dir {
            assert!(
                self.data_dir.is_none(),
                "a relative data dir is the test folder's"
            );
            cmd.current_dir(dir.path());
        }
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

    /// The signature files of the sets in its recordings folder right now
    /// (a set is complete once its signature is there).
    pub fn sealed_sets_now(&self) -> Vec<PathBuf> {
        fs::read_dir(self.data_dir.join("recordings"))
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.to_string_lossy().ends_with(SET_SIGNATURE_SUFFIX))
                    .collect()
            })
            .unwrap_or_default()
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

impl Proxy {
    /// The proxy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The proxy's resident set size in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS")
    }

    /// The largest resident set size the proxy has had, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {path}:\n{status}"))
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
        .env_remove("CALLREC_DATABASE")
        .env_remove("CALLREC_DATABASE_PASSWORD_FILE")
        .env_remove("CALLREC_DATABASE_PASSWORD")
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
