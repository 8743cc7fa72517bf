//! Media hijacking from outside a call: a host that is no party of the call
//! (127.0.0.9) sprays RTP carrying a 3 kHz A-law tone at every port of the
//! proxy's small media range while a recorded SIPp call runs (caller 440 Hz,
//! callee 1 kHz). Its tone must not reach the callee or the WAV, it must get
//! nothing back, both parties must still hear each other, and the dropped
//! packets must show in the recording's metadata, the call summary and
//! /metrics. Three moments are attacked: from the start of the call, during
//! a hold (the caller silent for 1.5 s), and right after a re-INVITE that
//! keeps the address. Two more calls check media learning for a peer behind
//! NAT (it sends from another port than its SDP names): learned after the
//! window in the default heuristic mode, never in strict mode.

mod common;

use common::audio::*;
use common::ua::Ua;
use common::*;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const ATTACK_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);
const ATTACK_HZ: f64 = 3000.0;
/// Ports in the proxy's range: few, so that the spray covers every one.
const RANGE: u16 = 20;

/// A-law packet of `freq` for 20 ms number `k` (PT 8, as the call negotiates).
fn tone_packet(k: u32, ssrc: u32, freq: f64, amplitude: f64) -> Vec<u8> {
    let mut p = vec![0x80, 8];
    p.extend_from_slice(&(k as u16).to_be_bytes());
    p.extend_from_slice(&(k.wrapping_mul(160)).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    for i in 0..160 {
        let t = (k * 160 + i) as f64 / 8000.0;
        let v = (2.0 * std::f64::consts::PI * freq * t).sin() * amplitude;
        p.push(callrec::recorder::encode_alaw(v as i16));
    }
    p
}

/// The foreign host: every 20 ms one packet to every port of the range, and
/// counts whatever comes back to it.
struct Attacker {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(u64, u64)>,
}

impl Attacker {
    fn start(ports: (u16, u16)) -> Attacker {
        let sock = UdpSocket::bind((ATTACK_IP, 0)).expect("bind the attacker on 127.0.0.9");
        sock.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = thread::spawn(move || {
            let (mut sent, mut received) = (0u64, 0u64);
            let start = Instant::now();
            let mut buf = [0u8; 2048];
            let mut k = 0u32;
            // Bounded: no test call lasts a minute.
            while !stop2.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                for port in ports.0..=ports.1 {
                    let p = tone_packet(k, 0xBAD0_0000 | u32::from(port), ATTACK_HZ, 12000.0);
                    if sock.send_to(&p, (Ipv4Addr::LOCALHOST, port)).is_ok() {
                        sent += 1;
                    }
                }
                while let Ok((n, _)) = sock.recv_from(&mut buf) {
                    if n > 0 {
                        received += 1;
                    }
                }
                k += 1;
                let due = start + Duration::from_millis(20 * u64::from(k));
                if let Some(w) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(w);
                }
            }
            (sent, received)
        });
        Attacker { stop, handle }
    }

    /// Stops spraying: (packets sent, packets received back).
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("attacker thread")
    }
}

/// Waits until the proxy reports one answered call.
fn wait_answered(proxy: &Proxy) {
    let ok = wait_until(Duration::from_secs(15), || {
        http_get(proxy.admin_addr(), "/api/calls/active")
            .map(|(_, body)| body.contains("\"answered\""))
            .unwrap_or(false)
    });
    assert!(ok, "the call was never answered\n{}", proxy.log_tail(40));
}

/// Base path (without extension) of the one sealed set, once it is sealed.
fn sealed_set(proxy: &Proxy) -> String {
    let dir = proxy.data_dir().join("recordings");
    let mut found = None;
    let ok = wait_until(Duration::from_secs(20), || {
        found = std::fs::read_dir(&dir).ok().and_then(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .map(|p| p.to_string_lossy().into_owned())
                .find(|p| p.ends_with(".sha256.SHA256withRSA.sig"))
        });
        found.is_some()
    });
    assert!(
        ok,
        "no sealed set in {}\n{}",
        dir.display(),
        proxy.log_tail(60)
    );
    found
        .unwrap()
        .trim_end_matches(".sha256.SHA256withRSA.sig")
        .to_string()
}

/// The channels of a 16-bit WAV as samples.
fn read_wav(path: &Path) -> Vec<Vec<f64>> {
    let mut r = hound::WavReader::open(path)
        .unwrap_or_else(|e| panic!("{} is not a readable WAV: {e}", path.display()));
    let ch = r.spec().channels as usize;
    let samples: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    (0..ch)
        .map(|c| {
            samples
                .iter()
                .skip(c)
                .step_by(ch)
                .map(|v| *v as f64)
                .collect()
        })
        .collect()
}

/// Loudest 250 ms window of `freq` in a channel, in dB.
fn peak_level(x: &[f64], freq: f64) -> f64 {
    x.chunks(2000)
        .filter(|c| c.len() == 2000)
        .map(|c| level_db(c, 8000.0, freq))
        .fold(f64::NEG_INFINITY, f64::max)
}

/// What the user of the recording and of the proxy would check after an attack.
fn assert_attack_failed(proxy: &Proxy, out: &CallOutcome, sent: u64, received: u64) {
    assert!(sent > 0, "the attacker sent nothing");
    let base = sealed_set(proxy);
    let ch = read_wav(Path::new(&format!("{base}.wav")));
    assert_eq!(ch.len(), 2, "stereo recording expected");
    for (name, x, legit) in [("caller", &ch[0], 440.0), ("callee", &ch[1], 1000.0)] {
        let own = peak_level(x, legit);
        let foreign = peak_level(x, ATTACK_HZ);
        assert!(
            foreign < own - 30.0,
            "the attacker's {ATTACK_HZ} Hz is in the {name} channel at {foreign:.1} dB \
             ({legit} Hz peaks at {own:.1} dB)\n{}",
            proxy.log_tail(40)
        );
    }
    assert_eq!(received, 0, "the attacker received media from the proxy");
    out.assert_success();
    out.assert_media_both_ways();

    // Both parties were heard: the relay carried their streams.
    let calls = proxy.recent_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let c = &calls[0];
    for key in ["rtp_from_caller", "rtp_from_callee"] {
        let n = c[key].as_u64().unwrap_or(0);
        assert!(n >= 75, "{key} = {n}: a party was not heard\n{c}");
    }
    let summary_foreign = c["foreign_packets_caller_side"].as_u64().unwrap_or(0)
        + c["foreign_packets_callee_side"].as_u64().unwrap_or(0);
    assert!(
        summary_foreign > 0,
        "the call summary shows no foreign packets: {c}"
    );

    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{base}.json")).unwrap()).unwrap();
    let meta_foreign = meta["media"]["caller"]["foreign_packets"]
        .as_u64()
        .unwrap_or(0)
        + meta["media"]["callee"]["foreign_packets"]
            .as_u64()
            .unwrap_or(0);
    assert!(
        meta_foreign > 0,
        "the metadata shows no foreign packets: {}",
        meta["media"]
    );

    let m = proxy.metrics();
    let dropped = metric(&m, "callrec_rtp_foreign_dropped_total").unwrap_or(0.0);
    assert!(
        dropped > 0.0,
        "callrec_rtp_foreign_dropped_total = {dropped}"
    );
}

/// A recorded call of `pair`, attacked from `attack_after` (None: from before the call).
fn attacked_call(pair: Pair, attack_after: Option<Duration>) {
    attacked_call_through(
        Proxy::builder().rtp_ports(RANGE).start(),
        pair,
        attack_after,
    );
}

fn attacked_call_through(proxy: Proxy, pair: Pair, attack_after: Option<Duration>) -> Proxy {
    let run = proxy.call(pair);
    let mut attacker = None;
    if attack_after.is_none() {
        attacker = Some(Attacker::start(proxy.rtp_ports()));
    }
    let call = thread::spawn(move || run.run());
    if let Some(after) = attack_after {
        wait_answered(&proxy);
        thread::sleep(after);
        attacker = Some(Attacker::start(proxy.rtp_ports()));
    }
    let out = call.join().expect("call thread");
    let (sent, received) = attacker.expect("attacker started").stop();
    assert_attack_failed(&proxy, &out, sent, received);
    proxy
}

/// The same spray while the kernel relays the parties' RTP (`--kernel-relay`):
/// a stranger's packets never match a kernel flow, so they meet the same
/// rules in userspace, and the parties' media must really have gone
/// through the kernel for this to show anything.
#[cfg(feature = "kernel-relay")]
#[test]
fn rtp_sprayed_while_the_kernel_relays_the_call_is_neither_relayed_nor_recorded() {
    let proxy = Proxy::builder()
        .rtp_ports(RANGE)
        .arg("--kernel-relay")
        .arg("lo")
        .start();
    let proxy = attacked_call_through(proxy, pair("basic"), Some(Duration::from_millis(500)));
    let kernel = metric(&proxy.metrics(), "callrec_kernel_relayed_packets_total").unwrap_or(0.0);
    assert!(kernel >= 100.0, "the kernel relayed {kernel} packets");
}

#[test]
fn rtp_sprayed_from_the_start_of_a_call_is_neither_relayed_nor_recorded() {
    attacked_call(pair("basic"), None);
}

#[test]
fn rtp_sprayed_while_the_caller_is_on_hold_and_silent_is_neither_relayed_nor_recorded() {
    // The callee holds the caller 1.8 s after the answer; the caller is then
    // silent for 1.5 s. The spray starts 1 s after the answer.
    attacked_call(pair("callee-hold"), Some(Duration::from_secs(1)));
}

#[test]
fn rtp_sprayed_across_a_reinvite_that_keeps_the_address_is_neither_relayed_nor_recorded() {
    // The caller pauses its stream for the re-INVITE (same address) and
    // resumes 200 ms after the ACK; the spray starts before it.
    let reinvite = Pair {
        name: "reinvite",
        dir: "reinvite",
        media: true,
        direction: Direction::Incoming,
    };
    attacked_call(reinvite, Some(Duration::from_millis(700)));
}

/// A caller whose SDP names one port while its RTP leaves from another (a
/// NAT): 5 s of 440 Hz from the other port, then BYE. Returns the packets
/// the NATed socket got back and the call summary.
fn nat_call(proxy: &Proxy) -> (u64, serde_json::Value) {
    let run = proxy.call(pair("basic"));
    let dir = TestDir::new("nat");
    let mut callee = run.callee_sipp(dir.path()).spawn();
    assert!(
        callee.wait_ready(Duration::from_secs(10)),
        "callee sipp did not start"
    );
    let mut ua = Ua::new("127.0.0.3", proxy.sip_addr());
    ua.invite("03012345678", "200");
    let ok = ua.wait_response("1 INVITE", Duration::from_secs(10), |c| c == 200);
    let to: SocketAddr = ok.sdp_target().expect("the 200 has SDP");
    ua.ack(&ok);
    let nat = UdpSocket::bind("127.0.0.3:0").unwrap();
    nat.set_nonblocking(true).unwrap();
    let mut back = 0u64;
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    for k in 0..250u32 {
        nat.send_to(&tone_packet(k, 0x4E41_5401, 440.0, 12000.0), to)
            .unwrap();
        while nat.recv_from(&mut buf).is_ok() {
            back += 1;
        }
        let due = start + Duration::from_millis(20 * u64::from(k + 1));
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            thread::sleep(w);
        }
    }
    ua.bye();
    let callee = callee.wait();
    callee.assert_success();
    let calls = proxy.recent_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    (back, calls[0].clone())
}

#[test]
fn a_caller_behind_nat_is_learned_after_the_window_in_heuristic_mode() {
    let proxy = Proxy::builder().rtp_ports(RANGE).start();
    let (back, call) = nat_call(&proxy);
    // Learned after the 3 s window: the last ~2 s are relayed both ways.
    let from_caller = call["rtp_from_caller"].as_u64().unwrap_or(0);
    assert!(
        (50..=150).contains(&from_caller),
        "rtp_from_caller = {from_caller}: expected only what followed the learning window\n{call}"
    );
    assert!(
        back >= 50,
        "the NATed caller got {back} packets back\n{call}"
    );
    let base = sealed_set(&proxy);
    let ch = read_wav(Path::new(&format!("{base}.wav")));
    let own = peak_level(&ch[0], 440.0);
    let other = peak_level(&ch[0], 1000.0);
    assert!(
        own > other + 30.0,
        "caller channel: 440 Hz {own:.1} dB, 1 kHz {other:.1} dB"
    );
}

#[test]
fn strict_mode_never_learns_a_source_the_sdp_did_not_name() {
    let proxy = Proxy::builder()
        .rtp_ports(RANGE)
        .arg("--media-learning")
        .arg("strict")
        .start();
    let (back, call) = nat_call(&proxy);
    assert_eq!(call["rtp_from_caller"].as_u64(), Some(0), "{call}");
    assert_eq!(back, 0, "the unsignalled source got media back");
    assert!(
        call["foreign_packets_caller_side"].as_u64().unwrap_or(0) >= 200,
        "{call}"
    );
}

#[test]
fn a_call_without_strangers_counts_no_foreign_packets() {
    // The counters are for alarms: a normal call (the callee starting its
    // stream right after the answer) must not raise them.
    let proxy = Proxy::builder().rtp_ports(RANGE).start();
    let out = proxy.call(pair("basic")).run();
    out.assert_success();
    out.assert_media_both_ways();
    let calls = proxy.recent_calls();
    let c = &calls[0];
    assert_eq!(c["foreign_packets_caller_side"].as_u64(), Some(0), "{c}");
    assert_eq!(c["foreign_packets_callee_side"].as_u64(), Some(0), "{c}");
    let base = sealed_set(&proxy);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{base}.json")).unwrap()).unwrap();
    assert_eq!(meta["media"]["caller"]["foreign_packets"].as_u64(), Some(0));
    assert_eq!(meta["media"]["callee"]["foreign_packets"].as_u64(), Some(0));
    let m = proxy.metrics();
    assert_eq!(metric(&m, "callrec_rtp_foreign_dropped_total"), Some(0.0));
}
