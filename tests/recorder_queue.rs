//! Integration tests of the recorder's relay-facing side: a full queue drops
//! and counts instead of blocking, and a file being written is a
//! playable WAV at any time (header rewritten while recording).

use std::time::{Duration, Instant};

use bytes::Bytes;
use callrec::recorder::{encode_alaw, Recorder, RecordingSpec};
use callrec::vocab::{ChannelMode, Side};

fn packet(seq: u16, value: i16) -> Bytes {
    let mut p = vec![0x80u8, 8];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(seq as u32 * 160).to_be_bytes());
    p.extend_from_slice(&7u32.to_be_bytes());
    p.extend(std::iter::repeat_n(encode_alaw(value), 160));
    Bytes::from(p)
}

/// Samples a WAV reader sees in `path`, polled for up to 10 s until there are `want`.
fn readable_samples(path: &std::path::Path, want: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = hound::WavReader::open(path).map(|r| r.len()).unwrap_or(0);
        if n >= want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn full_queue_drops_counts_and_never_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let t0 = Instant::now();
    let mut spec = RecordingSpec::new(&dir, "q", ChannelMode::Stereo);
    spec.start = t0;
    spec.queue_capacity = 4;
    let rec = Recorder::start(spec).unwrap();
    let fork = rec.fork();
    let packets: Vec<Bytes> = (0..20_000u16).map(|k| packet(k, 1000)).collect();
    let mut accepted = [0u64; 2];
    let started = Instant::now();
    for (k, p) in packets.iter().enumerate() {
        let at = t0 + Duration::from_millis(20 * (k as u64 + 1));
        for (i, party) in [Side::Caller, Side::Callee].into_iter().enumerate() {
            if fork.offer(party, p.clone(), at) {
                accepted[i] += 1;
            }
        }
    }
    let offering = started.elapsed();
    let out = rec.finish().unwrap();
    // 40,000 offers into a queue of 4 cannot all fit: some are dropped, none blocks.
    assert!(out.caller.queue_dropped + out.callee.queue_dropped > 0);
    assert_eq!(out.caller.queue_dropped + accepted[0], 20_000);
    assert_eq!(out.callee.queue_dropped + accepted[1], 20_000);
    assert_eq!(out.caller.packets, accepted[0]);
    assert_eq!(out.callee.packets, accepted[1]);
    assert!(
        offering < Duration::from_secs(5),
        "offering took {offering:?}"
    );
    // After finish, offers are refused without touching the queue.
    assert!(!fork.offer(Side::Caller, packets[0].clone(), Instant::now()));
}

#[test]
fn file_is_playable_while_recording() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let t0 = Instant::now();
    let mut spec = RecordingSpec::new(&dir, "live", ChannelMode::Caller);
    spec.start = t0;
    spec.queue_capacity = 1000;
    spec.header_interval = Duration::ZERO;
    let rec = Recorder::start(spec).unwrap();
    let fork = rec.fork();
    for k in 0..250u16 {
        let at = t0 + Duration::from_millis(20 * (k as u64 + 1));
        assert!(fork.offer(Side::Caller, packet(k, 2000), at));
    }
    // The recorder runs on its own thread: poll (bounded) until it has written past 4 s.
    let path = dir.join("live.wav");
    let frames = readable_samples(&path, 32_000);
    assert!(
        frames >= 32_000,
        "only {frames} samples readable while recording"
    );
    // What a reader sees mid-call is real audio, not a stale or broken header.
    let mut r = hound::WavReader::open(&path).unwrap();
    let s: Vec<i16> = r
        .samples::<i16>()
        .take(32_000)
        .map(|s| s.unwrap())
        .collect();
    assert!(s[1000..32_000].iter().all(|&v| v > 1800));
    let out = rec.finish().unwrap();
    assert_eq!(out.frames, 40_000);
}

/// Both parties silent before the hang-up (hold until BYE): with the call's end
/// given, the file runs to it in silence; without, it ends at the last packet.
#[test]
fn silence_until_the_hang_up_is_kept_when_the_end_is_given() {
    for (with_end, want_secs) in [(true, 2.5), (false, 1.0)] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let t0 = Instant::now();
        let mut spec = RecordingSpec::new(&dir, "tail", ChannelMode::Stereo);
        spec.start = t0;
        let rec = Recorder::start(spec).unwrap();
        let fork = rec.fork();
        // One second of audio from both parties, arrival times on the wall clock.
        for k in 0..50u16 {
            let at = t0 + Duration::from_millis(20 * (k as u64 + 1));
            assert!(fork.offer(Side::Caller, packet(k, 3000), at));
            assert!(fork.offer(Side::Callee, packet(k, -3000), at));
        }
        let out = if with_end {
            rec.finish_at(t0 + Duration::from_millis(2500)).unwrap()
        } else {
            rec.finish().unwrap()
        };
        let mut r = hound::WavReader::open(&out.files[0]).unwrap();
        let frames = r.duration() as f64;
        let secs = frames / 8000.0;
        assert!(
            (secs - want_secs).abs() < 0.05,
            "with_end={with_end}: file lasts {secs} s, expected {want_secs} s"
        );
        let samples: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
        let tail_loud = samples
            .get((2 * 8000 * 11 / 10)..)
            .unwrap_or(&[])
            .iter()
            .filter(|v| v.unsigned_abs() > 500)
            .count();
        assert_eq!(
            tail_loud, 0,
            "with_end={with_end}: sound after the parties went silent"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn threads_of_this_process() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Many concurrent recordings are served by a few recorder threads (one per
/// core), not a thread each, and each file still holds only its own call's audio.
#[test]
fn many_recordings_share_a_few_threads_without_crosstalk() {
    const CALLS: usize = 64;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let t0 = Instant::now();
    let before = threads_of_this_process();
    let recs: Vec<Recorder> = (0..CALLS)
        .map(|c| {
            let mut spec = RecordingSpec::new(&dir, format!("call{c}"), ChannelMode::Stereo);
            spec.start = t0;
            Recorder::start(spec).unwrap()
        })
        .collect();
    let during = threads_of_this_process();
    // Call c's caller sends the level 100·(c+1), its callee the negative of it.
    for k in 0..100u16 {
        let at = t0 + Duration::from_millis(20 * (k as u64 + 1));
        for (c, rec) in recs.iter().enumerate() {
            let level = 100 * (c as i16 + 1);
            assert!(rec.fork().offer(Side::Caller, packet(k, level), at));
            assert!(rec.fork().offer(Side::Callee, packet(k, -level), at));
        }
    }
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(
        during <= before + cores.min(8) + 4,
        "{CALLS} recordings took {} threads (cores: {cores})",
        during as i64 - before as i64
    );
    for (c, rec) in recs.into_iter().enumerate() {
        let out = rec.finish().unwrap();
        assert_eq!(out.frames, 16_000, "call {c}");
        let level = 100.0 * (c as f64 + 1.0);
        let mut r = hound::WavReader::open(dir.join(format!("call{c}.wav"))).unwrap();
        let s: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
        // A-law quantises: within 4 % of the level sent, on the right channel.
        for frame in s[2000..30_000].chunks(2) {
            let (l, rr) = (frame[0] as f64, frame[1] as f64);
            assert!(
                (l - level).abs() <= level * 0.04 + 8.0,
                "call {c}: left {l}"
            );
            assert!(
                (rr + level).abs() <= level * 0.04 + 8.0,
                "call {c}: right {rr}"
            );
        }
    }
}

/// A recorder dropped without `finish` (its call's task ended abruptly) still
/// leaves a complete, playable file with every packet it was given.
#[test]
fn a_dropped_recorder_still_finalises_its_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let t0 = Instant::now();
    let mut spec = RecordingSpec::new(&dir, "dropped", ChannelMode::Caller);
    spec.start = t0;
    let rec = Recorder::start(spec).unwrap();
    for k in 0..150u16 {
        let at = t0 + Duration::from_millis(20 * (k as u64 + 1));
        assert!(rec.fork().offer(Side::Caller, packet(k, 3000), at));
    }
    drop(rec);
    let frames = readable_samples(&dir.join("dropped.wav"), 24_000);
    assert_eq!(frames, 24_000, "150 packets of 160 samples");
}
