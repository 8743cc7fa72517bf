//! Audio for the tests: tone WAVs to play (announcements, notices) and the
//! level of one frequency in recorded samples, to tell whose audio is where.

use std::path::Path;

/// Writes a 16-bit tone WAV at `rate` Hz with `channels` identical channels.
pub fn tone_wav(path: &Path, rate: u32, channels: u16, freq: f64, secs: f64) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..(f64::from(rate) * secs) as usize {
        let v = (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin() * 12000.0;
        for _ in 0..channels {
            w.write_sample(v as i16).unwrap();
        }
    }
    w.finalize().unwrap();
}

/// Power of `freq` in `x` sampled at `rate` (Goertzel), as a level in dB.
pub fn level_db(x: &[f64], rate: f64, freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / rate;
    let (mut s1, mut s2) = (0.0, 0.0);
    for v in x {
        let s = v + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let p = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
    10.0 * (p.max(1e-9) / x.len() as f64).log10()
}

/// Mean power of `freq` over 100 ms blocks of `x`, as a level in dB.
///
/// One Goertzel bin over white noise (an encrypted payload read as audio)
/// is exponentially distributed: two such bins differ by 10 dB about one
/// time in eleven. Averaged over many blocks they agree to within a dB or
/// two, so a threshold on the difference tells a tone from noise every time.
pub fn mean_level_db(x: &[f64], rate: f64, freq: f64) -> f64 {
    let block = (rate / 10.0) as usize;
    let blocks: Vec<&[f64]> = x.chunks_exact(block).collect();
    assert!(!blocks.is_empty(), "fewer than 100 ms of samples");
    let mean = blocks
        .iter()
        .map(|b| 10f64.powf(level_db(b, rate, freq) / 10.0))
        .sum::<f64>()
        / blocks.len() as f64;
    10.0 * mean.log10()
}
