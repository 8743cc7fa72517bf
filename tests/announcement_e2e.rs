//! Announcements end to end: a caller (the test's own UA, so the
//! RTP it receives can be inspected) hears the announcement as early media
//! before the callee is even called; the recording starts after it and holds
//! none of it; incoming and outgoing calls get their own file; a caller who
//! hangs up during the announcement ends everything cleanly.

mod common;

use common::audio::*;
use common::ua::{alaw_decode, Ua};
use common::*;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

fn decode(packets: &[(Instant, Vec<u8>)]) -> Vec<f64> {
    packets
        .iter()
        .filter(|(_, p)| p.len() > 12 && p[1] & 0x7f == 8)
        .flat_map(|(_, p)| p[12..].iter().map(|b| alaw_decode(*b) as f64))
        .collect()
}

fn sealed(proxy: &Proxy, n: usize) -> Vec<String> {
    let dir = proxy.data_dir().join("recordings");
    let mut sets: Vec<String> = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            sets = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| e.path().to_string_lossy().to_string())
                        .filter(|p| p.ends_with(".sha256.SHA256withRSA.sig"))
                        .map(|p| p.trim_end_matches(".sha256.SHA256withRSA.sig").to_string())
                        .collect()
                })
                .unwrap_or_default();
            sets.len() >= n
        }),
        "no sealed set\n{}",
        proxy.log_tail(50)
    );
    sets.sort();
    sets
}

/// Places a call from `ua`, checks the announcement in what it hears before the
/// answer, then talks 2 s (440 Hz) and hangs up. Returns the early-media audio.
fn call_and_listen(ua: &mut Ua, from: &str, to: &str, tone_hz: f64) {
    ua.invite(from, to);
    let progress = ua.wait_response("1 INVITE", Duration::from_secs(5), |c| c == 183);
    let t183 = Instant::now();
    assert!(
        progress.sdp_target().is_some(),
        "183 without SDP: {}",
        progress.0
    );
    // Early media: the announcement, from the proxy's port named in the 183.
    let heard = ua.recv_rtp_until(Duration::from_secs(4), |got| {
        decode(got).len() >= 8000 * 3 / 2
    });
    let pcm = decode(&heard);
    assert!(
        pcm.len() >= 8000 * 3 / 2,
        "caller heard only {} samples of early media",
        pcm.len()
    );
    let seg = &pcm[800..8800.min(pcm.len())];
    let want = level_db(seg, 8000.0, tone_hz);
    for other in [440.0, 1000.0, 1500.0, 2000.0] {
        if other != tone_hz {
            assert!(
                want - level_db(seg, 8000.0, other) >= 30.0,
                "announcement at {tone_hz} Hz not clearly heard (vs {other} Hz)"
            );
        }
    }
    let ok = ua.wait_response("1 INVITE", Duration::from_secs(10), |c| c == 200);
    assert!(
        t183.elapsed() >= Duration::from_millis(1900),
        "the call was answered {:?} after the 183: the announcement (2 s) was cut short",
        t183.elapsed()
    );
    let rtp_to = ok.sdp_target().expect("200 has SDP");
    ua.ack(&ok);
    ua.send_tone(rtp_to, 440.0, Duration::from_secs(2));
    ua.bye();
}

#[test]
fn caller_hears_the_announcement_callee_and_recording_do_not() {
    let dir = TestDir::new("announce");
    let incoming = dir.join("in.wav");
    let outgoing = dir.join("out.wav");
    tone_wav(&incoming, 44100, 2, 2000.0, 2.0);
    tone_wav(&outgoing, 44100, 2, 1500.0, 2.0);
    let proxy = Proxy::builder()
        .arg("--announce-incoming")
        .arg(incoming.to_str().unwrap())
        .arg("--announce-outgoing")
        .arg(outgoing.to_str().unwrap())
        .start();

    // Incoming: trunk side (127.0.0.3) calls the PBX side.
    let run = proxy.call(pair("basic")).timeout(Duration::from_secs(40));
    let tdir = TestDir::new("announce-in");
    let mut callee = run.callee_sipp(tdir.path()).spawn();
    assert!(callee.wait_ready(Duration::from_secs(10)));
    let mut ua = Ua::new("127.0.0.3", proxy.sip_addr());
    call_and_listen(&mut ua, "03012345678", "200", 2000.0);
    callee.wait().assert_success();

    // Outgoing: the PBX (127.0.0.2) calls out; its own announcement.
    let run = proxy
        .call_reversed(pair("basic"))
        .timeout(Duration::from_secs(40));
    let tdir = TestDir::new("announce-out");
    let mut callee = run.callee_sipp(tdir.path()).spawn();
    assert!(callee.wait_ready(Duration::from_secs(10)));
    let mut ua = Ua::new("127.0.0.2", proxy.sip_addr());
    call_and_listen(&mut ua, "201", "004989123456", 1500.0);
    callee.wait().assert_success();

    // Neither recording holds the announcement; both say one was played.
    for (set, ann_hz) in sealed(&proxy, 2).iter().zip([2000.0, 1500.0]) {
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{set}.json")).unwrap()).unwrap();
        assert_eq!(meta["announcement"]["played"], true, "{meta}");
        let mut r = hound::WavReader::open(format!("{set}.wav")).unwrap();
        let s: Vec<f64> = r.samples::<i16>().map(|v| v.unwrap() as f64).collect();
        let left: Vec<f64> = s.iter().step_by(2).copied().collect();
        let right: Vec<f64> = s.iter().skip(1).step_by(2).copied().collect();
        for (name, ch, tone) in [("caller", &left, 440.0), ("callee", &right, 1000.0)] {
            let seg = &ch[..ch.len().min(8000 * 2)];
            let t = level_db(seg, 8000.0, tone);
            let a = level_db(seg, 8000.0, ann_hz);
            assert!(
                t - a >= 30.0,
                "{set}: {name} channel holds the {ann_hz} Hz announcement ({a:.1} dB vs {t:.1} dB)"
            );
        }
    }
}

#[test]
fn caller_hanging_up_during_the_announcement_ends_the_call_cleanly() {
    let dir = TestDir::new("announce-cancel");
    let wav = dir.join("in.wav");
    tone_wav(&wav, 44100, 2, 2000.0, 3.0);
    let proxy = Proxy::builder()
        .arg("--announce-incoming")
        .arg(wav.to_str().unwrap())
        .start();
    // Listen where the PBX would be: no INVITE may reach it.
    let pbx = UdpSocket::bind(proxy.pbx_addr()).unwrap();
    pbx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut ua = Ua::new("127.0.0.3", proxy.sip_addr());
    ua.invite("03012345678", "200");
    ua.wait_response("1 INVITE", Duration::from_secs(5), |c| c == 183);
    ua.recv_rtp(Duration::from_millis(500));
    ua.cancel();
    let end = Instant::now() + Duration::from_secs(4);
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        if let Ok(n) = pbx.recv(&mut buf) {
            panic!(
                "the PBX got a request although the caller left during the announcement: {}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
    }
    assert!(wait_until(Duration::from_secs(5), || {
        let m = proxy.metrics();
        metric_sum(&m, "callrec_calls_active") == 0.0
            && metric_sum(&m, "callrec_media_ports_in_use") == 0.0
    }));
    let (_, body) = http_get(proxy.admin_addr(), "/api/calls/recent").unwrap();
    let calls: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(calls[0]["status"], 487, "{body}");
    // Nothing was recorded: the call was never answered.
    let rec = proxy.data_dir().join("recordings");
    let files = std::fs::read_dir(&rec).map(|d| d.count()).unwrap_or(0);
    assert_eq!(files, 0, "a recording appeared for an unanswered call");
}
