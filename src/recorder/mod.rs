//! Recorder: takes the RTP packets the media relay forks to it, places each
//! party's audio on one wall clock (timeline), decodes it and writes WAV files
//! on the recorder threads (`pool`: a few lanes, each serving many
//! recordings in batches). The relay side (`Fork::offer`) never blocks.

mod codec;
pub mod failure;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod gaps;
pub mod journal;
pub mod metadata;
mod pool;
mod rtp;
pub mod signal;
pub mod spare;
mod timeline;
mod wav;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use crate::audio::{encode_alaw, encode_ulaw, ALAW_TO_LINEAR, ULAW_TO_LINEAR};
pub use codec::{Codec, PayloadMap, PayloadType};
pub use gaps::Gap;
pub use wav::{repair as repair_wav, Repaired as RepairedWav, WavWriter};

use crate::vocab::{ChannelMode, Side};

/// What failed in the recorder.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// The recording spec is unusable.
    #[error("invalid recording spec: {0}")]
    InvalidSpec(String),
    /// A WAV file could not be created.
    #[error("cannot create recording file {path}: {source} (check that the directory exists and is writable)")]
    Create {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing or finalising a WAV file failed.
    #[error(
        "writing recording file {path} failed: {source} (check free space and the disk's health)"
    )]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The recorder threads could not be started.
    #[error("cannot start the recorder threads: {0} (check the process's thread limit)")]
    Spawn(std::io::Error),
    /// The recorder panicked on this recording; the files may be incomplete.
    #[error("the recorder panicked on this recording; the recording files may be incomplete (see the log)")]
    WorkerPanicked,
}

/// Parameters of one recording.
#[derive(Debug, Clone)]
pub struct RecordingSpec {
    /// Folder the audio files are written to (must exist).
    pub dir: PathBuf,
    /// Base file name without extension (see README, "A sealed recording set").
    pub base_name: String,
    /// Which parties are written, and how.
    pub channels: ChannelMode,
    /// Capacity of the relay → recorder packet queue.
    pub queue_capacity: usize,
    /// Data size past which the file header switches to RF64.
    pub rf64_threshold: u64,
    /// How often the WAV header is rewritten while recording.
    pub header_interval: Duration,
    /// Time zero of the recording's wall clock (both parties).
    pub start: Instant,
    /// How long a packet may arrive late and still be placed (at least 60 ms).
    pub reorder_window: Duration,
    /// Offset between RTP time and arrival time that starts a new anchor (jump, hold).
    pub jump_threshold: Duration,
    /// Persistent offset between RTP clock and arrival clock that is corrected.
    pub drift_threshold: Duration,
    /// Period over which the drift offset is measured (its minimum ignores jitter).
    pub drift_window: Duration,
    /// Spare files of `dir` for the disk reserve (a new file each time when `None`).
    pub spares: Option<std::sync::Arc<spare::Spares>>,
}

impl RecordingSpec {
    /// A spec with defaults, starting now.
    pub fn new(
        dir: impl Into<PathBuf>,
        base_name: impl Into<String>,
        channels: ChannelMode,
    ) -> Self {
        RecordingSpec {
            dir: dir.into(),
            base_name: base_name.into(),
            channels,
            queue_capacity: 2048,
            rf64_threshold: u32::MAX as u64 - 64 * 1024 * 1024,
            header_interval: Duration::from_secs(2),
            start: Instant::now(),
            reorder_window: Duration::from_millis(200),
            jump_threshold: Duration::from_millis(250),
            drift_threshold: Duration::from_millis(10),
            drift_window: Duration::from_secs(5),
            spares: None,
        }
    }

    /// The audio files this spec produces (names as in README, "A sealed recording set").
    pub fn file_paths(&self) -> Vec<PathBuf> {
        match self.channels {
            ChannelMode::Separate => vec![
                self.dir.join(format!("{}_caller.wav", self.base_name)),
                self.dir.join(format!("{}_callee.wav", self.base_name)),
            ],
            _ => vec![self.dir.join(format!("{}.wav", self.base_name))],
        }
    }

    fn validate(&self) -> Result<(), RecorderError> {
        let bad = |m: &str| Err(RecorderError::InvalidSpec(m.to_string()));
        if self.base_name.is_empty() || self.base_name.contains(['/', '\\']) {
            return bad("base_name must be a non-empty file name without path separators");
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity must be at least 1");
        }
        if self.reorder_window < Duration::from_millis(60) {
            return bad("reorder_window must be at least 60 ms");
        }
        if self.jump_threshold <= Duration::from_millis(20) {
            return bad("jump_threshold must be above 20 ms");
        }
        Ok(())
    }
}

/// Counters for one party's media.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MediaStats {
    /// RTP packets that reached the recorder (including duplicates).
    pub packets: u64,
    /// Payload bytes of those packets.
    pub bytes: u64,
    /// Packets never received (sequence gaps).
    pub lost: u64,
    /// Packets that arrived after their place was written (beyond the reorder window).
    pub late_dropped: u64,
    /// Milliseconds of received audio not written (rounded up): the part of a
    /// packet that fell behind the write position or onto audio of this party
    /// already placed, after a timing correction (a network stall longer than
    /// the reorder window, a sender clock running fast, a new stream or a
    /// timestamp jump); the earlier audio stays.
    #[serde(default)]
    pub trimmed_ms: u64,
    /// Duplicate packets dropped.
    pub duplicates: u64,
    /// Packets dropped because the recorder's queue was full (slow disk).
    pub queue_dropped: u64,
    /// Changes of the RTP stream (SSRC).
    pub ssrc_changes: u64,
    /// Timestamp jumps and resumes that were re-anchored on the wall clock.
    pub timestamp_jumps: u64,
    /// Small corrections of RTP-clock drift against the arrival clock.
    pub drift_corrections: u64,
    /// Audio packets that could not be decoded (recorded as silence).
    pub undecodable: u64,
    /// RFC 4733 telephone-event packets (not written as audio).
    pub telephone_events: u64,
    /// Comfort-noise packets (recorded as silence).
    pub comfort_noise: u64,
    /// Packets that were not valid RTP.
    pub malformed: u64,
    /// Codecs seen, as "NAME/clock" (or "PTn" when unknown).
    pub codecs: Vec<String>,
    /// Packets from other sources than this party's, dropped by the relay
    /// at the ports facing the party (never recorded); set by the call.
    #[serde(default)]
    pub foreign_packets: u64,
    /// SRTP packets this party sent that failed authentication (or were
    /// replays), dropped by the relay (never recorded); set by the call.
    #[serde(default)]
    pub srtp_auth_failed: u64,
    /// The SRTP suite of this party's leg (absent: plain RTP); the keys
    /// themselves are never written anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srtp: Option<String>,
}

/// What a finished recording produced.
#[derive(Debug, Clone)]
pub struct RecordingOutput {
    /// Audio files written (names as in README, "A sealed recording set").
    pub files: Vec<PathBuf>,
    /// Sample rate of the files.
    pub sample_rate: u32,
    /// Channel layout.
    pub channels: ChannelMode,
    /// Media time of the recording (sample frames / rate).
    pub duration: Duration,
    /// Sample frames per file.
    pub frames: u64,
    /// Whether the files switched to RF64.
    pub rf64: bool,
    /// Caller's media counters.
    pub caller: MediaStats,
    /// Callee's media counters.
    pub callee: MediaStats,
    /// Spans whose audio is missing (silence in the files), in time order.
    pub gaps: Vec<Gap>,
}

impl RecordingOutput {
    /// The counters of one party.
    pub fn stats(&self, party: Side) -> &MediaStats {
        match party {
            Side::Caller => &self.caller,
            Side::Callee => &self.callee,
        }
    }
}

/// A packet on its way from the relay to the worker.
struct Packet {
    party: Side,
    data: Bytes,
    arrival: Instant,
}

/// State shared by the forks and the worker.
struct ForkShared {
    closed: AtomicBool,
    /// Packets offered and not yet taken by the lane. The relay appends under
    /// a short lock; the lane swaps the whole batch out once per tick, so a
    /// packet costs one push, not a channel's per-message handshake.
    queue: Mutex<Vec<Packet>>,
    /// Most packets that may wait (`RecordingSpec::queue_capacity`).
    capacity: usize,
    queue_dropped: [AtomicU64; 2],
    last_drop_log_ms: AtomicU64,
    /// First refused packet since the worker last looked (ms from `epoch` + 1; 0: none).
    overload_from: AtomicU64,
    /// Last refused packet's end (ms from `epoch`).
    overload_to: AtomicU64,
    epoch: Instant,
    base_name: String,
}

impl ForkShared {
    /// The queue, locked; a panic elsewhere while it was held leaves a
    /// plain list of packets, still fine to use.
    fn queue(&self) -> MutexGuard<'_, Vec<Packet>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

const DROP_LOG_INTERVAL_MS: u64 = 5000;

/// Cheap handle for the relay to offer packets; never blocks (the lock is
/// held only for a push or the lane's swap). The queue grows to what waits
/// between two ticks, bounded by `queue_capacity`, rather than holding room
/// for all of it (128 kB at the default) for every call.
#[derive(Clone)]
pub struct Fork {
    shared: Arc<ForkShared>,
}

impl Fork {
    /// Offers a whole RTP packet; false when it was dropped (queue full) or the recording has finished.
    pub fn offer(&self, party: Side, packet: Bytes, arrival: Instant) -> bool {
        let s = &self.shared;
        if s.closed.load(Ordering::Relaxed) {
            return false;
        }
        let mut queue = s.queue();
        if queue.len() >= s.capacity {
            drop(queue);
            self.count_drop(party, arrival);
            return false;
        }
        queue.push(Packet {
            party,
            data: packet,
            arrival,
        });
        true
    }

    fn count_drop(&self, party: Side, arrival: Instant) {
        let s = &self.shared;
        let total = s.queue_dropped[party.index()].fetch_add(1, Ordering::Relaxed) + 1;
        let at = arrival.saturating_duration_since(s.epoch).as_millis() as u64;
        let _ = s
            .overload_from
            .compare_exchange(0, at + 1, Ordering::Relaxed, Ordering::Relaxed);
        s.overload_to.fetch_max(at + 20, Ordering::Relaxed);
        let now_ms =
            arrival.saturating_duration_since(s.epoch).as_millis() as u64 + DROP_LOG_INTERVAL_MS;
        let last = s.last_drop_log_ms.load(Ordering::Relaxed);
        if (last == 0 || now_ms >= last + DROP_LOG_INTERVAL_MS)
            && s.last_drop_log_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                recording = %s.base_name,
                ?party,
                dropped_total = total,
                "recorder queue full (disk too slow?): packets are dropped from the recording"
            );
        }
    }
}

/// A running recording, served by one lane of the recorder threads.
pub struct Recorder {
    fork: Fork,
    id: u64,
    lane: mpsc::Sender<pool::Command>,
    finished: bool,
}

impl Recorder {
    /// Creates the files and hands the recording to a recorder thread.
    pub fn start(spec: RecordingSpec) -> Result<Recorder, RecorderError> {
        spec.validate()?;
        let pool = pool::Pool::get()?;
        let shared = Arc::new(ForkShared {
            closed: AtomicBool::new(false),
            queue: Mutex::new(Vec::new()),
            capacity: spec.queue_capacity,
            queue_dropped: [AtomicU64::new(0), AtomicU64::new(0)],
            last_drop_log_ms: AtomicU64::new(0),
            overload_from: AtomicU64::new(0),
            overload_to: AtomicU64::new(0),
            epoch: spec.start,
            base_name: spec.base_name.clone(),
        });
        let worker = worker::Worker::new(&spec, Arc::clone(&shared))?;
        let (id, lane) = pool.assign(worker)?;
        tracing::debug!(recording = %spec.base_name, channels = %spec.channels, "recorder started");
        Ok(Recorder {
            fork: Fork { shared },
            id,
            lane,
            finished: false,
        })
    }

    /// A handle for the relay to offer packets.
    pub fn fork(&self) -> Fork {
        self.fork.clone()
    }

    /// Sets the payload-type map of one party (at start and after a re-INVITE).
    pub fn set_payload_map(&self, party: Side, map: PayloadMap) {
        // The lanes live as long as the process: a send error cannot happen.
        let _ = self
            .lane
            .send(pool::Command::PayloadMap(self.id, party, Box::new(map)));
    }

    /// Reports this recording's failures (disk full, overload …) for call
    /// `call_id`, in the current tracing span (the call's), once per reason,
    /// and raises `signal` when audio is lost for good (disk full, write error).
    pub fn watch_failures(
        &self,
        reporter: failure::FailureReporter,
        call_id: &str,
        signal: signal::FailureSignal,
    ) {
        let watch = worker::Watch {
            reporter,
            call_id: call_id.to_string(),
            span: tracing::Span::current(),
            signal,
        };
        let _ = self
            .lane
            .send(pool::Command::Watch(self.id, Box::new(watch)));
    }

    /// Blocks until everything queued is written and the files are finalised.
    pub fn finish(self) -> Result<RecordingOutput, RecorderError> {
        self.finish_with(None)
    }

    /// Like `finish`, but the files last until `end` (the call's end): a party
    /// that went silent (on hold, muted) before the hang-up is silence up to it.
    pub fn finish_at(self, end: Instant) -> Result<RecordingOutput, RecorderError> {
        self.finish_with(Some(end))
    }

    fn finish_with(mut self, end: Option<Instant>) -> Result<RecordingOutput, RecorderError> {
        self.finished = true;
        self.fork.shared.closed.store(true, Ordering::Relaxed);
        let (reply, answer) = mpsc::sync_channel(1);
        self.lane
            .send(pool::Command::Finish {
                id: self.id,
                end,
                reply: Some(reply),
            })
            .map_err(|_| RecorderError::WorkerPanicked)?;
        // The lane places the queued packets; the header rewrite and fsync happen
        // here, on the finishing thread, so the lane's other calls never wait on disk.
        let worker = answer.recv().map_err(|_| RecorderError::WorkerPanicked)??;
        worker.finalize()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.finished {
            // Not finished explicitly: the lane finalises the files on its own.
            self.fork.shared.closed.store(true, Ordering::Relaxed);
            let _ = self.lane.send(pool::Command::Finish {
                id: self.id,
                end: None,
                reply: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_mode_round_trips() {
        for m in ["caller", "callee", "stereo", "separate"] {
            assert_eq!(m.parse::<ChannelMode>().unwrap().to_string(), m);
        }
        assert!("both".parse::<ChannelMode>().is_err());
    }

    #[test]
    fn fork_is_send_sync_and_clone() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Fork>();
        fn send<T: Send + 'static>() {}
        send::<Recorder>();
    }

    #[test]
    fn file_names_follow_design() {
        let s = RecordingSpec::new("/x", "b", ChannelMode::Separate);
        assert_eq!(
            s.file_paths(),
            vec![
                PathBuf::from("/x/b_caller.wav"),
                PathBuf::from("/x/b_callee.wav")
            ]
        );
        let s = RecordingSpec::new("/x", "b", ChannelMode::Callee);
        assert_eq!(s.file_paths(), vec![PathBuf::from("/x/b.wav")]);
    }

    #[test]
    fn full_queue_drops_and_counts_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = RecordingSpec::new(dir.path(), "q", ChannelMode::Stereo);
        spec.queue_capacity = 1;
        let fork = Fork {
            shared: Arc::new(ForkShared {
                closed: AtomicBool::new(false),
                queue: Mutex::new(Vec::new()),
                capacity: spec.queue_capacity,
                queue_dropped: [AtomicU64::new(0), AtomicU64::new(0)],
                last_drop_log_ms: AtomicU64::new(0),
                overload_from: AtomicU64::new(0),
                overload_to: AtomicU64::new(0),
                epoch: spec.start,
                base_name: "q".into(),
            }),
        };
        let p = Bytes::from_static(&[0x80, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert!(fork.offer(Side::Caller, p.clone(), Instant::now()));
        assert!(!fork.offer(Side::Caller, p.clone(), Instant::now()));
        assert!(!fork.offer(Side::Callee, p, Instant::now()));
        assert_eq!(fork.shared.queue_dropped[0].load(Ordering::Relaxed), 1);
        assert_eq!(fork.shared.queue_dropped[1].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn refused_packets_become_one_overload_gap_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = RecordingSpec::new(dir.path(), "ov", ChannelMode::Stereo);
        spec.queue_capacity = 1;
        let t0 = spec.start;
        let rec = Recorder::start(spec).unwrap();
        let reporter = failure::FailureReporter::new();
        rec.watch_failures(reporter.clone(), "call-1", Default::default());
        rec.set_payload_map(
            Side::Caller,
            PayloadMap::from_sdp("v=0\r\nm=audio 4000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"),
        );
        let fork = rec.fork();
        // A burst of one second of packets: the queue of one takes the first
        // (and one more whenever the lane happens to empty it meanwhile).
        let mut dropped = Vec::new();
        for i in 0u16..50 {
            let mut p = vec![0x80, 8];
            p.extend_from_slice(&i.to_be_bytes());
            p.extend_from_slice(&(u32::from(i) * 160).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 1]);
            p.extend_from_slice(&[0xd5; 160]);
            let at = t0 + Duration::from_millis(20 * u64::from(i));
            if !fork.offer(Side::Caller, Bytes::from(p), at) {
                dropped.push(20 * u64::from(i));
            }
        }
        let out = rec.finish().unwrap();
        assert_eq!(out.caller.queue_dropped, dropped.len() as u64);
        let (first, last) = (dropped[0], *dropped.last().unwrap());
        let gaps: Vec<_> = out
            .gaps
            .iter()
            .filter(|g| g.reason == failure::FailureReason::RecorderOverload)
            .collect();
        assert_eq!(gaps.len(), 1, "{:?}", out.gaps);
        assert!(
            gaps[0].from_ms <= first && gaps[0].to_ms >= last,
            "{:?} does not cover {first}-{last} ms",
            gaps[0]
        );
        let overloads = reporter
            .counts()
            .into_iter()
            .find(|(r, _)| *r == failure::FailureReason::RecorderOverload)
            .unwrap()
            .1;
        assert_eq!(overloads, 1, "reported once per recording");
    }
}
