//! Retention: deleting sets past their period from every place that holds
//! them (local folders and storage targets), leaving a signed tombstone in
//! each place, on request or daily per profile.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::tombstones::{reduce, stage_tombstone, tombstone_for, TombstoneSigner};
use super::{io, locate, set_files, ArchiveError};
use crate::db::{Db, Record};
use crate::policy::{parse_age, NumberPlan, PolicyConfig};
use crate::storage::{open_target, Secrets, UploadSet};

/// What a purge did (or would do, with `dry_run`).
#[derive(Debug, Default)]
pub struct PurgeReport {
    /// One entry per set and place deleted (or to delete): a local folder, or a
    /// target URL (as a path) for sets deleted on a storage target.
    pub deleted: Vec<(String, PathBuf)>,
    /// Sets past the period that no target holds and no local folder has.
    pub not_found: Vec<String>,
    /// Deletions that failed: (set, target, error); retried at the next purge.
    pub failed: Vec<(String, String, String)>,
    /// Sets past the period kept by a legal hold: (set, the hold's reason).
    pub held: Vec<(String, String)>,
}

impl PurgeReport {
    /// Number of distinct sets deleted (or to delete) somewhere.
    pub fn sets(&self) -> usize {
        self.deleted
            .iter()
            .map(|(b, _)| b)
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    /// One printable line per deletion, miss and failure; `verb` is e.g. "deleted".
    pub fn lines(&self, verb: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .deleted
            .iter()
            .map(|(b, at)| format!("{verb} {b} in {}", at.display()))
            .collect();
        out.extend(self.not_found.iter().map(|b| format!("not found: {b}")));
        out.extend(
            self.held
                .iter()
                .map(|(b, why)| format!("held, not deleted: {b} ({why})")),
        );
        out.extend(
            self.failed
                .iter()
                .map(|(b, t, e)| format!("FAILED {b} on {t}: {e}")),
        );
        out
    }
}

/// What to purge: sets that started more than `older_than` ago, of one profile or all.
#[derive(Debug, Clone)]
pub struct PurgeRequest {
    /// The retention period.
    pub older_than: Duration,
    /// Only report what would be deleted.
    pub dry_run: bool,
    /// Why, as documented with each deletion (e.g. "retention 5y").
    pub reason: String,
    /// Only sets recorded by this profile; `None` for every set.
    pub profile: Option<String>,
    /// Signs the tombstone left in each deleted set's place; without it (or for
    /// sets of the older format, which have no chain position) none is left.
    pub tombstones: Option<TombstoneSigner>,
    /// The dialling plan, to match legal holds on numbers in any spelling.
    pub plan: NumberPlan,
    /// The transcription queue's staging folder (`<data dir>/transcribe`):
    /// a purged set's links there go with it, so no copy of its audio
    /// outlives the purge while it waits for a transcript.
    pub transcript_staging: Option<PathBuf>,
}

/// Runs blocking database or file work off the async runtime's worker threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ArchiveError> + Send + 'static,
) -> Result<T, ArchiveError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ArchiveError::Task(e.to_string()))?
}

/// Deletes every set past the period from every target the database says holds
/// it (upload rows in state `done`), recording one deletion per target with the
/// set, target, time, reason and the SHA-256 of the checksum file; a set no target
/// row names (older databases) is looked for in the local folders `roots`. A failed
/// deletion is logged, kept as an error and reported; the next purge tries again.
pub async fn purge_everywhere(
    db: &Db,
    roots: &[PathBuf],
    secrets: &Secrets,
    request: &PurgeRequest,
) -> Result<PurgeReport, ArchiveError> {
    // Instances sharing the database never purge at once: the lock is held
    // until this purge returns (a dry run deletes nothing and needs none).
    let _lock = if request.dry_run {
        None
    } else {
        let db = db.clone();
        let lock = blocking(move || Ok(db.try_lock(crate::db::LockName::Purge)?)).await?;
        Some(lock.ok_or(ArchiveError::Busy)?)
    };
    let cutoff = crate::db::now_ms() - request.older_than.as_millis() as i64;
    let mut report = PurgeReport::default();
    let (expired, holds) = {
        let db = db.clone();
        blocking(move || Ok((db.recordings(0, cutoff)?, crate::hold::list(&db)?))).await?
    };
    for r in expired {
        if request
            .profile
            .as_ref()
            .is_some_and(|p| r.profile.as_ref() != Some(p))
        {
            continue;
        }
        let base = r.base_name.clone();
        let (uploads, checksum, earlier, position, transcript) = {
            let (db, base) = (db.clone(), base.clone());
            blocking(move || {
                Ok((
                    db.uploads_of(&base)?,
                    db.seal_checksum(&base)?,
                    db.deletions_of(&base)?,
                    db.seal_position(&base)?,
                    crate::transcribe::queue::addendum_checksum(&db, &base)?,
                ))
            })
            .await?
        };
        // The transcript goes with the set; its tombstone names it.
        let addenda: Vec<String> = transcript
            .into_iter()
            .map(|sha| {
                let name = crate::seal::addendum_base(&base, crate::transcribe::TRANSCRIPT_KIND);
                format!("{sha}  {name}.sha256")
            })
            .collect();
        let set_id = position.as_ref().map(|p| p.set_id.clone());
        if let Some(h) = crate::hold::holding(&holds, &r, set_id.as_deref(), &request.plan) {
            let why = format!(
                "legal hold on {} {}: {}",
                h.kind.as_str(),
                h.value,
                h.reason
            );
            tracing::info!(set = %base, "retention skipped: {why}");
            if !request.dry_run {
                crate::access_log::record(
                    db,
                    crate::access_log::AccessEntry::now(
                        "retention",
                        crate::access_log::AccessAction::Hold,
                        base.clone(),
                        Some(format!("retention skipped ({}): {why}", request.reason)),
                    ),
                );
            }
            report.held.push((base.clone(), why));
            continue;
        }
        if let (Some(staging), false) = (&request.transcript_staging, request.dry_run) {
            let links = staging.join(&base);
            if links.is_dir() {
                let done =
                    blocking(move || std::fs::remove_dir_all(&links).map_err(io("delete", &links)))
                        .await;
                if let Err(e) = done {
                    tracing::error!(set = %base, "retention: {e}; the links go at the next purge or start");
                    report.failed.push((
                        base.clone(),
                        "transcription staging".into(),
                        e.to_string(),
                    ));
                }
            }
        }
        // What names the set once its rows are reduced.
        let reduced_id = set_id.clone().or_else(|| {
            checksum
                .as_ref()
                .map(|c| format!("purged-{}", c.get(..32).unwrap_or(c)))
        });
        let tombstone = tombstone_for(request, position, checksum.as_deref(), addenda);
        let held: Vec<String> = uploads
            .into_iter()
            .filter(|u| u.state == crate::db::UploadState::Done)
            .map(|u| u.target)
            .collect();
        if held.is_empty() {
            if !earlier.is_empty() {
                continue; // Purged before; nothing left to do.
            }
            let deleted_before = report.deleted.len();
            purge_local(db, roots, request, &base, checksum, tombstone, &mut report).await?;
            if report.deleted.len() > deleted_before {
                reduce(db, request, &base, reduced_id.as_deref());
            }
            continue;
        }
        let staged = match (&tombstone, &request.tombstones, request.dry_run) {
            (Some(t), Some(signer), false) => {
                let (t, signer, b) = (t.clone(), signer.clone(), base.clone());
                Some(blocking(move || stage_tombstone(&signer, &b, &t)).await?)
            }
            _ => {
                if !request.dry_run {
                    tracing::warn!(set = %base, "deleted without a tombstone: no signing identity, or the set has no chain position (older format)");
                }
                None
            }
        };
        for url in held {
            if request.dry_run {
                report.deleted.push((base.clone(), PathBuf::from(&url)));
                continue;
            }
            // The tombstone goes up first: a set is never gone without its record.
            let result = async {
                let t = open_target(&url, secrets)?;
                if let Some(files) = &staged {
                    t.put(&UploadSet::new(&base, files.clone())).await?;
                }
                t.delete(&UploadSet::by_name(&base)).await
            }
            .await;
            match result {
                Ok(()) => {
                    db.send(Record::Deletion {
                        base_name: base.clone(),
                        target: url.clone(),
                        at_ms: crate::db::now_ms(),
                        reason: request.reason.clone(),
                        checksum_sha256: checksum.clone(),
                    });
                    tracing::info!(set = %base, target_url = %url, "deleted: {}", request.reason);
                    report.deleted.push((base.clone(), PathBuf::from(&url)));
                }
                Err(e) => {
                    let message = format!("retention: deleting set {base} from {url} failed: {e}");
                    tracing::warn!("{message}");
                    db.send(Record::Error {
                        at_ms: crate::db::now_ms(),
                        component: "retention".into(),
                        message,
                    });
                    report.failed.push((base.clone(), url, e.to_string()));
                }
            }
        }
        if !report.failed.iter().any(|(b, _, _)| *b == base) {
            reduce(db, request, &base, reduced_id.as_deref());
        }
        if let (Some(files), Some(dir)) = (&staged, staged.as_ref().and_then(|f| f.first())) {
            let dir = dir.parent().map(Path::to_path_buf);
            for f in files {
                let _ = std::fs::remove_file(f);
            }
            if let Some(d) = dir {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
    let db = db.clone();
    blocking(move || {
        db.flush();
        Ok(())
    })
    .await?;
    Ok(report)
}

/// Deletes a set that no target row names from the local folder that has it,
/// leaving its tombstone there.
async fn purge_local(
    db: &Db,
    roots: &[PathBuf],
    request: &PurgeRequest,
    base: &str,
    checksum: Option<String>,
    tombstone: Option<crate::seal::Tombstone>,
    report: &mut PurgeReport,
) -> Result<(), ArchiveError> {
    let (roots, b) = (roots.to_vec(), base.to_string());
    let Some(sha) = blocking(move || Ok(locate(&b, &roots))).await? else {
        report.not_found.push(base.to_string());
        return Ok(());
    };
    let folder = sha.parent().unwrap_or(Path::new(".")).to_path_buf();
    if !request.dry_run {
        let sha_file = sha.clone();
        let signer = request.tombstones.clone();
        let (b, dir) = (base.to_string(), folder.clone());
        let (checksum, files) = blocking(move || {
            if let (Some(t), Some(signer)) = (&tombstone, &signer) {
                crate::seal::write_tombstone(&signer.identity, &dir, &b, t)
                    .map_err(|e| ArchiveError::Tombstone(e.to_string()))?;
            }
            let checksum = checksum.or_else(|| {
                std::fs::read(&sha_file)
                    .ok()
                    .map(|b| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&b)))
            });
            let files = set_files(&sha_file)?;
            for f in &files {
                std::fs::remove_file(f).map_err(io("delete", f))?;
            }
            Ok((checksum, files))
        })
        .await?;
        db.send(Record::Deletion {
            base_name: base.to_string(),
            target: format!("file://{}", folder.display()),
            at_ms: crate::db::now_ms(),
            reason: request.reason.clone(),
            checksum_sha256: checksum,
        });
        tracing::info!(set = %base, folder = %folder.display(), files = files.len(), "deleted: {}", request.reason);
    }
    report.deleted.push((base.to_string(), folder));
    Ok(())
}

/// Applies every profile's retention period (its `retention` key) to the sets it
/// recorded, on every target holding them; one report per profile with a period.
pub async fn purge_profiles(
    db: &Db,
    roots: &[PathBuf],
    secrets: &Secrets,
    policy: &PolicyConfig,
    tombstones: Option<&TombstoneSigner>,
    transcript_staging: Option<&Path>,
) -> Result<Vec<(String, PurgeReport)>, ArchiveError> {
    let mut out = Vec::new();
    for (profile, period) in &policy.retention {
        let request = PurgeRequest {
            older_than: parse_age(period)?,
            dry_run: false,
            reason: format!("retention {period} (profile {profile})"),
            profile: Some(profile.clone()),
            tombstones: tombstones.cloned(),
            plan: policy.numbers.clone(),
            transcript_staging: transcript_staging.map(Path::to_path_buf),
        };
        let report = purge_everywhere(db, roots, secrets, &request).await?;
        if !report.deleted.is_empty() || !report.failed.is_empty() {
            tracing::info!(
                profile = %profile,
                deleted = report.deleted.len(),
                failed = report.failed.len(),
                "retention: purge done"
            );
        }
        out.push((profile.clone(), report));
    }
    Ok(out)
}

/// The daily retention of `callrec run`: [`purge_profiles`] now and then every 24 h,
/// for as long as the task runs; errors are logged and kept, never fatal.
pub async fn retention_daily(
    db: Db,
    roots: Vec<PathBuf>,
    secrets: Secrets,
    policy: PolicyConfig,
    tombstones: Option<TombstoneSigner>,
    transcript_staging: Option<PathBuf>,
) {
    if policy.retention.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(24 * 3600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let done = purge_profiles(
            &db,
            &roots,
            &secrets,
            &policy,
            tombstones.as_ref(),
            transcript_staging.as_deref(),
        )
        .await;
        if let Err(ArchiveError::Busy) = done {
            tracing::info!("retention: another instance is purging the shared database now; this one purges again tomorrow");
        } else if let Err(e) = done {
            tracing::error!(error = %e, "retention: daily purge failed; it runs again tomorrow");
            db.send(Record::Error {
                at_ms: crate::db::now_ms(),
                component: "retention".into(),
                message: e.to_string(),
            });
        }
    }
}
