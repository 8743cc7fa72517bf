//! The hash chains between sets: the "previous" link in the metadata and the
//! persisted chain heads of the instance, one chain per recording profile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::durable::replace_by_exchange;
use super::SealError;

/// Profile name used for sets whose metadata names none.
pub const DEFAULT_PROFILE: &str = "default";

/// A reference to a sealed set, as stored in the next set's metadata under "previous".
///
/// Sets sealed since chains are kept per profile link by the previous set's id
/// (random, free of personal data), its sequence number and the SHA-256 of its
/// checksum file. Older sets linked by base name (which holds phone numbers)
/// and name the checksum file; those are still read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLink {
    /// Id of the referenced set (its base name, for sets of the older format).
    pub id: String,
    /// Lowercase hex SHA-256 of that set's checksum file's bytes.
    pub sha256: String,
    /// Its sequence number in the chain (absent in the older format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// File name of its checksum file (older format only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_file: Option<String>,
}

impl ChainLink {
    /// The link as the JSON value stored in metadata.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a link serialises")
    }

    /// Reads a "previous" value: `Ok(None)` for null, an error text when malformed.
    pub fn from_json(value: &serde_json::Value) -> Result<Option<ChainLink>, String> {
        if value.is_null() {
            return Ok(None);
        }
        serde_json::from_value(value.clone())
            .map(Some)
            .map_err(|e| format!("\"previous\" is neither null nor {{id, sha256, seq}}: {e}"))
    }
}

/// The last set sealed in one chain, and where it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// What the chain's next set will name as "previous".
    #[serde(flatten)]
    pub link: ChainLink,
    /// The set's base name (local bookkeeping; never written into another set).
    pub base_name: String,
    /// The folder it was sealed in.
    pub folder: PathBuf,
}

/// The persisted chain heads: one per profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ChainHeads {
    pub chains: BTreeMap<String, ChainHead>,
}

/// Reads the chain heads; empty when this data dir has sealed nothing yet, or
/// only sets of the older single-chain format (their chain simply ends).
pub(crate) fn read_heads(path: &Path) -> Result<ChainHeads, SealError> {
    let corrupt = |detail: String| SealError::ChainHeadCorrupt {
        path: path.to_path_buf(),
        detail,
    };
    // The head's file becomes the temporary file at the next update and is
    // rewritten in place at the one after (see `write_heads`): a reader that
    // opened it just before may read it torn, and reads again once.
    let read = || match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
            .map(Some)
            .map_err(|e| corrupt(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SealError::io("read chain head", path)(e)),
    };
    match read().or_else(|_| read()) {
        Ok(Some(value)) => {
            if value.get("chains").is_none() && value.get("id").is_some() {
                tracing::info!(path = %path.display(), "chain head of the older single-chain format: each profile starts its own chain with the next set");
                return Ok(ChainHeads::default());
            }
            serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
        }
        Ok(None) => Ok(ChainHeads::default()),
        Err(e) => Err(e),
    }
}

/// Persists the chain heads atomically (temporary file, fsync, name swap, folder fsync).
pub(crate) fn write_heads(path: &Path, heads: &ChainHeads) -> Result<(), SealError> {
    let mut text = serde_json::to_string_pretty(heads).expect("chain heads serialise");
    text.push('\n');
    replace_by_exchange(path, text.as_bytes(), 0o644)
}
