//! Verification of sealed sets (checksums and signature) and of the chain between them.
//!
//! Certificate lookup: when no certificate is given, the first `cert.pem` found
//! in the set's folder or one of its parents is used. The instance writes its
//! certificate to `data_dir/cert.pem` on every start, so sets in the spool below
//! the data dir verify without `--cert`; exports put `cert.pem` at their
//! root. A certificate found beside the sets proves integrity, not origin: to
//! prove that a set comes from a given instance, pass that instance's
//! certificate explicitly (or check the found one's fingerprint, which is logged).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::sign::Verifier;
use openssl::x509::X509;

use super::chain::ChainLink;
use super::checksum::{parse, sha256_bytes, sha256_file};
use super::identity::common_name;
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
    fn new(file: impl Into<PathBuf>, message: impl Into<String>) -> Problem {
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

/// Walks the sets below `dir`: checks each set (as [`verify_set`]) and the chain of "previous" links.
///
/// Reports by name a set whose previous set is missing (a gap), a previous set
/// that was altered or replaced, forks (two sets naming the same previous),
/// several chain starts of one instance, and cycles. Chains are grouped by the
/// metadata's "instance_id", so sets of several instances may share a folder.
/// Deleting the newest set leaves no trace among the sets themselves; compare
/// with the instance's `chain-head.json` for that.
pub fn verify_chain(dir: &Path, cert_pem: Option<&Path>) -> Vec<Problem> {
    let mut certs = Certs::new(cert_pem);
    let (sets, mut problems) = collect_sets(dir);
    let mut nodes = Vec::new();
    for set in &sets {
        problems.extend(check_set(set, &mut certs));
        match read_node(set) {
            Ok(node) => nodes.push(node),
            Err(p) => problems.push(p),
        }
    }
    problems.extend(check_links(&nodes, dir));
    problems
}

/// A set as seen by the chain check.
struct Node {
    id: String,
    json: PathBuf,
    instance: String,
    previous: Option<ChainLink>,
    sums_sha256: String,
}

/// Reads what the chain check needs from a set's checksum and metadata files.
fn read_node(sums: &Path) -> Result<Node, Problem> {
    let (folder, base) = split_set(sums);
    let json = folder.join(format!("{base}.json"));
    let sums_sha256 = std::fs::read(sums)
        .map(|b| sha256_bytes(&b))
        .map_err(|e| Problem::new(sums, format!("cannot read: {e}")))?;
    let text = std::fs::read(&json)
        .map_err(|e| Problem::new(&json, format!("cannot read metadata: {e}")))?;
    let meta: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| Problem::new(&json, format!("metadata is not JSON: {e}")))?;
    let previous = meta.get("previous").ok_or_else(|| {
        Problem::new(&json, "no \"previous\" key: the set is not part of a chain")
    })?;
    let previous = ChainLink::from_json(previous).map_err(|e| Problem::new(&json, e))?;
    Ok(Node {
        id: base,
        instance: meta
            .get("instance_id")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string(),
        json,
        previous,
        sums_sha256,
    })
}

/// Checks the previous links of all nodes, per instance.
fn check_links(nodes: &[Node], dir: &Path) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut groups: BTreeMap<&str, Vec<&Node>> = BTreeMap::new();
    for n in nodes {
        groups.entry(&n.instance).or_default().push(n);
    }
    for (instance, group) in groups {
        let mut by_id: HashMap<&str, &Node> = HashMap::new();
        for n in &group {
            if let Some(other) = by_id.insert(&n.id, n) {
                problems.push(Problem::new(
                    &n.json,
                    format!("set {} appears twice (also {})", n.id, other.json.display()),
                ));
            }
        }
        let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut starts = Vec::new();
        let mut roots = Vec::new();
        for n in &group {
            let Some(link) = &n.previous else {
                roots.push(n.id.as_str());
                starts.push(n.id.as_str());
                continue;
            };
            if link.id == n.id {
                problems.push(Problem::new(
                    &n.json,
                    "out of order: \"previous\" names the set itself",
                ));
                starts.push(n.id.as_str());
                continue;
            }
            if link.checksum_file != format!("{}{CHECKSUM_SUFFIX}", link.id) {
                problems.push(Problem::new(
                    &n.json,
                    format!(
                        "\"previous\" names checksum file {} for set {}",
                        link.checksum_file, link.id
                    ),
                ));
            }
            match by_id.get(link.id.as_str()) {
                None => {
                    problems.push(Problem::new(
                        &n.json,
                        format!(
                            "gap in the chain: previous set {} is missing below {} (deleted, or not copied); the chain continues with {}",
                            link.id,
                            dir.display(),
                            n.id
                        ),
                    ));
                    starts.push(n.id.as_str());
                }
                Some(prev) => {
                    if prev.sums_sha256 != link.sha256.to_ascii_lowercase() {
                        problems.push(Problem::new(
                            &n.json,
                            format!(
                                "previous set {} was altered or replaced: {} has SHA-256 {}, the chain recorded {}",
                                link.id, link.checksum_file, prev.sums_sha256, link.sha256
                            ),
                        ));
                    }
                    children.entry(&prev.id).or_default().push(&n.id);
                }
            }
        }
        let who = if instance.is_empty() {
            String::new()
        } else {
            format!(" of instance {instance}")
        };
        if roots.len() > 1 {
            roots.sort_unstable();
            problems.push(Problem::new(
                dir,
                format!(
                    "out of order: several sets start the chain{who} (\"previous\": null): {} (chain head lost or data dir reset)",
                    roots.join(", ")
                ),
            ));
        }
        for (parent, kids) in &children {
            if kids.len() > 1 {
                let mut kids = kids.clone();
                kids.sort_unstable();
                problems.push(Problem::new(
                    &by_id[parent].json,
                    format!(
                        "out of order: fork, set {parent} is named as previous by {} (chain head restored from an old state?)",
                        kids.join(", ")
                    ),
                ));
            }
        }
        // Whatever cannot be reached from a start lies on a cycle of links.
        let mut seen: HashSet<&str> = HashSet::new();
        let mut stack = starts;
        while let Some(id) = stack.pop() {
            if seen.insert(id) {
                stack.extend(children.get(id).into_iter().flatten().copied());
            }
        }
        let mut cyclic: Vec<&&Node> = group
            .iter()
            .filter(|n| !seen.contains(n.id.as_str()))
            .collect();
        cyclic.sort_by(|a, b| a.id.cmp(&b.id));
        for n in cyclic {
            problems.push(Problem::new(
                &n.json,
                "out of order: the set lies on a cycle of \"previous\" links",
            ));
        }
    }
    problems
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A node whose previous is `prev` (with the hash that `prev`'s node carries).
    fn node(id: &str, prev: Option<&str>) -> Node {
        Node {
            id: id.into(),
            json: PathBuf::from(format!("{id}.json")),
            instance: "i1".into(),
            previous: prev.map(|p| ChainLink {
                id: p.into(),
                checksum_file: format!("{p}.sha256"),
                sha256: format!("hash-{p}"),
            }),
            sums_sha256: format!("hash-{id}"),
        }
    }

    #[test]
    fn intact_chain_has_no_problems() {
        let nodes = [node("a", None), node("b", Some("a")), node("c", Some("b"))];
        assert_eq!(check_links(&nodes, Path::new("d")), vec![]);
    }

    #[test]
    fn cycle_and_second_start_are_out_of_order() {
        let nodes = [
            node("a", None),
            node("x", Some("y")),
            node("y", Some("x")),
            node("z", None),
        ];
        let problems = check_links(&nodes, Path::new("d"));
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|p| p.starts_with("x.json") && p.contains("cycle")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|p| p.starts_with("y.json") && p.contains("cycle")),
            "{text:?}"
        );
        assert!(
            text.iter().any(
                |p| p.contains("several sets start the chain of instance i1")
                    && p.contains(": a, z (")
            ),
            "{text:?}"
        );
        assert_eq!(problems.len(), 3, "{text:?}");
    }

    #[test]
    fn instances_have_separate_chains() {
        let mut other = node("o", None);
        other.instance = "i2".into();
        let nodes = [node("a", None), node("b", Some("a")), other];
        assert_eq!(check_links(&nodes, Path::new("d")), vec![]);
    }
}
