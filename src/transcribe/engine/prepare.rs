//! Audio preparation before the model: conversion to 16 kHz float samples with
//! rubato's FFT resampler (band-limited, so telephone audio is not aliased or
//! stair-stepped) and speech detection with earshot's voice activity detector,
//! which cuts the audio into spans of speech at pauses.

use std::ops::Range;

use rubato::{FftFixedIn, Resampler};

use super::TranscribeError;

/// The sample rate Whisper's front end expects.
pub const MODEL_RATE: u32 = 16_000;

/// earshot scores frames of exactly this many samples at 16 kHz (16 ms).
const FRAME: usize = 256;

/// How speech is found and cut into spans for the model.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeechSettings {
    /// A frame whose voice score reaches this (0..1) counts as speech.
    pub threshold: f32,
    /// A span needs this much voiced audio, else it is a click or a cough.
    pub min_voiced_ms: u64,
    /// Pauses shorter than this stay inside one span.
    pub max_pause_ms: u64,
    /// Audio kept before and after each span, so word edges are not clipped.
    pub pad_ms: u64,
    /// Longest span given to the model at once; Whisper's window is 30 s, and
    /// it tends to drop the end of long windows, so spans are cut well below.
    pub max_span_ms: u64,
}

impl Default for SpeechSettings {
    fn default() -> Self {
        SpeechSettings {
            threshold: 0.5,
            min_voiced_ms: 250,
            max_pause_ms: 800,
            pad_ms: 200,
            max_span_ms: 15_000,
        }
    }
}

/// Converts 16-bit samples at `rate` to floats in [-1, 1] at 16 kHz.
pub fn to_16k(samples: &[i16], rate: u32) -> Result<Vec<f32>, TranscribeError> {
    if !(4_000..=192_000).contains(&rate) {
        return Err(TranscribeError::SampleRate(rate));
    }
    let input: Vec<f32> = samples.iter().map(|&s| s as f32 / 32768.0).collect();
    if rate == MODEL_RATE || input.is_empty() {
        return Ok(input);
    }
    let err = |e: &dyn std::fmt::Display| TranscribeError::Resample(e.to_string());
    let mut resampler = FftFixedIn::<f32>::new(rate as usize, MODEL_RATE as usize, 1024, 2, 1)
        .map_err(|e| err(&e))?;
    let want = (input.len() as u64 * MODEL_RATE as u64 / rate as u64) as usize;
    let delay = resampler.output_delay();
    let mut out: Vec<f32> = Vec::with_capacity(want + delay + 2048);
    let mut rest = &input[..];
    while rest.len() >= resampler.input_frames_next() {
        let (chunk, tail) = rest.split_at(resampler.input_frames_next());
        let block = resampler.process(&[chunk], None).map_err(|e| err(&e))?;
        out.extend_from_slice(&block[0]);
        rest = tail;
    }
    if !rest.is_empty() {
        let block = resampler
            .process_partial(Some(&[rest]), None)
            .map_err(|e| err(&e))?;
        out.extend_from_slice(&block[0]);
    }
    // The resampler holds back `delay` samples; flush with silence until the
    // whole input has come out (bounded: each call yields a full block).
    while out.len() < want + delay {
        let block = resampler
            .process_partial::<&[f32]>(None, None)
            .map_err(|e| err(&e))?;
        if block[0].is_empty() {
            break;
        }
        out.extend_from_slice(&block[0]);
    }
    out.drain(..delay.min(out.len()));
    out.truncate(want);
    Ok(out)
}

/// Spans of speech in 16 kHz audio, as sample ranges, each at most
/// `max_span_ms` long. Silence, steady tones and noise give none.
pub fn speech_spans(audio: &[f32], settings: &SpeechSettings) -> Vec<Range<usize>> {
    let ms_frames = |ms: u64| (ms as usize * MODEL_RATE as usize / 1000).div_ceil(FRAME);
    let voiced = voiced_frames(audio, settings.threshold);
    let max_pause = ms_frames(settings.max_pause_ms);
    let min_voiced = ms_frames(settings.min_voiced_ms).max(1);
    let pad = ms_frames(settings.pad_ms);
    let max_span = ms_frames(settings.max_span_ms.min(30_000)).max(1);

    // Runs of voiced frames joined across short pauses: (first, last+1, voiced count).
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for (i, &v) in voiced.iter().enumerate() {
        if !v {
            continue;
        }
        match runs.last_mut() {
            Some(run) if i - run.1 <= max_pause => {
                run.1 = i + 1;
                run.2 += 1;
            }
            _ => runs.push((i, i + 1, 1)),
        }
    }

    let total = voiced.len();
    let mut spans = Vec::new();
    for (first, end, count) in runs {
        if count < min_voiced {
            continue;
        }
        let start = first.saturating_sub(pad);
        let end = (end + pad).min(total);
        // A run longer than the model's span is cut at its quietest frame in
        // the last quarter of each piece, so words are rarely split.
        let mut at = start;
        while end - at > max_span {
            let from = at + max_span * 3 / 4;
            let cut = (from..at + max_span)
                .min_by(|&a, &b| frame_energy(audio, a).total_cmp(&frame_energy(audio, b)))
                .unwrap_or(at + max_span);
            spans.push(at * FRAME..cut * FRAME);
            at = cut;
        }
        spans.push(at * FRAME..(end * FRAME).min(audio.len()));
    }
    spans
}

/// Frames either side over which the loudness must move for speech (~0.26 s).
const MOD_HALF: usize = 16;
/// Speech rises and falls with its syllables; a hold tone or a held chord does
/// not. Below this spread of loudness (dB) around a frame it is not speech.
const MIN_MODULATION_DB: f32 = 4.0;

/// One flag per 16 ms frame: does earshot hear a voice there, and does the
/// loudness around it move like syllables? earshot alone takes a steady tone
/// for a voice, and Whisper then invents words for the hold tone.
fn voiced_frames(audio: &[f32], threshold: f32) -> Vec<bool> {
    let mut detector = earshot::Detector::default_boxed();
    let mut frame = [0f32; FRAME];
    let scores: Vec<bool> = audio
        .chunks(FRAME)
        .map(|chunk| {
            frame[..chunk.len()].copy_from_slice(chunk);
            frame[chunk.len()..].fill(0.0);
            detector.predict_f32(&frame) >= threshold
        })
        .collect();
    let db: Vec<f32> = (0..scores.len())
        .map(|i| 10.0 * (frame_energy(audio, i) / FRAME as f32 + 1e-10).log10())
        .collect();
    scores
        .iter()
        .enumerate()
        .map(|(i, &voice)| {
            if !voice {
                return false;
            }
            let around = &db[i.saturating_sub(MOD_HALF)..(i + MOD_HALF + 1).min(db.len())];
            let mean = around.iter().sum::<f32>() / around.len() as f32;
            let var = around.iter().map(|d| (d - mean).powi(2)).sum::<f32>() / around.len() as f32;
            var.sqrt() >= MIN_MODULATION_DB
        })
        .collect()
}

fn frame_energy(audio: &[f32], frame: usize) -> f32 {
    let start = (frame * FRAME).min(audio.len());
    let end = (start + FRAME).min(audio.len());
    audio[start..end].iter().map(|s| s * s).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f32::consts::PI;

    fn tone(freq: f32, rate: u32, seconds: f32, amp: f32) -> Vec<i16> {
        let n = (rate as f32 * seconds) as usize;
        (0..n)
            .map(|i| (amp * 32767.0 * (2.0 * PI * freq * i as f32 / rate as f32).sin()) as i16)
            .collect()
    }

    /// Amplitude of `freq` in `x` (at 16 kHz), by correlation with a sine and cosine.
    fn level(x: &[f32], freq: f32) -> f32 {
        let (mut s, mut c) = (0f32, 0f32);
        for (i, &v) in x.iter().enumerate() {
            let ph = 2.0 * PI * freq * i as f32 / MODEL_RATE as f32;
            s += v * ph.sin();
            c += v * ph.cos();
        }
        2.0 * (s * s + c * c).sqrt() / x.len() as f32
    }

    #[test]
    fn eight_khz_comes_out_at_16khz_with_length_and_pitch_kept() {
        let input = tone(1000.0, 8000, 2.0, 0.5);
        let out = to_16k(&input, 8000).unwrap();
        assert_eq!(out.len(), 32_000);
        // A band-limited resampler keeps the tone's level and puts nothing at
        // its image (8 kHz - 1 kHz = 7 kHz), which sample repetition would.
        let mid = &out[4000..28_000];
        assert!(
            (level(mid, 1000.0) - 0.5).abs() < 0.02,
            "{}",
            level(mid, 1000.0)
        );
        assert!(level(mid, 7000.0) < 0.005, "{}", level(mid, 7000.0));
        // And no time shift: the first samples follow the sine, not a delay.
        let peak = out[..40].iter().map(|v| v.abs()).fold(0.0, f32::max);
        assert!(peak > 0.3, "start of the tone is missing: {peak}");
    }

    #[test]
    fn other_rates_keep_their_duration() {
        for rate in [8000, 16_000, 44_100, 48_000] {
            let out = to_16k(&tone(440.0, rate, 1.5, 0.3), rate).unwrap();
            assert_eq!(out.len(), 24_000, "rate {rate}");
        }
        assert!(matches!(
            to_16k(&[0; 10], 0),
            Err(TranscribeError::SampleRate(0))
        ));
    }

    #[test]
    fn silence_and_a_steady_tone_are_not_speech() {
        let s = SpeechSettings::default();
        assert!(speech_spans(&vec![0.0; 16_000 * 5], &s).is_empty());
        let hum = to_16k(&tone(425.0, 8000, 5.0, 0.3), 8000).unwrap();
        assert!(
            speech_spans(&hum, &s).is_empty(),
            "{:?}",
            speech_spans(&hum, &s)
        );
    }
}
