//! One party's timeline: places decoded audio by RTP timestamp on the
//! recording's wall clock, with a reorder window, silence for gaps,
//! duplicate detection, per-SSRC segments anchored at their arrival time,
//! timestamp-jump handling and drift correction against the arrival clock.

use std::collections::VecDeque;

use super::codec::{AudioDecoder, Codec, PayloadType};
use super::rtp::RtpPacket;
use super::MediaStats;
use crate::audio::resample::resample;

/// Thresholds of a timeline, in samples at the file's rate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Thresholds {
    /// A packet further than this from its expected position starts a new anchor.
    pub jump: i64,
    /// A persistent offset larger than this is corrected (drift).
    pub drift: i64,
    /// Length of the window over which the minimum offset is measured.
    pub drift_window: i64,
    /// Time after an anchor during which early packets correct it at once.
    pub settle: i64,
    /// Total correction allowed during that time.
    pub settle_budget: i64,
}

const SEQ_WINDOW: i64 = 1024;

/// One RTP stream (SSRC) of a party.
struct Segment {
    ssrc: u32,
    // Decoders of this stream, by codec: a new SSRC is a new encoder, so a
    // stateful decoder (G.722's ADPCM predictor, Opus) must start afresh with it.
    decoders: Vec<(Codec, AudioDecoder)>,
    // RTP timestamp → position mapping; `clock == 0` until the first audio packet.
    clock: u32,
    anchor_ts: i64,
    anchor_pos: i64,
    ts_init: bool,
    last_ts: u32,
    last_ts_ext: i64,
    // Sequence tracking.
    high_seq: i64,
    base_seq: i64,
    received: u64,
    seen: [u64; (SEQ_WINDOW / 64) as usize],
    // Drift measurement: minimum (arrival − expected position) in the window.
    win_min: i64,
    win_start: i64,
    win_active: bool,
    // Until this arrival position, packets arriving earlier than the anchor
    // predicts move the anchor at once (the first packet may have been delayed).
    settle_until: i64,
    // How much further the settling may still move the anchor earlier (bounds the audio
    // a burst after a network stall can overwrite).
    settle_budget: i64,
}

enum SeqResult {
    New { newest: bool },
    Duplicate,
    TooOld,
}

impl Segment {
    fn new(ssrc: u32, seq: u16) -> Segment {
        Segment {
            ssrc,
            decoders: Vec::new(),
            clock: 0,
            anchor_ts: 0,
            anchor_pos: 0,
            ts_init: false,
            last_ts: 0,
            last_ts_ext: 0,
            high_seq: seq as i64 - 1,
            base_seq: seq as i64,
            received: 0,
            seen: [0; (SEQ_WINDOW / 64) as usize],
            win_min: 0,
            win_start: 0,
            win_active: false,
            settle_until: 0,
            settle_budget: 0,
        }
    }

    fn bit(&mut self, ext: i64) -> (usize, u64) {
        let i = ext.rem_euclid(SEQ_WINDOW) as usize;
        (i / 64, 1u64 << (i % 64))
    }

    fn track_seq(&mut self, seq: u16) -> SeqResult {
        let diff = seq.wrapping_sub(self.high_seq as u16) as i16 as i64;
        let ext = self.high_seq + diff;
        let mut newest = false;
        if diff > 0 {
            if diff >= SEQ_WINDOW {
                self.seen = [0; (SEQ_WINDOW / 64) as usize];
            } else {
                for s in self.high_seq + 1..=ext {
                    let (w, b) = self.bit(s);
                    self.seen[w] &= !b;
                }
            }
            self.high_seq = ext;
            newest = true;
        } else if diff <= -SEQ_WINDOW {
            return SeqResult::TooOld;
        }
        let (w, b) = self.bit(ext);
        if self.seen[w] & b != 0 {
            return SeqResult::Duplicate;
        }
        self.seen[w] |= b;
        self.received += 1;
        self.base_seq = self.base_seq.min(ext);
        SeqResult::New { newest }
    }

    fn extend_ts(&mut self, ts: u32) -> i64 {
        if !self.ts_init {
            self.ts_init = true;
            self.last_ts = ts;
            self.last_ts_ext = ts as i64;
            return ts as i64;
        }
        let diff = ts.wrapping_sub(self.last_ts) as i32 as i64;
        let ext = self.last_ts_ext + diff;
        if diff > 0 {
            self.last_ts = ts;
            self.last_ts_ext = ext;
        }
        ext
    }

    fn lost(&self) -> u64 {
        let expected = (self.high_seq - self.base_seq + 1).max(0) as u64;
        expected.saturating_sub(self.received)
    }

    fn position(&self, ts_ext: i64, rate: u32) -> i64 {
        self.anchor_pos + ((ts_ext - self.anchor_ts) * rate as i64).div_euclid(self.clock as i64)
    }

    fn anchor(&mut self, ts_ext: i64, pos: i64, clock: u32, settle_until: i64, budget: i64) {
        self.anchor_ts = ts_ext;
        self.anchor_pos = pos;
        self.clock = clock;
        self.win_active = false;
        self.settle_until = settle_until;
        self.settle_budget = budget;
    }
}

/// A party's timeline: pending samples from `base` (the write position) on.
pub(crate) struct Timeline {
    segments: Vec<Segment>,
    buf: VecDeque<i16>,
    base: i64,
    pcm: Vec<i16>,
    resampled: Vec<i16>,
    resample_scratch: Vec<f64>,
    /// Highest position any audio was placed up to.
    pub placed_end: i64,
    /// Counters for this party.
    pub stats: MediaStats,
    lost_retired: u64,
    seen_pts: Vec<(u8, Option<PayloadType>)>,
}

impl Timeline {
    pub(crate) fn new() -> Timeline {
        Timeline {
            segments: Vec::with_capacity(2),
            buf: VecDeque::with_capacity(48000),
            base: 0,
            pcm: Vec::with_capacity(1920),
            resampled: Vec::with_capacity(1920),
            resample_scratch: Vec::new(),
            placed_end: 0,
            stats: MediaStats::default(),
            lost_retired: 0,
            seen_pts: Vec::new(),
        }
    }

    /// Total packets never received, over all streams.
    pub(crate) fn lost(&self) -> u64 {
        self.lost_retired + self.segments.iter().map(Segment::lost).sum::<u64>()
    }

    fn segment_for(&mut self, ssrc: u32, seq: u16) -> usize {
        if let Some(i) = self.segments.iter().rposition(|s| s.ssrc == ssrc) {
            return i;
        }
        if !self.segments.is_empty() {
            self.stats.ssrc_changes += 1;
        }
        if self.segments.len() == 2 {
            let old = self.segments.remove(0);
            self.lost_retired += old.lost();
        }
        self.segments.push(Segment::new(ssrc, seq));
        self.segments.len() - 1
    }

    fn note_codec(&mut self, pt: u8, info: Option<PayloadType>) {
        let name = match info {
            Some(p) if p.codec != Codec::Unsupported => format!("{}/{}", p.codec, p.clock_rate),
            _ => format!("PT{pt}"),
        };
        if !self.stats.codecs.contains(&name) {
            self.stats.codecs.push(name);
        }
    }

    /// Handles one RTP packet of this party; `arrival_pos` is its arrival on the recording clock in samples at `rate` (0 = rate not yet known).
    pub(crate) fn push(
        &mut self,
        pkt: &RtpPacket<'_>,
        info: Option<PayloadType>,
        arrival_pos: i64,
        rate: u32,
        th: &Thresholds,
    ) {
        let idx = self.segment_for(pkt.ssrc, pkt.seq);
        let newest = match self.segments[idx].track_seq(pkt.seq) {
            SeqResult::Duplicate => {
                self.stats.duplicates += 1;
                return;
            }
            SeqResult::TooOld => {
                self.stats.late_dropped += 1;
                return;
            }
            SeqResult::New { newest } => newest,
        };
        // Codec bookkeeping without allocating on the common path.
        let known = info.map(|p| p.codec);
        if !self.seen_pts.contains(&(pkt.payload_type, info)) {
            self.seen_pts.push((pkt.payload_type, info));
            self.note_codec(pkt.payload_type, info);
        }
        let info = match (known, info) {
            (Some(Codec::TelephoneEvent), _) => {
                self.stats.telephone_events += 1;
                return;
            }
            (Some(Codec::ComfortNoise), _) => {
                self.stats.comfort_noise += 1;
                return;
            }
            (Some(c), Some(p)) if c.audio_rate().is_some() && rate > 0 => p,
            _ => {
                self.stats.undecodable += 1;
                return;
            }
        };
        self.place(idx, pkt, info, arrival_pos, rate, newest, th);
    }

    #[allow(clippy::too_many_arguments)]
    fn place(
        &mut self,
        idx: usize,
        pkt: &RtpPacket<'_>,
        info: PayloadType,
        arrival_pos: i64,
        rate: u32,
        newest: bool,
        th: &Thresholds,
    ) {
        let codec = info.codec;
        let Some(audio_rate) = codec.audio_rate() else {
            return;
        };
        let decoders = &mut self.segments[idx].decoders;
        let di = match decoders.iter().position(|(c, _)| *c == codec) {
            Some(i) => i,
            None => {
                let Some(dec) = AudioDecoder::new(codec) else {
                    self.stats.undecodable += 1;
                    return;
                };
                decoders.push((codec, dec));
                decoders.len() - 1
            }
        };
        self.pcm.clear();
        if !decoders[di].1.decode(pkt.payload, &mut self.pcm) {
            self.stats.undecodable += 1;
            return;
        }
        if self.pcm.is_empty() {
            // A DTX frame: silence, like comfort noise.
            self.stats.comfort_noise += 1;
            return;
        }
        let clock = info.clock_rate.max(1);
        let n_rtp = (self.pcm.len() as u64 * clock as u64 / audio_rate as u64) as i64;
        let dur_out = n_rtp * rate as i64 / clock as i64;
        let arrival_start = arrival_pos - dur_out;
        let base = self.base;

        let seg = &mut self.segments[idx];
        let ts_ext = seg.extend_ts(pkt.timestamp);
        let settle_until = arrival_pos + th.settle;
        if seg.clock == 0 {
            seg.anchor(
                ts_ext,
                arrival_start.max(base),
                clock,
                settle_until,
                th.settle_budget,
            );
        } else if seg.clock != clock {
            seg.anchor(
                ts_ext,
                arrival_start.max(base),
                clock,
                settle_until,
                th.settle_budget,
            );
            self.stats.timestamp_jumps += 1;
        } else {
            let expected = seg.position(ts_ext, rate);
            let d = arrival_start - expected;
            // Far ahead of the wall clock: a timestamp jump. Far behind and no longer
            // writable while being the newest packet: a resume whose timestamps did not
            // advance (or a stall longer than the reorder window).
            if d < -th.jump || (d > th.jump && newest && expected < base) {
                seg.anchor(
                    ts_ext,
                    arrival_start.max(base),
                    clock,
                    settle_until,
                    th.settle_budget,
                );
                self.stats.timestamp_jumps += 1;
            } else if d < -th.drift && arrival_pos < seg.settle_until && seg.settle_budget > 0 {
                // Arrived earlier than the anchor allows: the anchoring packet was delayed.
                let shift = (-d).min(seg.settle_budget);
                seg.anchor_pos -= shift;
                seg.settle_budget -= shift;
                self.stats.drift_corrections += 1;
            } else {
                if !seg.win_active {
                    seg.win_active = true;
                    seg.win_start = arrival_pos;
                    seg.win_min = d;
                } else {
                    seg.win_min = seg.win_min.min(d);
                }
                if arrival_pos - seg.win_start >= th.drift_window {
                    if seg.win_min.abs() > th.drift {
                        seg.anchor_pos += seg.win_min;
                        self.stats.drift_corrections += 1;
                    }
                    seg.win_active = false;
                }
            }
        }
        let pos_start = seg.position(ts_ext, rate);
        let pos_end = seg.position(ts_ext + n_rtp, rate);
        if pos_end <= base {
            self.stats.late_dropped += 1;
            return;
        }
        let m = (pos_end - pos_start) as usize;
        let src: &[i16] = if m == self.pcm.len() {
            &self.pcm
        } else {
            resample(
                &self.pcm,
                m,
                &mut self.resampled,
                &mut self.resample_scratch,
            );
            &self.resampled
        };
        let need = (pos_end - base) as usize;
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        let skip = (base - pos_start).max(0) as usize;
        let off = (pos_start + skip as i64 - base) as usize;
        for (slot, &s) in self.buf.range_mut(off..need).zip(&src[skip..]) {
            *slot = s;
        }
        self.placed_end = self.placed_end.max(pos_end);
    }

    /// Moves the next `out.len()` samples (silence where nothing was placed) out of the timeline.
    pub(crate) fn drain_into(&mut self, out: &mut [i16]) {
        let n = out.len().min(self.buf.len());
        for (o, s) in out.iter_mut().zip(self.buf.drain(..n)) {
            *o = s;
        }
        out[n..].fill(0);
        self.base += out.len() as i64;
    }
}

#[cfg(test)]
mod tests {
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
            .map(|i| {
                ((i as f64 * 2.0 * std::f64::consts::PI * freq / 16000.0).sin() * 8000.0) as i16
            })
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
            let want = crate::audio::ALAW_TO_LINEAR
                [crate::audio::encode_alaw(100 * (k as i16 + 1)) as usize];
            assert_eq!(v, want, "packet {k} in place");
        }
    }
}
