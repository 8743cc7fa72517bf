//! Group commit: several sets sealed with two barriers and one chain-head
//! update in all. A barrier fsyncs each file written in its phase and each
//! folder once, so a set costs four fsyncs (metadata, audio, checksum file,
//! signature) where it cost seven (those, its folder and the head's two).
//!
//! The phases are types: [`Written`] sets (metadata and checksum file on
//! disk) become [`Signed`] only through a barrier, and the chain head moves
//! only after a second barrier. So a signature is never durable before the
//! files it covers, and the head never names a set whose signature is not.
//! What a power cut between two phases leaves is finished at the next start
//! (`recovery`): signed sets the head does not name yet become the head in
//! chain order, and a set whose checksum file is complete but whose signature
//! is missing is signed then, when it is the next link of its chain.

use std::path::{Path, PathBuf};

use super::chain::{ChainHead, ChainHeads, ChainLink, DEFAULT_PROFILE};
use super::checksum::{is_plain_name, render, sha256_bytes, sha256_file, Entry};
use super::durable::{barrier, write_unsynced};
use super::sealer::{new_set_id, render_signature};
use super::tombstone::ChainPosition;
use super::{SealError, SealedSet, Sealer, CHECKSUM_SUFFIX, SIGNATURE_SUFFIX};

/// One recording to seal: its folder, base name, metadata and audio files.
#[derive(Debug, Clone)]
pub struct SealRequest {
    /// Folder holding the audio files; the set's own files are written there.
    pub folder: PathBuf,
    /// Base name shared by the set's files.
    pub base_name: String,
    /// Metadata, a JSON object (the sealer adds the chain reference).
    pub metadata: serde_json::Value,
    /// Audio files (then the transcript, if any), inside `folder`.
    pub files: Vec<PathBuf>,
}

/// A phase boundary of a group commit, for the crash tests: sealing stops
/// right after it as if the process had died there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Phase {
    /// Metadata and checksum files written, not yet flushed.
    Written,
    /// … flushed (first barrier).
    WrittenDurable,
    /// Signatures written, not yet flushed.
    Signed,
    /// … flushed (second barrier); the chain head not yet replaced.
    SignedDurable,
}

/// A set whose metadata and checksum file are written.
struct Written {
    index: usize,
    folder: PathBuf,
    base_name: String,
    profile: String,
    files: Vec<PathBuf>,
    sums: String,
    position: ChainPosition,
}

/// A set whose signature is written too.
struct Signed {
    index: usize,
    set: SealedSet,
    head: ChainHead,
}

impl Sealer {
    /// Seals `requests` as one group (see the module docs); one result per
    /// request, in order. Sets of the same profile chain in request order.
    pub fn seal_group(&mut self, requests: Vec<SealRequest>) -> Vec<Result<SealedSet, SealError>> {
        self.seal_group_until(requests, None)
    }

    /// [`Sealer::seal_group`], stopping after `stop` (crash tests).
    pub(crate) fn seal_group_until(
        &mut self,
        requests: Vec<SealRequest>,
        stop: Option<Phase>,
    ) -> Vec<Result<SealedSet, SealError>> {
        let mut results: Vec<Option<Result<SealedSet, SealError>>> =
            (0..requests.len()).map(|_| None).collect();
        let mut heads = self.heads.clone();
        let mut written = Vec::new();
        for (index, request) in requests.into_iter().enumerate() {
            // A second request for the same set would overwrite the first's
            // checksum file before the first is signed.
            if written
                .iter()
                .any(|w: &Written| w.folder == request.folder && w.base_name == request.base_name)
            {
                results[index] = Some(Err(SealError::InvalidInput {
                    base_name: request.base_name,
                    detail: "the set is listed twice in one group".into(),
                }));
                continue;
            }
            match self.write(index, request, &mut heads) {
                Ok(w) => written.push(w),
                Err(e) => results[index] = Some(Err(e)),
            }
        }
        let stopped = |results: Vec<Option<Result<SealedSet, SealError>>>| {
            results.into_iter().flatten().collect()
        };
        if stop == Some(Phase::Written) {
            return stopped(results);
        }
        let folders: Vec<PathBuf> = written.iter().map(|w| w.folder.clone()).collect();
        // Metadata, audio and checksum file of every set (the signature is not written yet).
        let files = written
            .iter()
            .flat_map(|w| w.files.iter().map(PathBuf::as_path));
        if let Err(e) = barrier(files, folders.iter().map(PathBuf::as_path)) {
            // Nothing is signed: the chain has not moved.
            for w in written {
                results[w.index] = Some(Err(copy_of(&e)));
            }
            return results.into_iter().map(Option::unwrap).collect();
        }
        if stop == Some(Phase::WrittenDurable) {
            return stopped(results);
        }
        let mut signed: Vec<Signed> = Vec::new();
        let mut unsigned: Vec<(String, String)> = Vec::new(); // (profile, base name)
        for w in written {
            if let Some((_, previous)) = unsigned.iter().find(|(p, _)| *p == w.profile) {
                results[w.index] = Some(Err(SealError::PreviousUnsigned {
                    base_name: w.base_name.clone(),
                    previous: previous.clone(),
                }));
                unsigned.push((w.profile, w.base_name));
                continue;
            }
            let (index, profile, base_name) = (w.index, w.profile.clone(), w.base_name.clone());
            match self.sign(w) {
                Ok(s) => signed.push(s),
                Err(e) => {
                    results[index] = Some(Err(e));
                    unsigned.push((profile, base_name));
                }
            }
        }
        if stop == Some(Phase::Signed) {
            return signed.into_iter().map(|s| Ok(s.set)).collect();
        }
        let signatures = signed
            .iter()
            .filter_map(|s| s.set.files.last().map(PathBuf::as_path));
        let flushed = barrier(signatures, folders.iter().map(PathBuf::as_path));
        // Signatures are written: whatever the barrier says, the chain goes on
        // from them (the next start adopts them if the head file lags).
        let mut next = self.heads.clone();
        for s in &signed {
            next.chains
                .insert(s.set.position_profile().to_string(), s.head.clone());
        }
        if stop == Some(Phase::SignedDurable) {
            return signed.into_iter().map(|s| Ok(s.set)).collect();
        }
        let moved = if flushed.is_ok() && !signed.is_empty() {
            self.replace_heads(next.clone())
        } else {
            Ok(())
        };
        self.heads = next;
        if let Err(e) = &moved {
            tracing::error!("sets are sealed but the chain head was not saved ({e}); the next start takes them as the head");
        }
        for s in signed {
            results[s.index] = Some(match &flushed {
                Ok(()) => Ok(s.set),
                // Not known to be durable: the set stays in its folder and the
                // next start spools it (or seals the recording again).
                Err(e) => Err(copy_of(e)),
            });
        }
        results.into_iter().map(Option::unwrap).collect()
    }

    /// Checks a request and writes its metadata (with the chain link taken
    /// from `heads`, which then names this set) and checksum file.
    fn write(
        &self,
        index: usize,
        request: SealRequest,
        heads: &mut ChainHeads,
    ) -> Result<Written, SealError> {
        let SealRequest {
            folder,
            base_name,
            metadata,
            files,
        } = request;
        let invalid = |detail: String| SealError::InvalidInput {
            base_name: base_name.clone(),
            detail,
        };
        let mut meta = checked_input(&base_name, metadata)?;
        let json_name = format!("{base_name}.json");
        let sums_name = format!("{base_name}{CHECKSUM_SUFFIX}");
        let sig_name = format!("{sums_name}{SIGNATURE_SUFFIX}");
        let sig_path = folder.join(&sig_name);
        if sig_path.exists() {
            return Err(SealError::AlreadySealed { path: sig_path });
        }
        let names = relative_names(&folder, &files, &[&json_name, &sums_name, &sig_name])
            .map_err(invalid)?;

        let profile = meta
            .get("profile")
            .and_then(|p| p.as_str())
            .unwrap_or(DEFAULT_PROFILE)
            .to_string();
        let previous = heads.chains.get(&profile).map(|h| h.link.clone());
        let seq = previous.as_ref().and_then(|l| l.seq).unwrap_or(0) + 1;
        let set_id = new_set_id();
        meta.insert(
            "previous".into(),
            previous
                .as_ref()
                .map_or(serde_json::Value::Null, ChainLink::to_json),
        );
        meta.entry("instance_id")
            .or_insert_with(|| self.identity.instance_id().into());
        let instance_id = meta
            .get("instance_id")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        meta.insert("set_id".into(), set_id.clone().into());
        // The signing certificate and its CA chain travel with the set.
        meta.insert(
            "certificates".into(),
            serde_json::json!(self.identity.chain_pem()),
        );
        meta.insert(
            "chain".into(),
            serde_json::json!({"instance_id": instance_id, "profile": profile, "seq": seq}),
        );
        let position = ChainPosition {
            set_id: set_id.clone(),
            instance_id,
            profile: profile.clone(),
            seq,
            previous,
        };
        let mut json = serde_json::to_vec_pretty(&serde_json::Value::Object(meta))
            .expect("a JSON object serialises");
        json.push(b'\n');
        let json_path = folder.join(&json_name);
        write_unsynced(&json_path, &json, 0o644)?;
        let mut entries = vec![Entry {
            sha256: sha256_bytes(&json),
            name: json_name,
        }];
        let mut paths = vec![json_path];
        for name in names {
            let path = folder.join(&name);
            let sha256 = sha256_file(&path).map_err(SealError::io("hash", &path))?;
            entries.push(Entry { sha256, name });
            paths.push(path);
        }
        let sums = render(&entries);
        let sums_path = folder.join(&sums_name);
        write_unsynced(&sums_path, sums.as_bytes(), 0o644)?;
        paths.push(sums_path);
        heads.chains.insert(
            profile.clone(),
            ChainHead {
                link: ChainLink {
                    id: set_id,
                    sha256: sha256_bytes(sums.as_bytes()),
                    seq: Some(seq),
                    checksum_file: None,
                },
                base_name: base_name.clone(),
                folder: folder.clone(),
            },
        );
        Ok(Written {
            index,
            folder,
            base_name,
            profile,
            files: paths,
            sums,
            position,
        })
    }

    /// Signs a written set's checksum file and writes the signature.
    fn sign(&self, w: Written) -> Result<Signed, SealError> {
        let sums_name = format!("{}{CHECKSUM_SUFFIX}", w.base_name);
        let sig_path = w.folder.join(format!("{sums_name}{SIGNATURE_SUFFIX}"));
        let signature = self.identity.sign(w.sums.as_bytes())?;
        write_unsynced(&sig_path, render_signature(&signature).as_bytes(), 0o644)?;
        let checksum_sha256 = sha256_bytes(w.sums.as_bytes());
        let mut files = w.files;
        files.push(sig_path);
        let head = ChainHead {
            link: ChainLink {
                id: w.position.set_id.clone(),
                sha256: checksum_sha256.clone(),
                seq: Some(w.position.seq),
                checksum_file: None,
            },
            base_name: w.base_name.clone(),
            folder: w.folder.clone(),
        };
        tracing::debug!(set = %w.base_name, folder = %w.folder.display(), profile = %w.profile, seq = w.position.seq, "sealed");
        Ok(Signed {
            index: w.index,
            set: SealedSet {
                folder: w.folder,
                base_name: w.base_name,
                files,
                checksum_sha256,
                position: Some(w.position),
            },
            head,
        })
    }
}

impl SealedSet {
    fn position_profile(&self) -> &str {
        self.position
            .as_ref()
            .map_or(DEFAULT_PROFILE, |p| p.profile.as_str())
    }
}

/// A set's (or addendum's) base name and metadata checked: a plain file name,
/// and a JSON object, which is returned.
pub(crate) fn checked_input(
    base_name: &str,
    metadata: serde_json::Value,
) -> Result<serde_json::Map<String, serde_json::Value>, SealError> {
    let invalid = |detail: &str| SealError::InvalidInput {
        base_name: base_name.to_string(),
        detail: detail.to_string(),
    };
    if !is_plain_name(base_name) || base_name.contains('/') {
        return Err(invalid("the base name must be a plain file name"));
    }
    match metadata {
        serde_json::Value::Object(meta) => Ok(meta),
        _ => Err(invalid("metadata must be a JSON object")),
    }
}

/// The audio files' names relative to `folder`, each a plain file name inside
/// it, none listed twice nor equal to one of the set's own files (`own`).
pub(crate) fn relative_names(
    folder: &Path,
    files: &[PathBuf],
    own: &[&str],
) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::with_capacity(files.len());
    for file in files {
        // A path that starts with the folder is inside it, whether both are
        // absolute or both relative to the working directory.
        let rel = if let Ok(inside) = file.strip_prefix(folder) {
            inside
        } else if file.is_absolute() {
            return Err(format!(
                "{} is not inside {}",
                file.display(),
                folder.display()
            ));
        } else {
            file.as_path()
        };
        let inside = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        let name = rel
            .to_str()
            .filter(|n| inside && is_plain_name(n))
            .ok_or_else(|| format!("{} is not a usable file name", rel.display()))?;
        if own.contains(&name) || names.iter().any(|n| n == name) {
            return Err(format!(
                "{name} is listed twice or collides with the set's own files"
            ));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// The same I/O error again, for each set of a group that a barrier failed.
fn copy_of(e: &SealError) -> SealError {
    match e {
        SealError::Io {
            action,
            path,
            source,
        } => SealError::Io {
            action,
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        other => SealError::InvalidInput {
            base_name: String::new(),
            detail: other.to_string(),
        },
    }
}
