//! The speech engine: one party's mono audio in, time-stamped text out.
//!
//! The audio is brought to 16 kHz with a band-limited resampler, cut into
//! stretches of speech by a voice activity detector (so that silence, hold and
//! tones never reach the model, which would otherwise invent text for them),
//! and each stretch is transcribed by OpenAI's Whisper (CTranslate2 format) in
//! the language the caller forces. The model part is compiled only with the
//! cargo feature `transcribe`; without it [`Engine::load`] says how to get it.

mod prepare;

#[cfg(feature = "transcribe")]
mod mel;
#[cfg(feature = "transcribe")]
mod whisper;

use std::path::{Path, PathBuf};

pub use prepare::SpeechSettings;
use prepare::{speech_spans, to_16k};

/// Files a CTranslate2 Whisper model folder must hold. `preprocessor_config.json`
/// is optional: without it Whisper's standard front end (80 mel bins, 400-point
/// FFT, hop 160, 16 kHz, 30 s windows) is used.
pub const MODEL_FILES: [&str; 3] = ["model.bin", "config.json", "tokenizer.json"];

/// One stretch of recognised speech; times are relative to the first sample given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub start_ms: u64,
    pub end_ms: u64,
    pub text: String,
}

/// How the engine loads and runs the model.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// A CTranslate2 Whisper model folder (see [`MODEL_FILES`]).
    pub model_dir: PathBuf,
    /// CPU threads the model uses; one beats two on a busy two-core box.
    pub threads: usize,
    /// Beam width of the decoder (1 = greedy: faster, somewhat less accurate).
    pub beam_size: usize,
    /// How speech is found and cut before it reaches the model.
    pub speech: SpeechSettings,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            model_dir: PathBuf::new(),
            threads: 1,
            beam_size: 5,
            speech: SpeechSettings::default(),
        }
    }
}

/// Why a transcript could not be made; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TranscribeError {
    #[error("this callrec was built without the speech engine; build with --features transcribe")]
    NotBuilt,
    #[error(
        "speech model folder {} does not exist; point --transcribe-model at a CTranslate2 Whisper \
         model folder holding {} (README, \"Transcripts\")",
        .0.display(), MODEL_FILES.join(", ")
    )]
    ModelMissing(PathBuf),
    #[error(
        "speech model folder {} is incomplete: {missing} missing (a CTranslate2 Whisper model \
         folder holds {}; a model shipped in parts needs model.bin.part1 and .part2 joined into \
         model.bin)",
        .dir.display(), MODEL_FILES.join(", ")
    )]
    ModelIncomplete { dir: PathBuf, missing: String },
    #[error("speech model in {} could not be loaded: {reason} (is it a CTranslate2 Whisper model, complete and readable?)", .dir.display())]
    ModelLoad { dir: PathBuf, reason: String },
    #[error("the speech model does not know the language {0:?}; use a two-letter Whisper language code such as \"de\" or \"en\"")]
    Language(String),
    #[error("audio at {0} Hz cannot be transcribed; give the recording's real sample rate (8000, 16000, 48000 ...)")]
    SampleRate(u32),
    #[error("resampling the audio to 16 kHz failed: {0}")]
    Resample(String),
    #[error("the speech model failed on this audio: {0}")]
    Model(String),
}

/// Checks that `dir` looks like a model folder before the (slow) load, so the
/// error names the folder and the files instead of a C++ exception text.
pub fn check_model_dir(dir: &Path) -> Result<(), TranscribeError> {
    if !dir.is_dir() {
        return Err(TranscribeError::ModelMissing(dir.to_path_buf()));
    }
    let missing: Vec<&str> = MODEL_FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(TranscribeError::ModelIncomplete {
            dir: dir.to_path_buf(),
            missing: missing.join(", "),
        });
    }
    Ok(())
}

/// A loaded speech model. `Send + Sync`: one engine can serve several worker
/// threads (the model's own thread pool runs one request at a time per replica).
pub struct Engine {
    settings: EngineSettings,
    #[cfg(feature = "transcribe")]
    backend: whisper::Backend,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Loads the model in `settings.model_dir`.
    pub fn load(settings: &EngineSettings) -> Result<Engine, TranscribeError> {
        #[cfg(feature = "transcribe")]
        {
            check_model_dir(&settings.model_dir)?;
            let backend = whisper::Backend::load(settings)?;
            Ok(Engine {
                settings: settings.clone(),
                backend,
            })
        }
        #[cfg(not(feature = "transcribe"))]
        {
            let _ = settings;
            Err(TranscribeError::NotBuilt)
        }
    }

    /// The settings the engine was loaded with (for the transcript's record).
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// The model's name: its folder's name (e.g. `whisper-base`).
    pub fn model_name(&self) -> String {
        self.settings
            .model_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Transcribes one party's mono audio at `sample_rate`, forcing `language`
    /// (a Whisper code such as "de"). Silence gives an empty list.
    pub fn transcribe(
        &self,
        samples: &[i16],
        sample_rate: u32,
        language: &str,
    ) -> Result<Vec<Segment>, TranscribeError> {
        let audio = to_16k(samples, sample_rate)?;
        let spans = speech_spans(&audio, &self.settings.speech);
        tracing::debug!(
            seconds = samples.len() as f64 / sample_rate.max(1) as f64,
            spans = spans.len(),
            "speech found"
        );
        #[cfg(feature = "transcribe")]
        {
            self.backend.transcribe(&audio, &spans, language)
        }
        #[cfg(not(feature = "transcribe"))]
        {
            let _ = (language, spans);
            Err(TranscribeError::NotBuilt)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Engine>();
    }

    #[test]
    fn a_missing_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("whisper-base");
        let err = check_model_dir(&gone).unwrap_err().to_string();
        assert!(err.contains(&gone.display().to_string()), "{err}");
        assert!(
            err.contains("model.bin, config.json, tokenizer.json"),
            "{err}"
        );
    }

    #[test]
    fn an_incomplete_folder_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        std::fs::write(dir.path().join("model.bin.part1"), "x").unwrap();
        let err = check_model_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("model.bin, tokenizer.json missing"), "{err}");
        assert!(err.contains("joined into model.bin"), "{err}");
    }

    #[cfg(not(feature = "transcribe"))]
    #[test]
    fn without_the_feature_load_says_how_to_build() {
        let err = Engine::load(&EngineSettings::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "this callrec was built without the speech engine; build with --features transcribe"
        );
    }
}
