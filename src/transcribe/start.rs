//! Starting the transcription workers for `callrec run`: only when a profile
//! has `transcribe = true`; a missing model is reported (log, failure metric,
//! mail) and leaves recording untouched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::service::{Deliver, Deps, Loader, TranscribeService, Transcriber};
use super::{check_model_dir, Engine, EngineSettings, TranscribeSettings};
use crate::config::RunConfig;
use crate::db::Db;
use crate::recorder::failure::FailureReporter;
use crate::seal::Identity;
use crate::spool::Spool;

/// The model folder, or why it cannot be used, in words that say what to do.
pub fn check_model(dir: Option<&Path>) -> Result<PathBuf, String> {
    let dir = dir.ok_or(
        "no speech model: give --transcribe-model DIR (env CALLREC_TRANSCRIBE_MODEL), a CTranslate2 Whisper model folder",
    )?;
    check_model_dir(dir).map_err(|e| e.to_string())?;
    Ok(dir.to_path_buf())
}

/// The workers, when any profile transcribes; `None` otherwise (no thread,
/// no queue row, no file).
pub fn start_for(
    cfg: &RunConfig,
    identity: Identity,
    db: Db,
    spool: Spool,
    failures: FailureReporter,
    roots: Vec<PathBuf>,
) -> Option<TranscribeService> {
    let languages: HashMap<String, String> = cfg
        .policy
        .profiles
        .iter()
        .filter(|p| p.transcribe)
        .map(|p| (p.name.clone(), p.language.clone()))
        .collect();
    if languages.is_empty() {
        return None;
    }
    let settings: TranscribeSettings = cfg.transcribe.clone();
    let model = settings
        .model_dir
        .as_ref()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let defaults = EngineSettings::default();
    let engine = serde_json::json!({
        "threads": settings.threads,
        "beam_size": defaults.beam_size,
        "nice": settings.nice,
        "jobs": settings.jobs,
    });
    let model_dir = settings.model_dir.clone();
    let threads = settings.threads;
    let loader: Loader = Arc::new(move || {
        let dir = check_model(model_dir.as_deref())?;
        let engine = Engine::load(&EngineSettings {
            model_dir: dir.clone(),
            threads,
            ..Default::default()
        })
        .map_err(|e| format!("cannot load the speech model from {}: {e}", dir.display()))?;
        Ok(Box::new(engine) as Box<dyn Transcriber>)
    });
    // Checked here too, so the start's log says it at once.
    if let Err(e) = check_model(settings.model_dir.as_deref()) {
        tracing::error!("transcription: {e}");
    }
    let deliver: Deliver = Arc::new(move |set, targets| {
        spool
            .enqueue(set, targets)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    tracing::info!(profiles = ?languages.keys().collect::<Vec<_>>(), jobs = settings.jobs, threads = settings.threads, nice = settings.nice, "transcription on");
    Some(TranscribeService::start(
        &settings,
        languages,
        loader,
        Deps {
            db,
            identity,
            failures,
            deliver,
            staging: cfg.data_dir.join(super::STAGING_FOLDER),
            roots,
            model,
            engine,
        },
    ))
}
