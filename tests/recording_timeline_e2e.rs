//! The recording's timeline through the whole proxy: a small
//! SIP caller written here sets up a call through callrec to a SIPp callee,
//! then sends a crafted RTP stream with loss, reordering, duplicates, an SSRC
//! change, a 10 s hold and a timestamp jump, with full-scale clicks at known
//! times. The test finds each click in the recorded WAV and checks it landed
//! within 20 ms of when it was sent, on the recording's wall clock.

mod common;

use common::ua::Ua;
use common::*;
use std::time::{Duration, Instant, SystemTime};

const ALAW_SILENCE: u8 = 0xD5;
/// A-law code of +32256, the loudest sample.
const ALAW_MAX: u8 = 0xAA;

fn rtp(seq: u16, ts: u32, ssrc: u32, fill: u8) -> Vec<u8> {
    let mut p = vec![0x80, 8];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend(std::iter::repeat_n(fill, 160));
    p
}

/// One planned packet: when (ms after the stream's start) and what.
struct Planned {
    at_ms: u64,
    seq: u16,
    ts: u32,
    ssrc: u32,
    click: bool,
}

fn plan() -> Vec<Planned> {
    let mut out = Vec::new();
    let clicks = [50u64, 125, 175, 725];
    // Segment 1: 0–3 s, SSRC 0x1111.
    for k in 0..150u64 {
        out.push(Planned {
            at_ms: k * 20,
            seq: 1000 + k as u16,
            ts: 50_000 + k as u32 * 160,
            ssrc: 0x1111,
            click: clicks.contains(&k),
        });
    }
    // Segment 2: 3–4 s, a new SSRC with its own sequence and timestamp base.
    for k in 150..200u64 {
        out.push(Planned {
            at_ms: k * 20,
            seq: 7 + (k - 150) as u16,
            ts: 900_000 + (k - 150) as u32 * 160,
            ssrc: 0x2222,
            click: clicks.contains(&k),
        });
    }
    // 10 s hold (nothing sent), then segment 3: 14–15 s, same SSRC, sequence
    // continues, timestamp jumps far ahead.
    for k in 700..750u64 {
        out.push(Planned {
            at_ms: k * 20,
            seq: 57 + (k - 700) as u16,
            ts: 5_900_000 + (k - 700) as u32 * 160,
            ssrc: 0x2222,
            click: clicks.contains(&k),
        });
    }
    out
}

#[test]
fn clicks_land_where_they_were_sent_despite_loss_reordering_and_hold() {
    let proxy = Proxy::start();
    let run = proxy.call(pair("basic")).timeout(Duration::from_secs(60));
    let dir = TestDir::new("timeline");
    let mut callee = run.callee_sipp(dir.path()).spawn();
    assert!(
        callee.wait_ready(Duration::from_secs(10)),
        "callee sipp did not start"
    );

    let mut ua = Ua::new("127.0.0.3", proxy.sip_addr());
    ua.invite("03012345678", "200");
    let ok = ua.wait_response("1 INVITE", Duration::from_secs(10), |c| c == 200);
    let rtp_to = ok.sdp_target().expect("the 200 has SDP");
    ua.ack(&ok);
    let media = &ua.media;

    // Send the stream on its own schedule, with the impairments.
    let packets = plan();
    let lost = |i: usize| i % 20 == 7 && !packets[i].click;
    let t0 = Instant::now();
    let t0_wall = SystemTime::now();
    // When each click was due: a phone captures on its schedule, and this
    // thread's own late wake-ups (a busy machine) are network delay to the
    // recorder, which places audio by its timestamp, not by its arrival.
    let mut click_sent: Vec<SystemTime> = Vec::new();
    let mut i = 0;
    while i < packets.len() {
        let p = &packets[i];
        let due = t0 + Duration::from_millis(p.at_ms);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let bytes = |p: &Planned| {
            rtp(
                p.seq,
                p.ts,
                p.ssrc,
                if p.click { ALAW_MAX } else { ALAW_SILENCE },
            )
        };
        // Reordering: the packet at these indices is held back and sent right
        // after its successor (as a network would delay it; a sender cannot
        // send audio before it was captured).
        if [30usize, 90, 160].contains(&i) {
            let next = &packets[i + 1];
            std::thread::sleep(Duration::from_millis(20));
            media.send_to(&bytes(next), rtp_to).unwrap();
            media.send_to(&bytes(p), rtp_to).unwrap();
            i += 2;
            continue;
        }
        if p.click {
            click_sent.push(t0_wall + Duration::from_millis(p.at_ms));
        }
        if !lost(i) {
            media.send_to(&bytes(p), rtp_to).unwrap();
        }
        // Duplicates.
        if [60usize, 120, 710].contains(&i) {
            media.send_to(&bytes(p), rtp_to).unwrap();
        }
        i += 1;
    }
    std::thread::sleep(Duration::from_millis(300));
    ua.bye();
    callee.wait().assert_success();

    // Find the set and the clicks in the left (caller) channel.
    let recordings = proxy.data_dir().join("recordings");
    let mut json = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            json = std::fs::read_dir(&recordings).ok().and_then(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .find(|p| p.to_string_lossy().ends_with(".sha256.SHA256withRSA.sig"))
            });
            json.is_some()
        }),
        "no sealed set\n{}",
        proxy.log_tail(60)
    );
    let base_name = json
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".sha256.SHA256withRSA.sig")
        .to_string();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{base_name}.json")).unwrap()).unwrap();
    let start: chrono::DateTime<chrono::Utc> =
        meta["times"]["start"].as_str().unwrap().parse().unwrap();
    let start = SystemTime::from(start);
    let mut reader = hound::WavReader::open(format!("{base_name}.wav")).unwrap();
    let samples: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
    let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
    let mut found = Vec::new();
    let mut k = 0;
    while k < left.len() {
        if left[k].unsigned_abs() > 20_000 {
            found.push(k);
            k += 800; // skip the rest of this click (20 ms) and a margin
        } else {
            k += 1;
        }
    }
    assert_eq!(
        found.len(),
        click_sent.len(),
        "expected {} clicks in the caller channel, found them at samples {found:?}",
        click_sent.len()
    );
    for (n, (pos, sent)) in found.iter().zip(&click_sent).enumerate() {
        // A 20 ms packet sent at T carries the audio of [T - 20 ms, T].
        let expected_ms = sent.duration_since(start).unwrap().as_secs_f64() * 1000.0 - 20.0;
        let got_ms = *pos as f64 / 8.0;
        eprintln!("click {n}: sent for {expected_ms:.1} ms, recorded at {got_ms:.1} ms");
        assert!(
            (got_ms - expected_ms).abs() <= 20.0,
            "click {n} sent at {expected_ms:.1} ms landed at {got_ms:.1} ms (all: {found:?})"
        );
    }
    // The recorder saw the impairments and says so in the metadata.
    let caller = &meta["media"]["caller"];
    assert!(caller["lost"].as_u64().unwrap() >= 10, "{caller}");
    assert!(caller["duplicates"].as_u64().unwrap() >= 2, "{caller}");
    assert!(caller["ssrc_changes"].as_u64().unwrap() >= 1, "{caller}");
    // The callee's tone is on the right channel only, all through.
    let right_loud = samples
        .iter()
        .skip(1)
        .step_by(2)
        .filter(|v| v.unsigned_abs() > 5000)
        .count();
    assert!(
        right_loud > 8000 * 5,
        "callee channel has too little tone: {right_loud}"
    );
}
