//! The chain check of `verify --chain` for sets that carry a chain position
//! (instance, profile, sequence number, set id): per chain, every number from 1
//! to the highest seen must be held by a set or by a valid tombstone whose
//! links agree; what is not is named as a gap, an altered set or a set out of
//! sequence. Tombstones are reported as lawful deletions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::chain::ChainLink;
use super::tombstone::{ChainPosition, Tombstone};
use super::verify::Problem;

/// A set or a tombstone as the chain check sees it.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// Its metadata file (what problems name).
    pub json: PathBuf,
    /// Its place in the chain.
    pub position: ChainPosition,
    /// SHA-256 of the set's checksum file (for a tombstone: the recorded one).
    pub sums_sha256: String,
    /// Present when this is a tombstone.
    pub deleted: Option<Tombstone>,
}

/// What the chain check found beyond problems: lawful deletions, chain heads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainNotes {
    /// One line per tombstone accepted ("deleted lawfully on …").
    pub deletions: Vec<String>,
    /// Per chain ("instance/profile"): the highest sequence number seen and the
    /// SHA-256 of that member's checksum file.
    pub heads: BTreeMap<String, (u64, String)>,
    /// One line per time stamp checked (or left unchecked for want of a TSA certificate).
    pub stamps: Vec<String>,
}

/// Checks every `chain-*.tsr` below `dir` against the TSA certificate
/// `tsa_ca`: each must verify and cover a set (or a tombstone) still there;
/// a covered set that is gone means sets were cut off the end of the chain.
pub(crate) fn check_stamps(
    dir: &Path,
    tsa_ca: Option<&Path>,
    members: &[Member],
    notes: &mut ChainNotes,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                dirs.push(p);
            } else if name.starts_with("chain-") && name.ends_with(".tsr") {
                files.push(p);
            }
        }
    }
    files.sort();
    let Some(ca_path) = tsa_ca else {
        if !files.is_empty() {
            notes.stamps.push(format!(
                "{} time stamp(s) found but not checked: give --tsa-ca with the TSA's certificate",
                files.len()
            ));
        }
        return problems;
    };
    let ca = match std::fs::read(ca_path).map(|pem| openssl::x509::X509::from_pem(&pem)) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return vec![Problem::new(ca_path, format!("not a PEM certificate: {e}"))],
        Err(e) => return vec![Problem::new(ca_path, format!("cannot read: {e}"))],
    };
    for f in files {
        let stamp = std::fs::read(&f)
            .map_err(|e| e.to_string())
            .and_then(|b| super::timestamp::verify(&b, &ca).map_err(|e| e.to_string()));
        let stamp = match stamp {
            Ok(s) => s,
            Err(e) => {
                problems.push(Problem::new(&f, format!("time stamp does not verify: {e}")));
                continue;
            }
        };
        match members.iter().find(|m| m.sums_sha256 == stamp.imprint) {
            Some(m) => notes.stamps.push(format!(
                "{}: number {} of chain {} existed on {} (time stamp verified)",
                f.display(),
                m.position.seq,
                chain_name(&m.position),
                stamp.time
            )),
            None => problems.push(Problem::new(
                &f,
                format!(
                    "sets cut off the end of the chain: this time stamp shows that a set with checksum-file SHA-256 {} existed on {}, and neither it nor its tombstone is below {}",
                    stamp.imprint,
                    stamp.time,
                    dir.display()
                ),
            )),
        }
    }
    problems
}

/// The name of a chain in messages.
pub(crate) fn chain_name(p: &ChainPosition) -> String {
    format!("{}/{}", p.instance_id, p.profile)
}

/// Checks every chain among `members`; problems name the file concerned.
pub(crate) fn check_chains(members: &[Member], dir: &Path) -> (Vec<Problem>, ChainNotes) {
    let mut problems = Vec::new();
    let mut notes = ChainNotes::default();
    let mut chains: BTreeMap<String, BTreeMap<u64, Vec<&Member>>> = BTreeMap::new();
    for m in members {
        chains
            .entry(chain_name(&m.position))
            .or_default()
            .entry(m.position.seq)
            .or_default()
            .push(m);
    }
    for (chain, by_seq) in chains {
        let Some((&max, _)) = by_seq.last_key_value() else {
            continue;
        };
        // Several holders of one number: a fork, or a set and its own tombstone.
        let mut held: BTreeMap<u64, &Member> = BTreeMap::new();
        for (&seq, ms) in &by_seq {
            let sets: Vec<&Member> = ms.iter().copied().filter(|m| m.deleted.is_none()).collect();
            if sets.len() > 1 {
                let mut names: Vec<String> = sets.iter().map(|m| stem(&m.json)).collect();
                names.sort();
                let after = by_seq
                    .get(&(seq - 1))
                    .and_then(|b| b.first())
                    .map(|b| format!(" after {}", stem(&b.json)))
                    .unwrap_or_default();
                problems.push(Problem::new(
                    &sets[0].json,
                    format!(
                        "out of sequence: fork, sets {} all hold number {seq} of chain {chain}{after} (chain head restored from an old state, or a forged set)",
                        names.join(", ")
                    ),
                ));
            }
            held.insert(seq, sets.first().copied().unwrap_or(ms[0]));
        }
        // Gaps: runs of numbers nobody holds.
        let mut seq = 1;
        while seq <= max {
            if held.contains_key(&seq) {
                seq += 1;
                continue;
            }
            let start = seq;
            while seq <= max && !held.contains_key(&seq) {
                seq += 1;
            }
            let next = held.get(&seq);
            let named = next
                .and_then(|n| n.position.previous.as_ref())
                .map(|l| format!(" (the last one is set id {})", l.id))
                .unwrap_or_default();
            let range = if seq - 1 == start {
                format!("number {start}")
            } else {
                format!("numbers {start}–{}", seq - 1)
            };
            problems.push(Problem::new(
                next.map_or_else(|| dir.to_path_buf(), |n| n.json.clone()),
                format!(
                    "gap in chain {chain}: set {range}{named} missing below {} with no deletion record (deleted unlawfully, or not copied)",
                    dir.display()
                ),
            ));
        }
        for (&seq, m) in &held {
            check_link(
                m,
                seq,
                held.get(&(seq.wrapping_sub(1))),
                &chain,
                &mut problems,
            );
            if let Some(t) = &m.deleted {
                notes.deletions.push(format!(
                    "{}: set number {seq} of chain {chain} (set id {}) deleted lawfully on {}: {}",
                    m.json.display(),
                    t.position.set_id,
                    t.deleted_at,
                    t.reason
                ));
            }
        }
        if let Some(head) = held.get(&max) {
            notes.heads.insert(chain, (max, head.sums_sha256.clone()));
        }
    }
    (problems, notes)
}

/// A metadata file's name without `.json` (the set's base name).
fn stem(json: &Path) -> String {
    let name = json.file_name().unwrap_or_default().to_string_lossy();
    name.strip_suffix(".json").unwrap_or(&name).to_string()
}

/// Checks the "previous" link of the member at `seq` against the member before it.
fn check_link(
    m: &Member,
    seq: u64,
    before: Option<&&Member>,
    chain: &str,
    problems: &mut Vec<Problem>,
) {
    let link: Option<&ChainLink> = m.position.previous.as_ref();
    match (seq, link) {
        (1, None) => {}
        (1, Some(l)) => problems.push(Problem::new(
            &m.json,
            format!(
                "out of sequence: number 1 of chain {chain} names a previous set ({})",
                l.id
            ),
        )),
        (_, None) => problems.push(Problem::new(
            &m.json,
            format!("out of sequence: number {seq} of chain {chain} names no previous set"),
        )),
        (_, Some(l)) => {
            if l.seq.is_some_and(|p| p + 1 != seq) {
                problems.push(Problem::new(
                    &m.json,
                    format!(
                        "out of sequence: number {seq} of chain {chain} links to number {}",
                        l.seq.unwrap_or_default()
                    ),
                ));
            }
            let Some(prev) = before else {
                return; // The gap is reported already.
            };
            if prev.position.set_id != l.id {
                problems.push(Problem::new(
                    &m.json,
                    format!(
                        "set number {} of chain {chain} was altered or replaced: number {seq} links to set id {}, but {} is set id {}",
                        seq - 1,
                        l.id,
                        prev.json.display(),
                        prev.position.set_id
                    ),
                ));
            } else if prev.sums_sha256 != l.sha256.to_ascii_lowercase() {
                problems.push(Problem::new(
                    &prev.json,
                    format!(
                        "set number {} of chain {chain} was altered or replaced: its checksum file has SHA-256 {}, the next set recorded {}",
                        seq - 1,
                        prev.sums_sha256,
                        l.sha256
                    ),
                ));
            }
        }
    }
}
