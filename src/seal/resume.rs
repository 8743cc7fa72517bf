//! What a crash inside a group commit left, finished at the next start
//! before anything new is sealed: each chain is walked forward from its head
//! through the sets in the folder. The next link is taken as the head when
//! its signature is whole; when the signature is missing or cut short but
//! the checksum file is complete and every file it lists still has its
//! checksum, the set is signed now: the signature of those bytes is the one
//! the crash cut off (SHA256withRSA with PKCS#1 v1.5 padding is
//! deterministic), so the chain keeps every set and has no gap.

use std::path::Path;

use super::chain::ChainLink;
use super::checksum::{parse, sha256_bytes, sha256_file};
use super::durable::write_synced;
use super::sealer::{position_of, render_signature};
use super::tombstone::ChainPosition;
use super::{ChainHead, SealError, Sealer, CHECKSUM_SUFFIX, SIGNATURE_SUFFIX};

/// A set found in the folder, with its place in its chain.
struct Found {
    base_name: String,
    position: ChainPosition,
    sums: Vec<u8>,
    /// Its signature file is there and whole (or was written by another key).
    signed: bool,
    /// It carries this instance's certificates, so this key may sign it.
    ours: bool,
}

/// What resuming did to one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// A whole set the crash left before its chain head moved: now the head.
    Adopted(String),
    /// A set whose signature the crash cut off: signed now, and the head.
    Signed(String),
}

impl Sealer {
    /// Walks every chain forward from its head through the sets in `folder`
    /// (see the module docs); returns what it did, in chain order.
    pub fn resume(&mut self, folder: &Path) -> Result<Vec<Resumed>, SealError> {
        let mut found = self.scan(folder)?;
        let mut done = Vec::new();
        loop {
            let next = found.iter().position(|f| {
                let head = self.head(&f.position.profile).map(|h| &h.link);
                f.position.previous.as_ref() == head && f.signed
            });
            let next = next.or_else(|| {
                found.iter().position(|f| {
                    let head = self.head(&f.position.profile).map(|h| &h.link);
                    f.position.previous.as_ref() == head
                        && f.ours
                        && complete(folder, &f.base_name, &f.sums)
                })
            });
            let Some(i) = next else { break };
            let f = found.remove(i);
            if f.signed {
                tracing::warn!(set = %f.base_name, "chain head moved to a set sealed just before a crash");
                done.push(Resumed::Adopted(f.base_name.clone()));
            } else {
                let signature = self.identity.sign(&f.sums)?;
                let sig = sig_path(folder, &f.base_name);
                write_synced(&sig, render_signature(&signature).as_bytes(), 0o644)?;
                tracing::warn!(set = %f.base_name, "a set whose signature a crash cut off was signed at the start");
                done.push(Resumed::Signed(f.base_name.clone()));
            }
            let head = ChainHead {
                link: ChainLink {
                    id: f.position.set_id.clone(),
                    sha256: sha256_bytes(&f.sums),
                    seq: Some(f.position.seq),
                    checksum_file: None,
                },
                base_name: f.base_name,
                folder: folder.to_path_buf(),
            };
            let mut heads = self.heads.clone();
            heads.chains.insert(f.position.profile, head);
            self.replace_heads(heads)?;
        }
        Ok(done)
    }

    /// The sets in `folder` with a chain position and a checksum file.
    fn scan(&self, folder: &Path) -> Result<Vec<Found>, SealError> {
        let mut found = Vec::new();
        let entries = match std::fs::read_dir(folder) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(SealError::io("read folder", folder)(e)),
        };
        let ours = serde_json::json!(self.identity.chain_pem());
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(base) = name.strip_suffix(CHECKSUM_SUFFIX) else {
                continue;
            };
            let Ok(sums) = std::fs::read(entry.path()) else {
                continue;
            };
            let Some(meta) = std::fs::read(folder.join(format!("{base}.json")))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            else {
                continue;
            };
            let Some(Ok(position)) = position_of(&meta) else {
                continue;
            };
            let ours = meta.get("certificates") == Some(&ours);
            let signed = match std::fs::read(sig_path(folder, base)) {
                Ok(text) if ours => {
                    text == render_signature(&self.identity.sign(&sums)?).as_bytes()
                }
                Ok(_) => true,
                Err(_) => false,
            };
            found.push(Found {
                base_name: base.to_string(),
                position,
                sums,
                signed,
                ours,
            });
        }
        // Deterministic choice when two unsigned sets name the same previous.
        found.sort_by(|a, b| a.base_name.cmp(&b.base_name));
        Ok(found)
    }
}

fn sig_path(folder: &Path, base: &str) -> std::path::PathBuf {
    folder.join(format!("{base}{CHECKSUM_SUFFIX}{SIGNATURE_SUFFIX}"))
}

/// The checksum file parses, lists the set's metadata first, and every file it
/// lists has the checksum it names.
fn complete(folder: &Path, base: &str, sums: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(sums) else {
        return false;
    };
    let (entries, errors) = parse(text);
    if !errors.is_empty()
        || entries.first().map(|e| e.name.as_str()) != Some(&format!("{base}.json"))
    {
        return false;
    }
    entries
        .iter()
        .all(|e| sha256_file(&folder.join(&e.name)).is_ok_and(|sum| sum == e.sha256))
}
