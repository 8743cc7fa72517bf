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
    // How much further the settling may still move the anchor earlier.
    settle_budget: i64,
    // Audio placed under the current anchor spans `placed_from..placed_to`;
    // `floor` is where this party's audio placed before the anchor ends.
    placed_from: i64,
    placed_to: i64,
    floor: i64,
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
            placed_from: 0,
            placed_to: 0,
            floor: 0,
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

    /// Measures the offset between arrival and RTP clock over the drift window
    /// and corrects a persistent one. A correction backwards (the stream ran
    /// ahead of the wall clock) cannot keep all its audio: nothing may then be
    /// placed before what this stream has placed so far.
    fn track_drift(&mut self, arrival_pos: i64, d: i64, th: &Thresholds, stats: &mut MediaStats) {
        if !self.win_active {
            self.win_active = true;
            self.win_start = arrival_pos;
            self.win_min = d;
        } else {
            self.win_min = self.win_min.min(d);
        }
        if arrival_pos - self.win_start >= th.drift_window {
            if self.win_min.abs() > th.drift {
                self.anchor_pos += self.win_min;
                if self.win_min < 0 {
                    self.floor = self.floor.max(self.placed_to);
                }
                stats.drift_corrections += 1;
            }
            self.win_active = false;
        }
    }

    fn lost(&self) -> u64 {
        let expected = (self.high_seq - self.base_seq + 1).max(0) as u64;
        expected.saturating_sub(self.received)
    }

    fn position(&self, ts_ext: i64, rate: u32) -> i64 {
        self.anchor_pos + ((ts_ext - self.anchor_ts) * rate as i64).div_euclid(self.clock as i64)
    }

    /// Anchors `ts_ext` at `pos`; `floor` is where the party's audio placed so far ends.
    fn anchor(
        &mut self,
        ts_ext: i64,
        pos: i64,
        clock: u32,
        settle_until: i64,
        budget: i64,
        floor: i64,
    ) {
        self.anchor_ts = ts_ext;
        self.anchor_pos = pos;
        self.floor = floor;
        self.placed_from = pos;
        self.placed_to = pos;
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
    /// Samples of received audio not written: behind the write position, or
    /// onto audio this party had already placed.
    pub(crate) trimmed_samples: u64,
    lost_retired: u64,
    seen_pts: Vec<(u8, Option<PayloadType>)>,
}

impl Timeline {
    pub(crate) fn new() -> Timeline {
        Timeline {
            segments: Vec::with_capacity(2),
            // Pending samples span the reorder window (200 ms: 1,600 at
            // 8 kHz); the ring grows for wideband or longer windows.
            buf: VecDeque::with_capacity(2048),
            base: 0,
            pcm: Vec::with_capacity(1920),
            resampled: Vec::with_capacity(1920),
            resample_scratch: Vec::new(),
            placed_end: 0,
            stats: MediaStats::default(),
            trimmed_samples: 0,
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
        let placed_end = self.placed_end;

        let seg = &mut self.segments[idx];
        let ts_ext = seg.extend_ts(pkt.timestamp);
        let settle_until = arrival_pos + th.settle;
        // A new anchor puts the packet where its audio was captured, also when
        // that began before the recording (the first packets of a call): what
        // lies before the start is not written; what lies behind the write
        // position is counted below.
        if seg.clock == 0 {
            seg.anchor(
                ts_ext,
                arrival_start,
                clock,
                settle_until,
                th.settle_budget,
                placed_end,
            );
        } else if seg.clock != clock {
            seg.anchor(
                ts_ext,
                arrival_start,
                clock,
                settle_until,
                th.settle_budget,
                placed_end,
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
                    arrival_start,
                    clock,
                    settle_until,
                    th.settle_budget,
                    placed_end,
                );
                self.stats.timestamp_jumps += 1;
            } else {
                // Arrived earlier than the anchor allows, soon after anchoring: the
                // anchoring packet was delayed (or a stall delivered a burst). The
                // anchor moves earlier, and the audio placed since moves with it
                // rather than being written over; never behind the write position
                // or onto earlier audio. At the start (nothing written, no earlier
                // audio) it may move before position 0: that part was captured
                // before the recording began.
                let settling = d < -th.drift && arrival_pos < seg.settle_until;
                let lowest = if base <= 0 && seg.floor <= 0 {
                    i64::MIN / 2
                } else {
                    base.max(seg.floor)
                };
                let room = seg.placed_from - lowest;
                let shift = if settling {
                    (-d).min(seg.settle_budget).min(room).max(0)
                } else {
                    0
                };
                if shift > 0 {
                    self.move_back(idx, shift);
                } else {
                    seg.track_drift(arrival_pos, d, th, &mut self.stats);
                }
            }
        }
        // Where the party's newer stream (after an SSRC change) began.
        let newer_from = self
            .segments
            .get(idx + 1)
            .map_or(i64::MAX, |s| s.placed_from);
        let seg = &mut self.segments[idx];
        let pos_start = seg.position(ts_ext, rate);
        let pos_end = seg.position(ts_ext + n_rtp, rate);
        if pos_end <= 0 {
            // Wholly before the recording started: never to be in it.
            return;
        }
        if pos_end <= base {
            self.stats.late_dropped += 1;
            return;
        }
        // What falls behind the write position (arrived later than the reorder
        // window), below the audio placed before the anchor, or (for the newest
        // packet) onto this stream's audio after a correction moved it back, is
        // not written, and counted: the earlier audio stays.
        let mut writable = base.max(seg.floor);
        if newest {
            writable = writable.max(seg.placed_to);
        }
        let skip = (writable - pos_start).clamp(0, pos_end - pos_start);
        // A late packet of an older stream filling its own place stops where
        // the newer stream's audio begins.
        let end = if pos_start < newer_from {
            pos_end.min(newer_from).max(pos_start + skip)
        } else {
            pos_end
        };
        // Audio captured before the recording started was never to be in it.
        let before_start = (-pos_start).clamp(0, skip);
        self.trimmed_samples += (skip - before_start + pos_end - end) as u64;
        if pos_start + skip == end {
            return;
        }
        seg.placed_from = seg.placed_from.min(pos_start + skip);
        seg.placed_to = seg.placed_to.max(end);
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
        let need = (end - base) as usize;
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        let skip = skip as usize;
        let off = (pos_start + skip as i64 - base) as usize;
        let src = &src[skip..(end - pos_start) as usize];
        let src = &src[..src.len().min(need - off)];
        // The ring's two halves as slices: whole copies, not an index per sample.
        let (front, back) = self.buf.as_mut_slices();
        if off < front.len() {
            let in_front = src.len().min(front.len() - off);
            front[off..off + in_front].copy_from_slice(&src[..in_front]);
            back[..src.len() - in_front].copy_from_slice(&src[in_front..]);
        } else {
            let at = off - front.len();
            back[at..at + src.len()].copy_from_slice(src);
        }
        self.placed_end = self.placed_end.max(end);
    }

    /// Moves segment `idx`'s anchor `shift` samples earlier, and the audio it
    /// placed since anchoring with it (the caller checked that the span's new
    /// place is writable and above the audio placed before the anchor, or,
    /// at the recording's start, that what leaves the file lies before it).
    fn move_back(&mut self, idx: usize, shift: i64) {
        let seg = &mut self.segments[idx];
        let base = self.base;
        let (from, to) = (
            (seg.placed_from.max(base) - base) as usize,
            (seg.placed_to.max(base) - base) as usize,
        );
        let n = shift as usize;
        // Samples moved before the write position can only be before the
        // recording's start (see the caller): they are left out.
        for i in from.max(n)..to {
            self.buf[i - n] = self.buf[i];
        }
        for i in to.saturating_sub(n).max(from)..to {
            self.buf[i] = 0;
        }
        if self.placed_end == seg.placed_to {
            self.placed_end -= shift;
        }
        seg.placed_from -= shift;
        seg.placed_to -= shift;
        seg.anchor_pos -= shift;
        seg.settle_budget -= shift;
        self.stats.drift_corrections += 1;
    }

    /// Moves the next `out.len()` samples (silence where nothing was placed) out of the timeline.
    pub(crate) fn drain_into(&mut self, out: &mut [i16]) {
        let n = out.len().min(self.buf.len());
        let (front, back) = self.buf.as_slices();
        let in_front = n.min(front.len());
        out[..in_front].copy_from_slice(&front[..in_front]);
        out[in_front..n].copy_from_slice(&back[..n - in_front]);
        self.buf.drain(..n);
        out[n..].fill(0);
        self.base += out.len() as i64;
    }
}

#[cfg(test)]
mod tests;
