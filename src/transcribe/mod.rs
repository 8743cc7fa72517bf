//! Transcripts of sealed sets, made on the box (no cloud service). `engine`
//! turns one party's audio into time-stamped text (resampling, voice activity
//! detection, the Whisper model behind the cargo feature `transcribe`); around
//! it, a background queue (rows in
//! the protocol database, so it survives restarts) hands each sealed set of a
//! profile with `transcribe = true` to a few low-priority worker threads, which
//! read each party's channel, run the speech engine, write
//! `<base>_transcript.json` and `.txt`, seal them as an addendum to the set
//! and hand that to the spool; the words go into a search index. Nothing here
//! runs on the call path or delays sealing and upload of the audio.

pub mod channels;
pub mod document;
mod engine;
pub mod queue;
pub mod search;
pub mod service;
mod staged;
pub mod start;

pub use engine::{
    check_model_dir, Engine, EngineSettings, Segment, SpeechSettings, TranscribeError, MODEL_FILES,
};

/// Kind of the transcript addendum: its files are `<base>_transcript.*`.
pub const TRANSCRIPT_KIND: &str = "transcript";
/// Folder below the data dir where each queued set waits as links to its files.
pub const STAGING_FOLDER: &str = "transcribe";
/// Suffix of the readable transcript after the addendum's base name.
pub const TRANSCRIPT_TXT_SUFFIX: &str = ".txt";

/// The CPU budget and model of the transcription workers (`callrec run` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscribeSettings {
    /// CTranslate2 Whisper model folder (`--transcribe-model`).
    pub model_dir: Option<std::path::PathBuf>,
    /// Threads the engine may use per transcription.
    pub threads: usize,
    /// Nice level of the worker threads (0 = as the proxy, 19 = lowest).
    pub nice: i32,
    /// At most this many sets are transcribed at a time (one worker thread each).
    pub jobs: usize,
}

impl Default for TranscribeSettings {
    fn default() -> Self {
        TranscribeSettings {
            model_dir: None,
            threads: 1,
            nice: 10,
            jobs: 1,
        }
    }
}
