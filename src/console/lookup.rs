//! Finding a set for the console: its database row, a local copy (or one
//! fetched on demand from a target that confirmed it), and the result of
//! verifying it now against the instance certificate.

use std::path::PathBuf;
use std::sync::Arc;

use super::{blocking, fetch_cache, sets, Console, Refusal};
use crate::db::RecordingRow;

fn internal(e: impl std::fmt::Display) -> Refusal {
    Refusal::Internal(e.to_string())
}

/// `incoming` or `outgoing`, from the call's recorded end.
pub(super) fn direction_of(db: &crate::db::Db, call_id: &str) -> Result<Option<String>, String> {
    db.read(|c| {
        c.query_opt(
            "SELECT direction FROM calls WHERE call_id = ?1 AND direction IS NOT NULL ORDER BY id LIMIT 1",
            &[&call_id],
        )?
        .map(|r| r.get(0))
        .transpose()
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
    db.recording(id).map_err(|e| e.to_string())
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
/// fetch folder (kept until the next start or until room is needed, see
/// `fetch_cache`); the caller verifies it before use.
async fn fetch_remote(c: &Arc<Console>, id: &str) -> Result<Option<PathBuf>, Refusal> {
    let sha_name = format!("{id}{}", crate::seal::CHECKSUM_SUFFIX);
    let folder = c.fetched.join(id);
    if c.fetch_cache.touch(id) && folder.join(&sha_name).is_file() {
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
        let ticket = c.fetch_cache.begin();
        let got = bounded_fetch(c, ticket, target.as_ref(), id, tmp.path()).await;
        match got {
            Ok(files) if files.iter().any(|f| f.ends_with(&sha_name)) => {
                let size = fetch_cache::folder_size(tmp.path());
                // Another request may have fetched it meanwhile; either copy will do.
                let kept = tmp.keep();
                if std::fs::rename(&kept, &folder).is_err() {
                    let _ = std::fs::remove_dir_all(&kept);
                }
                c.fetch_cache.end(ticket, Some((id, size)));
                tracing::info!(set = %id, target_url = %url, files = files.len(), bytes = size, "console: set fetched from its target for playing");
                return Ok(Some(folder.join(&sha_name)));
            }
            Ok(_) => {
                c.fetch_cache.end(ticket, None);
                tracing::warn!(set = %id, target_url = %url, "console: the target does not hold the set's checksum file")
            }
            Err(FetchFailed::Full(full)) => {
                c.fetch_cache.end(ticket, None);
                drop(tmp);
                tracing::warn!(set = %id, target_url = %url, "console: fetch stopped: {full}");
                return Err(Refusal::TooLarge(format!("Not fetched: {full}.")));
            }
            Err(FetchFailed::Target(e)) => {
                c.fetch_cache.end(ticket, None);
                tracing::warn!(set = %id, target_url = %url, error = %e, "console: fetching the set failed")
            }
        }
    }
    Ok(None)
}

/// Why a bounded fetch gave nothing.
enum FetchFailed {
    Full(fetch_cache::Full),
    Target(crate::storage::TargetError),
}

/// How often a running fetch's folder is measured against the limit.
const MEASURE_EVERY: std::time::Duration = std::time::Duration::from_millis(5);

/// Runs the target's fetch into `into`, measuring the folder while it grows:
/// least recently used sets make room, and the fetch is stopped (dropped)
/// as soon as it needs more than the fetch folder may hold.
async fn bounded_fetch(
    c: &Console,
    ticket: u64,
    target: &dyn crate::storage::Target,
    id: &str,
    into: &std::path::Path,
) -> Result<Vec<PathBuf>, FetchFailed> {
    let set = crate::storage::UploadSet::by_name(id);
    let fetch = target.fetch(&set, into);
    tokio::pin!(fetch);
    let mut tick = tokio::time::interval(MEASURE_EVERY);
    loop {
        tokio::select! {
            r = &mut fetch => {
                let r = r.map_err(FetchFailed::Target)?;
                c.fetch_cache
                    .grow(ticket, fetch_cache::folder_size(into))
                    .map_err(FetchFailed::Full)?;
                return Ok(r);
            }
            _ = tick.tick() => {
                c.fetch_cache
                    .grow(ticket, fetch_cache::folder_size(into))
                    .map_err(FetchFailed::Full)?;
            }
        }
    }
}
