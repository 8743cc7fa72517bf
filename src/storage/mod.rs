//! Storage targets: where sealed sets go from the spool.
//!
//! One [`Target`] trait, one implementation per URL scheme:
//! - `file:///path/$Y/$M` — a local or mounted (NFS, CIFS) folder;
//! - `sftp://user@host[:port]/dir/$Y-$M` — SFTP over SSH (folder relative to the
//!   user's home, `.` = home, `//abs` = absolute);
//! - `smb://[domain;]user@host[:port]/share/sub/$Y` — a Windows share (SMB 2/3);
//! - `onedrive://DRIVE/folder/$Y` — OneDrive for Business / SharePoint via Microsoft Graph;
//! - `s3://bucket/prefix/$Y`, `webdav://[user@]host[:port]/path/$Y` (`webdavs://` for
//!   HTTPS) — object storage and WebDAV through opendal.
//!
//! File, SFTP and SMB targets write every file under a temporary name, rename it,
//! and confirm its size (and, for folders, its SHA-256) before it counts; OneDrive
//! and S3 uploads appear whole or not at all, WebDAV files are replaced on retry.
//! The signature file goes last. For retention every target can also delete a set
//! ([`Target::delete`]): signature first, missing files count as deleted. Every
//! remote target can also copy a set back ([`Target::fetch`]) for the web console,
//! which verifies it before playing.
//! Secrets never come from the URL: see [`Secrets`].

mod cloud_secret;
mod file;
mod object;
pub mod onedrive;
mod secrets;
mod sftp;
mod smb;
mod template;

pub use cloud_secret::CloudSecret;
pub use file::FileTarget;
pub use object::ObjectTarget;
pub use onedrive::OneDriveTarget;
pub use secrets::{Secrets, TargetSecret};
pub use sftp::SftpTarget;
pub use smb::SmbTarget;
pub use template::expand_template;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{NaiveDateTime, TimeZone};

use crate::seal::{SealedSet, CHECKSUM_SUFFIX, SIGNATURE_SUFFIX};

/// A set of files to upload together, with the local start time that fills `$Y $M $D $h $m $s`.
#[derive(Debug, Clone)]
pub struct UploadSet {
    /// Base name shared by the set's files.
    pub base_name: String,
    /// Every file of the set; the signature file is last.
    pub files: Vec<PathBuf>,
    /// Start of the recording in the instance's local time.
    pub start: NaiveDateTime,
}

impl UploadSet {
    /// Builds an upload set from files; the start time is read from the base name
    /// (`YYYYMMDD_hhmmss_…`) and falls back to the local time now.
    pub fn new(base_name: &str, files: Vec<PathBuf>) -> UploadSet {
        let start = start_from_base_name(base_name).unwrap_or_else(|| {
            tracing::warn!(
                base_name,
                "base name does not start with YYYYMMDD_hhmmss; using the time now for $Y $M $D"
            );
            chrono::Local::now().naive_local()
        });
        UploadSet {
            base_name: base_name.to_string(),
            files: order_signature_last(files),
            start,
        }
    }

    /// The set named `base_name` as a target holds it, for [`Target::delete`]: every
    /// file name a set can have (metadata, one or two WAVs, checksum, signature;
    /// README "A sealed recording set"), signature last. Start time as in [`UploadSet::new`].
    pub fn by_name(base_name: &str) -> UploadSet {
        let names = [
            format!("{base_name}.json"),
            format!("{base_name}.wav"),
            format!("{base_name}_caller.wav"),
            format!("{base_name}_callee.wav"),
            format!("{base_name}{CHECKSUM_SUFFIX}"),
            format!("{base_name}{CHECKSUM_SUFFIX}{SIGNATURE_SUFFIX}"),
        ];
        let mut files: Vec<PathBuf> = names.into_iter().map(PathBuf::from).collect();
        // The signature stays last: the transcript addendum's files go before it.
        let sig = files.pop();
        files.extend(crate::seal::addendum_names(
            base_name,
            crate::transcribe::TRANSCRIPT_KIND,
            &[crate::transcribe::TRANSCRIPT_TXT_SUFFIX],
        ));
        files.extend(sig);
        UploadSet::new(base_name, files)
    }

    /// File names of the set in the order to delete them: the signature first, so
    /// an interrupted deletion leaves a set that reads as incomplete, not as altered.
    pub fn names_for_deletion(&self, target: &str) -> Result<Vec<String>, TargetError> {
        self.files
            .iter()
            .rev()
            .map(|f| file_name_of(target, f))
            .collect()
    }

    /// Each file with its path below `folder` on a target whose paths are
    /// `folder/name` strings (object stores, OneDrive) and its size now.
    pub fn placements(&self, target: &str, folder: &str) -> Result<Vec<Placement>, TargetError> {
        self.files
            .iter()
            .map(|local| {
                let name = file_name_of(target, local)?;
                let size = std::fs::metadata(local)
                    .map_err(|e| TargetError::Local {
                        target: target.to_string(),
                        path: local.display().to_string(),
                        detail: e.to_string(),
                    })?
                    .len();
                Ok(Placement {
                    local: local.clone(),
                    remote: remote_path(folder, &name),
                    size,
                })
            })
            .collect()
    }

    /// `names_for_deletion` as paths below `folder` (signature first).
    pub fn paths_for_deletion(
        &self,
        target: &str,
        folder: &str,
    ) -> Result<Vec<String>, TargetError> {
        Ok(self
            .names_for_deletion(target)?
            .iter()
            .map(|name| remote_path(folder, name))
            .collect())
    }

    /// Builds an upload set from a sealed set.
    pub fn from_sealed(set: &SealedSet) -> UploadSet {
        UploadSet::new(&set.base_name, set.files.clone())
    }

    /// Total size in bytes of the set's files as they are now on disk.
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// One file of a set and where it goes on a target.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The file in the spool.
    pub local: PathBuf,
    /// Its path on the target (`folder/name`, or `name` at the top).
    pub remote: String,
    /// Its size in bytes.
    pub size: u64,
}

/// `folder/name`, or `name` when the folder is the target's top.
fn remote_path(folder: &str, name: &str) -> String {
    if folder.is_empty() {
        name.to_string()
    } else {
        format!("{folder}/{name}")
    }
}

/// Reads `YYYYMMDD_hhmmss` from the start of a base name.
pub fn start_from_base_name(base_name: &str) -> Option<NaiveDateTime> {
    let head = base_name.get(..15)?;
    NaiveDateTime::parse_from_str(head, "%Y%m%d_%H%M%S").ok()
}

/// Local time of a UTC instant, as used by the dynamic parts of target folders.
pub fn local_naive(t: chrono::DateTime<chrono::Utc>) -> NaiveDateTime {
    chrono::Local
        .from_utc_datetime(&t.naive_utc())
        .naive_local()
}

/// Puts the checksum file second to last and the signature file last, keeping the order of the rest.
fn order_signature_last(mut files: Vec<PathBuf>) -> Vec<PathBuf> {
    let rank = |p: &PathBuf| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(SIGNATURE_SUFFIX) {
            2
        } else if name.ends_with(CHECKSUM_SUFFIX) {
            1
        } else {
            0
        }
    };
    files.sort_by_key(rank);
    files
}

/// Why an upload to a target failed, with what to check.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// The target URL or its secrets are unusable.
    #[error("target {target}: bad configuration: {detail}; check the target URL and its entry in the config file's secrets")]
    Config {
        /// The target, as described by [`Target::describe`].
        target: String,
        /// What is wrong.
        detail: String,
    },
    /// The server could not be reached.
    #[error("target {target}: server unreachable: {detail}; check host name, port, network/firewall and that the server runs")]
    Unreachable {
        /// The target.
        target: String,
        /// The underlying error.
        detail: String,
    },
    /// The server refused the login.
    #[error("target {target}: login refused: {detail}; check user name, password or key (config file secrets or env) and the account")]
    Auth {
        /// The target.
        target: String,
        /// The underlying error.
        detail: String,
    },
    /// The server's host key is unknown or changed.
    #[error("target {target}: host key not trusted: {detail}; check known_hosts / host_key_sha256 in the target's secrets")]
    HostKey {
        /// The target.
        target: String,
        /// The underlying error.
        detail: String,
    },
    /// The share does not exist or is not accessible.
    #[error("target {target}: share not found: {detail}; check the share name (no subfolders) and the user's access to it")]
    MissingShare {
        /// The target.
        target: String,
        /// The underlying error.
        detail: String,
    },
    /// The target ran out of space.
    #[error("target {target}: disk full while writing {path}: {detail}; free space or raise the quota on the target")]
    NoSpace {
        /// The target.
        target: String,
        /// The remote path.
        path: String,
        /// The underlying error.
        detail: String,
    },
    /// Writing was not permitted.
    #[error("target {target}: permission denied on {path}: {detail}; check that the folder exists or can be created and is writable (not read-only) for the user")]
    Permission {
        /// The target.
        target: String,
        /// The remote path.
        path: String,
        /// The underlying error.
        detail: String,
    },
    /// A file arrived different from the local one.
    #[error("target {target}: {path} does not match after upload: {detail}; check the target's disk and that nothing else writes there")]
    Mismatch {
        /// The target.
        target: String,
        /// The remote path.
        path: String,
        /// Expected vs. found.
        detail: String,
    },
    /// Any other I/O failure.
    #[error(
        "target {target}: {op} {path} failed: {detail}; check the target's log and free space"
    )]
    Io {
        /// The target.
        target: String,
        /// What was being done.
        op: String,
        /// The local or remote path.
        path: String,
        /// The underlying error.
        detail: String,
    },
    /// A local file of the set could not be read.
    #[error("reading local file {path} for {target} failed: {detail}; check the spool folder")]
    Local {
        /// The target.
        target: String,
        /// The local path.
        path: String,
        /// The underlying error.
        detail: String,
    },
    /// The target cannot do what was asked (e.g. delete files).
    #[error("target {target}: {what} is not supported by this kind of target; do it by hand on the target and note it, or remove the target from profiles with a retention period")]
    Unsupported {
        /// The target.
        target: String,
        /// What was asked, e.g. "deletion".
        what: String,
    },
    /// The upload took longer than allowed.
    #[error("target {target}: upload timed out after {seconds} s; check the network and the server's load")]
    Timeout {
        /// The target.
        target: String,
        /// The time limit.
        seconds: u64,
    },
}

impl TargetError {
    /// A file the target accepted a deletion for but still lists.
    pub(crate) fn still_there(target: &str, path: String) -> TargetError {
        TargetError::Io {
            target: target.to_string(),
            op: "delete".into(),
            path,
            detail: "still there after deleting it".into(),
        }
    }
}

/// A place that holds sealed sets.
#[async_trait::async_trait]
pub trait Target: Send + Sync + std::fmt::Debug {
    /// Uploads every file of `set` into the folder computed from the URL and the set's start,
    /// creating missing folders; returns only when every file is confirmed on the target.
    async fn put(&self, set: &UploadSet) -> Result<(), TargetError>;
    /// Deletes every file of `set` (by file name, see [`UploadSet::by_name`]) from the
    /// folder computed from the URL and the set's start, signature first; files already
    /// gone count as deleted. Returns only when none of them is left on the target.
    async fn delete(&self, set: &UploadSet) -> Result<(), TargetError> {
        let _ = set;
        Err(TargetError::Unsupported {
            target: self.describe(),
            what: "deletion".into(),
        })
    }
    /// Copies the files of `set` (by file name, see [`UploadSet::by_name`]) that the
    /// target holds into the local folder `into` and returns their paths: for
    /// playing a set that only this target holds. The caller verifies what came.
    async fn fetch(&self, set: &UploadSet, into: &Path) -> Result<Vec<PathBuf>, TargetError> {
        let _ = (set, into);
        Err(TargetError::Unsupported {
            target: self.describe(),
            what: "fetching a set".into(),
        })
    }
    /// The target URL without secrets, for logs, mails and the database.
    fn describe(&self) -> String;
}

/// Runs a blocking `put`, `delete` or `fetch` on tokio's blocking pool, so the spool's
/// workers and the console never block the runtime; a task that panicked becomes a
/// [`TargetError::Io`] for `op`.
pub(crate) async fn on_blocking_pool<T, R, F>(
    target: &T,
    url: &str,
    op: &str,
    set: &UploadSet,
    work: F,
) -> Result<R, TargetError>
where
    T: Clone + Send + 'static,
    R: Send + 'static,
    F: FnOnce(&T, &UploadSet) -> Result<R, TargetError> + Send + 'static,
{
    let (me, set) = (target.clone(), set.clone());
    tokio::task::spawn_blocking(move || work(&me, &set))
        .await
        .map_err(|e| TargetError::Io {
            target: url.to_string(),
            op: format!("{op} task"),
            path: String::new(),
            detail: e.to_string(),
        })?
}

/// Confirms that the target holds as many bytes as the local file.
pub(crate) fn confirm_size(
    url: &str,
    dest: &str,
    remote_len: u64,
    local_len: u64,
) -> Result<(), TargetError> {
    if remote_len == local_len {
        return Ok(());
    }
    Err(TargetError::Mismatch {
        target: url.to_string(),
        path: dest.to_string(),
        detail: format!("{remote_len} bytes, expected {local_len}"),
    })
}

/// Opens the target for `url`, with its secrets (if any) from `secrets`.
pub fn open_target(url: &str, secrets: &Secrets) -> Result<Arc<dyn Target>, TargetError> {
    let secret = secrets.for_target(url);
    let scheme = url.split("://").next().unwrap_or("");
    match scheme {
        "file" => Ok(Arc::new(FileTarget::from_url(url)?)),
        "sftp" => Ok(Arc::new(SftpTarget::from_url(url, secret)?)),
        "smb" => Ok(Arc::new(SmbTarget::from_url(url, secret)?)),
        "onedrive" => Ok(Arc::new(OneDriveTarget::from_url(
            url,
            secret,
            secrets.data_dir(),
        )?)),
        "s3" | "webdav" | "webdavs" => Ok(Arc::new(ObjectTarget::from_url(url, secret)?)),
        _ => Err(TargetError::Config {
            target: url.to_string(),
            detail: format!("unknown scheme {scheme:?}; supported: file://, sftp://, smb://, onedrive://, s3://, webdav://, webdavs://"),
        }),
    }
}

/// The file name of `path` as UTF-8, or a [`TargetError::Local`].
fn file_name_of(target: &str, path: &Path) -> Result<String, TargetError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| TargetError::Local {
            target: target.to_string(),
            path: path.display().to_string(),
            detail: "no UTF-8 file name".into(),
        })
}

/// Splits `user@host[:port]` (the authority of a URL) into its parts.
fn split_authority(
    target: &str,
    authority: &str,
    default_port: u16,
) -> Result<(String, String, u16), TargetError> {
    let bad = |detail: &str| TargetError::Config {
        target: target.to_string(),
        detail: detail.to_string(),
    };
    let (user, hostport) = authority
        .rsplit_once('@')
        .ok_or_else(|| bad("the URL names no user (user@host)"))?;
    if user.contains(':') {
        return Err(bad(
            "the URL contains a password; put it in the config file's secrets or env instead",
        ));
    }
    let parse_port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| bad(&format!("bad port {p:?}")))
    };
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        // [IPv6 literal] with an optional :port
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("unclosed [ in the host"))?;
        match after.strip_prefix(':') {
            Some(p) => (h.to_string(), parse_port(p)?),
            None if after.is_empty() => (h.to_string(), default_port),
            None => return Err(bad("unexpected text after ]")),
        }
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h.to_string(), parse_port(p)?),
            None => (hostport.to_string(), default_port),
        }
    };
    if host.is_empty() || user.is_empty() {
        return Err(bad("empty user or host"));
    }
    Ok((user.to_string(), host, port))
}

/// Lowercase hex SHA-256 of a local file.
fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_is_read_from_the_base_name() {
        let t = start_from_base_name("20260301_101502_in_49301_200_ab12").unwrap();
        assert_eq!(t.to_string(), "2026-03-01 10:15:02");
        assert!(start_from_base_name("call").is_none());
    }

    #[test]
    fn signature_goes_last() {
        let files = vec![
            PathBuf::from("a.sha256.SHA256withRSA.sig"),
            PathBuf::from("a.sha256"),
            PathBuf::from("a.json"),
            PathBuf::from("a.wav"),
        ];
        let set = UploadSet::new("20260301_101502_x", files);
        let names: Vec<_> = set.files.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            names,
            ["a.json", "a.wav", "a.sha256", "a.sha256.SHA256withRSA.sig"]
        );
    }

    #[test]
    fn deletion_takes_the_signature_first() {
        let set = UploadSet::by_name("20260301_101502_in_1_2_ab");
        let names = set.names_for_deletion("t").unwrap();
        // The set's six files and its transcript addendum's four.
        assert_eq!(names.len(), 10, "{names:?}");
        assert_eq!(
            names[0],
            "20260301_101502_in_1_2_ab.sha256.SHA256withRSA.sig"
        );
        let at = |n: &str| {
            names
                .iter()
                .position(|x| x == n)
                .unwrap_or_else(|| panic!("{n} missing: {names:?}"))
        };
        // Each checksum file goes after its signature.
        assert!(at("20260301_101502_in_1_2_ab.sha256") > 0);
        assert!(
            at("20260301_101502_in_1_2_ab_transcript.sha256.SHA256withRSA.sig")
                < at("20260301_101502_in_1_2_ab_transcript.sha256")
        );
        assert!(at("20260301_101502_in_1_2_ab_transcript.txt") > 0);
        assert!(names.contains(&"20260301_101502_in_1_2_ab_callee.wav".to_string()));
        assert_eq!(set.start.to_string(), "2026-03-01 10:15:02");
    }

    #[test]
    fn authority_parts() {
        assert_eq!(
            split_authority("t", "rec@host:2222", 22).unwrap(),
            ("rec".into(), "host".into(), 2222)
        );
        assert_eq!(
            split_authority("t", "rec@10.0.0.1", 22).unwrap(),
            ("rec".into(), "10.0.0.1".into(), 22)
        );
        assert_eq!(
            split_authority("t", "rec@[::1]:2222", 22).unwrap(),
            ("rec".into(), "::1".into(), 2222)
        );
        assert_eq!(split_authority("t", "rec@[::1]", 22).unwrap().1, "::1");
        assert!(split_authority("t", "rec@host:x", 22).is_err());
        assert!(split_authority("t", "rec:pw@host", 22).is_err());
        assert!(split_authority("t", "host", 22).is_err());
    }
}
