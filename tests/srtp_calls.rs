//! SRTP (SDES) calls through the proxy with baresip as the real phones: an
//! SRTP trunk calling over TLS a plain-RTP PBX (G.711), and a plain PBX calling
//! an SRTP trunk over UDP (G.722, the trunk leg set to srtp, keys allowed over
//! UDP by --allow-sdes-over-udp). The recording holds each
//! party's tone on its channel; the packets on the trunk leg, captured on
//! the loopback interface, carry no recoverable tone; a tampered SRTP packet
//! is counted and not recorded; no SDES key shows up in the proxy's log or
//! in the recording's files. baresip sends its media from 127.0.0.1 while
//! its SDP names its own address, so the proxy learns the source after the
//! learning window (3 s): the calls last 8 s and the checks look at the middle.

#[path = "common/baresip.rs"]
mod baresip;
mod common;

use baresip::{require_baresip, Baresip, Capture, Datagram, Phone};
use common::audio::*;
use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn sealed_set(proxy: &Proxy) -> PathBuf {
    let mut found = Vec::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            found = proxy.sealed_sets_now();
            !found.is_empty()
        }),
        "no sealed set\n{}",
        proxy.log_tail(80)
    );
    PathBuf::from(
        found[0]
            .to_string_lossy()
            .trim_end_matches(SET_SIGNATURE_SUFFIX),
    )
}

/// Channel `ch` of a WAV as samples, and the rate.
fn channel(wav: &Path, ch: usize) -> (Vec<f64>, f64) {
    let mut r = hound::WavReader::open(wav).unwrap();
    let n = r.spec().channels as usize;
    let rate = r.spec().sample_rate as f64;
    let s: Vec<f64> = r.samples::<i16>().map(|s| s.unwrap() as f64).collect();
    (s.iter().skip(ch).step_by(n).copied().collect(), rate)
}

/// How far `freq` stands above a frequency nobody sent, in dB (averaged
/// over blocks, so that noise never stands out by chance).
fn dominance(x: &[f64], rate: f64, freq: f64) -> f64 {
    mean_level_db(x, rate, freq) - mean_level_db(x, rate, 1700.0)
}

/// The middle second of channel `ch`.
fn middle(wav: &Path, ch: usize) -> (Vec<f64>, f64) {
    let (x, rate) = channel(wav, ch);
    let mid = x.len() / 2;
    let half = rate as usize / 2;
    assert!(
        x.len() > rate as usize * 2,
        "recording too short: {} samples",
        x.len()
    );
    (x[mid - half..mid + half].to_vec(), rate)
}

/// The `inline:` keys in a text (SDP traces).
fn keys_in(text: &str) -> Vec<String> {
    text.split("inline:")
        .skip(1)
        .map(|r| {
            r.split(|c: char| c.is_whitespace() || c == '|')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .filter(|k| k.len() >= 20)
        .collect()
}

/// A-law payloads of captured RTP packets as samples.
fn alaw_samples(packets: &[&Datagram]) -> Vec<f64> {
    packets
        .iter()
        .filter(|d| d.payload.len() >= 12 + 160)
        .flat_map(|d| d.payload[12..12 + 160].iter())
        .map(|b| callrec::recorder::ALAW_TO_LINEAR[*b as usize] as f64)
        .collect()
}

/// The phone's own m=audio port with `proto` in its SIP trace: from an SDP
/// whose c= line names the phone's address `ip` (the proxy's name 127.0.0.1).
fn sdp_port(trace: &str, proto: &str, ip: &str) -> Option<u16> {
    let mut c = "";
    trace.lines().map(str::trim).find_map(|l| {
        if let Some(addr) = l.strip_prefix("c=IN IP4 ") {
            c = addr;
            return None;
        }
        let rest = l.strip_prefix("m=audio ")?;
        let mut it = rest.split_whitespace();
        let port = it.next()?.parse().ok()?;
        (it.next()? == proto && c == ip).then_some(port)
    })
}

fn in_range(port: u16, r: (u16, u16)) -> bool {
    port >= r.0 && port <= r.1
}

#[test]
fn srtp_trunk_calls_a_plain_pbx_in_g711_and_the_recording_is_clear() {
    require_baresip("lo:3");
    require_baresip("lo:2");
    let dir = TestDir::new("srtp-in");
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (ca, cert, key, bundle) = baresip::make_certs(&certs);
    let tls_port = free_port();
    // The trunk calls in over TLS (keys only travel there); the PBX speaks
    // plain RTP over UDP. baresip's TLS connection leaves from 127.0.0.1.
    let proxy = Proxy::builder()
        .arg("--listen-tls")
        .arg(&format!("127.0.0.1:{tls_port}"))
        .arg("--tls-cert")
        .arg(cert.to_str().unwrap())
        .arg("--tls-key")
        .arg(key.to_str().unwrap())
        .arg("--trusted-source")
        .arg("127.0.0.1")
        .arg("--pbx-media")
        .arg("rtp")
        .start();
    let rtp = proxy.rtp_ports();
    let (trunk_tone, pbx_tone) = (dir.join("trunk-440.wav"), dir.join("pbx-1000.wav"));
    tone_wav(&trunk_tone, 8000, 1, 440.0, 8.0);
    tone_wav(&pbx_tone, 8000, 1, 1000.0, 12.0);
    // Everything between the proxy's media ports and anyone, both ways.
    let cap = Capture::start(
        move |s, d| in_range(s.port(), rtp) || in_range(d.port(), rtp),
        Duration::from_secs(40),
    );
    let mut pbx = Baresip::start(
        dir.path(),
        &Phone {
            name: "pbx",
            user: "200",
            sip: proxy.pbx_addr(),
            iface: "lo:2",
            mediaenc: None,
            codec: "PCMA",
            source: &pbx_tone,
            auto_answer: true,
            tls: None,
        },
        None,
        25,
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut trunk = Baresip::start(
        dir.path(),
        &Phone {
            name: "trunk",
            user: "03012345678",
            sip: proxy.trunk_addr(),
            iface: "lo:3",
            mediaenc: Some("srtp-mand"),
            codec: "PCMA",
            source: &trunk_tone,
            auto_answer: false,
            tls: Some((&ca, &bundle)),
        },
        Some(&format!("sip:200@127.0.0.1:{tls_port};transport=tls")),
        20,
    );
    // Mid-call: a packet the trunk sent, one payload bit flipped, sent again.
    let mut tampered_sent = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let trace = trunk.output();
        let Some(trunk_port) = sdp_port(&trace, "RTP/SAVP", "127.0.0.3") else {
            continue;
        };
        let seen = cap.snapshot();
        let from_trunk: Vec<&Datagram> = seen
            .iter()
            .filter(|d| d.src.port() == trunk_port && in_range(d.dst.port(), rtp))
            .collect();
        if from_trunk.len() > 20 {
            let mut p = from_trunk[from_trunk.len() - 1].payload.clone();
            p[40] ^= 0x08;
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.send_to(&p, SocketAddr::V4(from_trunk[0].dst)).unwrap();
            tampered_sent = true;
            break;
        }
    }
    assert!(
        tampered_sent,
        "no SRTP from the trunk seen\n{}\n{}",
        trunk.output(),
        proxy.log_tail(40)
    );
    assert!(
        trunk.wait(Duration::from_secs(25)),
        "the trunk's baresip did not end"
    );
    pbx.wait(Duration::from_secs(10));
    let packets = cap.finish();
    let trunk_trace = trunk.output();
    let pbx_trace = pbx.output();
    assert!(
        trunk_trace.contains("SRTP is Enabled (cryptosuite=AES_CM_128_HMAC_SHA1_80)"),
        "{trunk_trace}"
    );
    assert!(
        !pbx_trace.contains("a=crypto"),
        "the plain PBX was offered keys:\n{pbx_trace}"
    );

    let base = sealed_set(&proxy);
    let wav = base.with_extension("wav");
    let (left, rate) = middle(&wav, 0);
    let (right, _) = middle(&wav, 1);
    assert!(
        dominance(&left, rate, 440.0) >= 30.0,
        "the trunk's 440 Hz is not on the caller channel"
    );
    assert!(
        dominance(&right, rate, 1000.0) >= 30.0,
        "the PBX's 1000 Hz is not on the callee channel"
    );
    // Each party on its own channel only.
    assert!(level_db(&left, rate, 440.0) - level_db(&left, rate, 1000.0) >= 30.0);
    assert!(level_db(&right, rate, 1000.0) - level_db(&right, rate, 440.0) >= 30.0);

    // The trunk, using its own SRTP stack, heard the PBX: our SRTP authenticates.
    let heard = trunk.heard();
    assert!(!heard.is_empty(), "baresip wrote nothing it heard");
    let (h, hr) = channel(&heard[0], 0);
    let h = &h[h.len() / 3..2 * h.len() / 3];
    assert!(
        dominance(h, hr, 1000.0) >= 20.0,
        "the trunk did not hear the PBX's tone"
    );

    // On the wire: the trunk leg carries no recoverable tone, the PBX leg does.
    let trunk_port = sdp_port(&trunk_trace, "RTP/SAVP", "127.0.0.3").unwrap();
    let pbx_port = sdp_port(&pbx_trace, "RTP/AVP", "127.0.0.2").unwrap();
    let to_trunk: Vec<&Datagram> = packets
        .iter()
        .filter(|d| d.dst.port() == trunk_port && in_range(d.src.port(), rtp))
        .collect();
    let to_pbx: Vec<&Datagram> = packets
        .iter()
        .filter(|d| d.dst.port() == pbx_port && in_range(d.src.port(), rtp))
        .collect();
    assert!(
        to_trunk.len() > 50 && to_pbx.len() > 50,
        "{} / {}",
        to_trunk.len(),
        to_pbx.len()
    );
    let wire_trunk = alaw_samples(&to_trunk);
    let wire_pbx = alaw_samples(&to_pbx);
    assert!(
        dominance(&wire_pbx, 8000.0, 440.0) >= 30.0,
        "control: the plain leg shows its tone"
    );
    let readable = dominance(&wire_trunk, 8000.0, 1000.0);
    assert!(
        readable < 10.0,
        "the PBX's tone can be read off the trunk leg: {readable:.1} dB above noise"
    );

    // The tampered packet: counted, and the metadata names the suite.
    let m = proxy.metrics();
    assert!(metric(&m, "callrec_srtp_auth_failed_total").unwrap_or(0.0) >= 1.0);
    assert_eq!(
        metric(
            &m,
            "callrec_recording_failures_total{reason=\"encrypted_media\"}"
        )
        .unwrap_or(0.0),
        0.0
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.with_extension("json")).unwrap()).unwrap();
    assert_eq!(
        meta["media"]["caller"]["srtp"], "AES_CM_128_HMAC_SHA1_80",
        "{meta}"
    );
    assert!(meta["media"]["callee"]["srtp"].is_null(), "{meta}");
    assert!(
        meta["media"]["caller"]["srtp_auth_failed"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{meta}"
    );

    // No key (the trunk's, or the one the proxy gave it) in the log or the set.
    let keys = keys_in(&trunk_trace);
    assert!(keys.len() >= 2, "keys in the trunk's trace: {keys:?}");
    let log = proxy.log();
    let json =
        String::from_utf8_lossy(&std::fs::read(base.with_extension("json")).unwrap()).into_owned();
    for k in &keys {
        assert!(
            !log.contains(k.as_str()),
            "an SDES key is in the proxy's log"
        );
        assert!(!json.contains(k.as_str()), "an SDES key is in the metadata");
    }
}

#[test]
fn plain_pbx_calls_an_srtp_trunk_in_g722_and_the_recording_is_clear() {
    require_baresip("lo:3");
    require_baresip("lo:2");
    let dir = TestDir::new("srtp-out");
    let proxy = Proxy::builder()
        .arg("--allow-sdes-over-udp")
        .arg("--trunk-media")
        .arg("srtp")
        .start();
    let (pbx_tone, trunk_tone) = (dir.join("pbx-440.wav"), dir.join("trunk-1000.wav"));
    tone_wav(&pbx_tone, 16000, 1, 440.0, 8.0);
    tone_wav(&trunk_tone, 16000, 1, 1000.0, 12.0);
    let mut trunk = Baresip::start(
        dir.path(),
        &Phone {
            name: "trunk",
            user: "004989123456",
            sip: proxy.trunk_addr(),
            iface: "lo:3",
            mediaenc: Some("srtp-mand"),
            codec: "G722/16000/1",
            source: &trunk_tone,
            auto_answer: true,
            tls: None,
        },
        None,
        25,
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut pbx = Baresip::start(
        dir.path(),
        &Phone {
            name: "pbx",
            user: "201",
            sip: proxy.pbx_addr(),
            iface: "lo:2",
            mediaenc: None,
            codec: "G722/16000/1",
            source: &pbx_tone,
            auto_answer: false,
            tls: None,
        },
        Some(&format!("sip:004989123456@{}", proxy.sip_addr())),
        20,
    );
    assert!(
        pbx.wait(Duration::from_secs(25)),
        "the PBX's baresip did not end"
    );
    trunk.wait(Duration::from_secs(10));
    let trunk_trace = trunk.output();
    assert!(trunk_trace.contains("SRTP is Enabled"), "{trunk_trace}");
    assert!(!pbx.output().contains("a=crypto"), "the plain PBX got keys");
    let base = sealed_set(&proxy);
    let wav = base.with_extension("wav");
    let (left, rate) = middle(&wav, 0);
    let (right, _) = middle(&wav, 1);
    assert_eq!(rate, 16000.0, "G.722 is recorded at 16 kHz");
    assert!(
        dominance(&left, rate, 440.0) >= 30.0,
        "the PBX's 440 Hz is not on the caller channel"
    );
    assert!(
        dominance(&right, rate, 1000.0) >= 30.0,
        "the trunk's 1000 Hz is not on the callee channel"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.with_extension("json")).unwrap()).unwrap();
    assert!(meta["media"]["caller"]["srtp"].is_null(), "{meta}");
    assert!(meta["media"]["callee"]["srtp"].is_string(), "{meta}");
    let log = proxy.log();
    for k in keys_in(&trunk_trace) {
        assert!(
            !log.contains(k.as_str()),
            "an SDES key is in the proxy's log"
        );
    }
}
