//! The Sealer: writes a set's metadata (with the chain link), checksum file and
//! signature, and owns the instance's chain head.

use std::fs::File;
use std::path::{Path, PathBuf};

use base64::Engine;

use super::batch::SealRequest;
use super::chain::{read_heads, write_heads, ChainHead, ChainHeads, ChainLink};
use super::checksum::{render, sha256_bytes, Entry};
use super::durable::{sync_dir, write_synced};
use super::identity::CHAIN_HEAD_FILE;
use super::tombstone::ChainPosition;
use super::{Identity, SealError, CHECKSUM_SUFFIX, SIGNATURE_SUFFIX};

/// Lock file held by the one Sealer of a data dir.
const LOCK_FILE: &str = "chain.lock";

/// Single owner of the chain head; one per instance (enforced by a lock on `data_dir/chain.lock`).
///
/// `seal` blocks (hashing, fsync): run it off the media path, e.g. in
/// `tokio::task::spawn_blocking` or a dedicated thread that owns the Sealer.
#[derive(Debug)]
pub struct Sealer {
    pub(super) identity: Identity,
    head_path: PathBuf,
    pub(super) heads: ChainHeads,
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
    /// Its place in its chain (`None` for a set of the older single-chain format).
    pub position: Option<ChainPosition>,
}

impl SealedSet {
    /// Its chain position as the database keeps it (JSON), when it has one.
    pub fn chain_json(&self) -> Option<String> {
        self.position
            .as_ref()
            .map(|p| serde_json::to_string(p).expect("a chain position serialises"))
    }
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
        let heads = read_heads(&head_path)?;
        for (profile, h) in &heads.chains {
            tracing::info!(profile = %profile, seq = h.link.seq.unwrap_or_default(), previous = %h.link.id, "chain continues");
        }
        Ok(Sealer {
            identity,
            head_path,
            heads,
            _lock: lock,
        })
    }

    /// The identity this Sealer signs with.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The last set sealed in the chain of `profile` (`None` before its first set);
    /// its link is what the profile's next set carries as "previous".
    pub fn head(&self, profile: &str) -> Option<&ChainHead> {
        self.heads.chains.get(profile)
    }

    /// Writes <base>.json (metadata with "previous" inserted), <base>.sha256, then <base>.sha256.SHA256withRSA.sig (last); makes them durable; advances the chain head.
    ///
    /// `metadata` must be a JSON object; "previous" is set (null for the first
    /// set) and "instance_id" is added when absent. `audio_files` are the audio
    /// files followed by the transcript, if any, each inside `folder` (a path
    /// that starts with `folder` as given, or a bare file name); the checksum file lists the
    /// metadata first, then these in the given order. A group of one: see
    /// [`Sealer::seal_group`] for the order of writes and what a crash leaves.
    pub fn seal(
        &mut self,
        folder: &Path,
        base_name: &str,
        metadata: serde_json::Value,
        audio_files: &[PathBuf],
    ) -> Result<SealedSet, SealError> {
        let request = SealRequest {
            folder: folder.to_path_buf(),
            base_name: base_name.to_string(),
            metadata,
            files: audio_files.to_vec(),
        };
        self.seal_group(vec![request])
            .pop()
            .expect("one result per request")
    }

    /// Persists `heads` as the chain heads (atomic replace), then keeps them.
    pub(super) fn replace_heads(&mut self, heads: ChainHeads) -> Result<(), SealError> {
        write_heads(&self.head_path, &heads)?;
        self.heads = heads;
        Ok(())
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
    let json_path = folder.join(format!("{base_name}.json"));
    let position = std::fs::read(&json_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|m| position_of(&m).and_then(Result::ok));
    files.push(sums_path);
    files.push(sig_path);
    Ok(SealedSet {
        folder: folder.to_path_buf(),
        base_name: base_name.to_string(),
        files,
        checksum_sha256: sha256_bytes(&text),
        position,
    })
}

/// A fresh set id: 128 random bits in hex, so ids say nothing about the call.
pub(super) fn new_set_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// The chain position in a set's metadata: `None` for a set of the older
/// format (no "set_id"), an error text when it is malformed.
pub fn position_of(meta: &serde_json::Value) -> Option<Result<ChainPosition, String>> {
    let set_id = meta.get("set_id")?.as_str();
    let chain = meta.get("chain");
    let read = || -> Result<ChainPosition, String> {
        let set_id = set_id.ok_or("\"set_id\" is not a string")?;
        let chain = chain.ok_or("\"set_id\" without \"chain\"")?;
        let text = |k: &str| {
            chain
                .get(k)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or(format!("\"chain.{k}\" missing"))
        };
        Ok(ChainPosition {
            set_id: set_id.to_string(),
            instance_id: text("instance_id")?,
            profile: text("profile")?,
            seq: chain
                .get("seq")
                .and_then(|v| v.as_u64())
                .filter(|&n| n >= 1)
                .ok_or("\"chain.seq\" is not a number from 1")?,
            previous: ChainLink::from_json(
                meta.get("previous").unwrap_or(&serde_json::Value::Null),
            )?,
        })
    };
    Some(read())
}

/// Writes `<base>.sha256` listing `entries` and its signature (last, then the
/// folder is synced): returns both paths and the checksum file's SHA-256.
pub(crate) fn write_signed_checksums(
    identity: &Identity,
    folder: &Path,
    base_name: &str,
    entries: &[Entry],
) -> Result<(PathBuf, PathBuf, String), SealError> {
    let sums_name = format!("{base_name}{CHECKSUM_SUFFIX}");
    let sums = render(entries);
    let sums_path = folder.join(&sums_name);
    write_synced(&sums_path, sums.as_bytes(), 0o644)?;
    let signature = identity.sign(sums.as_bytes())?;
    // The signature is written last: a set without it is incomplete.
    let sig_path = folder.join(format!("{sums_name}{SIGNATURE_SUFFIX}"));
    write_synced(&sig_path, render_signature(&signature).as_bytes(), 0o644)?;
    sync_dir(folder)?;
    Ok((sums_path, sig_path, sha256_bytes(sums.as_bytes())))
}

/// A signature file's text: base64 in lines of 64 characters.
pub(super) fn render_signature(signature: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(signature);
    let mut text = String::with_capacity(b64.len() + b64.len() / 64 + 1);
    for chunk in b64.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        text.push('\n');
    }
    text
}

/// Writes a set's (or addendum's) metadata file `name` in `folder`, synced;
/// returns its checksum entry (the first of the checksum file) and its path.
pub(crate) fn write_metadata(
    folder: &Path,
    name: String,
    meta: serde_json::Map<String, serde_json::Value>,
) -> Result<(Entry, PathBuf), SealError> {
    let mut json = serde_json::to_vec_pretty(&serde_json::Value::Object(meta))
        .expect("a JSON object serialises");
    json.push(b'\n');
    let path = folder.join(&name);
    write_synced(&path, &json, 0o644)?;
    let entry = Entry {
        sha256: sha256_bytes(&json),
        name,
    };
    Ok((entry, path))
}
