//! What a staging folder tells a new start: each set staged for transcription
//! carries a job file next to its links, written before its queue row is sent.
//! A process that dies after staging but before the database writer commits
//! the row leaves a folder without a row; the next start queues it again from
//! that job file, unless the set was purged meanwhile (then its links go). A
//! transcript sealed into a staging folder before such an end is handed on
//! as it is instead of being made a second time.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::queue::Job;
use super::TRANSCRIPT_KIND;
use crate::db::Db;
use crate::seal::SealedSet;

/// The job file in a staging folder; no file of a set has this name (theirs
/// start with the set's base name), so it never reaches a target.
pub const JOB_FILE: &str = "job.json";

/// A job as its staging folder keeps it (the folder itself is where it lies).
#[derive(Serialize, Deserialize)]
struct JobFile {
    base_name: String,
    profile: Option<String>,
    language: String,
    targets: Vec<String>,
    queued_ms: i64,
}

/// Writes `job`'s job file into its folder (created). No fsync: the links
/// beside it have none either; after a power cut the recordings are searched.
pub(super) fn write_job(job: &Job) -> std::io::Result<()> {
    std::fs::create_dir_all(&job.folder)?;
    let file = JobFile {
        base_name: job.base_name.clone(),
        profile: job.profile.clone(),
        language: job.language.clone(),
        targets: job.targets.clone(),
        queued_ms: job.queued_ms,
    };
    let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    std::fs::write(job.folder.join(JOB_FILE), bytes)
}

/// The job kept in the staging folder `folder`, or what is wrong with it.
fn read_job(folder: &Path) -> Result<Job, String> {
    let path = folder.join(JOB_FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let f: JobFile = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a job file: {e}", path.display()))?;
    // The folder's name is the set's base name; a job naming another set is not trusted.
    let name = folder.file_name().unwrap_or_default().to_string_lossy();
    if f.base_name != name {
        return Err(format!(
            "{} names the set {:?}, not {name:?}",
            path.display(),
            f.base_name
        ));
    }
    Ok(Job {
        base_name: f.base_name,
        folder: folder.to_path_buf(),
        profile: f.profile,
        language: f.language,
        targets: f.targets,
        queued_ms: f.queued_ms,
    })
}

/// Staging folders below `staging` that have no queue row.
#[derive(Debug, Default)]
pub(super) struct Unqueued {
    /// Readable ones, oldest first: to be queued again.
    pub jobs: Vec<Job>,
    /// The rest: folder and what is wrong with it.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// Looks through `staging` (this instance's own folder) for sets that were
/// staged but whose queue row never reached the database.
pub(super) fn unqueued(db: &Db, staging: &Path) -> Unqueued {
    let mut found = Unqueued::default();
    let entries = match std::fs::read_dir(staging) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return found,
        Err(e) => {
            tracing::error!(folder = %staging.display(), "transcription: cannot look through the staging folder: {e}");
            return found;
        }
    };
    for entry in entries.filter_map(Result::ok) {
        let folder = entry.path();
        if !folder.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        match super::queue::has_row(db, &name) {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                // Without the database the folder cannot be told apart from a queued one.
                tracing::error!(set = %name, "transcription: cannot read the queue: {e}");
                continue;
            }
        }
        if purged(db, &folder, &name) {
            // Purged everywhere while it waited: its links must not outlive it.
            tracing::warn!(set = %name, "transcription: the set was purged; its staging links are deleted, not transcribed");
            if let Err(e) = std::fs::remove_dir_all(&folder) {
                tracing::error!(folder = %folder.display(), "transcription: cannot delete the staging links of a purged set: {e}");
            }
            continue;
        }
        match read_job(&folder) {
            Ok(job) => found.jobs.push(job),
            Err(e) => found.unreadable.push((folder, e)),
        }
    }
    found
        .jobs
        .sort_by(|a, b| (a.queued_ms, &a.base_name).cmp(&(b.queued_ms, &b.base_name)));
    found.unreadable.sort();
    found
}

/// Whether the set staged in `folder` was purged: a purge replaces the base
/// name in the database's rows by the set's id (from the set's metadata).
fn purged(db: &Db, folder: &Path, base: &str) -> bool {
    let Some(set_id) = std::fs::read(folder.join(format!("{base}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|m| crate::seal::position_of(&m).and_then(Result::ok))
        .map(|p| p.set_id)
    else {
        return false;
    };
    reduced(db, &set_id).unwrap_or_else(|e| {
        tracing::error!(set = %base, "transcription: cannot read the database: {e}");
        false
    })
}

/// Whether rows of a purged set carry `set_id` in place of its base name.
fn reduced(db: &Db, set_id: &str) -> Result<bool, crate::db::DbError> {
    db.read(|c| {
        Ok(!c
            .query(
                "SELECT base_name FROM seals WHERE base_name = ?1 \
                 UNION ALL SELECT base_name FROM recordings WHERE base_name = ?1 \
                 UNION ALL SELECT base_name FROM deletions WHERE base_name = ?1",
                &[&set_id],
            )?
            .is_empty())
    })
}

/// The transcript addendum of `base` already sealed in `folder` and intact
/// (a process that ended after sealing it, before its row said done), with
/// the transcript's text for the word index; `None` when there is none or
/// it does not verify (then it is made again).
pub(super) fn sealed_transcript(folder: &Path, base: &str) -> Option<(SealedSet, String)> {
    let ab = crate::seal::addendum_base(base, TRANSCRIPT_KIND);
    let sums = folder.join(format!("{ab}{}", crate::seal::CHECKSUM_SUFFIX));
    if !sums.is_file() {
        return None;
    }
    if let Some(p) = crate::seal::verify_set(&sums, None).first() {
        tracing::warn!(
            "an unfinished transcript in {} does not verify and is made again: {p}",
            folder.display()
        );
        return None;
    }
    let mut sealed = match crate::seal::sealed_on_disk(folder, &ab) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                "the transcript in {} cannot be read back and is made again: {e}",
                folder.display()
            );
            return None;
        }
    };
    // Its checksum file also lists the set's own one, which is not part of the addendum.
    sealed.files.retain(|f| {
        f.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&ab))
    });
    let json: serde_json::Value = std::fs::read(folder.join(format!("{ab}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())?;
    let text = json["segments"]
        .as_array()?
        .iter()
        .filter_map(|s| s["text"].as_str())
        .collect::<Vec<_>>()
        .join(" ");
    Some((sealed, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(folder: &Path) -> Job {
        Job {
            base_name: folder.file_name().unwrap().to_string_lossy().into_owned(),
            folder: folder.to_path_buf(),
            profile: Some("sales".into()),
            language: "de".into(),
            targets: vec!["file:///archive".into(), "s3://bucket/x".into()],
            queued_ms: 17,
        }
    }

    #[test]
    fn a_job_file_gives_back_the_job_and_only_for_its_own_folder() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("20260301_101502_in_1_2_ab");
        write_job(&job(&a)).unwrap();
        assert_eq!(read_job(&a).unwrap(), job(&a));

        // Copied into another set's folder: not trusted for that set.
        let b = dir.path().join("20260301_101503_in_1_2_cd");
        std::fs::create_dir_all(&b).unwrap();
        std::fs::copy(a.join(JOB_FILE), b.join(JOB_FILE)).unwrap();
        let e = read_job(&b).unwrap_err();
        assert!(
            e.contains("names the set \"20260301_101502_in_1_2_ab\""),
            "{e}"
        );

        let c = dir.path().join("20260301_101504_in_1_2_ef");
        std::fs::create_dir_all(&c).unwrap();
        assert!(read_job(&c).unwrap_err().starts_with("cannot read"));
    }

    #[test]
    fn a_purged_set_is_known_by_its_id_on_each_engine() {
        for engine in crate::db::scratch::ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let scratch = crate::db::scratch::ScratchDb::new(engine, dir.path());
            let db = scratch.open();
            let seal = |base: &str| crate::db::Record::Seal {
                base_name: base.into(),
                at_ms: 1,
                checksum_sha256: "0".repeat(64),
                files: 4,
                chain: None,
            };
            db.write_sync(vec![
                seal("20260301_101502_in_1_2_ab"),
                seal("20260301_101503_in_1_2_cd"),
                crate::db::Record::Reduce {
                    base_name: "20260301_101502_in_1_2_ab".into(),
                    set_id: "5e7a".into(),
                },
            ])
            .unwrap();
            assert!(reduced(&db, "5e7a").unwrap());
            assert!(!reduced(&db, "6f8b").unwrap());
        }
    }
}
