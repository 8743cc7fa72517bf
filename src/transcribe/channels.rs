//! Each party's audio of a sealed set, read from its WAV files as the recorder
//! wrote them: stereo (left = caller, right = callee), separate mono files, or
//! one mono file of one party. A mono file whose party the metadata does not
//! name is a mix of both: it is transcribed once and the transcript says so.

use std::path::{Path, PathBuf};

use crate::vocab::{ChannelMode, Side};

/// One party's samples (mono, 16 bit).
#[derive(Debug, Clone)]
pub struct PartyAudio {
    /// The party; `None` for a mono mix of both.
    pub party: Option<Side>,
    /// The samples.
    pub samples: Vec<i16>,
    /// Their rate in Hz.
    pub sample_rate: u32,
}

/// Why a set's audio could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The metadata does not say which audio files the set has.
    #[error("{0}: the metadata names no audio files (audio.files)")]
    NoAudio(PathBuf),
    /// A WAV file could not be read.
    #[error("cannot read {path}: {detail}")]
    Wav {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

/// The name a party has in transcripts: caller, callee, or mixed.
pub fn party_name(party: Option<Side>) -> &'static str {
    party.map_or("mixed", Side::name)
}

/// Reads every party of the set whose metadata is `meta` from `folder`.
pub fn read_parties(
    folder: &Path,
    meta: &serde_json::Value,
) -> Result<Vec<PartyAudio>, ChannelError> {
    let audio = meta.get("audio");
    let files: Vec<String> = audio
        .and_then(|a| a.get("files"))
        .and_then(|f| f.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if files.is_empty() {
        return Err(ChannelError::NoAudio(folder.to_path_buf()));
    }
    let layout: Option<ChannelMode> = audio
        .and_then(|a| a.get("channel_layout"))
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok());
    let mut out = Vec::new();
    for name in &files {
        let path = folder.join(name);
        let (channels, rate, samples) = read_wav(&path)?;
        if channels == 2 {
            // Stereo: left = caller, right = callee (README, "A sealed recording set").
            for side in [Side::Caller, Side::Callee] {
                out.push(PartyAudio {
                    party: Some(side),
                    samples: samples
                        .iter()
                        .skip(side.index())
                        .step_by(2)
                        .copied()
                        .collect(),
                    sample_rate: rate,
                });
            }
            continue;
        }
        let party = match layout {
            Some(ChannelMode::Caller) => Some(Side::Caller),
            Some(ChannelMode::Callee) => Some(Side::Callee),
            Some(ChannelMode::Separate) if name.ends_with("_caller.wav") => Some(Side::Caller),
            Some(ChannelMode::Separate) if name.ends_with("_callee.wav") => Some(Side::Callee),
            _ => None,
        };
        out.push(PartyAudio {
            party,
            samples,
            sample_rate: rate,
        });
    }
    Ok(out)
}

/// Channels, rate and interleaved samples of a 16-bit PCM WAV file.
fn read_wav(path: &Path) -> Result<(u16, u32, Vec<i16>), ChannelError> {
    let fail = |detail: String| ChannelError::Wav {
        path: path.to_path_buf(),
        detail,
    };
    let reader = hound::WavReader::open(path).map_err(|e| fail(e.to_string()))?;
    let spec = reader.spec();
    if spec.bits_per_sample != 16 || spec.sample_format != hound::SampleFormat::Int {
        return Err(fail(format!(
            "{} bit {:?} samples; the recorder writes 16-bit PCM",
            spec.bits_per_sample, spec.sample_format
        )));
    }
    if !(1..=2).contains(&spec.channels) {
        return Err(fail(format!("{} channels", spec.channels)));
    }
    let samples = reader
        .into_samples::<i16>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    Ok((spec.channels, spec.sample_rate, samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, channels: u16, samples: &[i16]) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for s in samples {
            w.write_sample(*s).unwrap();
        }
        w.finalize().unwrap();
    }

    fn meta(layout: &str, files: &[&str]) -> serde_json::Value {
        serde_json::json!({"audio": {"channel_layout": layout, "files": files}})
    }

    #[test]
    fn stereo_is_split_left_caller_right_callee() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("b.wav"), 2, &[1, -1, 2, -2, 3, -3]);
        let parties = read_parties(dir.path(), &meta("stereo", &["b.wav"])).unwrap();
        assert_eq!(parties.len(), 2);
        assert_eq!(parties[0].party, Some(Side::Caller));
        assert_eq!(parties[0].samples, vec![1, 2, 3]);
        assert_eq!(parties[1].party, Some(Side::Callee));
        assert_eq!(parties[1].samples, vec![-1, -2, -3]);
        assert_eq!(parties[1].sample_rate, 8000);
    }

    #[test]
    fn separate_files_are_told_apart_by_name() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("b_caller.wav"), 1, &[5, 5]);
        write(&dir.path().join("b_callee.wav"), 1, &[7]);
        let parties = read_parties(
            dir.path(),
            &meta("separate", &["b_caller.wav", "b_callee.wav"]),
        )
        .unwrap();
        assert_eq!(parties[0].party, Some(Side::Caller));
        assert_eq!(parties[0].samples, vec![5, 5]);
        assert_eq!(parties[1].party, Some(Side::Callee));
        assert_eq!(parties[1].samples, vec![7]);
    }

    #[test]
    fn one_party_mono_and_an_unnamed_mono_mix() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("b.wav"), 1, &[9]);
        let callee = read_parties(dir.path(), &meta("callee", &["b.wav"])).unwrap();
        assert_eq!(callee[0].party, Some(Side::Callee));
        let mixed = read_parties(dir.path(), &meta("mixed", &["b.wav"])).unwrap();
        assert_eq!(mixed.len(), 1);
        assert_eq!(party_name(mixed[0].party), "mixed");
    }

    #[test]
    fn missing_audio_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_parties(dir.path(), &meta("stereo", &["gone.wav"])).unwrap_err();
        assert!(e.to_string().contains("gone.wav"), "{e}");
        let e = read_parties(dir.path(), &serde_json::json!({})).unwrap_err();
        assert!(e.to_string().contains("audio.files"), "{e}");
    }
}
