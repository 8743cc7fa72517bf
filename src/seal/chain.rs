//! The hash chain between sets: the "previous" link in the metadata and the
//! persisted chain head of the instance.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::durable::replace_atomically;
use super::SealError;

/// A reference to a sealed set, as stored in the next set's metadata under "previous".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLink {
    /// Base name of the referenced set.
    pub id: String,
    /// File name of its checksum file (`<id>.sha256`).
    pub checksum_file: String,
    /// Lowercase hex SHA-256 of that checksum file's bytes.
    pub sha256: String,
}

impl ChainLink {
    /// The link as the JSON value stored in metadata.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "checksum_file": self.checksum_file,
            "sha256": self.sha256,
        })
    }

    /// Reads a "previous" value: `Ok(None)` for null, an error text when malformed.
    pub fn from_json(value: &serde_json::Value) -> Result<Option<ChainLink>, String> {
        if value.is_null() {
            return Ok(None);
        }
        serde_json::from_value(value.clone())
            .map(Some)
            .map_err(|e| {
                format!("\"previous\" is neither null nor {{id, checksum_file, sha256}}: {e}")
            })
    }
}

/// The persisted chain head: the last set sealed and the folder it was written to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChainHead {
    #[serde(flatten)]
    pub link: ChainLink,
    pub folder: PathBuf,
}

/// Reads the chain head; `Ok(None)` when this data dir has sealed nothing yet.
pub(crate) fn read_head(path: &Path) -> Result<Option<ChainHead>, SealError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| SealError::ChainHeadCorrupt {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SealError::io("read chain head", path)(e)),
    }
}

/// Persists the chain head atomically (temporary file, fsync, rename, folder fsync).
pub(crate) fn write_head(path: &Path, head: &ChainHead) -> Result<(), SealError> {
    let mut text = serde_json::to_string_pretty(head).expect("chain head serialises");
    text.push('\n');
    replace_atomically(path, text.as_bytes(), 0o644)
}
