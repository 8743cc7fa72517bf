//! The archive of sealed sets for the people who answer to auditors and
//! clients: search recordings by party number and time (from the protocol
//! database), export one client's sets with everything needed to verify them
//! (R7.2), and delete sets past the retention period, documenting each deletion
//! (R7.3). Sets are found in local folders: the default recordings folder and
//! every `file://` target.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::db::{Db, Record, RecordingRow};
use crate::policy::NumberPlan;

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
    /// A duration like `5y` could not be read.
    #[error("cannot read {0:?} as an age; use a number and a unit: 5y, 90d, 12h, 30m")]
    Age(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads an age such as `5y`, `7y`, `90d`, `12h`, `30m`, `45s`.
pub fn parse_age(s: &str) -> Result<Duration, ArchiveError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| ArchiveError::Age(s.to_string()))?;
    let secs = match unit {
        "y" => 365 * 86_400 + 86_400 / 4,
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(ArchiveError::Age(s.to_string())),
    };
    Ok(Duration::from_secs(n * secs))
}

/// Recordings in `[from_ms, to_ms]` where `number` is the caller or the callee
/// (compared after normalisation with `plan`, so any spelling matches).
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
            [&r.caller, &r.callee]
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
fn set_files(sha256: &Path) -> Result<Vec<PathBuf>, ArchiveError> {
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
        if n.starts_with(&format!("{base}.")) || n.starts_with(&format!("{base}_")) {
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
    std::fs::create_dir_all(out).map_err(io("create", out))?;
    std::fs::write(out.join("cert.pem"), cert_pem).map_err(io("write", out))?;
    let script = out.join("verify.sh");
    std::fs::write(&script, verify_script).map_err(io("write", &script))?;
    let mut report = ExportReport::default();
    for r in rows {
        let Some(sha) = locate(&r.base_name, roots) else {
            report
                .problems
                .push(format!("{}: not found in any local folder", r.base_name));
            continue;
        };
        let before = crate::seal::verify_set(&sha, Some(&out.join("cert.pem")));
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
        let after = crate::seal::verify_set(&copied, Some(&out.join("cert.pem")));
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

/// What a purge did (or would do, with `dry_run`).
#[derive(Debug, Default)]
pub struct PurgeReport {
    /// Sets deleted (or to delete), with their folder.
    pub deleted: Vec<(String, PathBuf)>,
    /// Sets past the period that were not found locally.
    pub not_found: Vec<String>,
}

/// Deletes every set that started more than `older_than` ago from the local
/// folders, and records each deletion in the database.
pub fn purge(
    db: &Db,
    roots: &[PathBuf],
    older_than: Duration,
    dry_run: bool,
    reason: &str,
) -> Result<PurgeReport, ArchiveError> {
    let cutoff = crate::db::now_ms() - older_than.as_millis() as i64;
    let mut report = PurgeReport::default();
    for r in db.recordings(0, cutoff)? {
        let Some(sha) = locate(&r.base_name, roots) else {
            report.not_found.push(r.base_name);
            continue;
        };
        let folder = sha.parent().unwrap_or(Path::new(".")).to_path_buf();
        if !dry_run {
            let checksum = std::fs::read(&sha)
                .ok()
                .map(|b| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&b)));
            for f in set_files(&sha)? {
                std::fs::remove_file(&f).map_err(io("delete", &f))?;
            }
            db.send(Record::Deletion {
                base_name: r.base_name.clone(),
                target: format!("file://{}", folder.display()),
                at_ms: crate::db::now_ms(),
                reason: reason.to_string(),
                checksum_sha256: checksum,
            });
            tracing::info!(set = %r.base_name, folder = %folder.display(), "deleted: {reason}");
        }
        report.deleted.push((r.base_name, folder));
    }
    db.flush();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(parse_age("90d").unwrap(), Duration::from_secs(90 * 86_400));
        assert!(parse_age("5y").unwrap() > Duration::from_secs(5 * 365 * 86_400));
        assert!(parse_age("5 years").is_err());
        assert!(parse_age("y").is_err());
    }
}
