//! The archive of sealed sets for the people who answer to auditors and
//! clients: search recordings by party number and time (from the protocol
//! database), export one client's sets with everything needed to verify them,
//! and delete sets past the retention period, documenting each deletion.
//! Search and export find sets in local folders: the default recordings
//! folder and every `file://` target. Retention deletes a set from every storage
//! target the database says holds it (upload rows in state `done`, see
//! [`purge_everywhere`]), per profile and daily with [`retention_daily`], and
//! leaves a signed tombstone in the set's place on each of them (see
//! `seal::Tombstone`), so that `verify --chain` tells the deletion from a loss.

use std::path::{Path, PathBuf};

use crate::db::{Db, RecordingRow};
pub use crate::policy::parse_age;
use crate::policy::NumberPlan;

mod purge;
mod tombstones;

/// Local time of a millisecond timestamp, for people (search results, the
/// console, `hold list`).
pub fn local_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
}
pub use purge::{purge_everywhere, purge_profiles, retention_daily, PurgeReport, PurgeRequest};
pub use tombstones::TombstoneSigner;

/// What went wrong in an archive operation.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The database could not be read.
    #[error("{0}")]
    Db(#[from] crate::db::DbError),
    /// A file operation failed.
    #[error("{what} {path}: {source}; check permissions and free space")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A background task of the purge failed.
    #[error("purge: a background task failed: {0}; see the log")]
    Task(String),
    /// A tombstone could not be written; the set was not deleted.
    #[error("cannot write the tombstone: {0}; the set was not deleted")]
    Tombstone(String),
    /// A duration like `5y` could not be read.
    #[error(transparent)]
    Age(#[from] crate::policy::AgeError),
    /// Another instance (or `callrec purge`) sharing the database is purging now.
    #[error("another callrec instance or `callrec purge` sharing this protocol database is purging now; nothing was deleted, try again when it is done")]
    Busy,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Recordings in `[from_ms, to_ms]` where `number` is the caller, the callee or
/// the party who answered for the callee (an agent of a called group), compared
/// after normalisation with `plan`, so any spelling matches.
pub fn search(
    db: &Db,
    plan: &NumberPlan,
    number: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<RecordingRow>, ArchiveError> {
    let want = plan.normalise(number);
    Ok(db
        .recordings(from_ms, to_ms)?
        .into_iter()
        .filter(|r| {
            [&r.caller, &r.callee, &r.answered_by]
                .into_iter()
                .flatten()
                .any(|n| plan.normalise(n) == want)
        })
        .collect())
}

/// The folders that hold delivered sets locally: `<data-dir>/recordings` and
/// the fixed part (before any `$`) of every `file://` target.
pub fn local_roots(data_dir: &Path, targets: &[String]) -> Vec<PathBuf> {
    let mut roots = vec![data_dir.join("recordings")];
    for t in targets {
        if let Some(path) = t.strip_prefix("file://") {
            let fixed = path.split('$').next().unwrap_or(path);
            let p = PathBuf::from(fixed.trim_end_matches('/'));
            if !roots.contains(&p) {
                roots.push(p);
            }
        }
    }
    roots
}

/// Finds the checksum file of `base_name` below any of `roots`.
pub fn locate(base_name: &str, roots: &[PathBuf]) -> Option<PathBuf> {
    let name = format!("{base_name}.sha256");
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == name.as_str()) {
                return Some(p);
            }
        }
    }
    None
}

/// Every file of the set whose checksum file is `sha256` (same folder, same base name).
pub fn set_files(sha256: &Path) -> Result<Vec<PathBuf>, ArchiveError> {
    let folder = sha256.parent().unwrap_or(Path::new("."));
    let base = sha256
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".sha256"))
        .unwrap_or_default()
        .to_string();
    let mut files = Vec::new();
    for e in std::fs::read_dir(folder)
        .map_err(io("read", folder))?
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        // The set's tombstone (a deletion record) is not part of the set.
        let tombstone = n.starts_with(&crate::seal::tombstone_base(&base));
        if !tombstone && (n.starts_with(&format!("{base}.")) || n.starts_with(&format!("{base}_")))
        {
            files.push(e.path());
        }
    }
    files.sort();
    Ok(files)
}

/// What an export did.
#[derive(Debug, Default)]
pub struct ExportReport {
    /// Sets copied and verified.
    pub exported: Vec<String>,
    /// One line per set that could not be exported, with the reason.
    pub problems: Vec<String>,
}

/// Copies the sets of `rows` into `out`, with the certificate and the
/// standalone verification script; each set is verified before and after.
pub fn export(
    rows: &[RecordingRow],
    roots: &[PathBuf],
    out: &Path,
    cert_pem: &str,
    verify_script: &str,
) -> Result<ExportReport, ArchiveError> {
    export_with(
        rows,
        roots,
        out,
        cert_pem,
        &Default::default(),
        verify_script,
    )
}

/// As [`export`], for sets of several instances sharing a database: a set
/// whose row names an instance in `others` (name → certificate PEM) is
/// verified against that certificate, written beside it as `cert-<name>.pem`;
/// every other set against `cert_pem` (`cert.pem`).
pub fn export_with(
    rows: &[RecordingRow],
    roots: &[PathBuf],
    out: &Path,
    cert_pem: &str,
    others: &std::collections::BTreeMap<String, String>,
    verify_script: &str,
) -> Result<ExportReport, ArchiveError> {
    std::fs::create_dir_all(out).map_err(io("create", out))?;
    std::fs::write(out.join("cert.pem"), cert_pem).map_err(io("write", out))?;
    let script = out.join("verify.sh");
    std::fs::write(&script, verify_script).map_err(io("write", &script))?;
    let cert_of = |r: &RecordingRow| -> Result<PathBuf, ArchiveError> {
        let other = r
            .instance
            .as_deref()
            .filter(|n| crate::instance::check_name(n).is_ok())
            .and_then(|n| others.get(n).map(|pem| (n, pem)));
        match other {
            Some((name, pem)) => {
                let path = out.join(format!("cert-{name}.pem"));
                std::fs::write(&path, pem).map_err(io("write", &path))?;
                Ok(path)
            }
            None => Ok(out.join("cert.pem")),
        }
    };
    let mut report = ExportReport::default();
    for r in rows {
        let Some(sha) = locate(&r.base_name, roots) else {
            report
                .problems
                .push(format!("{}: not found in any local folder", r.base_name));
            continue;
        };
        let cert = cert_of(r)?;
        let before = crate::seal::verify_set(&sha, Some(&cert));
        if !before.is_empty() {
            for p in before {
                report
                    .problems
                    .push(format!("{}: before copy: {p}", r.base_name));
            }
            continue;
        }
        for f in set_files(&sha)? {
            let dest = out.join(f.file_name().unwrap_or_default());
            std::fs::copy(&f, &dest).map_err(io("copy", &f))?;
        }
        let copied = out.join(sha.file_name().unwrap_or_default());
        let mut after = crate::seal::verify_set(&copied, Some(&cert));
        // The transcript travels with the set and must hold as well.
        let addendum = out.join(format!(
            "{}.sha256",
            crate::seal::addendum_base(&r.base_name, crate::transcribe::TRANSCRIPT_KIND)
        ));
        if addendum.is_file() {
            after.extend(crate::seal::verify_set(&addendum, Some(&cert)));
        }
        if after.is_empty() {
            report.exported.push(r.base_name.clone());
        } else {
            for p in after {
                report
                    .problems
                    .push(format!("{}: after copy: {p}", r.base_name));
            }
        }
    }
    Ok(report)
}
