//! Whisper's log-mel features for one 30 s window, computed the way the model
//! was trained: centred STFT with a periodic Hann window, power spectrum, Slaney
//! mel filters, log10, clamped to 8 decades below the window's peak, scaled by
//! (x + 4) / 4. (Normalising each frame on its own instead, as a generic mel
//! front end does, measurably raises the word error rate.)

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

/// Whisper's standard front end (its `preprocessor_config.json`).
pub(super) const N_FFT: usize = 400;
pub(super) const HOP: usize = 160;
pub(super) const WINDOW_SAMPLES: usize = 30 * 16_000;
pub(super) const FRAMES: usize = WINDOW_SAMPLES / HOP;

pub(super) struct MelFrontEnd {
    n_mels: usize,
    /// n_mels rows of N_FFT/2+1 weights.
    filters: Vec<f32>,
    window: Vec<f32>,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl MelFrontEnd {
    pub(super) fn new(n_mels: usize) -> MelFrontEnd {
        let bins = N_FFT / 2 + 1;
        let bank = mel_spec::mel::mel(16_000.0, N_FFT, n_mels, None, None, false, true);
        let mut filters = Vec::with_capacity(n_mels * bins);
        for m in 0..n_mels {
            for b in 0..bins {
                filters.push(bank[[m, b]] as f32);
            }
        }
        let window = (0..N_FFT)
            .map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / N_FFT as f32).cos())
            .collect();
        MelFrontEnd {
            n_mels,
            filters,
            window,
            fft: RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT),
        }
    }

    /// Features of `audio` (at most 30 s at 16 kHz, zero-padded to 30 s) as
    /// n_mels rows of FRAMES values.
    pub(super) fn features(&self, audio: &[f32]) -> Vec<f32> {
        let len = audio.len().min(WINDOW_SAMPLES);
        let mut padded = vec![0f32; WINDOW_SAMPLES + N_FFT];
        // Centre the frames: reflect N_FFT/2 samples at both ends (as torch.stft does).
        let half = N_FFT / 2;
        padded[half..half + len].copy_from_slice(&audio[..len]);
        let x = |i: usize| if i < len { audio[i] } else { 0.0 };
        for k in 0..half {
            padded[half - 1 - k] = x(k + 1);
            padded[half + WINDOW_SAMPLES + k] = x(WINDOW_SAMPLES - 2 - k);
        }

        let bins = N_FFT / 2 + 1;
        let mut out = vec![0f32; self.n_mels * FRAMES];
        let mut frame = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut power = vec![0f32; bins];
        for t in 0..FRAMES {
            let at = t * HOP;
            for (i, f) in frame.iter_mut().enumerate() {
                *f = padded[at + i] * self.window[i];
            }
            // Sizes come from the same plan, so processing cannot fail.
            let _ = self.fft.process(&mut frame, &mut spectrum);
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for m in 0..self.n_mels {
                let row = &self.filters[m * bins..(m + 1) * bins];
                let e: f32 = row.iter().zip(&power).map(|(w, p)| w * p).sum();
                out[m * FRAMES + t] = e.max(1e-10).log10();
            }
        }
        let peak = out.iter().copied().fold(f32::MIN, f32::max);
        for v in &mut out {
            *v = (v.max(peak - 8.0) + 4.0) / 4.0;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_lights_its_own_mel_band_and_silence_is_flat() {
        let fe = MelFrontEnd::new(80);
        let tone: Vec<f32> = (0..16_000)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16_000.0).sin())
            .collect();
        let f = fe.features(&tone);
        assert_eq!(f.len(), 80 * FRAMES);
        // Frame 50 (0.5 s) is inside the tone: its loudest band is the one near 1 kHz.
        let col: Vec<f32> = (0..80).map(|m| f[m * FRAMES + 50]).collect();
        let loudest = (0..80).max_by(|&a, &b| col[a].total_cmp(&col[b])).unwrap();
        assert!((20..=32).contains(&loudest), "band {loudest}");
        // After the tone the window is zero padding: everything sits at the floor.
        let floor = f[80 * FRAMES - 1];
        assert!((0..80).all(|m| (f[m * FRAMES + 2000] - floor).abs() < 1e-6));
        let silence = fe.features(&[]);
        assert!(silence.iter().all(|v| (v - silence[0]).abs() < 1e-6));
    }
}
