//! baresip as a real SIP phone in tests: plain RTP or SRTP with SDES keys
//! (its `srtp` module, libre's own SRTP), a WAV file as its microphone
//! (`aufile`), what it heard written to WAV (`sndfile`), one call placed or
//! answered. Each instance gets its own config folder inside a test folder.
//! Also a loopback packet capture (`Capture`) to look at what went over the
//! wire between the proxy and a phone.

#![allow(dead_code)]

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Fails loudly when baresip, or the labelled loopback address it needs to
/// put a loopback address into its SDP, is missing.
pub fn require_baresip(label: &str) {
    let ok = Command::new("baresip")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        ok,
        "baresip is not installed (deploy/test.sh installs baresip-core)"
    );
    let out = Command::new("ip")
        .args(["-4", "addr", "show", "dev", "lo", "label", label])
        .output()
        .expect("ip(8) runs");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("inet 127."),
        "no loopback address labelled {label} (deploy/test.sh adds it: ip addr add 127.0.0.N/8 dev lo label {label})"
    );
}

/// One baresip process; killed on drop.
pub struct Baresip {
    child: Child,
    pub dir: PathBuf,
    pub log: PathBuf,
}

/// How one baresip is set up.
pub struct Phone<'a> {
    /// Name of its folder inside the test folder.
    pub name: &'a str,
    /// The user part of its address (calls to another user get 404).
    pub user: &'a str,
    /// SIP listen address (its IP must be the one `iface` carries).
    pub sip: SocketAddr,
    /// Labelled loopback interface whose address goes into its SDP.
    pub iface: &'a str,
    /// `srtp-mand` for SRTP, None for plain RTP.
    pub mediaenc: Option<&'a str>,
    /// e.g. `PCMA` or `G722`.
    pub codec: &'a str,
    /// The WAV it sends as its microphone.
    pub source: &'a Path,
    /// Answer incoming calls at once.
    pub auto_answer: bool,
    /// SIP over TLS: (CA file, certificate and key in one PEM file).
    pub tls: Option<(&'a Path, &'a Path)>,
}

/// A CA and a certificate for `localhost` / 127.0.0.1 signed by it, made
/// with openssl(1) in `dir`: (ca.pem, leaf.pem, leaf.key, leaf+key bundle).
pub fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=callrec test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=localhost",
    ]);
    fs::write(
        dir.join("ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    let bundle = [
        fs::read(dir.join("leaf.pem")).unwrap(),
        fs::read(dir.join("leaf.key")).unwrap(),
    ]
    .concat();
    fs::write(dir.join("bundle.pem"), bundle).unwrap();
    (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
        dir.join("bundle.pem"),
    )
}

impl Baresip {
    /// Starts a phone; `dial` places one call to that URI.
    pub fn start(test_dir: &Path, p: &Phone, dial: Option<&str>, secs: u32) -> Baresip {
        let dir = test_dir.join(p.name);
        fs::create_dir_all(dir.join("heard")).unwrap();
        let config = format!(
            "poll_method\t\tpoll\nsip_listen\t\t{sip}\naudio_player\t\taubridge,nil\naudio_source\t\taufile,{src}\n\
             audio_alert\t\taubridge,nil\nmodule_path\t\t/usr/lib/baresip/modules\nmodule\t\t\tg711.so\n\
             module\t\t\tg722.so\nmodule\t\t\taufile.so\nmodule\t\t\taubridge.so\nmodule\t\t\tsndfile.so\n\
             module\t\t\tsrtp.so\nmodule\t\t\taccount.so\nmodule_app\t\tmenu.so\nsnd_path\t\t{heard}\n",
            sip = p.sip,
            src = p.source.display(),
            heard = dir.join("heard").display(),
        );
        let mut config = config;
        if let Some((ca, bundle)) = p.tls {
            config.push_str(&format!(
                "sip_cafile\t\t{}\nsip_certificate\t\t{}\n",
                ca.display(),
                bundle.display()
            ));
        }
        fs::write(dir.join("config"), config).unwrap();
        let mut account = format!(
            "<sip:{}@{}>;regint=0;audio_codecs={}",
            p.user,
            p.sip.ip(),
            p.codec
        );
        if let Some(enc) = p.mediaenc {
            account.push_str(&format!(";mediaenc={enc}"));
        }
        if p.auto_answer {
            account.push_str(";answermode=auto");
        }
        fs::write(dir.join("accounts"), account + "\n").unwrap();
        let log = dir.join("baresip.log");
        let out = fs::File::create(&log).unwrap();
        let mut cmd = Command::new("baresip");
        cmd.arg("-f")
            .arg(&dir)
            .args(["-4", "-n", p.iface, "-s", "-t", &secs.to_string()]);
        if let Some(uri) = dial {
            cmd.args(["-e", &format!("d {uri}")]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("baresip starts");
        Baresip { child, dir, log }
    }

    /// Waits (bounded) for the process to end by itself.
    pub fn wait(&mut self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Its console and SIP trace so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The WAV files of what it heard (decoded), written by `sndfile`.
    pub fn heard(&self) -> Vec<PathBuf> {
        fs::read_dir(self.dir.join("heard"))
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP datagram seen on the loopback interface.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: Vec<u8>,
}

/// Captures IPv4 UDP datagrams on `lo` whose addresses pass a filter (a
/// packet socket; needs root, as the tests run). Stops on `finish` or after
/// a bounded time.
pub struct Capture {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Datagram>>>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    pub fn start(
        keep: impl Fn(&SocketAddrV4, &SocketAddrV4) -> bool + Send + 'static,
        limit: Duration,
    ) -> Capture {
        // ETH_P_ALL in network byte order; SOCK_DGRAM gives the IP packet.
        let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto as u16;
        sll.sll_ifindex = lo as i32;
        let rc = unsafe {
            libc::bind(
                fd,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind to lo: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let out = seen.clone();
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + limit;
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) && Instant::now() < end {
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let n = unsafe {
                    libc::recvfrom(
                        fd,
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                        &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                        &mut len,
                    )
                };
                // Loopback shows each packet leaving and arriving: keep one.
                if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                if let Some(d) = parse_udp(&buf[..n as usize]) {
                    if keep(&d.src, &d.dst) {
                        out.lock().unwrap().push(d);
                    }
                }
            }
            unsafe { libc::close(fd) };
        });
        Capture {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// What was captured so far.
    pub fn snapshot(&self) -> Vec<Datagram> {
        self.seen.lock().unwrap().clone()
    }

    pub fn finish(mut self) -> Vec<Datagram> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.take().unwrap().join();
        self.snapshot()
    }
}

fn parse_udp(p: &[u8]) -> Option<Datagram> {
    if p.len() < 28 || p[0] >> 4 != 4 || p[9] != 17 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let ip = |o: usize| Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]);
    let u = p.get(ihl..)?;
    if u.len() < 8 {
        return None;
    }
    let port = |o: usize| u16::from_be_bytes([u[o], u[o + 1]]);
    Some(Datagram {
        src: SocketAddrV4::new(ip(12), port(0)),
        dst: SocketAddrV4::new(ip(16), port(2)),
        payload: u[8..].to_vec(),
    })
}
