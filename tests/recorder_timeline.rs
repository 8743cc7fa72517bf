//! Integration test of the recorder's timeline: crafted RTP streams (tones,
//! loss, reordering, duplicates, SSRC change, hold, timestamp jump, DTX,
//! telephone-event, clicks) with synthetic arrival times, checked on the WAV
//! files read back with hound. Over 600 lines: each timeline irregularity
//! is a scripted arrival sequence spelled out packet by packet.

use std::f64::consts::PI;
use std::time::{Duration, Instant};

use bytes::Bytes;
use callrec::recorder::{encode_alaw, encode_ulaw, PayloadMap, Recorder, RecordingSpec};
use callrec::vocab::{ChannelMode, Side};

const RATE: f64 = 8000.0;
const TONE_AMP: f64 = 6000.0;
const CLICK_AMP: i16 = 30000;

/// Small deterministic generator (no external randomness: the test is reproducible).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Bytes {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.push(0x80);
    p.push(pt | if marker { 0x80 } else { 0 });
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    Bytes::from(p)
}

/// One packet to offer: arrival offset from the recording start.
struct Offer {
    at: Duration,
    party: Side,
    data: Bytes,
}

/// A stream segment: from wall sample `from` to `to` (8 kHz), with its RTP mapping.
struct Seg {
    from: u64,
    to: u64,
    ssrc: u32,
    /// RTP timestamp of wall sample `from`.
    ts0: u32,
    seq0: u16,
    /// Send no audio in these wall-sample ranges (timestamps keep running); the third
    /// value is how many sequence numbers other packets (DTMF, CN) take in the gap.
    gaps: Vec<(u64, u64, u16)>,
}

struct Sent {
    offers: Vec<Offer>,
    lost: u64,
    dups: u64,
}

/// Builds one party's A-law stream over the segments, with loss, jitter, reordering, duplicates and clicks.
fn party_stream(
    party: Side,
    freq: f64,
    segs: &[Seg],
    clicks: &[u64],
    rng: &mut Lcg,
    sent: &mut Sent,
) {
    for seg in segs {
        let mut seq = seg.seq0;
        let mut w = seg.from;
        let mut first_after_gap = true;
        while w + 160 <= seg.to {
            let ts = seg.ts0.wrapping_add((w - seg.from) as u32);
            if let Some(&(_, _, reserved)) = seg.gaps.iter().find(|&&(a, b, _)| w >= a && w < b) {
                seq = seq.wrapping_add(reserved);
                first_after_gap = true;
                w += 160;
                while seg.gaps.iter().any(|&(a, b, _)| w >= a && w < b) {
                    w += 160;
                }
                continue;
            }
            let has_click = clicks.iter().any(|&c| c >= w && c < w + 160);
            let payload: Vec<u8> = (0..160u64)
                .map(|i| {
                    let n = w + i;
                    let click = clicks.iter().any(|&c| n >= c && n < c + 16);
                    let s = if click {
                        CLICK_AMP
                    } else {
                        (TONE_AMP * (2.0 * PI * freq * n as f64 / RATE).sin()) as i16
                    };
                    encode_alaw(s)
                })
                .collect();
            let data = rtp(8, first_after_gap, seq, ts, seg.ssrc, &payload);
            first_after_gap = false;
            seq = seq.wrapping_add(1);
            // Sent when its last sample was captured; 0–30 ms network jitter, 5 % late by 45 ms (reordered).
            let sent_at = (w + 160) as f64 / RATE;
            let r = rng.next();
            let jitter = if r < 0.05 { 0.045 } else { rng.next() * 0.030 };
            w += 160;
            if !has_click && rng.next() < 0.05 {
                sent.lost += 1;
                continue;
            }
            let at = Duration::from_secs_f64(sent_at + jitter);
            if rng.next() < 0.02 {
                sent.dups += 1;
                sent.offers.push(Offer {
                    at: at + Duration::from_millis(5),
                    party,
                    data: data.clone(),
                });
            }
            sent.offers.push(Offer { at, party, data });
        }
    }
}

fn secs(s: f64) -> u64 {
    (s * RATE) as u64
}

/// Power of `freq` in `x` (Goertzel), normalised by length.
fn power(x: &[f64], freq: f64) -> f64 {
    let k = 2.0 * (2.0 * PI * freq / RATE).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s0 = v + k * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - k * s1 * s2) / (x.len() as f64).powi(2)
}

fn dominant(x: &[f64]) -> f64 {
    let mut best = (0.0, 0.0);
    let mut f = 100.0;
    while f < 3900.0 {
        let p = power(x, f);
        if p > best.1 {
            best = (f, p);
        }
        f += 10.0;
    }
    best.0
}

fn rms(x: &[f64]) -> f64 {
    (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt()
}

fn slice(ch: &[f64], from_s: f64, to_s: f64) -> &[f64] {
    &ch[secs(from_s) as usize..secs(to_s) as usize]
}

/// First sample at click level within ±100 ms of `expect` seconds; returns its time.
fn find_click(ch: &[f64], expect: f64) -> Option<f64> {
    let from = secs(expect - 0.1) as usize;
    let to = (secs(expect + 0.1) as usize).min(ch.len());
    (from..to)
        .find(|&i| ch[i].abs() > 20000.0)
        .map(|i| i as f64 / RATE)
}

#[test]
fn stereo_timeline_survives_loss_reorder_ssrc_change_hold_and_jump() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let t0 = Instant::now();
    let mut spec = RecordingSpec::new(&dir, "call", ChannelMode::Stereo);
    spec.start = t0;
    spec.queue_capacity = 100_000;
    spec.header_interval = Duration::from_millis(1);
    let rec = Recorder::start(spec).unwrap();
    rec.set_payload_map(
        Side::Caller,
        PayloadMap::from_sdp_rtpmaps([(101u8, "telephone-event/8000")]),
    );
    rec.set_payload_map(
        Side::Callee,
        PayloadMap::from_sdp_rtpmaps([(101u8, "telephone-event/8000")]),
    );

    let mut rng = Lcg(42);
    let mut caller = Sent {
        offers: Vec::new(),
        lost: 0,
        dups: 0,
    };
    let mut callee = Sent {
        offers: Vec::new(),
        lost: 0,
        dups: 0,
    };

    // Caller, 440 Hz: timestamps and sequence numbers wrap early; SSRC change at 8 s;
    // hold 12–22 s with no packets and timestamps resuming where they stopped.
    let caller_segs = [
        Seg {
            from: 0,
            to: secs(8.0),
            ssrc: 0x1111,
            ts0: u32::MAX - 4000,
            seq0: 65500,
            gaps: vec![],
        },
        Seg {
            from: secs(8.0),
            to: secs(12.0),
            ssrc: 0x2222,
            ts0: 777_777,
            seq0: 100,
            gaps: vec![],
        },
        Seg {
            from: secs(22.0),
            to: secs(30.0),
            ssrc: 0x2222,
            ts0: 777_777u32.wrapping_add(secs(4.0) as u32),
            seq0: 100 + 200,
            gaps: vec![],
        },
    ];
    let caller_clicks = [secs(5.0) + 37, secs(9.5) + 80, secs(24.0) + 11];
    party_stream(
        Side::Caller,
        440.0,
        &caller_segs,
        &caller_clicks,
        &mut rng,
        &mut caller,
    );

    // Callee, 1 kHz: silence suppression 9–11 s (timestamps run on), timestamp jump at 16 s.
    let callee_segs = [
        Seg {
            from: 0,
            to: secs(16.0),
            ssrc: 0x1111,
            ts0: 5000,
            seq0: 1,
            gaps: vec![(secs(9.0), secs(11.0), 1), (secs(3.0), secs(3.2), 10)],
        },
        Seg {
            from: secs(16.0),
            to: secs(30.0),
            ssrc: 0x1111,
            ts0: 5000u32
                .wrapping_add(secs(16.0) as u32)
                .wrapping_add(1_000_000),
            seq0: 1 + 800 - 100 + 1,
            gaps: vec![],
        },
    ];
    let callee_clicks = [secs(2.0) + 3, secs(11.5) + 120, secs(20.0) + 59];
    party_stream(
        Side::Callee,
        1000.0,
        &callee_segs,
        &callee_clicks,
        &mut rng,
        &mut callee,
    );
    // A comfort-noise packet at the start of the suppressed span, and DTMF 3.0–3.2 s (in the gap
    // left for it): neither may become audio.
    let cn_seq = 1 + (secs(9.0) / 160) as u16;
    callee.offers.push(Offer {
        at: Duration::from_secs_f64(9.02),
        party: Side::Callee,
        data: rtp(13, true, cn_seq, 5000 + secs(9.0) as u32, 0x1111, &[40]),
    });
    for k in 0..10u16 {
        let seq = 1 + (secs(3.0) / 160) as u16 + k;
        let d = (160 * (k + 1)).to_be_bytes();
        let payload = [5u8, if k == 9 { 0x8a } else { 0x0a }, d[0], d[1]];
        callee.offers.push(Offer {
            at: Duration::from_secs_f64(3.0 + 0.02 * (k + 1) as f64),
            party: Side::Callee,
            data: rtp(101, k == 0, seq, 5000 + secs(3.0) as u32, 0x1111, &payload),
        });
    }

    let (caller_lost, caller_dups) = (caller.lost, caller.dups);
    let (callee_lost, callee_dups) = (callee.lost, callee.dups);
    let mut all: Vec<Offer> = caller.offers.into_iter().chain(callee.offers).collect();
    all.sort_by_key(|o| o.at);
    let fork = rec.fork();
    for o in all {
        assert!(
            fork.offer(o.party, o.data, t0 + o.at),
            "queue must not overflow here"
        );
    }
    let out = rec.finish().unwrap();

    assert_eq!(out.files, vec![dir.join("call.wav")]);
    assert_eq!(out.sample_rate, 8000);
    let mut reader = hound::WavReader::open(&out.files[0]).unwrap();
    let spec = reader.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (2, 8000, 16)
    );
    let samples: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
    let left: Vec<f64> = samples.iter().step_by(2).map(|&s| s as f64).collect();
    let right: Vec<f64> = samples
        .iter()
        .skip(1)
        .step_by(2)
        .map(|&s| s as f64)
        .collect();

    // Duration: the media ran 30 s.
    let dur = left.len() as f64 / RATE;
    assert!((dur - 30.0).abs() < 0.1, "duration {dur}");
    assert!((out.duration.as_secs_f64() - dur).abs() < 0.001);

    // Clicks land within 20 ms of the time they were sent.
    for (ch, clicks, name) in [
        (&left, &caller_clicks, "caller"),
        (&right, &callee_clicks, "callee"),
    ] {
        for &c in clicks.iter() {
            let expect = c as f64 / RATE;
            let got = find_click(ch, expect)
                .unwrap_or_else(|| panic!("{name} click at {expect} s missing"));
            eprintln!("{name} click sent at {expect:.4} s, recorded at {got:.4} s");
            assert!(
                (got - expect).abs() <= 0.020,
                "{name} click sent at {expect} s found at {got} s"
            );
        }
    }

    // Per channel: the right tone dominates, the other party's tone ≥ 30 dB down.
    for (ch, own, other, spans, name) in [
        (
            &left,
            440.0,
            1000.0,
            [(0.5, 4.9), (5.2, 7.9), (24.2, 29.5)],
            "caller",
        ),
        (
            &right,
            1000.0,
            440.0,
            [(0.5, 1.9), (12.0, 15.9), (21.0, 29.5)],
            "callee",
        ),
    ] {
        for (a, b) in spans {
            let x = slice(ch, a, b);
            let f = dominant(x);
            assert!((f - own).abs() <= 10.0, "{name} {a}-{b} s: dominant {f} Hz");
            let db = 10.0 * (power(x, own) / power(x, other)).log10();
            assert!(
                db >= 30.0,
                "{name} {a}-{b} s: other tone only {db:.1} dB down"
            );
        }
    }
    // Mid-stream spans right after the SSRC change and after the hold/jump.
    let x = slice(&left, 8.2, 9.4);
    assert!((dominant(x) - 440.0).abs() <= 10.0);
    let x = slice(&left, 22.1, 23.9);
    assert!(
        (dominant(x) - 440.0).abs() <= 10.0,
        "caller resumes at 22 s"
    );
    let x = slice(&right, 16.1, 19.9);
    assert!(
        (dominant(x) - 1000.0).abs() <= 10.0,
        "callee after timestamp jump"
    );

    // Hold: 10 s of silence on the caller's channel, while the callee goes on.
    assert!(
        rms(slice(&left, 12.05, 21.95)) < 1.0,
        "caller hold must be silence"
    );
    assert!(rms(slice(&right, 12.05, 15.9)) > 1000.0);
    // Silence suppression and DTMF on the callee: silence, never decoded payload.
    assert!(
        rms(slice(&right, 9.05, 10.95)) < 1.0,
        "DTX span must be silence"
    );
    assert!(
        rms(slice(&right, 3.012, 3.188)) < 1.0,
        "telephone-event must not be audio"
    );
    // The tone is there around it.
    assert!(rms(slice(&right, 2.5, 2.95)) > 2000.0);

    // Statistics tell what happened.
    let c = &out.caller;
    let e = &out.callee;
    assert_eq!(c.duplicates, caller_dups);
    assert_eq!(e.duplicates, callee_dups);
    assert!(
        c.lost <= caller_lost && c.lost + 3 >= caller_lost,
        "caller lost {} of {caller_lost}",
        c.lost
    );
    assert!(
        e.lost <= callee_lost && e.lost + 3 >= callee_lost,
        "callee lost {} of {callee_lost}",
        e.lost
    );
    assert_eq!(c.ssrc_changes, 1);
    assert_eq!(e.ssrc_changes, 0);
    assert!(c.timestamp_jumps >= 1, "hold resume re-anchors");
    assert!(e.timestamp_jumps >= 1, "jump re-anchors");
    assert_eq!(e.telephone_events, 10);
    assert_eq!(e.comfort_noise, 1);
    assert_eq!(c.late_dropped + e.late_dropped, 0);
    assert_eq!(c.queue_dropped + e.queue_dropped, 0);
    assert!(c.codecs.contains(&"PCMA/8000".to_string()));
    assert!(e.codecs.contains(&"telephone-event/8000".to_string()));
}

/// A tone stream with no impairments.
struct Clean {
    party: Side,
    freq: f64,
    /// Start and length in seconds.
    from: f64,
    dur: f64,
    pt: u8,
    ssrc: u32,
    /// Audio rate of the encoder and RTP timestamp step per 20 ms packet.
    rate: f64,
    ts_per_packet: u32,
}

/// The packets of a clean tone stream, each arriving when its last sample was captured.
fn clean_stream(c: Clean, encode: &dyn Fn(&[i16]) -> Vec<u8>) -> Vec<Offer> {
    let Clean {
        party,
        freq,
        from,
        dur,
        pt,
        ssrc,
        rate,
        ts_per_packet,
    } = c;
    let per_packet = (rate * 0.02) as usize;
    let n = (dur / 0.02) as usize;
    let start_k = (from / 0.02) as usize;
    (0..n)
        .map(|k| {
            let kk = start_k + k;
            let pcm: Vec<i16> = (0..per_packet)
                .map(|i| {
                    let t = (kk * per_packet + i) as f64 / rate;
                    (TONE_AMP * (2.0 * PI * freq * t).sin()) as i16
                })
                .collect();
            let ts = (kk as u32).wrapping_mul(ts_per_packet);
            Offer {
                at: Duration::from_secs_f64((kk + 1) as f64 * 0.02),
                party,
                data: rtp(pt, false, kk as u16, ts, ssrc, &encode(&pcm)),
            }
        })
        .collect()
}

#[test]
fn separate_files_with_pcmu_g722_and_a_codec_change_to_opus() {
    use audio_codec::Encoder as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let t0 = Instant::now();
    let mut spec = RecordingSpec::new(&dir, "sep", ChannelMode::Separate);
    spec.start = t0;
    spec.queue_capacity = 100_000;
    let rec = Recorder::start(spec).unwrap();
    rec.set_payload_map(
        Side::Caller,
        PayloadMap::from_sdp("a=rtpmap:0 PCMU/8000\r\na=rtpmap:111 opus/48000/2\r\n"),
    );
    rec.set_payload_map(Side::Callee, PayloadMap::default());

    let ulaw = |pcm: &[i16]| pcm.iter().map(|&s| encode_ulaw(s)).collect::<Vec<u8>>();
    let mut g722 = audio_codec::g722::G722Encoder::new();
    let mut opus = audio_codec::opus::OpusEncoder::new(48000, 1);
    let mut offers = clean_stream(
        Clean {
            party: Side::Caller,
            freq: 440.0,
            from: 0.0,
            dur: 3.0,
            pt: 0,
            ssrc: 9,
            rate: 8000.0,
            ts_per_packet: 160,
        },
        &ulaw,
    );
    // Caller switches to Opus at 3 s (re-INVITE); new SSRC, 48 kHz clock.
    let g722_offers = {
        let enc = std::cell::RefCell::new(&mut g722);
        clean_stream(
            Clean {
                party: Side::Callee,
                freq: 1000.0,
                from: 0.0,
                dur: 6.0,
                pt: 9,
                ssrc: 9,
                rate: 16000.0,
                ts_per_packet: 160,
            },
            &|p| enc.borrow_mut().encode(p),
        )
    };
    let opus_offers = {
        let enc = std::cell::RefCell::new(&mut opus);
        clean_stream(
            Clean {
                party: Side::Caller,
                freq: 440.0,
                from: 3.0,
                dur: 3.0,
                pt: 111,
                ssrc: 10,
                rate: 48000.0,
                ts_per_packet: 960,
            },
            &|p| enc.borrow_mut().encode(p),
        )
    };
    offers.extend(g722_offers);
    offers.extend(opus_offers);
    offers.sort_by_key(|o| o.at);
    let fork = rec.fork();
    for o in offers {
        assert!(fork.offer(o.party, o.data, t0 + o.at));
    }
    let out = rec.finish().unwrap();
    assert_eq!(
        out.files,
        vec![dir.join("sep_caller.wav"), dir.join("sep_callee.wav")]
    );
    assert_eq!(out.sample_rate, 8000, "fixed by the first codec (PCMU)");
    let read = |i: usize| -> Vec<f64> {
        let mut r = hound::WavReader::open(&out.files[i]).unwrap();
        assert_eq!(r.spec().channels, 1);
        assert_eq!(r.spec().sample_rate, 8000);
        r.samples::<i16>().map(|s| s.unwrap() as f64).collect()
    };
    let caller = read(0);
    let callee = read(1);
    assert!(
        (caller.len() as f64 / RATE - 6.0).abs() < 0.1,
        "caller {} s",
        caller.len() as f64 / RATE
    );
    assert_eq!(caller.len(), callee.len());
    for (ch, own, other, a, b, what) in [
        (&caller, 440.0, 1000.0, 0.5, 2.9, "PCMU"),
        (&caller, 440.0, 1000.0, 3.3, 5.9, "Opus resampled to 8 kHz"),
        (&callee, 1000.0, 440.0, 0.5, 5.9, "G.722 resampled to 8 kHz"),
    ] {
        let x = slice(ch, a, b);
        let f = dominant(x);
        assert!((f - own).abs() <= 10.0, "{what}: dominant {f} Hz");
        let db = 10.0 * (power(x, own) / power(x, other)).log10();
        assert!(db >= 30.0, "{what}: other tone only {db:.1} dB down");
        assert!(rms(x) > 2000.0, "{what}: level {}", rms(x));
    }
    assert_eq!(out.caller.undecodable, 0);
    assert_eq!(out.callee.undecodable, 0);
    assert_eq!(out.caller.ssrc_changes, 1);
    assert!(out.caller.codecs.contains(&"opus/48000".to_string()));
    assert!(out.callee.codecs.contains(&"G722/8000".to_string()));
}

#[test]
fn callee_only_mode_ignores_the_caller() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let t0 = Instant::now();
    let mut spec = RecordingSpec::new(&dir, "one", ChannelMode::Callee);
    spec.start = t0;
    spec.queue_capacity = 10_000;
    let rec = Recorder::start(spec).unwrap();
    let alaw = |pcm: &[i16]| pcm.iter().map(|&s| encode_alaw(s)).collect::<Vec<u8>>();
    let mut offers = clean_stream(
        Clean {
            party: Side::Caller,
            freq: 440.0,
            from: 0.0,
            dur: 2.0,
            pt: 8,
            ssrc: 5,
            rate: 8000.0,
            ts_per_packet: 160,
        },
        &alaw,
    );
    // Same SSRC on both sides: parties are told apart by the caller of offer(), not the SSRC.
    offers.extend(clean_stream(
        Clean {
            party: Side::Callee,
            freq: 1000.0,
            from: 0.0,
            dur: 2.0,
            pt: 8,
            ssrc: 5,
            rate: 8000.0,
            ts_per_packet: 160,
        },
        &alaw,
    ));
    offers.sort_by_key(|o| o.at);
    let fork = rec.fork();
    for o in offers {
        assert!(fork.offer(o.party, o.data, t0 + o.at));
    }
    let out = rec.finish().unwrap();
    assert_eq!(out.files, vec![dir.join("one.wav")]);
    let mut r = hound::WavReader::open(&out.files[0]).unwrap();
    assert_eq!(r.spec().channels, 1);
    let x: Vec<f64> = r.samples::<i16>().map(|s| s.unwrap() as f64).collect();
    let x = &x[800..15000];
    assert!((dominant(x) - 1000.0).abs() <= 10.0);
    assert!(10.0 * (power(x, 1000.0) / power(x, 440.0)).log10() >= 30.0);
    assert_eq!(out.callee.duplicates, 0);
    assert_eq!(out.caller.packets, 100);
}

#[test]
fn both_parties_on_hold_without_timestamp_advance_resume_at_wall_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let t0 = Instant::now();
    let mut spec = RecordingSpec::new(&dir, "hold", ChannelMode::Stereo);
    spec.start = t0;
    spec.queue_capacity = 10_000;
    let rec = Recorder::start(spec).unwrap();
    let fork = rec.fork();
    let click_at = secs(12.5) + 40;
    // 0–2 s talk, 2–12 s nobody sends, 12–14 s talk with timestamps continuing from 2 s.
    let mut seq = 0u16;
    for w in (0..secs(2.0)).chain(secs(12.0)..secs(14.0)).step_by(160) {
        let ts = if w < secs(2.0) { w } else { w - secs(10.0) } as u32;
        let arrival = t0 + Duration::from_secs_f64((w + 160) as f64 / RATE);
        for (party, freq, ssrc) in [(Side::Caller, 440.0, 1), (Side::Callee, 1000.0, 2)] {
            let payload: Vec<u8> = (w..w + 160)
                .map(|n| {
                    if party == Side::Callee && n >= click_at && n < click_at + 16 {
                        encode_alaw(CLICK_AMP)
                    } else {
                        encode_alaw((TONE_AMP * (2.0 * PI * freq * n as f64 / RATE).sin()) as i16)
                    }
                })
                .collect();
            assert!(fork.offer(party, rtp(8, false, seq, ts, ssrc, &payload), arrival));
        }
        seq = seq.wrapping_add(1);
    }
    let out = rec.finish().unwrap();
    let mut r = hound::WavReader::open(&out.files[0]).unwrap();
    let s: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    let left: Vec<f64> = s.iter().step_by(2).map(|&v| v as f64).collect();
    let right: Vec<f64> = s.iter().skip(1).step_by(2).map(|&v| v as f64).collect();
    assert!(
        (left.len() as f64 / RATE - 14.0).abs() < 0.1,
        "duration {}",
        left.len() as f64 / RATE
    );
    assert!(rms(slice(&left, 2.003, 11.997)) < 1.0 && rms(slice(&right, 2.003, 11.997)) < 1.0);
    assert!((dominant(slice(&left, 12.1, 13.9)) - 440.0).abs() <= 10.0);
    let expect = click_at as f64 / RATE;
    let got = find_click(&right, expect).expect("click after resume");
    assert!(
        (got - expect).abs() <= 0.020,
        "click sent at {expect} s found at {got} s"
    );
    assert_eq!(out.caller.timestamp_jumps, 1);
    assert_eq!(out.callee.timestamp_jumps, 1);
}

#[test]
fn a_stall_longer_than_the_reorder_window_loses_only_what_it_must_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let t0 = Instant::now();
    let mut spec = RecordingSpec::new(&dir, "stall", ChannelMode::Stereo);
    spec.start = t0;
    spec.queue_capacity = 10_000;
    let rec = Recorder::start(spec).unwrap();
    let alaw = |pcm: &[i16]| pcm.iter().map(|&s| encode_alaw(s)).collect::<Vec<u8>>();
    let mut offers = Vec::new();
    for (party, freq, ssrc) in [(Side::Caller, 440.0, 1), (Side::Callee, 1000.0, 2)] {
        offers.extend(clean_stream(
            Clean {
                party,
                freq,
                from: 0.0,
                dur: 10.0,
                pt: 8,
                ssrc,
                rate: 8000.0,
                ts_per_packet: 160,
            },
            &alaw,
        ));
    }
    // The caller's network stalls for 400 ms at 3 s: its packets of that time
    // arrive together when it ends (the reorder window is 200 ms).
    for o in offers.iter_mut() {
        if o.party == Side::Caller && o.at > Duration::from_millis(3000) {
            o.at = o.at.max(Duration::from_millis(3400));
        }
    }
    offers.sort_by_key(|o| o.at);
    let fork = rec.fork();
    for o in offers {
        assert!(fork.offer(o.party, o.data, t0 + o.at));
    }
    let out = rec.finish().unwrap();
    let mut r = hound::WavReader::open(&out.files[0]).unwrap();
    let s: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    let left: Vec<f64> = s.iter().step_by(2).map(|&v| v as f64).collect();
    // 10 ms frames of the caller's channel without the tone, over the whole call.
    let silent_ms = 10
        * left[80..left.len() - 80]
            .chunks(80)
            .filter(|f| rms(f) < TONE_AMP / 4.0)
            .count() as u64;
    let counted_ms = out.caller.trimmed_ms + 20 * out.caller.late_dropped;
    eprintln!(
        "caller: {silent_ms} ms without the tone; trimmed {} ms, late {} packets",
        out.caller.trimmed_ms, out.caller.late_dropped
    );
    // What the file lacks is what the metadata says is missing (10 ms frames)...
    assert!(
        silent_ms.abs_diff(counted_ms) <= 20,
        "{silent_ms} ms missing, {counted_ms} ms counted"
    );
    // ...and no more than the stall beyond the window, with one packet's slack.
    assert!(counted_ms <= 400 - 200 + 20, "{counted_ms} ms lost");
    // The callee, whose network did not stall, lost nothing.
    assert_eq!(out.callee.trimmed_ms + out.callee.late_dropped, 0);
    let right: Vec<f64> = s.iter().skip(1).step_by(2).map(|&v| v as f64).collect();
    assert!((dominant(slice(&right, 0.1, 9.9)) - 1000.0).abs() <= 10.0);
}
