//! Unit tests of `timeline` (kept beside it so the module itself stays short).

use super::*;

const TH: Thresholds = Thresholds {
    jump: 2000,
    drift: 80,
    drift_window: 40000,
    settle: 8000,
    settle_budget: 1600,
};

fn pcma_info() -> Option<PayloadType> {
    Some(PayloadType {
        codec: Codec::Pcma,
        clock_rate: 8000,
    })
}

/// 160 A-law bytes encoding a constant value.
fn frame(value: i16) -> Vec<u8> {
    vec![crate::audio::encode_alaw(value); 160]
}

fn push(t: &mut Timeline, seq: u16, ts: u32, ssrc: u32, payload: &[u8], arrival: i64) {
    let pkt = RtpPacket {
        payload_type: 8,
        seq,
        timestamp: ts,
        ssrc,
        payload,
    };
    t.push(&pkt, pcma_info(), arrival, 8000, &TH);
}

fn drain_all(t: &mut Timeline, n: usize) -> Vec<i16> {
    let mut out = vec![0; n];
    t.drain_into(&mut out);
    out
}

/// G.722 frames (160 bytes, 20 ms) of a tone from a fresh encoder.
fn g722_frames(freq: f64, packets: usize) -> Vec<Vec<u8>> {
    use audio_codec::Encoder;
    let mut enc = audio_codec::g722::G722Encoder::new();
    let pcm: Vec<i16> = (0..packets * 320)
        .map(|i| ((i as f64 * 2.0 * std::f64::consts::PI * freq / 16000.0).sin() * 8000.0) as i16)
        .collect();
    pcm.chunks(320).map(|c| enc.encode(c)).collect()
}

#[test]
fn a_new_ssrc_starts_with_a_fresh_stateful_decoder() {
    let g722 = Some(PayloadType {
        codec: Codec::G722,
        clock_rate: 8000,
    });
    let th = Thresholds {
        jump: 4000,
        drift: 160,
        drift_window: 80000,
        settle: 16000,
        settle_budget: 3200,
    };
    let mut t = Timeline::new();
    let first = g722_frames(500.0, 10);
    let second = g722_frames(1000.0, 5);
    // Stream 1, then the party's phone restarts its encoder under SSRC 2.
    for (k, f) in first.iter().chain(&second).enumerate() {
        let ssrc = if k < first.len() { 1 } else { 2 };
        let pkt = RtpPacket {
            payload_type: 9,
            seq: 100 + k as u16,
            timestamp: 7000 + 160 * k as u32,
            ssrc,
            payload: f,
        };
        t.push(&pkt, g722, 320 * (k as i64 + 1), 16000, &th);
    }
    assert_eq!(t.stats.ssrc_changes, 1);
    let out = drain_all(&mut t, 320 * 16);
    // What a decoder that never saw stream 1 makes of stream 2's first packet.
    let mut fresh = AudioDecoder::new(Codec::G722).unwrap();
    let mut want = Vec::new();
    assert!(fresh.decode(&second[0], &mut want));
    assert!(
        out.windows(want.len()).any(|w| w == want.as_slice()),
        "stream 2's first packet was not decoded from a fresh decoder state"
    );
}

#[test]
fn reordered_duplicate_and_lost_packets() {
    let mut t = Timeline::new();
    let f = frame(1000);
    // Packets 0,2,1,1(dup),4 — 3 lost. Packet k covers [160k, 160k+160).
    for (seq, arrival) in [(0u16, 160), (2, 480), (1, 500), (1, 510), (4, 800)] {
        push(&mut t, seq, seq as u32 * 160, 7, &f, arrival);
    }
    assert_eq!(t.stats.duplicates, 1);
    assert_eq!(t.lost(), 1);
    let out = drain_all(&mut t, 800);
    let v = out[0];
    assert!(v > 900, "placed value {v}");
    assert!(out[..480].iter().all(|&s| s == v));
    assert!(
        out[480..640].iter().all(|&s| s == 0),
        "lost packet is silence"
    );
    assert!(out[640..800].iter().all(|&s| s == v));
}

#[test]
fn late_packet_behind_write_position_is_dropped() {
    let mut t = Timeline::new();
    let f = frame(1000);
    push(&mut t, 0, 0, 7, &f, 160);
    push(&mut t, 2, 320, 7, &f, 480);
    let _ = drain_all(&mut t, 480);
    push(&mut t, 1, 160, 7, &f, 900);
    assert_eq!(t.stats.late_dropped, 1);
}

#[test]
fn ssrc_change_and_jump_reanchor_at_arrival() {
    let mut t = Timeline::new();
    let f = frame(1000);
    push(&mut t, 0, 0, 7, &f, 160);
    // New SSRC with a random timestamp, arriving at 1 s.
    push(&mut t, 500, 123456, 8, &f, 8160);
    // Same SSRC, timestamp jumps 10 s ahead, arriving at 2 s.
    push(&mut t, 501, 123456 + 80000, 8, &f, 16160);
    assert_eq!(t.stats.ssrc_changes, 1);
    assert_eq!(t.stats.timestamp_jumps, 1);
    let out = drain_all(&mut t, 16160);
    assert!(out[8000] != 0 && out[8159] != 0 && out[7999] == 0 && out[8160] == 0);
    assert!(out[16000] != 0 && out[16159] != 0 && out[15999] == 0);
}

#[test]
fn hold_without_timestamp_advance_keeps_wall_clock() {
    let mut t = Timeline::new();
    let f = frame(1000);
    push(&mut t, 0, 0, 7, &f, 160);
    // Resume 10 s later with timestamps continuing as if no time passed; the
    // worker has written up to the reorder window (200 ms) before it.
    let mut out = drain_all(&mut t, 80320 - 1600);
    push(&mut t, 1, 160, 7, &f, 80320);
    out.extend(drain_all(&mut t, 1600));
    assert!(out[159] != 0 && out[160] == 0 && out[80159] == 0);
    assert!(out[80160] != 0 && out[80319] != 0);
}

#[test]
fn drift_stays_within_20_ms_over_an_hour() {
    // Sender clocks 200 ppm fast and 200 ppm slow, 0–30 ms network jitter, one hour.
    for ppm in [200.0, -200.0] {
        let mut t = Timeline::new();
        let f = frame(1000);
        let mut rng = 12345u64;
        let mut max_err = 0i64;
        let speed = 1.0 + ppm * 1e-6;
        for k in 0..(50 * 3600u64) {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let jitter = ((rng >> 33) % 240) as f64;
            // Packet k holds the sender's samples 160k..160k+160, captured on its clock.
            let true_start = k as f64 * 160.0 / speed;
            let arrival = (true_start + 160.0 / speed + jitter).round() as i64;
            let ts = (160 * k) as u32;
            push(&mut t, k as u16, ts, 7, &f, arrival);
            let pos = t.segments[0].position(160 * k as i64, 8000);
            // The first second may carry the anchoring packet's jitter (≤ 30 ms)
            // until the settling corrects it; from then on the bound is 20 ms.
            if k >= 50 {
                max_err = max_err.max((pos - true_start.round() as i64).abs());
            }
            let keep = arrival - 1600 - t.base;
            if keep > 0 {
                let _ = drain_all(&mut t, keep as usize);
            }
        }
        assert!(t.stats.drift_corrections > 0);
        assert_eq!(t.stats.late_dropped + t.stats.timestamp_jumps, 0);
        eprintln!(
            "{ppm} ppm: max error {max_err} samples, {} corrections",
            t.stats.drift_corrections
        );
        assert!(max_err <= 160, "{ppm} ppm: max error {max_err} samples");
    }
}

#[test]
fn telephone_event_and_comfort_noise_are_never_audio() {
    let mut t = Timeline::new();
    let loud = frame(20000);
    for (k, codec) in [
        Codec::TelephoneEvent,
        Codec::ComfortNoise,
        Codec::Unsupported,
    ]
    .into_iter()
    .enumerate()
    {
        let pkt = RtpPacket {
            payload_type: 101,
            seq: k as u16,
            timestamp: 0,
            ssrc: 1,
            payload: &loud,
        };
        t.push(
            &pkt,
            Some(PayloadType {
                codec,
                clock_rate: 8000,
            }),
            160,
            8000,
            &TH,
        );
    }
    let pkt = RtpPacket {
        payload_type: 99,
        seq: 3,
        timestamp: 0,
        ssrc: 1,
        payload: &loud,
    };
    t.push(&pkt, None, 160, 8000, &TH);
    assert_eq!(t.stats.telephone_events, 1);
    assert_eq!(t.stats.comfort_noise, 1);
    assert_eq!(t.stats.undecodable, 2);
    assert_eq!(t.placed_end, 0);
    assert!(drain_all(&mut t, 400).iter().all(|&s| s == 0));
    assert_eq!(
        t.stats.codecs,
        vec!["telephone-event/8000", "CN/8000", "PT101", "PT99"]
    );
}

#[test]
fn stall_within_the_window_keeps_every_packet_in_place() {
    let mut t = Timeline::new();
    // Packets 0..5 on time, then 6..20 held up 150 ms and delivered at once.
    for k in 0..20u16 {
        let f = frame(100 * (k as i16 + 1));
        let on_time = 160 * (k as i64 + 1);
        let arrival = if k >= 6 {
            on_time.max(160 * 7 + 1200)
        } else {
            on_time
        };
        push(&mut t, k, 160 * k as u32, 7, &f, arrival);
    }
    assert_eq!(t.stats.timestamp_jumps, 0);
    assert_eq!(t.stats.late_dropped, 0);
    let out = drain_all(&mut t, 3200);
    for k in 0..20usize {
        let v = out[160 * k + 80];
        let want =
            crate::audio::ALAW_TO_LINEAR[crate::audio::encode_alaw(100 * (k as i16 + 1)) as usize];
        assert_eq!(v, want, "packet {k} in place");
    }
}

#[test]
fn packets_stay_in_place_when_the_buffer_wraps_around() {
    // Drained a little at a time while packets keep arriving, the buffer's
    // storage wraps around; every packet must still land at its own place.
    let mut t = Timeline::new();
    let mut out = Vec::new();
    for k in 0..400u16 {
        let value = 100 + k as i16;
        let arrival = 160 * (k as i64 + 1);
        push(&mut t, k, 160 * k as u32, 7, &frame(value), arrival);
        // Keep about three packets buffered: drain 130 or 190 samples in turn.
        if k >= 3 {
            out.extend(drain_all(&mut t, if k % 2 == 0 { 130 } else { 190 }));
        }
    }
    out.extend(drain_all(&mut t, 160 * 400 - out.len()));
    assert_eq!(out.len(), 160 * 400);
    for k in 0..400usize {
        let want = crate::audio::ALAW_TO_LINEAR[frame(100 + k as i16)[0] as usize];
        let got = &out[160 * k..160 * (k + 1)];
        assert!(
            got.iter().all(|&s| s == want),
            "packet {k}: {:?}",
            &got[..4]
        );
    }
}

/// One stream of 400 packets (8 s), packets 10.. held up by `stall` samples and
/// delivered at once when it ends (see `feed`).
fn burst_after_stall(stall: i64) -> (Timeline, i64) {
    let order: Vec<(u16, u32, u32, i64)> = (0..400u16)
        .map(|k| {
            let on_time = 160 * (k as i64 + 1);
            let arrival = if k >= 10 {
                on_time.max(160 * 11 + stall)
            } else {
                on_time
            };
            (k, 160 * k as u32, 7, arrival)
        })
        .collect();
    feed(&order)
}

#[test]
fn audio_a_stall_keeps_out_of_the_file_is_counted_and_bounded() {
    // 150 ms to 2 s of network stall, then the held-up packets in one burst.
    for stall_ms in [150i64, 220, 300, 400, 600, 1000, 2000] {
        let (t, missing) = burst_after_stall(stall_ms * 8);
        let counted = t.stats.late_dropped as i64 * 160 + t.trimmed_samples as i64;
        eprintln!(
            "stall {stall_ms} ms: {missing} samples missing, {counted} counted \
             (late {}, trimmed {}), jumps {}, drift corrections {}",
            t.stats.late_dropped,
            t.trimmed_samples,
            t.stats.timestamp_jumps,
            t.stats.drift_corrections
        );
        // Every sample received either reaches the file or is counted as not.
        assert_eq!(missing, counted, "stall {stall_ms} ms");
        // What the 200 ms window cannot hold is lost, and no more (one packet's slack).
        assert!(
            missing <= (stall_ms - 200).max(0) * 8 + 160,
            "stall {stall_ms} ms: {missing} samples lost"
        );
    }
}

/// The sample value packet `seq` carries (A-law has only 128 positive codes,
/// so values repeat every 300 packets).
fn value(seq: u16) -> i16 {
    64 + 24 * (seq % 300) as i16
}

/// What packet `seq`'s samples read back as.
fn decoded(seq: u16) -> i16 {
    crate::audio::ALAW_TO_LINEAR[crate::audio::encode_alaw(value(seq)) as usize]
}

/// Feeds (seq, ts, ssrc, arrival) in the given order, each packet carrying
/// `value(seq)`, draining as the worker does (everything older than the
/// reorder window before each packet); returns the timeline and the output.
fn play(order: &[(u16, u32, u32, i64)]) -> (Timeline, Vec<i16>) {
    let mut t = Timeline::new();
    let mut out = Vec::new();
    for &(seq, ts, ssrc, arrival) in order {
        let keep = arrival - 1600 - t.base;
        if keep > 0 {
            out.extend(drain_all(&mut t, keep as usize));
        }
        push(&mut t, seq, ts, ssrc, &frame(value(seq)), arrival);
    }
    let rest = t.buf.len();
    out.extend(drain_all(&mut t, rest));
    (t, out)
}

/// Like `play`; returns how many samples of received audio are not in the
/// output, comparing per value the samples sent with those found.
fn feed(order: &[(u16, u32, u32, i64)]) -> (Timeline, i64) {
    let (t, out) = play(order);
    let mut balance = std::collections::HashMap::new();
    for &(seq, ..) in order {
        *balance.entry(decoded(seq)).or_insert(0i64) += 160;
    }
    for s in out {
        if let Some(b) = balance.get_mut(&s) {
            *b -= 1;
        }
    }
    (t, balance.values().map(|&b| b.max(0)).sum())
}

/// 300 ms stall; the burst delivers packet 10 before packet 9, which lands
/// just before the new anchor: the settling must move it along, not over it.
#[test]
fn a_packet_reordered_ahead_of_the_anchor_in_a_burst_is_kept_or_counted() {
    let mut order: Vec<(u16, u32, u32, i64)> = (0..9u16)
        .map(|k| (k, 160 * k as u32, 7, 160 * (k as i64 + 1)))
        .collect();
    order.push((10, 1600, 7, 4000));
    order.push((9, 1440, 7, 4000));
    for k in 11..60u16 {
        order.push((k, 160 * k as u32, 7, (160 * (k as i64 + 1)).max(4000)));
    }
    let (t, missing) = feed(&order);
    let counted = t.stats.late_dropped as i64 * 160 + t.trimmed_samples as i64;
    assert_eq!(missing, counted);
}

/// SSRC change: the old stream's last packet (the newest of its stream)
/// arrives 40 ms late, after the new stream's second packet; its place is
/// free and it must land there.
#[test]
fn a_late_last_packet_of_the_old_ssrc_still_fills_its_empty_slot() {
    let mut order: Vec<(u16, u32, u32, i64)> = (0..9u16)
        .map(|k| (k, 160 * k as u32, 1, 160 * (k as i64 + 1)))
        .collect();
    order.push((500, 90_000, 2, 1760));
    order.push((501, 90_160, 2, 1920));
    order.push((9, 1440, 1, 1920)); // old SSRC, 40 ms late
    for j in 2..20u16 {
        order.push((500 + j, 90_000 + 160 * j as u32, 2, 1760 + 160 * j as i64));
    }
    let (t, missing) = feed(&order);
    assert_eq!(t.trimmed_samples, 0);
    assert_eq!(missing, 0);
}

/// The first packet of a call arrives 1 ms after the recording started, so its
/// audio began 19 ms before: the stream keeps that place (the part before the
/// start is simply not in the file), and no later correction cuts into it.
#[test]
fn a_stream_that_began_just_before_the_recording_keeps_its_place() {
    let order: Vec<(u16, u32, u32, i64)> = (0..400u16)
        .map(|k| (k, 160 * k as u32, 7, 8 + 160 * k as i64))
        .collect();
    let (t, out) = play(&order);
    assert_eq!(t.stats.drift_corrections, 0);
    assert_eq!(t.trimmed_samples, 0);
    for k in 1..400usize {
        let want = decoded(k as u16);
        let at = 160 * k - 152;
        assert!(out[at..at + 160].iter().all(|&s| s == want), "packet {k}");
    }
}

/// SSRC change where the new stream's first packet overlaps the old stream's
/// last place by 60 samples (old 9 at 1440..1600, new 500 at 1540..1700). Old
/// 9 arrives late: it must not write over the new stream's audio uncounted.
#[test]
fn a_late_packet_of_the_old_ssrc_does_not_overwrite_the_new_stream_silently() {
    let mut order: Vec<(u16, u32, u32, i64)> = (0..9u16)
        .map(|k| (k, 160 * k as u32, 1, 160 * (k as i64 + 1)))
        .collect();
    order.push((500, 90_000, 2, 1700));
    order.push((501, 90_160, 2, 1860));
    order.push((9, 1440, 1, 1920)); // old SSRC, late
    for j in 2..20u16 {
        order.push((500 + j, 90_000 + 160 * j as u32, 2, 1700 + 160 * j as i64));
    }
    let (t, missing) = feed(&order);
    let counted = t.stats.late_dropped as i64 * 160 + t.trimmed_samples as i64;
    assert_eq!(missing, counted);
}

/// A first packet stamped at the recording's start (arrival 0: e.g. the
/// kernel feed's arrival before the start, saturated to 0). Its audio lies
/// wholly before the start: not in the file, and not counted as lost.
#[test]
fn audio_wholly_before_the_start_is_not_counted_late() {
    let mut t = Timeline::new();
    push(&mut t, 0, 0, 7, &frame(1000), 0);
    push(&mut t, 1, 160, 7, &frame(1000), 160);
    assert_eq!(t.stats.late_dropped, 0);
    assert_eq!(t.trimmed_samples, 0);
}

/// A stream comes back after another one (SSRC A, then B, then A again, as
/// when a call returns from hold music): A's new audio lands after B's, all
/// of it written.
#[test]
fn a_stream_that_returns_after_another_is_written_in_full() {
    let mut order: Vec<(u16, u32, u32, i64)> = Vec::new();
    for k in 0..100u16 {
        let (ssrc, seq) = if (50..75).contains(&k) {
            (2, 1000 + k)
        } else {
            (1, k)
        };
        order.push((seq, 160 * k as u32, ssrc, 160 * (k as i64 + 1)));
    }
    let (t, missing) = feed(&order);
    assert_eq!(missing, 0);
    assert_eq!(t.trimmed_samples + t.stats.late_dropped, 0);
}

/// The first packet of a call arrives 15 ms late (jitter), the rest on time:
/// the settling moves the stream to its place at once, also when that puts
/// the first packet's start before the recording's; no cut later.
#[test]
fn a_delayed_first_packet_is_settled_at_once_even_across_the_start() {
    let order: Vec<(u16, u32, u32, i64)> = (0..400u16)
        .map(|k| {
            let arrival = 8 + 160 * k as i64 + if k == 0 { 120 } else { 0 };
            (k, 160 * k as u32, 7, arrival)
        })
        .collect();
    let (t, out) = play(&order);
    assert_eq!(t.trimmed_samples + t.stats.late_dropped, 0);
    assert_eq!(t.stats.drift_corrections, 1, "the settling only");
    for k in 1..400usize {
        let want = decoded(k as u16);
        let at = 160 * k - 152;
        assert!(out[at..at + 160].iter().all(|&s| s == want), "packet {k}");
    }
}

/// After a 300 ms stall the stream runs late until the drift correction
/// moves it back; packets arrive in swapped pairs throughout, so one that is
/// not the newest meets the correction: it must not land on the stream's
/// pending audio uncounted.
#[test]
fn a_reordered_packet_after_a_backward_correction_is_kept_or_counted() {
    let mut order: Vec<(u16, u32, u32, i64)> = (0..400u16)
        .map(|k| {
            let on_time = 160 * (k as i64 + 1);
            let arrival = if k >= 10 {
                on_time.max(160 * 11 + 2400)
            } else {
                on_time
            };
            (k, 160 * k as u32, 7, arrival)
        })
        .collect();
    for pair in order[30..].chunks_mut(2) {
        pair.swap(0, 1);
    }
    let (t, missing) = feed(&order);
    assert!(t.stats.drift_corrections > 0);
    let counted = t.stats.late_dropped as i64 * 160 + t.trimmed_samples as i64;
    assert_eq!(missing, counted);
}
