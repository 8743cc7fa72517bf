//! One recording's state: takes packets off its queue, feeds the two party
//! timelines, commits samples older than the reorder window to the WAV
//! writers, and finalises the files on finish. A lane of the pool drives it.
//! Audio that cannot be written (disk full) or that the queue refused
//! (overload) becomes a gap of the recording, reported once per reason.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::failure::{FailureReason, FailureReporter, RecordingFailure};
use super::gaps::Gaps;
use super::timeline::{Thresholds, Timeline};
use super::wav::{WavWriter, WriteLoss};
use super::{
    rtp, ChannelMode, ForkShared, Packet, PayloadMap, RecorderError, RecordingOutput,
    RecordingSpec, Side,
};

/// Samples committed to the files in one go at most: a packet commits 160
/// per party at 8 kHz, so this is rarely reached, and it sizes two buffers
/// every recording keeps.
const COMMIT_CHUNK: usize = 1024;
/// Packets of room the lane keeps for taking a recording's queue (a tick
/// normally finds ten: five 20 ms packets per party).
const BATCH_KEPT: usize = 32;
/// Rate used for the header when no audio ever arrived.
const DEFAULT_RATE: u32 = 8000;
/// Space kept free beside each recording until it is finished, so that the
/// set's metadata, checksums and signature can be written even when the
/// disk ran full during the call.
const SEAL_RESERVE: usize = 64 * 1024;

/// Who is told about this recording's failures, and in which call's span.
pub(crate) struct Watch {
    pub(crate) reporter: FailureReporter,
    pub(crate) call_id: String,
    pub(crate) span: tracing::Span,
    /// Tells the call that its recording cannot go on as it should.
    pub(crate) signal: super::signal::FailureSignal,
}

pub(crate) struct Worker {
    mode: ChannelMode,
    start: Instant,
    reorder_window: Duration,
    jump: Duration,
    drift: Duration,
    drift_window: Duration,
    rate: u32,
    th: Thresholds,
    window_samples: i64,
    maps: [PayloadMap; 2],
    timelines: [Timeline; 2],
    writers: Vec<WavWriter>,
    written: i64,
    now_pos: i64,
    chunk: [Vec<i16>; 2],
    error: Option<RecorderError>,
    shared: Arc<ForkShared>,
    /// The queue's packets while the lane places them (reused every tick).
    batch: Vec<Packet>,
    malformed: [u64; 2],
    gaps: Gaps,
    watch: Option<Watch>,
    reserve: Option<Reserve>,
}

/// Disk space held for the set's own files (metadata, checksums, signature)
/// while the audio may fill the disk; freed when the recording ends.
struct Reserve {
    path: std::path::PathBuf,
    spares: Option<std::sync::Arc<super::spare::Spares>>,
}

impl Reserve {
    fn make(spec: &RecordingSpec) -> Option<Reserve> {
        let made = match &spec.spares {
            Some(spares) => spares
                .take()
                .and_then(|super::spare::Taken { path, file, .. }| {
                    super::spare::allocate(&file, SEAL_RESERVE as u64)
                        .map(|()| path.clone())
                        .inspect_err(|_| spares.give_back(&path))
                }),
            None => {
                let path = spec.dir.join(format!(".{}.reserve", spec.base_name));
                std::fs::write(&path, vec![0u8; SEAL_RESERVE])
                    .map(|()| path.clone())
                    .inspect_err(|_| {
                        let _ = std::fs::remove_file(&path);
                    })
            }
        };
        match made {
            Ok(path) => Some(Reserve {
                path,
                spares: spec.spares.clone(),
            }),
            Err(e) => {
                tracing::warn!(set = %spec.base_name, error = %e, "no space reserved for sealing this recording");
                None
            }
        }
    }

    /// Frees the space (the seal's files go where the reserve was).
    fn free(self) {
        match &self.spares {
            Some(spares) => spares.give_back(&self.path),
            None => {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Worker {
    pub(crate) fn new(
        spec: &RecordingSpec,
        shared: Arc<ForkShared>,
    ) -> Result<Worker, RecorderError> {
        let channels = if spec.channels == ChannelMode::Stereo {
            2
        } else {
            1
        };
        let mut writers = Vec::new();
        for path in spec.file_paths() {
            let w = WavWriter::create(
                &path,
                channels,
                DEFAULT_RATE,
                spec.rf64_threshold,
                spec.header_interval,
            )
            .map_err(|source| RecorderError::Create { path, source })?;
            writers.push(w);
        }
        let reserve = Reserve::make(spec);
        Ok(Worker {
            mode: spec.channels,
            start: spec.start,
            reorder_window: spec.reorder_window,
            jump: spec.jump_threshold,
            drift: spec.drift_threshold,
            drift_window: spec.drift_window,
            rate: 0,
            th: Thresholds {
                jump: 0,
                drift: 0,
                drift_window: 0,
                settle: 0,
                settle_budget: 0,
            },
            window_samples: 0,
            maps: [PayloadMap::default(), PayloadMap::default()],
            timelines: [Timeline::new(), Timeline::new()],
            writers,
            written: 0,
            now_pos: 0,
            chunk: [vec![0; COMMIT_CHUNK], vec![0; COMMIT_CHUNK]],
            error: None,
            shared,
            batch: Vec::new(),
            malformed: [0; 2],
            gaps: Gaps::default(),
            watch: None,
            reserve,
        })
    }

    /// Sets who is told about this recording's failures.
    pub(crate) fn set_watch(&mut self, watch: Watch) {
        self.watch = Some(watch);
    }

    /// Reports a failure of this recording (in its call's span).
    fn report(&self, reason: FailureReason, detail: String) {
        match &self.watch {
            Some(w) => {
                let _g = w.span.enter();
                w.reporter.report(RecordingFailure::now(
                    &w.call_id,
                    Some(&self.shared.base_name),
                    reason,
                    detail.clone(),
                ));
                // Lost audio (not a late packet burst) is what a profile that
                // rejects unrecordable calls ends the call for.
                if matches!(reason, FailureReason::DiskFull | FailureReason::WriteError) {
                    w.signal.raise(reason, detail);
                }
            }
            None => {
                tracing::error!(recording = %self.shared.base_name, %reason, "recording failure: {detail}")
            }
        }
    }

    fn ms_of_frames(&self, frames: u64) -> u64 {
        let rate = if self.rate == 0 {
            DEFAULT_RATE
        } else {
            self.rate
        };
        frames * 1000 / rate as u64
    }

    /// Keeps samples a file could not take as a gap.
    fn lost(&mut self, writer: usize, loss: WriteLoss) {
        let reason = FailureReason::of_io(&loss.source);
        let (from, to) = (self.ms_of_frames(loss.from), self.ms_of_frames(loss.to));
        if self.gaps.add(from, to, reason) {
            let path = self.writers[writer].path().display().to_string();
            self.report(
                reason,
                format!("writing {path} failed at {from} ms: {}; the missing audio is kept as a gap and writing is retried", loss.source),
            );
        }
    }

    /// Turns packets the queue refused since the last look into a gap.
    fn take_overload(&mut self) {
        let from = self.shared.overload_from.swap(0, Ordering::Relaxed);
        if from == 0 {
            return;
        }
        let to = self.shared.overload_to.swap(0, Ordering::Relaxed);
        let from = from - 1;
        if self
            .gaps
            .add(from, to.max(from + 20), FailureReason::RecorderOverload)
        {
            let dropped: u64 = self
                .shared
                .queue_dropped
                .iter()
                .map(|d| d.load(Ordering::Relaxed))
                .sum();
            self.report(
                FailureReason::RecorderOverload,
                format!("the recorder's queue was full from {from} ms on ({dropped} packets dropped so far); the missing audio is kept as a gap"),
            );
        }
    }

    /// Places every packet waiting in the recording's queue.
    pub(crate) fn take_queued(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        std::mem::swap(&mut *self.shared.queue(), &mut batch);
        for p in &batch {
            self.on_packet(p);
        }
        batch.clear();
        // After a burst, the room it needed is given back.
        if batch.capacity() > BATCH_KEPT {
            batch.shrink_to(BATCH_KEPT);
        }
        self.batch = batch;
        self.take_overload();
    }

    /// Refuses further packets and frees those waiting (the recording was abandoned).
    pub(crate) fn close_queue(&self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        *self.shared.queue() = Vec::new();
    }

    /// Sets the payload-type table one party sends with.
    pub(crate) fn set_payload_map(&mut self, party: Side, map: PayloadMap) {
        self.maps[party.index()] = map;
    }

    /// Extends the recording to `end` (the call's end): a party that went
    /// silent before the hang-up is silence up to it.
    pub(crate) fn run_to(&mut self, end: Option<Instant>) {
        if let Some(end) = end {
            let end_pos = self.samples(end.saturating_duration_since(self.start));
            self.now_pos = self.now_pos.max(end_pos);
        }
    }

    fn samples(&self, d: Duration) -> i64 {
        (d.as_nanos() * self.rate as u128 / 1_000_000_000) as i64
    }

    fn set_rate(&mut self, rate: u32) {
        self.rate = rate;
        self.th = Thresholds {
            jump: self.samples(self.jump),
            drift: self.samples(self.drift),
            drift_window: self.samples(self.drift_window),
            settle: self.rate as i64,
            settle_budget: self.samples(self.reorder_window),
        };
        self.window_samples = self.samples(self.reorder_window);
        for i in 0..self.writers.len() {
            if let Err(e) = self.writers[i].set_sample_rate(rate) {
                // Not fatal: finalize writes the header again.
                tracing::warn!(file = %self.writers[i].path().display(), error = %e, "WAV header not updated");
            }
        }
    }

    fn on_packet(&mut self, p: &Packet) {
        let pi = p.party.index();
        let Some(pkt) = rtp::parse(&p.data) else {
            self.malformed[pi] += 1;
            return;
        };
        let tl = &mut self.timelines[pi];
        tl.stats.packets += 1;
        tl.stats.bytes += pkt.payload.len() as u64;
        if !self.mode.records(p.party) {
            return;
        }
        let info = self.maps[pi].get(pkt.payload_type);
        if self.rate == 0 {
            match info.and_then(|i| i.codec.audio_rate()) {
                Some(r) => self.set_rate(r),
                None => {
                    // Not audio yet: track sequence numbers only.
                    self.timelines[pi].push(&pkt, info, 0, 0, &self.th);
                    return;
                }
            }
        }
        let arrival_pos = self.samples(p.arrival.saturating_duration_since(self.start));
        self.now_pos = self.now_pos.max(arrival_pos);
        // Commit first: after a silence of both parties the write position must have
        // caught up with the wall clock before this packet is judged.
        let target = self.now_pos - self.window_samples;
        if target - self.written >= (self.rate / 50) as i64 {
            self.commit(target);
        }
        self.timelines[pi].push(&pkt, info, arrival_pos, self.rate, &self.th);
    }

    /// Writes all samples before `upto` from both timelines to the files.
    fn commit(&mut self, upto: i64) {
        while self.written < upto {
            let n = ((upto - self.written) as usize).min(COMMIT_CHUNK);
            for (tl, chunk) in self.timelines.iter_mut().zip(self.chunk.iter_mut()) {
                tl.drain_into(&mut chunk[..n]);
            }
            self.written += n as i64;
            let res = match self.mode {
                ChannelMode::Caller => self.writers[0].write_samples(&self.chunk[0][..n]),
                ChannelMode::Callee => self.writers[0].write_samples(&self.chunk[1][..n]),
                ChannelMode::Stereo => {
                    self.writers[0].write_stereo(&self.chunk[0][..n], &self.chunk[1][..n])
                }
                ChannelMode::Separate => {
                    if let Err(loss) = self.writers[1].write_samples(&self.chunk[1][..n]) {
                        self.lost(1, loss);
                    }
                    self.writers[0].write_samples(&self.chunk[0][..n])
                }
            };
            if let Err(loss) = res {
                self.lost(0, loss);
            }
        }
    }

    fn fail(&mut self, writer: usize, source: std::io::Error) {
        if self.error.is_none() {
            let path = self.writers[writer].path().to_path_buf();
            tracing::error!(file = %path.display(), error = %source, "recording file could not be finished");
            self.error = Some(RecorderError::Write { path, source });
        }
    }

    /// Writes the rest of the audio, finalises the files (fsync) and returns the counters.
    pub(crate) fn finalize(mut self) -> Result<RecordingOutput, RecorderError> {
        if self.rate != 0 {
            let end = self
                .timelines
                .iter()
                .map(|t| t.placed_end)
                .max()
                .unwrap_or(0)
                .max(self.now_pos);
            self.commit(end);
        }
        for i in 0..self.writers.len() {
            match self.writers[i].finalize() {
                Ok(None) => {}
                Ok(Some(loss)) => self.lost(i, loss),
                Err(e) => self.fail(i, e),
            }
        }
        self.take_overload();
        if let Some(r) = self.reserve.take() {
            r.free();
        }
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let rate = if self.rate == 0 {
            DEFAULT_RATE
        } else {
            self.rate
        };
        let mut stats = [Side::Caller, Side::Callee].map(|p| {
            let i = p.index();
            let mut s = self.timelines[i].stats.clone();
            s.lost = self.timelines[i].lost();
            s.trimmed_ms = (self.timelines[i].trimmed_samples * 1000).div_ceil(u64::from(rate));
            s.malformed = self.malformed[i];
            s.queue_dropped = self.shared.queue_dropped[i].load(Ordering::Relaxed);
            s
        });
        let frames = self.written.max(0) as u64;
        let dropped = stats[0].queue_dropped + stats[1].queue_dropped;
        if dropped > 0 {
            tracing::warn!(
                recording = %self.shared.base_name,
                queue_dropped = dropped,
                "recording finished with packets lost to a full queue (slow disk?)"
            );
        }
        tracing::debug!(
            recording = %self.shared.base_name,
            frames,
            rate,
            caller_lost = stats[0].lost,
            callee_lost = stats[1].lost,
            "recording finalised"
        );
        Ok(RecordingOutput {
            files: self
                .writers
                .iter()
                .map(|w| w.path().to_path_buf())
                .collect(),
            sample_rate: rate,
            channels: self.mode,
            duration: Duration::from_nanos(frames * 1_000_000_000 / rate as u64),
            frames,
            rf64: self.writers.iter().any(WavWriter::is_rf64),
            caller: std::mem::take(&mut stats[0]),
            callee: std::mem::take(&mut stats[1]),
            gaps: std::mem::take(&mut self.gaps).into_sorted(),
        })
    }
}
