//! The SIP side of the generator, one thread: the caller (trunk) places
//! calls at the given rate through the proxy, the callee (PBX) answers them,
//! each with UDP retransmissions as RFC 3261 times them (500 ms doubling up to
//! 4 s, 32 s to give up). Media is handed to the RTP threads: a party's
//! receiving stream is opened once the other party's address is known, and
//! its sending starts with the ACK, as in the SIPp scenarios.

use crate::media::{Cmd, Party};
use crate::sip::{self, Msg};

mod answers;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const GIVE_UP: Duration = Duration::from_secs(32);
pub const CALLER: Party = 0;
pub const CALLEE: Party = 1;
/// SSRC bases of the two parties: stream k of a party sends base + k.
pub const SSRC_BASE: [u32; 2] = [0x1000_0000, 0x2000_0000];

pub struct Plan {
    pub proxy: SocketAddrV4,
    pub sides: [SocketAddrV4; 2],
    pub calls: u32,
    pub rate: f64,
    pub hold: Duration,
    pub packets: u32,
    pub per_call_sockets: bool,
    pub service: String,
    pub number: String,
    /// The caller offers SRTP (the callee side stays plain RTP).
    pub srtp: bool,
    /// A test switch: the caller protects and checks with keys one bit off
    /// the ones in the SDP, so every packet fails authentication.
    pub srtp_corrupt_key: bool,
}

#[derive(Default, Debug)]
pub struct Outcome {
    pub ok: u32,
    pub failed: BTreeMap<String, u32>,
    pub setup_ms: Vec<f64>,
    /// When the first and the last call were answered.
    pub answered: Option<(Instant, Instant)>,
    pub callee_dialogs: u32,
    pub callee_failed: BTreeMap<String, u32>,
    pub max_concurrent: u32,
    /// (when all calls were up, when the first BYE left), if both happened.
    pub plateau: Option<(Instant, Instant)>,
    pub rusage_at_plateau: Option<(f64, f64)>,
    pub rusage_plateau_end: Option<(f64, f64)>,
}

#[derive(PartialEq)]
enum CState {
    Inviting,
    Proceeding,
    Confirmed,
    Byeing,
    Done,
}

struct Caller {
    state: CState,
    thread: usize,
    own: Option<UdpSocket>,
    /// The SRTP key offered for what the caller sends.
    key: Option<crate::srtp::Key>,
    /// Whether the BYE's 200 counts the call as ok (not when it already failed).
    ok_on_bye: bool,
    invite: String,
    ack: String,
    bye: String,
    started: Instant,
    interval: Duration,
    sent_at: Instant,
}

struct Callee {
    answered: bool,
    confirmed: bool,
    done: bool,
    ok: String,
    from: SocketAddr,
    interval: Duration,
    first: Instant,
}

#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Timer {
    InviteRetrans(u32),
    SendBye(u32),
    ByeRetrans(u32),
    OkRetrans(u32),
}

pub struct Sip {
    plan: Plan,
    socks: [UdpSocket; 2],
    media: Vec<Sender<Cmd>>,
    shared_ports: Vec<[u16; 2]>,
    run_id: u32,
    callers: Vec<Caller>,
    callees: Vec<Callee>,
    callee_ids: HashMap<String, u32>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    active: u32,
    all_up: Option<Instant>,
    pub out: Outcome,
}

fn cpu_now() -> (f64, f64) {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(ru.ru_utime), t(ru.ru_stime))
}

pub fn rusage() -> (f64, f64) {
    cpu_now()
}

fn bind(ip: Ipv4Addr, port: u16) -> io::Result<UdpSocket> {
    UdpSocket::bind(SocketAddrV4::new(ip, port))
}

impl Sip {
    pub fn new(
        plan: Plan,
        media: Vec<Sender<Cmd>>,
        shared_ports: Vec<[u16; 2]>,
    ) -> io::Result<Sip> {
        let socks = [
            bind(*plan.sides[0].ip(), plan.sides[0].port())?,
            bind(*plan.sides[1].ip(), plan.sides[1].port())?,
        ];
        for s in &socks {
            s.set_nonblocking(true)?;
            crate::media::big_buffers(s, 4 << 20);
        }
        Ok(Sip {
            plan,
            socks,
            media,
            shared_ports,
            run_id: std::process::id(),
            callers: Vec::new(),
            callees: Vec::new(),
            callee_ids: HashMap::new(),
            timers: BinaryHeap::new(),
            active: 0,
            all_up: None,
            out: Outcome::default(),
        })
    }

    fn fail(&mut self, reason: &str) {
        *self.out.failed.entry(reason.to_string()).or_default() += 1;
    }

    fn send(&self, party: Party, msg: &str, to: SocketAddr) {
        // A full buffer loses the message like the network would; retransmission covers it.
        let _ = self.socks[party].send_to(msg.as_bytes(), to);
    }

    /// Runs every call to its end (or the deadline); returns the outcome.
    pub fn run(mut self, deadline: Duration) -> io::Result<Outcome> {
        let t0 = Instant::now();
        let mut buf = vec![0u8; 65536];
        let mut callers_done_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            while (self.callers.len() as u32) < self.plan.calls {
                let k = self.callers.len() as u32;
                if t0 + Duration::from_secs_f64(f64::from(k) / self.plan.rate) > now {
                    break;
                }
                self.start_call(k)?;
            }
            while let Some(Reverse((at, _))) = self.timers.peek() {
                if *at > now {
                    break;
                }
                let Reverse((_, t)) = self.timers.pop().expect("peeked");
                self.on_timer(t, now);
            }
            let all_started = self.callers.len() as u32 == self.plan.calls;
            if all_started && self.callers.iter().all(|c| c.state == CState::Done) {
                let at = *callers_done_at.get_or_insert(now);
                // The callee's last dialogs end with the BYE; a short grace for stragglers.
                if self.callees.iter().all(|c| c.done) || now - at > Duration::from_secs(2) {
                    break;
                }
            }
            if now - t0 > deadline {
                let left = self
                    .callers
                    .iter()
                    .filter(|c| c.state != CState::Done)
                    .count() as u32;
                *self.out.failed.entry("deadline".into()).or_default() +=
                    left + self.plan.calls - self.callers.len() as u32;
                break;
            }
            let mut pfd = [
                libc::pollfd {
                    fd: self.socks[0].as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.socks[1].as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // Sleep until a message arrives, the next timer, or the next call is due.
            let mut next = now + Duration::from_millis(50);
            if let Some(Reverse((at, _))) = self.timers.peek() {
                next = next.min(*at);
            }
            if (self.callers.len() as u32) < self.plan.calls {
                let k = self.callers.len() as u32;
                next = next.min(t0 + Duration::from_secs_f64(f64::from(k) / self.plan.rate));
            }
            let wait = next.saturating_duration_since(Instant::now());
            let ms = wait.as_micros().div_ceil(1000) as libc::c_int;
            // SAFETY: two valid pollfd entries.
            unsafe { libc::poll(pfd.as_mut_ptr(), 2, ms) };
            for party in [CALLER, CALLEE] {
                loop {
                    match self.socks[party].recv_from(&mut buf) {
                        Ok((n, from)) => {
                            let data = buf[..n].to_vec();
                            if let Some(m) = sip::parse(&data) {
                                self.on_msg(party, &m, from);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
            }
        }
        let open = self.callees.iter().filter(|c| !c.done).count() as u32;
        if open > 0 {
            *self
                .out
                .callee_failed
                .entry("not_ended".into())
                .or_default() += open;
        }
        Ok(self.out)
    }

    fn start_call(&mut self, k: u32) -> io::Result<()> {
        let thread = k as usize % self.media.len();
        let me = self.plan.sides[CALLER];
        let (port, own) = if self.plan.per_call_sockets {
            let s = bind(*me.ip(), 0)?;
            (s.local_addr()?.port(), Some(s))
        } else {
            (self.shared_ports[thread][CALLER], None)
        };
        let (num, svc, proxy) = (&self.plan.number, &self.plan.service, self.plan.proxy);
        let call_id = format!("cg-{k}-{}@{}", self.run_id, me.ip());
        let from = format!("<sip:{num}@{me}>;tag=cg{k}");
        let to = format!("<sip:{svc}@{proxy}>");
        let via = format!("SIP/2.0/UDP {me};branch=z9hG4bK-cg{}-{k}-i", self.run_id);
        let contact = format!("Contact: <sip:{num}@{me};transport=udp>\r\n");
        let key = match self.plan.srtp {
            true => Some(crate::srtp::fresh_key()?),
            false => None,
        };
        let crypto = key.as_ref().map(crate::srtp::crypto_line);
        let body = sip::sdp(*me.ip(), port, u64::from(k), "caller", crypto.as_deref());
        let invite = sip::request(
            "INVITE",
            &format!("sip:{svc}@{proxy}"),
            &via,
            &from,
            &to,
            &call_id,
            1,
            &contact,
            &body,
        );
        let now = Instant::now();
        self.send(CALLER, &invite, proxy.into());
        self.callers.push(Caller {
            state: CState::Inviting,
            thread,
            own,
            key,
            ok_on_bye: true,
            invite,
            ack: String::new(),
            bye: String::new(),
            started: now,
            interval: T1,
            sent_at: now,
        });
        self.timers
            .push(Reverse((now + T1, Timer::InviteRetrans(k))));
        Ok(())
    }

    fn on_timer(&mut self, t: Timer, now: Instant) {
        let proxy: SocketAddr = self.plan.proxy.into();
        match t {
            Timer::InviteRetrans(k) => {
                let c = &mut self.callers[k as usize];
                if c.state == CState::Inviting || c.state == CState::Proceeding {
                    if now - c.started > GIVE_UP {
                        c.state = CState::Done;
                        self.fail("invite_timeout");
                        return;
                    }
                    if c.state == CState::Inviting {
                        let msg = c.invite.clone();
                        c.interval = (c.interval * 2).min(T2);
                        self.send(CALLER, &msg, proxy);
                    }
                    let c = &self.callers[k as usize];
                    self.timers
                        .push(Reverse((now + c.interval, Timer::InviteRetrans(k))));
                }
            }
            Timer::SendBye(k) => {
                if let (None, Some(all_up)) = (self.out.plateau, self.all_up) {
                    self.out.plateau = Some((all_up, now));
                    self.out.rusage_plateau_end = Some(cpu_now());
                }
                let c = &mut self.callers[k as usize];
                if c.state == CState::Confirmed {
                    c.state = CState::Byeing;
                    c.interval = T1;
                    c.sent_at = now;
                    let msg = c.bye.clone();
                    self.send(CALLER, &msg, proxy);
                    self.timers.push(Reverse((now + T1, Timer::ByeRetrans(k))));
                }
            }
            Timer::ByeRetrans(k) => {
                let c = &mut self.callers[k as usize];
                if c.state == CState::Byeing {
                    if now - c.sent_at > GIVE_UP {
                        c.state = CState::Done;
                        self.active -= 1;
                        self.fail("bye_timeout");
                        return;
                    }
                    c.interval = (c.interval * 2).min(T2);
                    let (msg, iv) = (c.bye.clone(), c.interval);
                    self.send(CALLER, &msg, proxy);
                    self.timers.push(Reverse((now + iv, Timer::ByeRetrans(k))));
                }
            }
            Timer::OkRetrans(j) => {
                let c = &mut self.callees[j as usize];
                if c.answered && !c.confirmed && !c.done {
                    if now - c.first > GIVE_UP {
                        c.done = true;
                        *self
                            .out
                            .callee_failed
                            .entry("ack_timeout".into())
                            .or_default() += 1;
                        return;
                    }
                    c.interval = (c.interval * 2).min(T2);
                    let (msg, to, iv) = (c.ok.clone(), c.from, c.interval);
                    self.send(CALLEE, &msg, to);
                    self.timers.push(Reverse((now + iv, Timer::OkRetrans(j))));
                }
            }
        }
    }

    fn on_msg(&mut self, party: Party, m: &Msg<'_>, from: SocketAddr) {
        match (party, m.method) {
            (CALLER, None) => self.caller_response(m),
            (CALLEE, Some("INVITE")) => self.callee_invite(m, from),
            (CALLEE, Some("ACK")) => {
                if let Some(&j) = self.callee_ids.get(m.call_id) {
                    let c = &mut self.callees[j as usize];
                    if c.answered && !c.confirmed {
                        c.confirmed = true;
                        let at = Instant::now();
                        let packets = self.plan.packets;
                        let _ = self.media[j as usize % self.media.len()].send(Cmd::Start {
                            call: j,
                            party: CALLEE,
                            at,
                            packets,
                        });
                    }
                }
            }
            (_, Some("ACK")) => {}
            (_, Some(method)) => {
                // BYE ends a callee dialog; anything else in or out of a dialog
                // (OPTIONS keepalives, a BYE to the caller) is acknowledged.
                if party == CALLEE && method == "BYE" {
                    match self.callee_ids.get(m.call_id) {
                        Some(&j) => self.callees[j as usize].done = true,
                        None => {
                            self.send(
                                party,
                                &sip::response(m, 481, "Call Does Not Exist", None, "", ""),
                                from,
                            );
                            return;
                        }
                    }
                }
                if party == CALLER && method == "BYE" {
                    if let Some(k) = self.caller_index(m.call_id) {
                        let c = &mut self.callers[k as usize];
                        if c.state == CState::Confirmed || c.state == CState::Byeing {
                            c.state = CState::Done;
                            self.active -= 1;
                            self.fail("bye_from_proxy");
                        }
                    }
                }
                self.send(party, &sip::response(m, 200, "OK", None, "", ""), from);
            }
            (_, None) => {}
        }
    }

    fn caller_index(&self, call_id: &str) -> Option<u32> {
        let rest = call_id.strip_prefix("cg-")?;
        let (k, tail) = rest.split_once('-')?;
        let k: u32 = k.parse().ok()?;
        let run = tail.split('@').next()?;
        (run == self.run_id.to_string() && (k as usize) < self.callers.len()).then_some(k)
    }
}
