//! The Sealer: writes a set's metadata (with the chain link), checksum file and
//! signature, and owns the instance's chain head.

use std::fs::File;
use std::path::{Path, PathBuf};

use base64::Engine;

use super::chain::{read_head, write_head, ChainHead, ChainLink};
use super::checksum::{is_plain_name, render, sha256_bytes, sha256_file, Entry};
use super::durable::{sync_dir, write_synced};
use super::identity::CHAIN_HEAD_FILE;
use super::{Identity, SealError, CHECKSUM_SUFFIX, SIGNATURE_SUFFIX};

/// Lock file held by the one Sealer of a data dir.
const LOCK_FILE: &str = "chain.lock";

/// Single owner of the chain head; one per instance (enforced by a lock on `data_dir/chain.lock`).
///
/// `seal` blocks (hashing, fsync): run it off the media path, e.g. in
/// `tokio::task::spawn_blocking` or a dedicated thread that owns the Sealer.
#[derive(Debug)]
pub struct Sealer {
    identity: Identity,
    head_path: PathBuf,
    head: Option<ChainHead>,
    _lock: File,
}

/// The files of one sealed set.
#[derive(Debug, Clone)]
pub struct SealedSet {
    /// Folder holding every file of the set.
    pub folder: PathBuf,
    /// Base name shared by the set's files.
    pub base_name: String,
    /// Every file of the set: metadata, audio (and transcript), checksum file, signature (last).
    pub files: Vec<PathBuf>,
    /// Lowercase hex SHA-256 of the checksum file (what the next set's "previous" names).
    pub checksum_sha256: String,
}

impl Sealer {
    /// Takes the chain lock and reads the chain head from `data_dir`.
    pub fn new(identity: Identity, data_dir: &Path) -> Result<Sealer, SealError> {
        let lock_path = data_dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(SealError::io("open chain lock", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(SealError::ChainLocked { path: lock_path })
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(SealError::io("lock", &lock_path)(e))
            }
        }
        let head_path = data_dir.join(CHAIN_HEAD_FILE);
        let head = read_head(&head_path)?;
        match &head {
            Some(h) => tracing::info!(previous = %h.link.id, "chain continues"),
            None => tracing::info!("chain starts with the next set"),
        }
        Ok(Sealer {
            identity,
            head_path,
            head,
            _lock: lock,
        })
    }

    /// The identity this Sealer signs with.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The link the next sealed set will carry as "previous" (`None` before the first set).
    pub fn head(&self) -> Option<&ChainLink> {
        self.head.as_ref().map(|h| &h.link)
    }

    /// Writes <base>.json (metadata with "previous" inserted), <base>.sha256, then <base>.sha256.SHA256withRSA.sig (last); fsyncs; advances the chain head.
    ///
    /// `metadata` must be a JSON object; "previous" is set (null for the first
    /// set) and "instance_id" is added when absent. `audio_files` are the audio
    /// files followed by the transcript, if any, each inside `folder` (relative
    /// paths are taken relative to `folder`); the checksum file lists the
    /// metadata first, then these in the given order.
    ///
    /// A crash after the signature is written but before the chain head is
    /// replaced leaves the head on the set before; the next set then names the
    /// same previous set, which `verify_chain` reports as a fork.
    pub fn seal(
        &mut self,
        folder: &Path,
        base_name: &str,
        metadata: serde_json::Value,
        audio_files: &[PathBuf],
    ) -> Result<SealedSet, SealError> {
        let invalid = |detail: String| SealError::InvalidInput {
            base_name: base_name.to_string(),
            detail,
        };
        if !is_plain_name(base_name) || base_name.contains('/') {
            return Err(invalid("the base name must be a plain file name".into()));
        }
        let serde_json::Value::Object(mut meta) = metadata else {
            return Err(invalid("metadata must be a JSON object".into()));
        };
        let json_name = format!("{base_name}.json");
        let sums_name = format!("{base_name}{CHECKSUM_SUFFIX}");
        let sig_name = format!("{sums_name}{SIGNATURE_SUFFIX}");
        let sig_path = folder.join(&sig_name);
        if sig_path.exists() {
            return Err(SealError::AlreadySealed { path: sig_path });
        }

        // Names relative to the folder, checked before anything is written.
        let mut names = Vec::with_capacity(audio_files.len());
        for file in audio_files {
            let rel = if file.is_absolute() {
                file.strip_prefix(folder).map_err(|_| {
                    invalid(format!(
                        "{} is not inside {}",
                        file.display(),
                        folder.display()
                    ))
                })?
            } else {
                file.as_path()
            };
            let inside = rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            let name = rel
                .to_str()
                .filter(|n| inside && is_plain_name(n))
                .ok_or_else(|| invalid(format!("{} is not a usable file name", rel.display())))?;
            if name == json_name || name == sums_name || name == sig_name || names.contains(&name) {
                return Err(invalid(format!(
                    "{name} is listed twice or collides with the set's own files"
                )));
            }
            names.push(name);
        }

        meta.insert(
            "previous".into(),
            self.head()
                .map_or(serde_json::Value::Null, ChainLink::to_json),
        );
        meta.entry("instance_id")
            .or_insert_with(|| self.identity.instance_id().into());
        let mut json = serde_json::to_vec_pretty(&serde_json::Value::Object(meta))
            .expect("a JSON object serialises");
        json.push(b'\n');
        let json_path = folder.join(&json_name);
        write_synced(&json_path, &json, 0o644)?;

        let mut entries = vec![Entry {
            sha256: sha256_bytes(&json),
            name: json_name,
        }];
        let mut files = vec![json_path];
        for name in names {
            let path = folder.join(name);
            let sha256 = sha256_file(&path).map_err(SealError::io("hash", &path))?;
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(SealError::io("fsync", &path))?;
            entries.push(Entry {
                sha256,
                name: name.to_string(),
            });
            files.push(path);
        }

        let sums = render(&entries);
        let sums_path = folder.join(&sums_name);
        write_synced(&sums_path, sums.as_bytes(), 0o644)?;
        let checksum_sha256 = sha256_bytes(sums.as_bytes());

        let signature = self.identity.sign(sums.as_bytes())?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(signature);
        let mut sig_text = String::with_capacity(b64.len() + b64.len() / 64 + 1);
        for chunk in b64.as_bytes().chunks(64) {
            sig_text.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
            sig_text.push('\n');
        }
        // The signature is written last: a set without it is incomplete.
        write_synced(&sig_path, sig_text.as_bytes(), 0o644)?;
        sync_dir(folder)?;
        files.push(sums_path);
        files.push(sig_path);

        let head = ChainHead {
            link: ChainLink {
                id: base_name.to_string(),
                checksum_file: sums_name,
                sha256: checksum_sha256.clone(),
            },
            folder: folder.to_path_buf(),
        };
        write_head(&self.head_path, &head)?;
        self.head = Some(head);
        tracing::debug!(set = %base_name, folder = %folder.display(), "sealed");
        Ok(SealedSet {
            folder: folder.to_path_buf(),
            base_name: base_name.to_string(),
            files,
            checksum_sha256,
        })
    }
    /// Takes a set sealed in `folder` before a crash as the chain head when the
    /// crash came between its signature and the head's update (the set names
    /// the current head as "previous"); otherwise the next set would name the
    /// same previous set and fork the chain. True when the head moved.
    pub fn adopt(&mut self, folder: &Path, base_name: &str) -> Result<bool, SealError> {
        let json_path = folder.join(format!("{base_name}.json"));
        let bytes = std::fs::read(&json_path).map_err(SealError::io("read", &json_path))?;
        let meta: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| SealError::InvalidInput {
                base_name: base_name.to_string(),
                detail: format!("{}: {e}", json_path.display()),
            })?;
        let previous =
            ChainLink::from_json(meta.get("previous").unwrap_or(&serde_json::Value::Null))
                .map_err(|detail| SealError::InvalidInput {
                    base_name: base_name.to_string(),
                    detail,
                })?;
        if self.head().map(|h| h.id.as_str()) == Some(base_name) || previous.as_ref() != self.head()
        {
            return Ok(false);
        }
        let sums_name = format!("{base_name}{CHECKSUM_SUFFIX}");
        let sums_path = folder.join(&sums_name);
        let sha256 = sha256_file(&sums_path).map_err(SealError::io("hash", &sums_path))?;
        let head = ChainHead {
            link: ChainLink {
                id: base_name.to_string(),
                checksum_file: sums_name,
                sha256,
            },
            folder: folder.to_path_buf(),
        };
        write_head(&self.head_path, &head)?;
        self.head = Some(head);
        tracing::warn!(set = %base_name, "chain head moved to a set sealed just before a crash");
        Ok(true)
    }
}

/// The set sealed in `folder` under `base_name`, read back from its files
/// (checksum file and signature must exist): for a set whose sealing finished
/// but whose hand-over to the spool did not.
pub fn sealed_on_disk(folder: &Path, base_name: &str) -> Result<SealedSet, SealError> {
    let sums_name = format!("{base_name}{CHECKSUM_SUFFIX}");
    let sums_path = folder.join(&sums_name);
    let sig_path = folder.join(format!("{sums_name}{SIGNATURE_SUFFIX}"));
    let text = std::fs::read(&sums_path).map_err(SealError::io("read", &sums_path))?;
    if !sig_path.is_file() {
        return Err(SealError::InvalidInput {
            base_name: base_name.to_string(),
            detail: format!("{} is missing", sig_path.display()),
        });
    }
    let (entries, errors) = super::checksum::parse(&String::from_utf8_lossy(&text));
    if let Some((line, what)) = errors.first() {
        return Err(SealError::InvalidInput {
            base_name: base_name.to_string(),
            detail: format!("{} line {line}: {what}", sums_path.display()),
        });
    }
    let mut files: Vec<PathBuf> = entries.iter().map(|e| folder.join(&e.name)).collect();
    files.push(sums_path);
    files.push(sig_path);
    Ok(SealedSet {
        folder: folder.to_path_buf(),
        base_name: base_name.to_string(),
        files,
        checksum_sha256: sha256_bytes(&text),
    })
}
