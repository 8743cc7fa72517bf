//! Shared helpers for the storage, spool and notification tests: sealed sets made
//! with the real Sealer, free loopback ports, and real server programs (sshd,
//! smbd, aiosmtpd) started on loopback with their own temporary configuration and
//! stopped when their guard is dropped. A missing program fails the test loudly.
//! `outage` holds the "target down, then back" scenario all targets share.

#![allow(dead_code)]

pub mod outage;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callrec::seal::{Identity, PasswordSource, SealedSet, Sealer};
use serde_json::json;

/// A sealed set and the bytes of each of its files, read before it entered the spool.
pub struct MadeSet {
    /// The set as the sealer returned it.
    pub set: SealedSet,
    /// (file name, bytes) of every file.
    pub contents: Vec<(String, Vec<u8>)>,
}

/// Seals `n` sets in `work/sets`, starting 2026-03-01 10:15:0x local time (base names carry it).
pub fn make_sets(work: &Path, n: usize) -> Vec<MadeSet> {
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let id = Identity::load_or_create(&data, PasswordSource::Value("test-pass".into())).unwrap();
    let mut sealer = Sealer::new(id, &data).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let base = format!("20260301_10150{i}_in_4930123_200_{:04x}", i + 0xa0);
        let folder = work.join("sets").join(&base);
        std::fs::create_dir_all(&folder).unwrap();
        let wav = folder.join(format!("{base}.wav"));
        std::fs::write(&wav, fake_wav(20_000 + 1000 * i, i as u8)).unwrap();
        let set = sealer
            .seal(
                &folder,
                &base,
                json!({"call_id_a": format!("{base}@test")}),
                &[wav],
            )
            .unwrap();
        let contents = set
            .files
            .iter()
            .map(|f| {
                (
                    f.file_name().unwrap().to_string_lossy().to_string(),
                    std::fs::read(f).unwrap(),
                )
            })
            .collect();
        out.push(MadeSet { set, contents });
    }
    out
}

/// A small stereo 16-bit WAV with `samples` frames of a pattern.
fn fake_wav(samples: usize, seed: u8) -> Vec<u8> {
    let data_len = (samples * 4) as u32;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&8000u32.to_le_bytes());
    b.extend_from_slice(&32000u32.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    b.extend((0..data_len).map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed)));
    b
}

/// Asserts that `folder` holds every file of `made` with the same bytes, and that
/// `shasum -a 256 -c` accepts the checksum file there.
pub fn assert_delivered(folder: &Path, made: &MadeSet) {
    for (name, bytes) in &made.contents {
        let got = std::fs::read(folder.join(name))
            .unwrap_or_else(|e| panic!("{} missing in {}: {e}", name, folder.display()));
        assert!(got == *bytes, "{name} differs in {}", folder.display());
    }
    let sums = format!("{}.sha256", made.set.base_name);
    let out = Command::new("shasum")
        .args(["-a", "256", "-c", &sums])
        .current_dir(folder)
        .output()
        .expect("shasum (package perl) is needed; run deploy/test.sh");
    assert!(
        out.status.success(),
        "shasum -c failed in {}: {}",
        folder.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Spool settings for tests: fast back-off.
pub fn fast_spool(data: &Path) -> callrec::spool::SpoolConfig {
    let mut c = callrec::spool::SpoolConfig::new(data);
    c.initial_backoff = Duration::from_millis(200);
    c.max_backoff = Duration::from_millis(800);
    c.attempt_timeout = Duration::from_secs(60);
    c.low_disk_bytes = 0;
    c
}

/// A free TCP port on 127.0.0.1 for a server a test starts. Taken below the
/// kernel's ephemeral range (32768-60999, where client connections get their
/// ports, so one could take it before the server binds it) and below the
/// window of `common::free_ports`; never handed out twice in one process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const WINDOW: (u32, u32) = (12000, 20000);
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = WINDOW.1 - WINDOW.0;
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (WINDOW.0 + start.wrapping_add(n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port on 127.0.0.1 between 12000 and 20000");
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Panics with a clear message when `program` is not installed.
pub fn require(program: &str, package: &str) -> PathBuf {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/bin",
        "/usr/local/sbin",
    ] {
        let p = Path::new(dir).join(program);
        if p.exists() {
            return p;
        }
    }
    panic!("{program} is not installed (Debian package {package}); run deploy/test.sh, which installs it");
}

/// Runs a command and panics with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A server process started by a test; killed (by its own pid) when dropped.
pub struct Daemon {
    /// What it is, for messages.
    pub name: String,
    /// The child process.
    pub child: Child,
    /// Its log file.
    pub log: PathBuf,
    /// The port it listens on.
    pub port: u16,
}

impl Daemon {
    /// Starts `cmd` with output to `log` and waits until 127.0.0.1:`port` accepts connections.
    pub fn start(name: &str, mut cmd: Command, log: PathBuf, port: u16) -> Daemon {
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        let mut d = Daemon {
            name: name.to_string(),
            child,
            log,
            port,
        };
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return d;
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("{name} exited with {status}: {}", d.log_text());
            }
            if Instant::now() > until {
                panic!(
                    "{name} does not listen on 127.0.0.1:{port}: {}",
                    d.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the daemon and waits for it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An aiosmtpd sink on loopback that stores every mail in a Maildir.
pub struct MailSink {
    /// The server process.
    pub daemon: Daemon,
    /// The Maildir.
    pub maildir: PathBuf,
}

impl MailSink {
    /// Starts `aiosmtpd -n -c aiosmtpd.handlers.Mailbox <maildir>` on a free port.
    pub fn start(work: &Path) -> MailSink {
        MailSink::start_with(work, &[])
    }

    /// Like [`MailSink::start`], with extra aiosmtpd options (e.g. TLS certificates).
    pub fn start_with(work: &Path, extra: &[&std::ffi::OsStr]) -> MailSink {
        let aiosmtpd = require("aiosmtpd", "python3-aiosmtpd");
        std::fs::create_dir_all(work).unwrap();
        let port = free_port();
        let maildir = work.join("maildir");
        let mut cmd = Command::new(aiosmtpd);
        cmd.args(["-n", "-l", &format!("127.0.0.1:{port}")])
            .args(extra)
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir);
        let daemon = Daemon::start("aiosmtpd", cmd, work.join("aiosmtpd.log"), port);
        MailSink { daemon, maildir }
    }

    /// The `smtp://` URL of the sink.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.daemon.port)
    }

    /// Every mail received so far (raw text), oldest first.
    pub fn mails(&self) -> Vec<String> {
        let mut files: Vec<_> = std::fs::read_dir(self.maildir.join("new"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }
}
