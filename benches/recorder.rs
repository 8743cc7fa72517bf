//! Benchmark of the recorder alone: decode + timeline + WAV write (with the
//! final fsync) for stereo PCMA calls, in packets per second of wall time.
//! For the per-core figure run it pinned to one core, under /usr/bin/time:
//! `cargo bench --bench recorder --no-run`, then
//! `taskset -c 0 /usr/bin/time -f '%U user %S sys %e wall' target/release/deps/recorder-*`.

use std::f64::consts::PI;
use std::time::{Duration, Instant};

use bytes::Bytes;
use callrec::recorder::{encode_alaw, Recorder, RecordingSpec};
use callrec::vocab::{ChannelMode, Side};

const CALLS: usize = 200;
const CALL_SECONDS: usize = 60;

fn tone(freq: f64, samples: usize) -> Vec<u8> {
    (0..samples)
        .map(|n| encode_alaw((8000.0 * (2.0 * PI * freq * n as f64 / 8000.0).sin()) as i16))
        .collect()
}

fn packets(party: Side, tone: &[u8], ssrc: u32) -> Vec<(Side, Bytes, Duration)> {
    let n = CALL_SECONDS * 50;
    (0..n)
        .map(|k| {
            let mut p = vec![0x80u8, 8];
            p.extend_from_slice(&(k as u16).to_be_bytes());
            p.extend_from_slice(&((k * 160) as u32).to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            let off = (k * 160) % 8000;
            p.extend_from_slice(&tone[off..off + 160]);
            // Up to 15 ms of jitter so the reorder window is exercised.
            let jitter = Duration::from_micros(((k * 7919) % 15_000) as u64);
            (
                party,
                Bytes::from(p),
                Duration::from_millis(20 * (k as u64 + 1)) + jitter,
            )
        })
        .collect()
}

fn main() {
    let dir = std::env::temp_dir().join(format!("callrec-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create bench dir");
    let caller_tone = tone(440.0, 8000 + 160);
    let callee_tone = tone(1000.0, 8000 + 160);
    let mut call = packets(Side::Caller, &caller_tone, 1);
    call.extend(packets(Side::Callee, &callee_tone, 2));
    call.sort_by_key(|p| p.2);
    let per_call = call.len();

    let wall0 = Instant::now();
    let mut bytes_written = 0u64;
    for c in 0..CALLS {
        let t0 = Instant::now();
        let mut spec = RecordingSpec::new(&dir, format!("bench{c}"), ChannelMode::Stereo);
        spec.start = t0;
        spec.queue_capacity = per_call;
        let rec = Recorder::start(spec).expect("start recorder");
        let fork = rec.fork();
        for (party, data, at) in &call {
            assert!(
                fork.offer(*party, data.clone(), t0 + *at),
                "queue sized for the whole call"
            );
        }
        let out = rec.finish().expect("finish");
        assert!((out.duration.as_secs_f64() - CALL_SECONDS as f64).abs() < 0.1);
        for f in &out.files {
            bytes_written += std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            let _ = std::fs::remove_file(f);
        }
    }
    let wall = wall0.elapsed();
    let total = (CALLS * per_call) as f64;
    println!("recorder alone: {CALLS} stereo PCMA calls of {CALL_SECONDS} s, {total} packets, {} MB written", bytes_written / 1_000_000);
    println!(
        "  wall {:.3} s  -> {:.0} packets/s",
        wall.as_secs_f64(),
        total / wall.as_secs_f64()
    );
    let _ = std::fs::remove_dir(&dir);
}
