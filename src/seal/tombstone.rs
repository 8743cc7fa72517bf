//! Signed deletion records ("tombstones"): when retention or `purge` deletes a
//! set, `<base>.deleted.json` takes its place in the same folder, with its own
//! checksum file and signature in the set's format, so a lawful deletion can be
//! told from a missing set by anyone holding the certificate.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chain::ChainLink;
use super::checksum::{sha256_bytes, Entry};
use super::durable::write_synced;
use super::sealer::write_signed_checksums;
use super::{Identity, SealError, CHECKSUM_SUFFIX, SIGNATURE_SUFFIX};

/// Appended to a set's base name to name its tombstone's files.
pub const TOMBSTONE_SUFFIX: &str = ".deleted";

/// Where a sealed set stands in its chain, as its metadata and the database keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPosition {
    /// The set's own id (random, free of personal data).
    pub set_id: String,
    /// The instance that sealed it.
    pub instance_id: String,
    /// The recording profile whose chain it belongs to.
    pub profile: String,
    /// Its number in that chain, from 1.
    pub seq: u64,
    /// The link to the set before it (`None` for the first).
    pub previous: Option<ChainLink>,
}

/// What a tombstone says about the set it replaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The deleted set's place in its chain (with its own "previous" link, so
    /// that a run of deleted sets still links up).
    #[serde(flatten)]
    pub position: ChainPosition,
    /// SHA-256 of the deleted set's checksum file (what the next set links to).
    pub checksum_sha256: String,
    /// When it was deleted (RFC 3339, UTC).
    pub deleted_at: String,
    /// Why, e.g. "retention 5y (profile sales)".
    pub reason: String,
    /// The retention rule applied, when a rule deleted it.
    pub retention: Option<String>,
    /// The instance that deleted it (whose key signed this record).
    pub deleted_by: String,
    /// Addenda deleted with the set (a transcript), as checksum lines:
    /// `<SHA-256 of the addendum's checksum file>  <its name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addenda: Vec<String>,
}

impl Tombstone {
    /// The tombstone as its JSON file holds it: `{"deleted": {...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "deleted": self })
    }

    /// Reads a metadata value: `Some` when it is a tombstone.
    pub fn from_json(value: &serde_json::Value) -> Option<Result<Tombstone, String>> {
        let inner = value.get("deleted")?;
        Some(
            serde_json::from_value(inner.clone())
                .map_err(|e| format!("malformed deletion record: {e}")),
        )
    }
}

/// Base name of the tombstone of set `base_name`.
pub fn tombstone_base(base_name: &str) -> String {
    format!("{base_name}{TOMBSTONE_SUFFIX}")
}

/// Writes the tombstone of `base_name` into `folder`: `<base>.deleted.json`,
/// `<base>.deleted.sha256` and its signature (last). Returns the three files,
/// signature last, ready to be put on a target.
pub fn write_tombstone(
    identity: &Identity,
    folder: &Path,
    base_name: &str,
    tombstone: &Tombstone,
) -> Result<Vec<PathBuf>, SealError> {
    std::fs::create_dir_all(folder).map_err(SealError::io("create folder", folder))?;
    let base = tombstone_base(base_name);
    let json_name = format!("{base}.json");
    let mut json = serde_json::to_vec_pretty(&tombstone.to_json()).expect("a tombstone serialises");
    json.push(b'\n');
    let json_path = folder.join(&json_name);
    write_synced(&json_path, &json, 0o644)?;
    let entries = vec![Entry {
        sha256: sha256_bytes(&json),
        name: json_name,
    }];
    let (sums, sig, _) = write_signed_checksums(identity, folder, &base, &entries)?;
    debug_assert!(sums.ends_with(format!("{base}{CHECKSUM_SUFFIX}")));
    debug_assert!(sig
        .to_string_lossy()
        .ends_with(&format!("{CHECKSUM_SUFFIX}{SIGNATURE_SUFFIX}")));
    Ok(vec![json_path, sums, sig])
}
