//! Speech for the transcription tests: German sentences spoken by espeak-ng
//! at test time (resampled by sox to the rate a test needs), the Whisper model
//! folder deploy/test.sh downloads, and the word error rate of a transcript.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Whisper model folder from CALLREC_TEST_WHISPER_MODEL; fails loudly when
/// it is not set up, since these tests cannot mean anything without it.
pub fn whisper_model() -> PathBuf {
    let dir = std::env::var_os("CALLREC_TEST_WHISPER_MODEL").map(PathBuf::from);
    match dir {
        Some(d) if d.join("model.bin").is_file() => d,
        other => panic!(
            "no Whisper model (CALLREC_TEST_WHISPER_MODEL = {other:?}); run the tests through \
             deploy/test.sh, which downloads it once into ~/.cache/callrec/models"
        ),
    }
}

/// Writes `text` spoken in German as a mono 16-bit WAV at `rate` Hz.
pub fn german_speech_wav(path: &Path, text: &str, rate: u32) {
    let raw = path.with_extension("espeak.wav");
    let st = Command::new("espeak-ng")
        .args(["-v", "de", "-s", "150", "-w"])
        .arg(&raw)
        .arg(text)
        .status()
        .expect("espeak-ng must be installed (deploy/test.sh installs it)");
    assert!(st.success(), "espeak-ng failed on {text:?}");
    // No dither (-D): sox's default dither is random, and Whisper's output
    // changes with it (a test once lost "Aktien" to it); the same text must
    // give the same samples every run.
    let st = Command::new("sox")
        .arg("-D")
        .arg(&raw)
        .args(["-b", "16", "-c", "1", "-r"])
        .arg(rate.to_string())
        .arg(path)
        .status()
        .expect("sox must be installed (deploy/test.sh installs it)");
    assert!(st.success(), "sox failed resampling speech to {rate} Hz");
    std::fs::remove_file(raw).unwrap();
}

/// Samples and rate of a mono 16-bit WAV.
pub fn read_mono(path: &Path) -> (Vec<i16>, u32) {
    let mut r = hound::WavReader::open(path).unwrap();
    assert_eq!(r.spec().channels, 1);
    let rate = r.spec().sample_rate;
    (r.samples::<i16>().map(|s| s.unwrap()).collect(), rate)
}

/// Lower-case words without punctuation; "1.000" and "1000" are one word.
pub fn words(text: &str) -> Vec<String> {
    let mut clean = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let digit_sep = (c == '.' || c == ',')
            && i > 0
            && chars[i - 1].is_ascii_digit()
            && chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        if digit_sep {
            continue;
        }
        if c.is_alphanumeric() {
            clean.extend(c.to_lowercase());
        } else {
            clean.push(' ');
        }
    }
    clean.split_whitespace().map(str::to_string).collect()
}

/// Word error rate: word-level edit distance over the reference's length.
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let (r, h) = (words(reference), words(hypothesis));
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[h.len()] as f64 / r.len().max(1) as f64
}
