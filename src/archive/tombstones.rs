//! Tombstones and the reduction of rows for a purge: what signs a deleted
//! set's tombstone, the tombstone itself, its staging before it goes to the
//! targets, and the reduction of the set's rows once it is gone everywhere.

use std::path::PathBuf;

use super::{ArchiveError, PurgeRequest};
use crate::db::{Db, Record};

/// What a purge signs its tombstones with.
#[derive(Debug, Clone)]
pub struct TombstoneSigner {
    /// The instance's identity (the deleting instance signs).
    pub identity: crate::seal::Identity,
    /// Folder where a tombstone is written before it goes to the targets; its
    /// copies are removed once every target has been tried.
    pub staging: PathBuf,
}

/// The tombstone of a set about to be deleted, or `None` when none can be made.
pub(super) fn tombstone_for(
    request: &PurgeRequest,
    position: Option<crate::seal::ChainPosition>,
    checksum: Option<&str>,
    addenda: Vec<String>,
) -> Option<crate::seal::Tombstone> {
    let signer = request.tombstones.as_ref()?;
    Some(crate::seal::Tombstone {
        position: position?,
        checksum_sha256: checksum?.to_string(),
        deleted_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        reason: request.reason.clone(),
        retention: request
            .reason
            .strip_prefix("retention ")
            .map(|r| r.split_whitespace().next().unwrap_or(r).to_string()),
        deleted_by: signer.identity.instance_id().to_string(),
        addenda,
    })
}

/// Once a set is deleted everywhere, its rows are reduced to the deletion record.
pub(super) fn reduce(db: &Db, request: &PurgeRequest, base: &str, set_id: Option<&str>) {
    if request.dry_run {
        return;
    }
    match set_id {
        Some(id) => db.send(Record::Reduce {
            base_name: base.to_string(),
            set_id: id.to_string(),
        }),
        None => {
            tracing::warn!(set = %base, "deleted everywhere, but its rows keep their personal data: the set has neither a set id nor a known hash")
        }
    }
}

/// Writes the tombstone of `base` into a staging folder of its own; returns its files.
pub(super) fn stage_tombstone(
    signer: &TombstoneSigner,
    base: &str,
    tombstone: &crate::seal::Tombstone,
) -> Result<Vec<PathBuf>, ArchiveError> {
    let dir = signer.staging.join(&tombstone.position.set_id);
    crate::seal::write_tombstone(&signer.identity, &dir, base, tombstone)
        .map_err(|e| ArchiveError::Tombstone(e.to_string()))
}
