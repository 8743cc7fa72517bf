//! Checking a set id, verifying a set (always anew when its page is opened;
//! the many range requests of one playback reuse that result for a minute
//! while the files' sizes and times are unchanged), its audio files per
//! party, and the client export as a zip.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Whether `id` can be a set's base name: letters, digits, `-`, `_`, `.`,
/// not starting with a dot. Anything else (slashes, `..`, NUL) is refused
/// before the file system is asked.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The files of the set whose checksum file is `sha`, with their size and time.
fn fingerprint(sha: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    crate::archive::set_files(sha)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).ok();
            let len = m.as_ref().map(|m| m.len()).unwrap_or(0);
            let time = m.and_then(|m| m.modified().ok());
            (p, len, time)
        })
        .collect()
}

type Stamp = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// One verification: the files as they were, when, and the problems found.
type Verified = (Stamp, Instant, Vec<String>);

/// Verification results by checksum file, valid while the set's files are unchanged.
#[derive(Default)]
pub struct VerifyCache {
    results: Mutex<HashMap<PathBuf, Verified>>,
}

/// How long a verification result serves the audio requests after it.
const REUSE: Duration = Duration::from_secs(60);

/// Most results kept; a full cache is emptied (verifying again is only slower).
const MAX_CACHED: usize = 1000;

impl VerifyCache {
    /// Problems with the set (empty: checksums and signature hold against
    /// `cert`); with `fresh` always verified now, else a result of the last
    /// minute is reused while the files look unchanged.
    pub fn verify(&self, sha: &Path, cert: &Path, fresh: bool) -> Vec<String> {
        let stamp = fingerprint(sha);
        if let Some((s, at, r)) = self.results.lock().expect("cache poisoned").get(sha) {
            if !fresh && *s == stamp && at.elapsed() < REUSE {
                return r.clone();
            }
        }
        let problems: Vec<String> = crate::seal::verify_set(sha, Some(cert))
            .into_iter()
            .map(|p| {
                // The page shows file names, not the server's folders.
                let name = p.file.file_name().map(|n| n.to_string_lossy().into_owned());
                format!("{}: {}", name.unwrap_or_default(), p.message)
            })
            .collect();
        let mut c = self.results.lock().expect("cache poisoned");
        if c.len() >= MAX_CACHED {
            c.clear();
        }
        c.insert(sha.to_path_buf(), (stamp, Instant::now(), problems.clone()));
        problems
    }
}

/// One audio file of a set and whose voice it holds.
#[derive(Debug, Clone)]
pub struct Audio {
    /// `both` (stereo or one mono file) or `caller` / `callee` (separate files).
    pub party: &'static str,
    /// The file.
    pub path: PathBuf,
}

/// The audio files of the set whose checksum file is `sha`.
pub fn audio_files(sha: &Path, base: &str) -> Vec<Audio> {
    let folder = sha.parent().unwrap_or(Path::new("."));
    let one = folder.join(format!("{base}.wav"));
    if one.is_file() {
        return vec![Audio {
            party: "both",
            path: one,
        }];
    }
    ["caller", "callee"]
        .into_iter()
        .map(|party| Audio {
            party,
            path: folder.join(format!("{base}_{party}.wav")),
        })
        .filter(|a| a.path.is_file())
        .collect()
}

/// What went wrong building an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The archive's export failed.
    #[error("{0}")]
    Archive(#[from] crate::archive::ArchiveError),
    /// The set did not verify before or after copying.
    #[error("the set does not verify: {0}")]
    Unverified(String),
    /// Writing the zip failed.
    #[error("cannot build the zip: {0}")]
    Zip(String),
    /// A temporary folder could not be made.
    #[error("cannot make a temporary folder for the export: {0}")]
    Io(#[from] std::io::Error),
}

/// The client export of one set as a zip: the set's files, `cert.pem` and
/// `verify.sh`, made with the archive's export (which verifies before and after copying).
pub fn export_zip(
    base: &str,
    roots: &[PathBuf],
    cert_pem: &str,
    scratch: &Path,
) -> Result<Vec<u8>, ExportError> {
    std::fs::create_dir_all(scratch)?;
    let tmp = tempfile::tempdir_in(scratch)?;
    let out = tmp.path().join(base);
    let row = crate::db::RecordingRow {
        call_id: String::new(),
        base_name: base.to_string(),
        profile: None,
        start_ms: 0,
        end_ms: None,
        caller: None,
        callee: None,
        recovered: false,
        answered_by: None,
        instance: None,
    };
    let report = crate::archive::export(
        &[row],
        roots,
        &out,
        cert_pem,
        include_str!("../../deploy/verify.sh"),
    )?;
    if !report.problems.is_empty() || report.exported.is_empty() {
        return Err(ExportError::Unverified(report.problems.join("; ")));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out)?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let zerr = |e: zip::result::ZipError| ExportError::Zip(e.to_string());
    for f in files {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        // Audio does not shrink by deflating; stored entries keep the crate small.
        let mut opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        if name == "verify.sh" {
            opts = opts.unix_permissions(0o755);
        }
        zip.start_file(name, opts).map_err(zerr)?;
        zip.write_all(&std::fs::read(&f)?)?;
    }
    Ok(zip.finish().map_err(zerr)?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::valid_id;

    #[test]
    fn ids_cannot_leave_the_folder() {
        assert!(valid_id("20261206-031500_in_0301234_200_ab12"));
        for bad in ["", "..", "../x", "a/b", ".hidden", "a\0b", "a\\b", "a b"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
