//! Sample-rate conversion of one decoded packet to the file's rate (used after a
//! codec change): a windowed-sinc low-pass when downsampling, then linear
//! interpolation to exactly the number of samples the timeline reserved.

use std::f64::consts::PI;

/// Converts `src` to exactly `m` samples into `out`; `scratch` is reused between calls.
pub(crate) fn resample(src: &[i16], m: usize, out: &mut Vec<i16>, scratch: &mut Vec<f64>) {
    out.clear();
    if src.is_empty() || m == 0 {
        out.resize(m, 0);
        return;
    }
    let ratio = src.len() as f64 / m as f64;
    scratch.clear();
    if ratio > 1.05 {
        low_pass(src, ratio, scratch);
    } else {
        scratch.extend(src.iter().map(|&s| s as f64));
    }
    let last = scratch.len() - 1;
    for i in 0..m {
        let x = i as f64 * ratio;
        let j = (x as usize).min(last);
        let frac = x - j as f64;
        let a = scratch[j];
        let b = scratch[(j + 1).min(last)];
        out.push((a + (b - a) * frac).round().clamp(-32768.0, 32767.0) as i16);
    }
}

/// Hann-windowed sinc low-pass at 0.45 of the target rate; edges are clamped.
fn low_pass(src: &[i16], ratio: f64, out: &mut Vec<f64>) {
    let fc = 0.45 / ratio; // cycles per input sample
    let half = (3.0 * ratio).ceil() as isize;
    let mut taps = Vec::with_capacity((2 * half + 1) as usize);
    for j in -half..=half {
        let x = j as f64;
        let sinc = if j == 0 {
            2.0 * fc
        } else {
            (2.0 * PI * fc * x).sin() / (PI * x)
        };
        let hann = 0.5 + 0.5 * (PI * x / (half + 1) as f64).cos();
        taps.push(sinc * hann);
    }
    let sum: f64 = taps.iter().sum();
    for t in &mut taps {
        *t /= sum;
    }
    let last = src.len() as isize - 1;
    for i in 0..src.len() as isize {
        let mut acc = 0.0;
        for (k, &t) in taps.iter().enumerate() {
            let idx = (i + k as isize - half).clamp(0, last) as usize;
            acc += t * src[idx] as f64;
        }
        out.push(acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| (8000.0 * (2.0 * PI * freq * i as f64 / rate).sin()) as i16)
            .collect()
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn keeps_length_and_a_ramp() {
        let src: Vec<i16> = (0..320).map(|i| i as i16 * 10).collect();
        let (mut out, mut s) = (Vec::new(), Vec::new());
        resample(&src, 160, &mut out, &mut s);
        assert_eq!(out.len(), 160);
        assert!((out[80] - 1600).abs() <= 2, "{}", out[80]);
        resample(&src[..160], 480, &mut out, &mut s);
        assert_eq!(out.len(), 480);
        assert!((out[300] - 1000).abs() <= 2, "{}", out[300]);
    }

    #[test]
    fn downsampling_passes_speech_band_and_blocks_aliases() {
        let (mut out, mut s) = (Vec::new(), Vec::new());
        // 16 kHz → 8 kHz: 1 kHz passes, 6 kHz (would alias to 2 kHz) is removed.
        resample(&tone(1000.0, 16000.0, 320), 160, &mut out, &mut s);
        assert!(rms(&out[20..140]) > 0.9 * 8000.0 / 2f64.sqrt());
        resample(&tone(6000.0, 16000.0, 320), 160, &mut out, &mut s);
        assert!(
            rms(&out[20..140]) < 0.1 * 8000.0 / 2f64.sqrt(),
            "alias rms {}",
            rms(&out[20..140])
        );
        // 48 kHz → 8 kHz: 10 kHz is removed.
        resample(&tone(10000.0, 48000.0, 960), 160, &mut out, &mut s);
        assert!(
            rms(&out[20..140]) < 0.1 * 8000.0 / 2f64.sqrt(),
            "alias rms {}",
            rms(&out[20..140])
        );
    }
}
