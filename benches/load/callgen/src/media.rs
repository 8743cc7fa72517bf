//! RTP engine: one thread owns a set of UDP sockets ("lanes") and many
//! streams. Every 20 ms each started stream sends one PCMA packet of its
//! party's tone; the packets of one millisecond tick are handed to the kernel
//! per lane with one `sendmmsg`, and readable lanes are drained with
//! `recvmmsg`, so with shared lanes the system-call count does not grow with
//! the number of calls. Received packets are matched to their stream by
//! source address (or by SSRC when several streams share the source) and
//! checked: count, sequence gaps, reordering, and the tone (Goertzel). A
//! stream with SRTP protects each packet into the send batch's own buffer and
//! authenticates and decrypts each arrival before the same checks.

use crate::batch::{RecvScratch, SendScratch, RECV_BATCH};
use crate::srtp::{CallCrypto, OVERHEAD};
use crate::tone::{Alaw, Goertzel};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

/// A stream sends every 20 ms; the wheel has one slot per tick of that period.
const PERIOD_US: u64 = 20_000;
const PAYLOAD: usize = 160;
const PKT: usize = 12 + PAYLOAD;
/// Room for a packet with its SRTP authentication tag.
pub const PKT_MAX: usize = PKT + OVERHEAD;

/// Which party a stream belongs to: index 0 caller (trunk side), 1 callee (PBX side).
pub type Party = usize;

/// Where a stream's packets leave from and arrive.
pub enum LaneRef {
    /// The thread's shared socket of that party.
    Shared(Party),
    /// A socket of this stream alone.
    Own(UdpSocket),
}

pub enum Cmd {
    /// Receive (and later send) for one party of one call.
    Open {
        call: u32,
        party: Party,
        lane: LaneRef,
        remote: SocketAddrV4,
        ssrc: u32,
        /// The SSRC the other party sends, when known: tells streams apart that share a source.
        expect_ssrc: Option<u32>,
        /// SRTP contexts, when this party's media is protected.
        crypto: Option<Box<CallCrypto>>,
    },
    /// Start sending at `at`, `packets` packets 20 ms apart.
    Start {
        call: u32,
        party: Party,
        at: Instant,
        packets: u32,
    },
    /// Stop sending and receiving; the thread returns its figures.
    Stop,
}

/// What one party of one call sent and got back.
#[derive(Clone, Debug, Default)]
pub struct StreamStats {
    pub party: Party,
    pub sent: u64,
    pub send_errors: u64,
    pub received: u64,
    /// Forward jumps in the sequence numbers (each one a hole in the audio).
    pub gaps: u64,
    /// Sequence numbers missing between the first and the highest received.
    pub missing: u64,
    /// Packets older than the highest received (reordered or duplicated).
    pub late: u64,
    pub tone_frames: u64,
    /// SRTP packets that failed authentication (not counted as received).
    pub auth_failed: u64,
}

struct Stream {
    lane: usize,
    remote: SocketAddrV4,
    ssrc: u32,
    to_send: u32,
    start_ms: u64,
    first_seq: Option<u16>,
    last_seq: u16,
    span: u64,
    crypto: Option<Box<CallCrypto>>,
    stats: StreamStats,
}

/// How the packets of a source address map to streams.
enum Demux {
    One(usize),
    Many,
}

struct Lane {
    sock: UdpSocket,
    by_src: HashMap<SocketAddrV4, Demux>,
}

/// The two parties' audio (raw A-law, whole 20 ms frames) and the tone each
/// party expects to hear from the other.
pub struct Audio {
    pub frames: [Vec<u8>; 2],
    pub expect_hz: [f32; 2],
}

pub struct Engine {
    epoch: Instant,
    epfd: RawFd,
    lanes: Vec<Lane>,
    shared: [Option<usize>; 2],
    streams: Vec<Stream>,
    by_key: HashMap<(u32, Party), usize>,
    by_ssrc: HashMap<(usize, u32), usize>,
    wheel: Vec<Vec<usize>>,
    done_tick: u64,
    tick_us: u64,
    audio: Audio,
    detect: [Goertzel; 2],
    alaw: Alaw,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

/// Receive buffer large enough for a burst of many streams on one socket.
pub fn big_buffers(sock: &UdpSocket, bytes: usize) {
    let v = bytes as libc::c_int;
    for opt in [
        libc::SO_RCVBUFFORCE,
        libc::SO_RCVBUF,
        libc::SO_SNDBUFFORCE,
        libc::SO_SNDBUF,
    ] {
        // SAFETY: setsockopt with a pointer to an int of the right size; failures
        // (no CAP_NET_ADMIN for the FORCE variants) only leave the default size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &v as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

impl Engine {
    /// `tick_us` (a divisor of 20,000) is how finely the send times of the
    /// streams are spread: the packets due in one tick leave together.
    pub fn new(shared: [Option<UdpSocket>; 2], audio: Audio, tick_us: u64) -> io::Result<Engine> {
        // SAFETY: plain system call.
        let epfd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        let detect = [
            Goertzel::new(audio.expect_hz[0], 8000.0),
            Goertzel::new(audio.expect_hz[1], 8000.0),
        ];
        let mut e = Engine {
            epoch: Instant::now(),
            epfd,
            lanes: Vec::new(),
            shared: [None, None],
            streams: Vec::new(),
            by_key: HashMap::new(),
            by_ssrc: HashMap::new(),
            wheel: (0..PERIOD_US / tick_us).map(|_| Vec::new()).collect(),
            done_tick: 0,
            tick_us,
            audio,
            detect,
            alaw: Alaw::new(),
        };
        for (party, s) in shared.into_iter().enumerate() {
            if let Some(s) = s {
                e.shared[party] = Some(e.add_lane(s)?);
            }
        }
        Ok(e)
    }

    fn add_lane(&mut self, sock: UdpSocket) -> io::Result<usize> {
        sock.set_nonblocking(true)?;
        let idx = self.lanes.len();
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: idx as u64,
        };
        // SAFETY: valid epoll fd, socket fd and event pointer.
        cvt(unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_ADD, sock.as_raw_fd(), &mut ev) })?;
        self.lanes.push(Lane {
            sock,
            by_src: HashMap::new(),
        });
        Ok(idx)
    }

    fn now_tick(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 / self.tick_us
    }

    fn apply(&mut self, cmd: Cmd) -> io::Result<bool> {
        match cmd {
            Cmd::Open {
                call,
                party,
                lane,
                remote,
                ssrc,
                expect_ssrc,
                crypto,
            } => {
                let lane = match lane {
                    LaneRef::Shared(p) => self.shared[p].expect("shared lane of that party"),
                    LaneRef::Own(s) => self.add_lane(s)?,
                };
                let idx = self.streams.len();
                self.streams.push(Stream {
                    lane,
                    remote,
                    ssrc,
                    to_send: 0,
                    start_ms: 0,
                    first_seq: None,
                    last_seq: 0,
                    span: 0,
                    crypto,
                    stats: StreamStats {
                        party,
                        ..Default::default()
                    },
                });
                self.by_key.insert((call, party), idx);
                if let Some(e) = expect_ssrc {
                    self.by_ssrc.insert((lane, e), idx);
                }
                let by_src = &mut self.lanes[lane].by_src;
                by_src
                    .entry(remote)
                    .and_modify(|d| *d = Demux::Many)
                    .or_insert(Demux::One(idx));
            }
            Cmd::Start {
                call,
                party,
                at,
                packets,
            } => {
                if let (Some(&idx), true) = (self.by_key.get(&(call, party)), packets > 0) {
                    // Never in a tick already processed: a late start begins at the next one.
                    let at_tick =
                        at.saturating_duration_since(self.epoch).as_micros() as u64 / self.tick_us;
                    let start = at_tick.max(self.done_tick + 1);
                    let s = &mut self.streams[idx];
                    s.to_send = packets;
                    s.start_ms = start;
                    let slots = self.wheel.len() as u64;
                    self.wheel[(start % slots) as usize].push(idx);
                }
            }
            Cmd::Stop => return Ok(false),
        }
        Ok(true)
    }

    /// Runs until `Stop`; returns every stream's figures and how late (ms)
    /// the thread was at worst with a packet tick: its own overload.
    pub fn run(mut self, rx: Receiver<Cmd>) -> io::Result<(Vec<StreamStats>, u64)> {
        let mut due: Vec<(usize, usize)> = Vec::new();
        let mut tx = SendScratch::default();
        let mut rxs = RecvScratch::new();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut max_lag = 0u64;
        // The default 50 µs timer slack would merge ticks finer than that.
        // SAFETY: prctl on the calling thread with plain integer arguments.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
        self.done_tick = self.now_tick();
        let slots = self.wheel.len() as u64;
        'outer: loop {
            loop {
                match rx.try_recv() {
                    Ok(cmd) => {
                        if !self.apply(cmd)? {
                            break 'outer;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => break 'outer,
                }
            }
            // Sending: every tick up to now whose slot holds streams.
            let now = self.now_tick();
            if self.wheel.iter().any(|w| !w.is_empty()) {
                max_lag = max_lag.max(now.saturating_sub(self.done_tick + 1) * self.tick_us / 1000);
            }
            due.clear();
            while self.done_tick < now {
                self.done_tick += 1;
                let t = self.done_tick;
                let slot = &mut self.wheel[(t % slots) as usize];
                let mut i = 0;
                while i < slot.len() {
                    let idx = slot[i];
                    let s = &mut self.streams[idx];
                    if s.start_ms > t {
                        i += 1;
                        continue;
                    }
                    due.push((s.lane, idx));
                    s.to_send -= 1;
                    if s.to_send == 0 {
                        slot.swap_remove(i);
                    } else {
                        i += 1;
                    }
                }
            }
            if !due.is_empty() {
                due.sort_unstable();
                self.send_due(&due, &mut tx);
            }
            // Receiving until the next tick.
            let wait = (self.epoch + Duration::from_micros((self.done_tick + 1) * self.tick_us))
                .saturating_duration_since(Instant::now());
            // With nothing to send, wake only to look for new commands.
            let idle = self.wheel.iter().all(Vec::is_empty);
            let wait = if idle {
                Duration::from_millis(5)
            } else {
                wait.min(Duration::from_millis(5))
            };
            // epoll_wait counts in milliseconds; ppoll on the epoll fd waits to the tick exactly.
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: wait.as_nanos() as libc::c_long,
            };
            let mut pfd = libc::pollfd {
                fd: self.epfd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd and timespec; events buffer of the given length.
            let n = unsafe {
                libc::ppoll(&mut pfd, 1, &ts, std::ptr::null());
                libc::epoll_wait(
                    self.epfd,
                    events.as_mut_ptr(),
                    events.len() as libc::c_int,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in &events[..n as usize] {
                self.drain(ev.u64 as usize, &mut rxs);
            }
        }
        // SAFETY: closing our own epoll fd once.
        unsafe { libc::close(self.epfd) };
        let stats = self.streams.into_iter().map(|s| s.stats).collect();
        Ok((stats, max_lag))
    }

    fn send_due(&mut self, due: &[(usize, usize)], tx: &mut SendScratch) {
        let mut start = 0;
        while start < due.len() {
            let lane = due[start].0;
            let end = start + due[start..].iter().take_while(|d| d.0 == lane).count();
            for chunk in due[start..end].chunks(512) {
                tx.clear();
                for &(_, idx) in chunk {
                    let s = &mut self.streams[idx];
                    let i = s.stats.sent as u32;
                    let frames = &self.audio.frames[s.stats.party];
                    let nframes = (frames.len() / PAYLOAD).max(1);
                    let off = (i as usize % nframes) * PAYLOAD;
                    let mut pkt = [0u8; PKT];
                    pkt[0] = 0x80;
                    pkt[1] = 8; // PCMA
                    pkt[2..4].copy_from_slice(&(i as u16).to_be_bytes());
                    pkt[4..8].copy_from_slice(&i.wrapping_mul(PAYLOAD as u32).to_be_bytes());
                    pkt[8..12].copy_from_slice(&s.ssrc.to_be_bytes());
                    if let Some(f) = frames.get(off..off + PAYLOAD) {
                        pkt[12..].copy_from_slice(f);
                    }
                    let out = tx.next();
                    let len = match &mut s.crypto {
                        Some(c) => c.protect(&pkt, out),
                        None => {
                            out[..PKT].copy_from_slice(&pkt);
                            Some(PKT)
                        }
                    };
                    match len {
                        Some(len) => {
                            tx.commit(len, sockaddr(s.remote), idx);
                            s.stats.sent += 1;
                        }
                        None => s.stats.send_errors += 1,
                    }
                }
                let failed = tx.send(self.lanes[lane].sock.as_raw_fd());
                for k in failed {
                    let idx = tx.owners[k];
                    self.streams[idx].stats.sent -= 1;
                    self.streams[idx].stats.send_errors += 1;
                }
            }
            start = end;
        }
    }

    fn drain(&mut self, lane: usize, rxs: &mut RecvScratch) {
        let fd = self.lanes[lane].sock.as_raw_fd();
        loop {
            let n = rxs.recv(fd);
            for k in 0..n {
                let (src, pkt) = rxs.get(k);
                self.on_packet(lane, src, pkt);
            }
            if n < RECV_BATCH {
                break;
            }
        }
    }

    fn on_packet(&mut self, lane: usize, src: SocketAddrV4, pkt: &[u8]) {
        if pkt.len() < 12 || pkt[0] >> 6 != 2 {
            return;
        }
        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        let idx = match self.lanes[lane].by_src.get(&src) {
            Some(Demux::One(i)) => *i,
            _ => match self.by_ssrc.get(&(lane, ssrc)) {
                Some(i) => *i,
                None => return,
            },
        };
        let plain;
        let pkt = match &mut self.streams[idx].crypto {
            Some(c) => match c.unprotect(pkt) {
                Some(p) => {
                    plain = p;
                    &plain[..]
                }
                None => {
                    self.streams[idx].stats.auth_failed += 1;
                    return;
                }
            },
            None => pkt,
        };
        let hdr = 12 + 4 * usize::from(pkt[0] & 0x0f);
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let payload = pkt.get(hdr..).unwrap_or(&[]);
        let party = self.streams[idx].stats.party;
        let tone =
            pkt[1] & 0x7f == 8 && self.detect[party].alaw_frame_has_tone(&self.alaw, payload);
        let s = &mut self.streams[idx];
        s.stats.received += 1;
        if tone {
            s.stats.tone_frames += 1;
        }
        match s.first_seq {
            None => {
                s.first_seq = Some(seq);
                s.last_seq = seq;
                s.span = 1;
            }
            Some(_) => {
                let d = seq.wrapping_sub(s.last_seq) as i16;
                if d > 0 {
                    if d > 1 {
                        s.stats.gaps += 1;
                    }
                    s.span += d as u64;
                    s.last_seq = seq;
                } else {
                    s.stats.late += 1;
                }
            }
        }
        s.stats.missing = s.span.saturating_sub(s.stats.received - s.stats.late);
    }
}
