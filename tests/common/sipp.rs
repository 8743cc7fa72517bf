//! One SIPp process described flag by flag (`Sipp`), running (`SippProcess`)
//! and finished (`SippOutcome`, with a failure report of its trace files).

use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::{is_bound, scenarios_dir, tail, TestDir};

/// The sipp binary, or a panic telling how to install it.
/// A block of loopback ports for one SIPp's media: SIPp 3.6.1 binds `-mp`
/// and `-mp`+2 (and RTCP beside them), so four are reserved.
pub fn media_ports() -> u16 {
    super::free_ports(4)
}

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
    /// Take PORT from [`media_ports`], which reserves all the ports SIPp binds;
    /// a smaller block lets a parallel test take PORT+2 and SIPp exits.
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

    /// Folder for the trace files (default: a new `TestDir` that lives as long
    /// as the process and its outcome).
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
        let (dir, owned) = match &self.trace_dir {
            Some(d) => (d.clone(), None),
            None => {
                let d = TestDir::new(&format!("sipp-{}", self.name));
                (d.path().to_path_buf(), Some(Arc::new(d)))
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
            owned,
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
    /// The trace folder when this helper made it (removed with the last owner).
    owned: Option<Arc<TestDir>>,
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
            owned: self.owned.clone(),
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
    /// Keeps a trace folder the helper made alive while the outcome is read.
    owned: Option<Arc<TestDir>>,
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
