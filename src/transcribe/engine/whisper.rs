//! The Whisper model through CTranslate2 (crate ct2rs): loads the model with
//! int8 weights on the CPU and transcribes spans of speech one 30 s window at
//! a time, from our own log-mel features, with the language forced and a guard
//! against the decoder repeating itself.

use std::ops::Range;

use ct2rs::sys::{ComputeType, Config, StorageView, Whisper, WhisperOptions};
use ct2rs::tokenizers::hf::Tokenizer as HfTokenizer;
use ct2rs::Tokenizer as _;

use super::mel::{MelFrontEnd, FRAMES, WINDOW_SAMPLES};
use super::prepare::MODEL_RATE;
use super::{EngineSettings, Segment, TranscribeError};

/// Whisper's own rule for "nobody spoke here": a window the model thinks is
/// silent and whose text it is unsure of is dropped.
const NO_SPEECH_PROB: f32 = 0.6;
const LOW_LOGPROB: f32 = -1.0;

pub(super) struct Backend {
    whisper: Whisper,
    tokenizer: HfTokenizer,
    front: MelFrontEnd,
    n_mels: usize,
    options: WhisperOptions,
}

impl Backend {
    pub(super) fn load(settings: &EngineSettings) -> Result<Backend, TranscribeError> {
        let dir = &settings.model_dir;
        let load_err = |e: &dyn std::fmt::Display| TranscribeError::ModelLoad {
            dir: dir.clone(),
            reason: e.to_string(),
        };
        let config = Config {
            compute_type: ComputeType::INT8,
            num_threads_per_replica: settings.threads.max(1),
            ..Config::default()
        };
        let whisper = Whisper::new(dir, config).map_err(|e| load_err(&e))?;
        let tokenizer = HfTokenizer::new(dir).map_err(|e| load_err(&e))?;
        let n_mels = whisper.n_mels();
        let options = WhisperOptions {
            beam_size: settings.beam_size.max(1),
            // Telephone audio makes the decoder loop ("die Möchte, die Möchte, ...").
            repetition_penalty: 1.1,
            no_repeat_ngram_size: 4,
            max_length: 224,
            return_scores: true,
            return_no_speech_prob: true,
            ..WhisperOptions::default()
        };
        Ok(Backend {
            whisper,
            tokenizer,
            front: MelFrontEnd::new(n_mels),
            n_mels,
            options,
        })
    }

    pub(super) fn transcribe(
        &self,
        audio: &[f32],
        spans: &[Range<usize>],
        language: &str,
    ) -> Result<Vec<Segment>, TranscribeError> {
        let lang_token = format!("<|{}|>", language.trim().to_ascii_lowercase());
        if language.trim().is_empty() || self.tokenizer.token_to_id(&lang_token).is_none() {
            return Err(TranscribeError::Language(language.to_string()));
        }
        let prompt = vec![
            "<|startoftranscript|>",
            lang_token.as_str(),
            "<|transcribe|>",
            "<|notimestamps|>",
        ];
        let mut segments = Vec::new();
        for span in spans {
            let piece = &audio[span.start..span.end.min(span.start + WINDOW_SAMPLES)];
            let mut features = self.front.features(piece);
            let view =
                StorageView::new(&[1, self.n_mels, FRAMES], &mut features, Default::default())
                    .map_err(|e| TranscribeError::Model(e.to_string()))?;
            let result = self
                .whisper
                .generate(&view, std::slice::from_ref(&prompt), &self.options)
                .map_err(|e| TranscribeError::Model(e.to_string()))?;
            let Some(best) = result.into_iter().next() else {
                continue;
            };
            let score = best.scores.first().copied().unwrap_or(0.0);
            if best.no_speech_prob > NO_SPEECH_PROB && score < LOW_LOGPROB {
                tracing::debug!(
                    no_speech = best.no_speech_prob,
                    score,
                    "window dropped as silent"
                );
                continue;
            }
            let tokens: Vec<String> = best
                .sequences
                .into_iter()
                .next()
                .unwrap_or_default()
                .into_iter()
                .filter(|t| !(t.starts_with("<|") && t.ends_with("|>")))
                .collect();
            let text = self
                .tokenizer
                .decode(tokens)
                .map_err(|e| TranscribeError::Model(e.to_string()))?;
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let ms = |s: usize| s as u64 * 1000 / MODEL_RATE as u64;
            segments.push(Segment {
                start_ms: ms(span.start),
                end_ms: ms(span.end),
                text: text.to_string(),
            });
        }
        Ok(segments)
    }
}
