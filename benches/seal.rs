//! Sealing benchmark: time to seal a one-hour stereo 8 kHz 16-bit WAV (~115 MB)
//! plus metadata, i.e. hashing, checksum file, signature, fsyncs and chain head.
//! Run with `cargo bench --bench seal`; the figure goes to BENCHMARKS.md, "Sealing".

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use callrec::seal::{Identity, PasswordSource, Sealer};

/// Seconds of audio in the benchmark file.
const SECONDS: u32 = 3600;
/// Number of timed seals.
const RUNS: usize = 7;

/// Writes a one-hour 8 kHz 16-bit stereo WAV of noise-like samples and fsyncs it.
fn write_wav(path: &std::path::Path) -> u64 {
    let data_len: u32 = SECONDS * 8000 * 2 * 2;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut header = Vec::new();
    header.extend_from_slice(b"RIFF");
    header.extend_from_slice(&(36 + data_len).to_le_bytes());
    header.extend_from_slice(b"WAVEfmt ");
    header.extend_from_slice(&16u32.to_le_bytes());
    header.extend_from_slice(&1u16.to_le_bytes());
    header.extend_from_slice(&2u16.to_le_bytes());
    header.extend_from_slice(&8000u32.to_le_bytes());
    header.extend_from_slice(&32000u32.to_le_bytes());
    header.extend_from_slice(&4u16.to_le_bytes());
    header.extend_from_slice(&16u16.to_le_bytes());
    header.extend_from_slice(b"data");
    header.extend_from_slice(&data_len.to_le_bytes());
    f.write_all(&header).unwrap();
    let mut x: u32 = 0x1234_5678;
    let mut block = vec![0u8; 64 * 1024];
    let mut left = data_len as usize;
    while left > 0 {
        for b in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        let n = left.min(block.len());
        f.write_all(&block[..n]).unwrap();
        left -= n;
    }
    let f = f.into_inner().unwrap();
    // The recorder closes and syncs its WAV before sealing; don't time its flush here.
    f.sync_all().unwrap();
    header.len() as u64 + data_len as u64
}

fn main() {
    let dir = tempfile::tempdir_in(
        std::env::var_os("BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir),
    )
    .unwrap();
    let data = dir.path().join("data");
    let identity = Identity::load_or_create(&data, PasswordSource::Value("bench".into())).unwrap();
    let mut sealer = Sealer::new(identity, &data).unwrap();
    let mut times: Vec<Duration> = Vec::new();
    let mut size = 0;
    for run in 0..RUNS {
        let folder = dir.path().join(format!("run{run}"));
        std::fs::create_dir_all(&folder).unwrap();
        let base = format!("20261129_100000_in_4930123_200_bench{run}");
        let wav = PathBuf::from(format!("{base}.wav"));
        size = write_wav(&folder.join(&wav));
        let meta = serde_json::json!({"direction": "in", "duration_s": SECONDS});
        let start = Instant::now();
        let set = sealer.seal(&folder, &base, meta, &[wav]).unwrap();
        times.push(start.elapsed());
        assert_eq!(set.files.len(), 4);
        // Keep the disk footprint to one WAV at a time.
        std::fs::remove_dir_all(&folder).unwrap();
    }
    times.sort();
    let median = times[RUNS / 2];
    let mb = size as f64 / 1e6;
    println!(
        "seal one-hour stereo 8 kHz 16-bit WAV ({mb:.1} MB, page cache warm): median {:.1} ms, min {:.1} ms, max {:.1} ms over {RUNS} runs ({:.0} MB/s)",
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[RUNS - 1].as_secs_f64() * 1e3,
        mb / median.as_secs_f64()
    );
}
