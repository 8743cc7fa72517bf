//! Addenda: files made after a set was sealed (a transcript) and sealed on
//! their own, in the set's format, next to it. An addendum's checksum file
//! `<base>_<kind>.sha256` lists its own files and the set's `<base>.sha256`,
//! so its signature binds it to exactly that set; it is no link of the chain
//! (the set is), and its metadata names the set under [`ADDENDUM_KEY`].

use std::path::{Path, PathBuf};

use super::batch::checked_input;
use super::checksum::{is_plain_name, sha256_bytes, sha256_file, Entry};
use super::durable::write_synced;
use super::sealer::{write_metadata, write_signed_checksums};
use super::{Identity, SealError, SealedSet, CHECKSUM_SUFFIX};

/// Key of an addendum's metadata naming the set it belongs to; its presence
/// is what tells `verify --chain` to pass the addendum over.
pub const ADDENDUM_KEY: &str = "addendum_to";

/// Base name of the addendum of kind `kind` (e.g. "transcript") to set `base_name`.
pub fn addendum_base(base_name: &str, kind: &str) -> String {
    format!("{base_name}_{kind}")
}

/// Seals an addendum of kind `kind` to the sealed set `set_base` in `folder`.
///
/// Writes `<set_base>_<kind>.json` (`metadata`, a JSON object, with
/// [`ADDENDUM_KEY`] added), then each of `extra` (file name, content), then
/// the checksum file listing those and the set's `<set_base>.sha256`, then
/// its signature (last). The returned set's files are the addendum's own (the
/// set's checksum file is already wherever the set went).
pub fn seal_addendum(
    identity: &Identity,
    folder: &Path,
    set_base: &str,
    kind: &str,
    metadata: serde_json::Value,
    extra: &[(String, Vec<u8>)],
) -> Result<SealedSet, SealError> {
    let base = addendum_base(set_base, kind);
    let invalid = |detail: String| SealError::InvalidInput {
        base_name: base.clone(),
        detail,
    };
    let mut meta = checked_input(&base, metadata)?;
    let set_sums_name = format!("{set_base}{CHECKSUM_SUFFIX}");
    let set_sums = folder.join(&set_sums_name);
    let set_sha256 = sha256_file(&set_sums).map_err(SealError::io("hash", &set_sums))?;
    meta.insert(
        ADDENDUM_KEY.into(),
        serde_json::json!({"base_name": set_base, "checksum_sha256": set_sha256}),
    );
    let (entry, json_path) = write_metadata(folder, format!("{base}.json"), meta)?;
    let mut entries = vec![entry];
    let mut files = vec![json_path];
    for (name, bytes) in extra {
        if !is_plain_name(name) || name.contains('/') || !name.starts_with(&base) {
            return Err(invalid(format!(
                "{name} is not a file name of the addendum"
            )));
        }
        let path = folder.join(name);
        write_synced(&path, bytes, 0o644)?;
        entries.push(Entry {
            sha256: sha256_bytes(bytes),
            name: name.clone(),
        });
        files.push(path);
    }
    entries.push(Entry {
        sha256: set_sha256,
        name: set_sums_name,
    });
    let (sums, sig, checksum_sha256) = write_signed_checksums(identity, folder, &base, &entries)?;
    files.push(sums);
    files.push(sig);
    Ok(SealedSet {
        folder: folder.to_path_buf(),
        base_name: base,
        files,
        checksum_sha256,
        position: None,
    })
}

/// Whether a checksum file's metadata is an addendum's.
pub(crate) fn is_addendum(meta: &serde_json::Value) -> bool {
    meta.get(ADDENDUM_KEY).is_some()
}

/// The addendum files of kind `kind` that belong to the set `base_name`, by
/// name (for deleting it from a target together with the set).
pub fn addendum_names(base_name: &str, kind: &str, extra_suffixes: &[&str]) -> Vec<PathBuf> {
    let base = addendum_base(base_name, kind);
    let sums = format!("{base}{CHECKSUM_SUFFIX}");
    let mut names = vec![PathBuf::from(format!("{base}.json"))];
    names.extend(
        extra_suffixes
            .iter()
            .map(|s| PathBuf::from(format!("{base}{s}"))),
    );
    names.push(PathBuf::from(format!("{sums}{}", super::SIGNATURE_SUFFIX)));
    names.insert(names.len() - 1, PathBuf::from(sums));
    names
}
