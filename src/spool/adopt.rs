//! Taking over the pending uploads of an instance that is gone for good
//! (`callrec spool adopt`): its data directory is made reachable, its pending
//! sets are verified, moved into this instance's spool and their upload rows
//! in the shared database become this instance's; a running spool is asked to
//! retry at once. Refused while the other instance runs (it holds its lock).
//! A set that does not verify (half written, altered) stays where it is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::recovery::{read_marker, rows_from_marker, set_folders};
use super::{io, queue_err, sync_dir, SpoolError, INCOMING_PREFIX, RETRY_TRIGGER};
use crate::db::{Db, Record, UploadState};
use crate::instance::{lock_state, InstanceLock, LockState};

/// Prefix of a set's folder in the adopting spool while it is being copied in.
const ADOPTING_PREFIX: &str = ".adopting-";

/// Why an adoption was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// The folder is not the data directory of that instance.
    #[error("{dir} is not the data directory of instance {instance:?}: {why}")]
    WrongFolder {
        /// The folder given.
        dir: PathBuf,
        /// The instance named.
        instance: String,
        /// What is wrong.
        why: String,
    },
    /// The other instance still runs there.
    #[error("instance {instance:?} still runs on {dir} (it holds {lock}); stop it first: only the pending uploads of an instance that is gone are adopted", lock = crate::instance::LOCK_FILE)]
    StillRunning {
        /// The folder given.
        dir: PathBuf,
        /// The instance named.
        instance: String,
    },
    /// The lock could not be read or taken.
    #[error("{0}")]
    Instance(#[from] crate::instance::InstanceError),
    /// The spool or the database failed.
    #[error("{0}")]
    Spool(#[from] SpoolError),
}

/// What an adoption did.
#[derive(Debug, Default)]
pub struct AdoptReport {
    /// Sets moved into this spool, with the targets they wait for.
    pub adopted: BTreeMap<String, Vec<String>>,
    /// Sets left where they are, with the reason (nothing was changed for them).
    pub left: Vec<(String, String)>,
}

/// Moves the pending sets of instance `from_name`, whose data directory is
/// `from_dir`, into `spool_dir` (this instance's spool) and makes their
/// pending upload rows in `db` (shared, opened as this instance) this
/// instance's. Sets already delivered are not touched, so nothing is uploaded twice.
pub fn adopt(
    from_dir: &Path,
    from_name: &str,
    spool_dir: &Path,
    db: &Db,
) -> Result<AdoptReport, AdoptError> {
    let wrong = |why: String| AdoptError::WrongFolder {
        dir: from_dir.to_path_buf(),
        instance: from_name.to_string(),
        why,
    };
    if from_name == db.instance() {
        return Err(wrong(format!(
            "{from_name:?} is this instance's own name; give the name of the gone instance"
        )));
    }
    match lock_state(from_dir)? {
        LockState::Absent => {
            return Err(wrong(format!(
                "it has no {} (no instance ever ran with it)",
                crate::instance::LOCK_FILE
            )))
        }
        LockState::Held(_) => {
            return Err(AdoptError::StillRunning {
                dir: from_dir.to_path_buf(),
                instance: from_name.to_string(),
            })
        }
        LockState::Free(name) if name != from_name => {
            return Err(wrong(format!("it belongs to instance {name:?}")))
        }
        LockState::Free(_) => {}
    }
    let from_spool = from_dir.join("spool");
    if !from_spool.is_dir() {
        return Err(wrong("it has no spool folder".into()));
    }
    if same_folder(&from_spool, spool_dir) {
        return Err(wrong("it is this instance's own data directory".into()));
    }
    // Held while adopting: the gone instance must not come back half-way.
    let _held = InstanceLock::acquire(from_dir, from_name)?;
    std::fs::create_dir_all(spool_dir).map_err(io("create", spool_dir))?;
    let cert = from_dir.join(crate::seal::CERT_FILE_NAME);
    let mut pending: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut known = std::collections::HashSet::new();
    for r in db.uploads().map_err(queue_err("*"))? {
        if r.instance.as_deref() == Some(from_name) {
            known.insert(r.base_name.clone());
            if r.state == UploadState::Pending {
                pending.entry(r.base_name).or_default().push(r.target);
            }
        }
    }
    let mut report = AdoptReport::default();
    let folders = set_folders(&from_spool)?;
    for base in &folders {
        // A folder the database has no row for entered the spool just before a
        // crash; its entry marker names its targets.
        let orphan = !known.contains(base) && !pending.contains_key(base);
        if orphan {
            if let Ok(m) = read_marker(&from_spool.join(base)) {
                pending.insert(base.clone(), m.targets);
            }
        }
    }
    for (base, targets) in &pending {
        let src = from_spool.join(base);
        if !src.is_dir() {
            report.left.push((
                base.clone(),
                format!(
                    "pending for {} but not in {}",
                    targets.join(", "),
                    from_spool.display()
                ),
            ));
            continue;
        }
        if let Err(why) = complete(&src, base, &cert) {
            report.left.push((base.clone(), why));
            continue;
        }
        let dest = spool_dir.join(base);
        if !dest.is_dir() {
            let staging = spool_dir.join(format!("{ADOPTING_PREFIX}{base}"));
            let _ = std::fs::remove_dir_all(&staging);
            copy_set(&src, &staging)?;
            std::fs::rename(&staging, &dest).map_err(io("rename", &dest))?;
            sync_dir(spool_dir);
        }
        if known.contains(base) {
            db.write_sync(vec![Record::UploadAdopted {
                base_name: base.clone(),
                from: from_name.to_string(),
            }])
            .map_err(queue_err(base))?;
        } else {
            rows_from_marker(spool_dir, base, db)?;
        }
        // Only now, with the copy and its rows committed, does the original go.
        std::fs::remove_dir_all(&src).map_err(io("remove", &src))?;
        report.adopted.insert(base.clone(), targets.clone());
    }
    for e in std::fs::read_dir(&from_spool)
        .map_err(io("list", &from_spool))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(base) = name.strip_prefix(INCOMING_PREFIX) {
            report.left.push((
                base.to_string(),
                "its entry into the spool was interrupted; its sealed files are still in the gone instance's work folder, where its own start would spool them".into(),
            ));
        }
    }
    if !report.adopted.is_empty() {
        // A running spool here takes the sets at once; a stopped one at its start.
        let _ = std::fs::write(spool_dir.join(RETRY_TRIGGER), b"retry\n");
    }
    Ok(report)
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Whether the set in `folder` is whole: its entry marker's files are all
/// there and it verifies (checksums and signature) against the gone
/// instance's certificate `cert`.
fn complete(folder: &Path, base: &str, cert: &Path) -> Result<(), String> {
    let marker = read_marker(folder).map_err(|e| format!("half-written: {e}"))?;
    for f in &marker.files {
        if !folder.join(f).is_file() {
            return Err(format!("half-written: {f} is missing"));
        }
    }
    let sums = folder.join(format!("{base}{}", crate::seal::CHECKSUM_SUFFIX));
    let problems = crate::seal::verify_set(&sums, Some(cert));
    if problems.is_empty() {
        Ok(())
    } else {
        let p: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        Err(format!("does not verify: {}", p.join("; ")))
    }
}

/// Copies the files of a set folder into `to`, each synced before the rename.
fn copy_set(from: &Path, to: &Path) -> Result<(), SpoolError> {
    std::fs::create_dir_all(to).map_err(io("create", to))?;
    for e in std::fs::read_dir(from).map_err(io("list", from))?.flatten() {
        let src = e.path();
        if !src.is_file() {
            continue;
        }
        let dest = to.join(e.file_name());
        std::fs::copy(&src, &dest).map_err(io("copy", &src))?;
        std::fs::File::open(&dest)
            .and_then(|f| f.sync_all())
            .map_err(io("fsync", &dest))?;
    }
    sync_dir(to);
    Ok(())
}
