//! Verification of sealed sets (checksums and signature) and of the chain between them.
//!
//! Certificate lookup: when no certificate is given, the first `cert.pem` found
//! in the set's folder or one of its parents is used. The instance writes its
//! certificate to `data_dir/cert.pem` on every start, so sets in the spool below
//! the data dir verify without `--cert`; exports put `cert.pem` at their
//! root. A certificate found beside the sets proves integrity, not origin: to
//! prove that a set comes from a given instance, pass that instance's
//! certificate explicitly (or check the found one's fingerprint, which is logged).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::sign::Verifier;
use openssl::x509::X509;

use super::chain::ChainLink;
use super::chain_check::{check_chains, check_stamps, ChainNotes, Member};
use super::checksum::{parse, sha256_bytes, sha256_file};
use super::identity::common_name;
use super::legacy_chain::{check_links, Node};
use super::sealer::position_of;
use super::tombstone::Tombstone;
use super::{CERT_FILE_NAME, CHECKSUM_SUFFIX, SIGNATURE_SUFFIX};

/// One thing wrong with a set or the chain: the file concerned and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (or folder) the problem is about.
    pub file: PathBuf,
    /// What is wrong, in one line.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

impl Problem {
    /// A problem about `file`.
    pub(crate) fn new(file: impl Into<PathBuf>, message: impl Into<String>) -> Problem {
        Problem {
            file: file.into(),
            message: message.into(),
        }
    }
}

/// A loaded certificate with what is needed to verify and to name it.
struct Cert {
    key: PKey<Public>,
    label: String,
}

/// Loads a PEM certificate; the error is a one-line problem about the file.
fn load_cert(path: &Path) -> Result<Cert, Problem> {
    let pem = std::fs::read(path)
        .map_err(|e| Problem::new(path, format!("cannot read certificate: {e}")))?;
    let cert = X509::from_pem(&pem)
        .map_err(|e| Problem::new(path, format!("not a PEM X.509 certificate: {e}")))?;
    let key = cert
        .public_key()
        .map_err(|e| Problem::new(path, format!("certificate has no usable public key: {e}")))?;
    let fingerprint = cert
        .digest(MessageDigest::sha256())
        .map(|d| {
            d.iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":")
        })
        .unwrap_or_default();
    let label = format!(
        "\"{}\" (SHA-256 fingerprint {fingerprint}, from {})",
        common_name(&cert).unwrap_or_default(),
        path.display()
    );
    Ok(Cert { key, label })
}

/// Certificates by source: the given one, or `cert.pem` looked up per folder.
struct Certs {
    given: Option<Result<Cert, Problem>>,
    found: HashMap<PathBuf, Option<PathBuf>>,
    loaded: HashMap<PathBuf, Result<Cert, Problem>>,
}

impl Certs {
    /// Loads the given certificate, if any.
    fn new(given: Option<&Path>) -> Certs {
        let given = given.map(|p| {
            let c = load_cert(p);
            if let Ok(c) = &c {
                tracing::info!(certificate = %c.label, "verifying against the given certificate");
            }
            c
        });
        Certs {
            given,
            found: HashMap::new(),
            loaded: HashMap::new(),
        }
    }

    /// The certificate for a set in `folder`, or a problem saying why there is none.
    fn for_folder(&mut self, folder: &Path, set: &Path) -> Result<&Cert, Problem> {
        if let Some(given) = &self.given {
            return given.as_ref().map_err(Clone::clone);
        }
        let found = self
            .found
            .entry(folder.to_path_buf())
            .or_insert_with(|| {
                let abs = std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf());
                abs.ancestors()
                    .map(|d| d.join(CERT_FILE_NAME))
                    .find(|c| c.is_file())
            })
            .clone();
        let Some(path) = found else {
            return Err(Problem::new(
                set,
                format!("no certificate to check the signature: pass --cert PEM or put the instance's {CERT_FILE_NAME} in the set's folder or a parent"),
            ));
        };
        let cert = self.loaded.entry(path.clone()).or_insert_with(|| {
            let c = load_cert(&path);
            if let Ok(c) = &c {
                tracing::info!(certificate = %c.label, "verifying against a certificate found beside the sets");
            }
            c
        });
        cert.as_ref().map_err(Clone::clone)
    }
}

/// Verifies sets: `path` is a `.sha256` file (or its `.sig`), or a folder whose sets below are all checked.
///
/// Checks the signature of each checksum file (with `cert_pem`, or a found
/// `cert.pem`, see the module documentation) and every checksum line. Returns
/// no problems when everything holds.
pub fn verify_set(path: &Path, cert_pem: Option<&Path>) -> Vec<Problem> {
    let mut certs = Certs::new(cert_pem);
    let (sets, mut problems) = collect_sets(path);
    for set in &sets {
        problems.extend(check_set(set, &mut certs));
    }
    problems
}

/// Walks the sets below `dir`: checks each set (as [`verify_set`]) and the chains
/// of "previous" links; the problems of [`verify_chain_report`].
pub fn verify_chain(dir: &Path, cert_pem: Option<&Path>) -> Vec<Problem> {
    verify_chain_report(dir, cert_pem, None).0
}

/// Walks the sets and tombstones below `dir`: checks each (as [`verify_set`])
/// and the chains between them.
///
/// Sets with a chain position are checked per chain (instance and profile) by
/// sequence number: gaps, altered sets and sets out of sequence are problems; a
/// number held by a valid tombstone is a lawful deletion, listed in the notes.
/// With `tsa_ca`, every `chain-*.tsr` time stamp below `dir` is checked against
/// it, and a stamped set that is neither there nor tombstoned is a problem:
/// sets were cut off the end of the chain.
/// Sets of the older format (linked by base name) are checked as follows.
///
/// Reports by name a set whose previous set is missing (a gap), a previous set
/// that was altered or replaced, forks (two sets naming the same previous),
/// several chain starts of one instance, and cycles. Chains are grouped by the
/// metadata's "instance_id", so sets of several instances may share a folder.
/// Deleting the newest set leaves no trace among the sets themselves; compare
/// with the instance's `chain-head.json` for that.
pub fn verify_chain_report(
    dir: &Path,
    cert_pem: Option<&Path>,
    tsa_ca: Option<&Path>,
) -> (Vec<Problem>, ChainNotes) {
    verify_chain_report_of(dir, cert_pem, tsa_ca, None)
}

/// As [`verify_chain_report`], for the chains of one instance only: sets whose
/// metadata names `instance` (its name or its id), and the tombstones of those
/// chains. Each instance signs with its own key, so a folder holding the sets
/// of several instances is checked once per instance, each with its certificate.
pub fn verify_chain_report_of(
    dir: &Path,
    cert_pem: Option<&Path>,
    tsa_ca: Option<&Path>,
    instance: Option<&str>,
) -> (Vec<Problem>, ChainNotes) {
    let mut certs = Certs::new(cert_pem);
    let (mut sets, mut problems) = collect_sets(dir);
    if let Some(instance) = instance {
        sets = sets_of_instance(sets, instance);
    }
    let mut nodes = Vec::new();
    let mut members = Vec::new();
    for set in &sets {
        let own = check_set(set, &mut certs);
        let sound = own.is_empty();
        problems.extend(own);
        match read_node(set) {
            Ok(Read::Legacy(node)) => nodes.push(node),
            // A tombstone that does not verify covers nothing.
            Ok(Read::Member(m)) if m.deleted.is_some() && !sound => {}
            Ok(Read::Member(m)) => members.push(*m),
            // Checked above with its own signature; it names its set by hash.
            Ok(Read::Addendum) => {}
            Err(p) => problems.push(p),
        }
    }
    problems.extend(check_links(&nodes, dir));
    let (chain_problems, mut notes) = check_chains(&members, dir);
    problems.extend(chain_problems);
    problems.extend(check_stamps(dir, tsa_ca, &members, &mut notes));
    (problems, notes)
}

/// The instance id and name a set's (or tombstone's) metadata names.
fn instance_of(sums: &Path) -> (Option<String>, Option<String>) {
    let (folder, base) = split_set(sums);
    let Some(meta) = std::fs::read(folder.join(format!("{base}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return (None, None);
    };
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
    let id = match Tombstone::from_json(&meta) {
        Some(Ok(t)) => Some(t.position.instance_id),
        _ => text(meta.get("instance_id")),
    };
    (id, text(meta.get("instance_name")))
}

/// The sets of `instance` (a name or an id) among `sets`: those naming it, and
/// those (tombstones included) of an instance id such a set carries. A set
/// that cannot be read is kept, so that its problem is reported.
fn sets_of_instance(sets: Vec<PathBuf>, instance: &str) -> Vec<PathBuf> {
    let seen: Vec<(PathBuf, Option<String>, Option<String>)> = sets
        .into_iter()
        .map(|s| {
            let (id, name) = instance_of(&s);
            (s, id, name)
        })
        .collect();
    let mut ids: std::collections::HashSet<String> = seen
        .iter()
        .filter(|(_, _, name)| name.as_deref() == Some(instance))
        .filter_map(|(_, id, _)| id.clone())
        .collect();
    ids.insert(instance.to_string());
    seen.into_iter()
        .filter(|(_, id, _)| id.as_ref().is_none_or(|id| ids.contains(id)))
        .map(|(s, _, _)| s)
        .collect()
}

/// What a checksum file's metadata turned out to be.
enum Read {
    /// A set of the older format, linked by base name.
    Legacy(Node),
    /// A set with a chain position, or a tombstone.
    Member(Box<Member>),
    /// An addendum (a transcript) to a set: no link of the chain.
    Addendum,
}

/// Reads what the chain check needs from a set's checksum and metadata files.
fn read_node(sums: &Path) -> Result<Read, Problem> {
    let (folder, base) = split_set(sums);
    let json = folder.join(format!("{base}.json"));
    let sums_sha256 = std::fs::read(sums)
        .map(|b| sha256_bytes(&b))
        .map_err(|e| Problem::new(sums, format!("cannot read: {e}")))?;
    let text = std::fs::read(&json)
        .map_err(|e| Problem::new(&json, format!("cannot read metadata: {e}")))?;
    let meta: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| Problem::new(&json, format!("metadata is not JSON: {e}")))?;
    if super::addendum::is_addendum(&meta) {
        return Ok(Read::Addendum);
    }
    if let Some(t) = Tombstone::from_json(&meta) {
        let t = t.map_err(|e| Problem::new(&json, e))?;
        return Ok(Read::Member(Box::new(Member {
            json,
            position: t.position.clone(),
            sums_sha256: t.checksum_sha256.to_ascii_lowercase(),
            deleted: Some(t),
        })));
    }
    if let Some(position) = position_of(&meta) {
        return Ok(Read::Member(Box::new(Member {
            position: position.map_err(|e| Problem::new(&json, e))?,
            json,
            sums_sha256,
            deleted: None,
        })));
    }
    let previous = meta.get("previous").ok_or_else(|| {
        Problem::new(&json, "no \"previous\" key: the set is not part of a chain")
    })?;
    let previous = ChainLink::from_json(previous).map_err(|e| Problem::new(&json, e))?;
    Ok(Read::Legacy(Node {
        id: base,
        instance: meta
            .get("instance_id")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string(),
        json,
        previous,
        sums_sha256,
    }))
}

/// Folder and base name of a set from its checksum file's path.
fn split_set(sums: &Path) -> (PathBuf, String) {
    let folder = sums.parent().unwrap_or(Path::new(".")).to_path_buf();
    let name = sums
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = name
        .strip_suffix(CHECKSUM_SUFFIX)
        .unwrap_or(&name)
        .to_string();
    (folder, base)
}

/// The checksum files named by `path` (a file or a folder searched recursively), sorted.
fn collect_sets(path: &Path) -> (Vec<PathBuf>, Vec<Problem>) {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return (
                vec![],
                vec![Problem::new(path, format!("cannot access: {e}"))],
            )
        }
    };
    if meta.is_file() {
        let name = path.to_string_lossy();
        if let Some(sums) = name.strip_suffix(SIGNATURE_SUFFIX) {
            return (vec![PathBuf::from(sums)], vec![]);
        }
        if name.ends_with(CHECKSUM_SUFFIX) {
            return (vec![path.to_path_buf()], vec![]);
        }
        return (
            vec![],
            vec![Problem::new(
                path,
                format!("not a checksum file (*{CHECKSUM_SUFFIX}) or a folder of sets"),
            )],
        );
    }
    let mut sets = Vec::new();
    let mut problems = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                problems.push(Problem::new(&dir, format!("cannot list folder: {e}")));
                continue;
            }
        };
        for entry in entries.flatten() {
            let p = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                dirs.push(p);
            } else if p.to_string_lossy().ends_with(CHECKSUM_SUFFIX) {
                sets.push(p);
            }
        }
    }
    if sets.is_empty() && problems.is_empty() {
        problems.push(Problem::new(
            path,
            format!("no sealed set (*{CHECKSUM_SUFFIX}) found below"),
        ));
    }
    sets.sort();
    (sets, problems)
}

/// Checks one set: its signature first (it vouches for the checksum file), then each line.
fn check_set(sums: &Path, certs: &mut Certs) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut signed = false;
    let (folder, base) = split_set(sums);
    let sums_name = format!("{base}{CHECKSUM_SUFFIX}");
    let bytes = match std::fs::read(sums) {
        Ok(b) => b,
        Err(e) => {
            return vec![Problem::new(
                sums,
                format!("cannot read checksum file: {e}"),
            )]
        }
    };
    let sig_path = folder.join(format!("{sums_name}{SIGNATURE_SUFFIX}"));
    match std::fs::read(&sig_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => problems.push(Problem::new(
            &sig_path,
            format!("signature missing: the set {base} is incomplete or its signature was deleted"),
        )),
        Err(e) => problems.push(Problem::new(
            &sig_path,
            format!("cannot read signature: {e}"),
        )),
        Ok(sig_text) => {
            let compact: Vec<u8> = sig_text
                .into_iter()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            match base64::engine::general_purpose::STANDARD.decode(&compact) {
                Err(e) => problems.push(Problem::new(
                    &sig_path,
                    format!("signature is not valid base64 ({e}): the signature file was altered"),
                )),
                Ok(sig) => match certs.for_folder(&folder, sums) {
                    Err(p) => problems.push(p),
                    Ok(cert) => {
                        let ok = Verifier::new(MessageDigest::sha256(), &cert.key)
                            .and_then(|mut v| {
                                v.update(&bytes)?;
                                v.verify(&sig)
                            })
                            .unwrap_or(false);
                        signed = ok;
                        if !ok {
                            problems.push(Problem::new(
                                &sig_path,
                                format!(
                                    "signature does not verify for {sums_name} with certificate {}: {sums_name} or the signature was altered, or another instance signed the set",
                                    cert.label
                                ),
                            ));
                        }
                    }
                },
            }
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let (entries, errors) = parse(&text);
    for (line, what) in errors {
        problems.push(Problem::new(sums, format!("line {line}: {what}")));
    }
    let json_name = format!("{base}.json");
    if !entries.iter().any(|e| e.name == json_name) {
        problems.push(Problem::new(
            sums,
            format!("does not list the metadata file {json_name}"),
        ));
    }
    for entry in entries {
        let file = folder.join(&entry.name);
        match sha256_file(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => problems.push(Problem::new(
                &file,
                format!("missing (listed in {sums_name})"),
            )),
            Err(e) => problems.push(Problem::new(&file, format!("cannot read: {e}"))),
            Ok(actual) if actual != entry.sha256 => problems.push(Problem::new(
                &file,
                if signed {
                    format!("content differs from its SHA-256 in {sums_name}: the file was altered")
                } else {
                    format!("content differs from its SHA-256 in {sums_name}: the file or (unsigned) {sums_name} was altered")
                },
            )),
            Ok(_) => {}
        }
    }
    problems
}
