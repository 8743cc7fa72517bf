//! Finding a set for the console: its database row, a local copy (or one
//! fetched on demand from a target that confirmed it), and the result of
//! verifying it now against the instance certificate.

use std::path::PathBuf;
use std::sync::Arc;

use super::{blocking, sets, Console, Refusal};
use crate::db::RecordingRow;

fn internal(e: impl std::fmt::Display) -> Refusal {
    Refusal::Internal(e.to_string())
}

/// `incoming` or `outgoing`, from the call's recorded end.
pub(super) fn direction_of(db: &crate::db::Db, call_id: &str) -> Result<Option<String>, String> {
    db.read(|c| {
        use rusqlite::OptionalExtension;
        c.query_row(
            "SELECT direction FROM calls WHERE call_id = ?1 AND direction IS NOT NULL ORDER BY id LIMIT 1",
            [call_id],
            |r| r.get(0),
        )
        .optional()
    })
    .map_err(|e| e.to_string())
}

/// Targets that confirmed the set.
pub(super) fn stored_on(db: &crate::db::Db, base: &str) -> Result<Vec<String>, String> {
    Ok(db
        .uploads_of(base)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|u| u.state == crate::db::UploadState::Done)
        .map(|u| u.target)
        .collect())
}

/// The recording row of set `id`.
fn row_of(db: &crate::db::Db, id: &str) -> Result<Option<RecordingRow>, String> {
    db.read(|c| {
        use rusqlite::OptionalExtension;
        c.query_row(
            "SELECT call_id, base_name, profile, start_ms, end_ms, caller, callee, recovered, answered_by FROM recordings WHERE base_name = ?1 ORDER BY id DESC LIMIT 1",
            [id],
            |r| {
                Ok(RecordingRow {
                    call_id: r.get(0)?,
                    base_name: r.get(1)?,
                    profile: r.get(2)?,
                    start_ms: r.get(3)?,
                    end_ms: r.get(4)?,
                    caller: r.get(5)?,
                    callee: r.get(6)?,
                    recovered: r.get::<_, i64>(7)? != 0,
                    answered_by: r.get(8)?,
                })
            },
        )
        .optional()
    })
    .map_err(|e| e.to_string())
}

/// A known set: its row, checksum file and the problems found verifying it now.
pub(super) struct Found {
    pub row: RecordingRow,
    pub sha: Option<PathBuf>,
    pub problems: Vec<String>,
}

/// Looks up set `id` (refusing ids that are not base names) in the local
/// folders, else fetches it from a target that holds it, and verifies it
/// (`fresh`: now, not from the last minute's result; see `sets::VerifyCache`).
pub(super) async fn find(c: &Arc<Console>, id: &str, fresh: bool) -> Result<Found, Refusal> {
    if !sets::valid_id(id) {
        return Err(Refusal::NotFound);
    }
    let (c2, base) = (c.clone(), id.to_string());
    let (row, local) = blocking(move || {
        let row = row_of(&c2.db, &base).map_err(Refusal::Internal)?;
        let row = row.ok_or(Refusal::NotFound)?;
        Ok::<_, Refusal>((row, crate::archive::locate(&base, &c2.roots)))
    })
    .await??;
    let sha = match local {
        Some(sha) => Some(sha),
        None => fetch_remote(c, id).await?,
    };
    let (c2, sha2) = (c.clone(), sha.clone());
    let problems = blocking(move || match &sha2 {
        Some(sha) => c2.verified.verify(sha, &c2.cert_path, fresh),
        None => vec!["the set is in no local folder and no target could provide it".to_string()],
    })
    .await?;
    Ok(Found { row, sha, problems })
}

/// Fetches set `id` from the first target that confirmed it into the console's
/// fetch folder (kept until the next start); the caller verifies it before use.
async fn fetch_remote(c: &Arc<Console>, id: &str) -> Result<Option<PathBuf>, Refusal> {
    let sha_name = format!("{id}{}", crate::seal::CHECKSUM_SUFFIX);
    let folder = c.fetched.join(id);
    if folder.join(&sha_name).is_file() {
        return Ok(Some(folder.join(sha_name)));
    }
    let (db, base) = (c.db.clone(), id.to_string());
    let targets = blocking(move || stored_on(&db, &base))
        .await?
        .map_err(Refusal::Internal)?;
    for url in targets {
        let target = match crate::storage::open_target(&url, &c.secrets) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(set = %id, target_url = %url, error = %e, "console: cannot open the target to fetch the set");
                continue;
            }
        };
        std::fs::create_dir_all(&c.fetched).map_err(internal)?;
        let tmp = tempfile::tempdir_in(&c.fetched).map_err(internal)?;
        match target
            .fetch(&crate::storage::UploadSet::by_name(id), tmp.path())
            .await
        {
            Ok(files) if files.iter().any(|f| f.ends_with(&sha_name)) => {
                // Another request may have fetched it meanwhile; either copy will do.
                let kept = tmp.keep();
                if std::fs::rename(&kept, &folder).is_err() {
                    let _ = std::fs::remove_dir_all(&kept);
                }
                tracing::info!(set = %id, target_url = %url, files = files.len(), "console: set fetched from its target for playing");
                return Ok(Some(folder.join(&sha_name)));
            }
            Ok(_) => {
                tracing::warn!(set = %id, target_url = %url, "console: the target does not hold the set's checksum file")
            }
            Err(e) => {
                tracing::warn!(set = %id, target_url = %url, error = %e, "console: fetching the set failed")
            }
        }
    }
    Ok(None)
}
