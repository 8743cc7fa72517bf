//! A power cut at every phase boundary of a group commit, with every pattern
//! of the writes since the last barrier surviving or not: after the next
//! start (`Sealer::resume`, then the recordings left unsealed sealed again as
//! recovery does from their journals) every recording is sealed exactly once
//! and `verify --chain` finds the chain whole.

use std::path::{Path, PathBuf};

use super::batch::Phase;
use super::{verify_chain, Identity, PasswordSource, SealRequest, Sealer};
use super::{CHECKSUM_SUFFIX, SIGNATURE_SUFFIX};

/// What a power cut does to one file written since the last barrier.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// The write never reached the disk.
    Lost,
    /// It did.
    Kept,
    /// The file exists but is empty (a journal-less ext4 after a cut).
    Emptied,
}

const GROUP: usize = 4;

fn identity_files() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        Identity::load_or_create(d.path(), PasswordSource::Value("pw".into())).unwrap();
        d
    })
    .path()
}

/// A fresh data folder with the shared identity, and its `work/`.
fn data_dir() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let work = data.join("work");
    std::fs::create_dir_all(&work).unwrap();
    for f in ["keystore.p12", "instance-id"] {
        std::fs::copy(identity_files().join(f), data.join(f)).unwrap();
    }
    (dir, data, work)
}

fn sealer(data: &Path) -> Sealer {
    let identity = Identity::load_or_create(data, PasswordSource::Value("pw".into())).unwrap();
    Sealer::new(identity, data).unwrap()
}

fn request(work: &Path, base: &str) -> SealRequest {
    SealRequest {
        folder: work.to_path_buf(),
        base_name: base.to_string(),
        metadata: serde_json::json!({"base_name": base}),
        files: vec![PathBuf::from(format!("{base}.wav"))],
    }
}

/// The files a group wrote after its last barrier when it stopped after `phase`.
fn pending(work: &Path, phase: Phase, bases: &[String]) -> Vec<PathBuf> {
    let of = |suffix: &str| -> Vec<PathBuf> {
        bases
            .iter()
            .map(|b| work.join(format!("{b}{suffix}")))
            .collect()
    };
    match phase {
        Phase::Written => [of(".json"), of(CHECKSUM_SUFFIX)].concat(),
        Phase::Signed => of(&format!("{CHECKSUM_SUFFIX}{SIGNATURE_SUFFIX}")),
        Phase::WrittenDurable | Phase::SignedDurable => Vec::new(),
    }
}

fn signed(work: &Path, base: &str) -> bool {
    let sig = work.join(format!("{base}{CHECKSUM_SUFFIX}{SIGNATURE_SUFFIX}"));
    std::fs::metadata(sig).is_ok_and(|m| m.len() > 0)
}

/// One scenario: two sets sealed, a group of four cut off after `phase` with
/// `cut(i)` applied to the i-th pending file, the next start, one set more.
fn scenario(phase: Phase, pattern: &str, cut: impl Fn(usize) -> Cut) {
    let (_dir, data, work) = data_dir();
    let bases: Vec<String> = (0..2 + GROUP + 1).map(|i| format!("rec{i}")).collect();
    for b in &bases {
        std::fs::write(work.join(format!("{b}.wav")), format!("audio of {b}")).unwrap();
    }
    let group = &bases[2..2 + GROUP];
    {
        let mut s = sealer(&data);
        for b in &bases[..2] {
            s.seal(
                &work,
                b,
                serde_json::json!({"base_name": b}),
                &[PathBuf::from(format!("{b}.wav"))],
            )
            .unwrap();
        }
        let requests = group.iter().map(|b| request(&work, b)).collect();
        s.seal_group_until(requests, Some(phase));
    }
    for (i, f) in pending(&work, phase, group).iter().enumerate() {
        match cut(i) {
            Cut::Lost => {
                let _ = std::fs::remove_file(f);
            }
            Cut::Kept => {}
            Cut::Emptied => std::fs::write(f, b"").unwrap(),
        }
    }
    // The next start: resume, then what recovery does with the journals of
    // recordings that are still unsealed (seal them again), then a new call.
    let mut s = sealer(&data);
    s.resume(&work).unwrap();
    for b in group {
        if !signed(&work, b) {
            s.seal(
                &work,
                b,
                serde_json::json!({"base_name": b}),
                &[PathBuf::from(format!("{b}.wav"))],
            )
            .unwrap();
        }
    }
    let last = &bases[2 + GROUP];
    s.seal(
        &work,
        last,
        serde_json::json!({"base_name": last}),
        &[PathBuf::from(format!("{last}.wav"))],
    )
    .unwrap();

    let problems = verify_chain(&work, None);
    assert!(
        problems.is_empty(),
        "cut after {phase:?} ({pattern}): verify --chain: {problems:#?}"
    );
    let mut seqs = Vec::new();
    for b in &bases {
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(work.join(format!("{b}.json"))).unwrap())
                .unwrap();
        seqs.push(meta["chain"]["seq"].as_u64().unwrap());
    }
    seqs.sort_unstable();
    let want: Vec<u64> = (1..=bases.len() as u64).collect();
    assert_eq!(
        seqs, want,
        "cut after {phase:?} ({pattern}): one set per recording, no gap"
    );
}

#[test]
fn a_power_cut_at_any_phase_of_a_group_leaves_a_whole_chain() {
    type Pattern = (&'static str, fn(usize) -> Cut);
    let patterns: [Pattern; 5] = [
        ("all lost", |_| Cut::Lost),
        ("all kept", |_| Cut::Kept),
        ("all emptied", |_| Cut::Emptied),
        ("first half lost", |i| {
            if i % GROUP < GROUP / 2 {
                Cut::Lost
            } else {
                Cut::Kept
            }
        }),
        ("every other emptied", |i| {
            if i % 2 == 0 {
                Cut::Emptied
            } else {
                Cut::Kept
            }
        }),
    ];
    for phase in [
        Phase::Written,
        Phase::WrittenDurable,
        Phase::Signed,
        Phase::SignedDurable,
    ] {
        for (name, cut) in patterns {
            scenario(phase, name, cut);
        }
    }
}

#[test]
fn a_set_listed_twice_in_a_group_is_refused_once_and_the_first_verifies() {
    let (_dir, data, work) = data_dir();
    std::fs::write(work.join("a.wav"), "audio of a").unwrap();
    let mut s = sealer(&data);
    let results = s.seal_group(vec![request(&work, "a"), request(&work, "a")]);
    assert!(results[0].is_ok(), "{results:?}");
    let refused = results[1].as_ref().unwrap_err().to_string();
    assert!(refused.contains("twice"), "{refused}");
    let problems = verify_chain(&work, None);
    assert!(problems.is_empty(), "{problems:#?}");
}
