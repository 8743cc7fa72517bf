//! Placeholder of the speech engine's interface until the engine lands: the
//! types the rest of the module is written against; `Engine::load` always
//! fails, as a build without the speech engine does.

use std::path::PathBuf;

/// A stretch of recognised speech, times relative to the samples given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Start in ms.
    pub start_ms: u64,
    /// End in ms.
    pub end_ms: u64,
    /// The words.
    pub text: String,
}

/// Where the model is and how much CPU the engine may use.
#[derive(Debug, Clone, Default)]
pub struct EngineSettings {
    /// CTranslate2 Whisper model folder.
    pub model_dir: PathBuf,
    /// Threads per transcription.
    pub threads: usize,
}

/// Why the engine could not load or transcribe.
#[derive(Debug, thiserror::Error)]
pub enum TranscribeError {
    /// The build has no speech engine.
    #[error("this callrec was built without the speech engine; build with --features transcribe")]
    NotBuilt,
}

/// The speech engine.
#[derive(Debug)]
pub struct Engine;

impl Engine {
    /// Loads the model.
    pub fn load(_settings: &EngineSettings) -> Result<Engine, TranscribeError> {
        Err(TranscribeError::NotBuilt)
    }

    /// Transcribes mono samples of one party.
    pub fn transcribe(
        &self,
        _samples: &[i16],
        _sample_rate: u32,
        _language: &str,
    ) -> Result<Vec<Segment>, TranscribeError> {
        Err(TranscribeError::NotBuilt)
    }
}
