//! Offline transcripts of sealed recordings. `engine` turns one party's audio
//! into time-stamped text on this box (no cloud service): resampling, voice
//! activity detection and the Whisper model behind the cargo feature
//! `transcribe`.

mod engine;

pub use engine::{
    check_model_dir, Engine, EngineSettings, Segment, SpeechSettings, TranscribeError, MODEL_FILES,
};
