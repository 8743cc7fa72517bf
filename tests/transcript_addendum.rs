//! Transcript addenda without a speech model: a sealed set gets an addendum
//! (`<base>_transcript.*`) sealed with the instance key; `verify` checks it and
//! names a tampered transcript, `verify --chain` passes it over (it is no
//! chain link), the checksum file verifies with `shasum -c` and the signature
//! with `openssl dgst`, and local purge deletes it with the set.

use std::path::Path;
use std::process::Command;

use callrec::seal::{seal_addendum, verify_chain, verify_set, Identity, PasswordSource, Sealer};

/// A sealed set `20260301_101502_in_49301_200_ab12` with a stereo WAV in `folder`.
fn sealed_set(data: &Path, folder: &Path) -> (Identity, String) {
    let identity = Identity::load_or_create(data, PasswordSource::Value("pw".into())).unwrap();
    let mut sealer = Sealer::new(identity.clone(), data).unwrap();
    let base = "20260301_101502_in_49301_200_ab12".to_string();
    std::fs::write(folder.join(format!("{base}.wav")), b"RIFF fake audio").unwrap();
    sealer
        .seal(
            folder,
            &base,
            serde_json::json!({"profile": "default"}),
            &[folder.join(format!("{base}.wav"))],
        )
        .unwrap();
    (identity, base)
}

fn add_transcript(identity: &Identity, folder: &Path, base: &str) {
    seal_addendum(
        identity,
        folder,
        base,
        "transcript",
        serde_json::json!({"language": "de", "segments": [{"party": "caller", "start_ms": 0, "end_ms": 900, "text": "Ich kaufe Aktien"}]}),
        &[(
            format!("{base}_transcript.txt"),
            b"[00:00.000] caller: Ich kaufe Aktien\n".to_vec(),
        )],
    )
    .unwrap();
}

#[test]
fn addendum_verifies_and_chain_passes_it_over() {
    let data = tempfile::tempdir().unwrap();
    let folder = data.path().join("recordings");
    std::fs::create_dir_all(&folder).unwrap();
    let (identity, base) = sealed_set(data.path(), &folder);
    add_transcript(&identity, &folder, &base);
    for name in [
        "_transcript.json",
        "_transcript.txt",
        "_transcript.sha256",
        "_transcript.sha256.SHA256withRSA.sig",
    ] {
        assert!(
            folder.join(format!("{base}{name}")).is_file(),
            "{name} missing"
        );
    }
    let sums = std::fs::read_to_string(folder.join(format!("{base}_transcript.sha256"))).unwrap();
    assert!(
        sums.contains(&format!("  {base}.sha256\n")),
        "the addendum lists the set's checksum file:\n{sums}"
    );
    let problems = verify_set(&folder, None);
    assert!(problems.is_empty(), "{problems:?}");
    let problems = verify_chain(&folder, None);
    assert!(
        problems.is_empty(),
        "verify --chain must pass the addendum over: {problems:?}"
    );
}

#[test]
fn tampered_transcript_fails_verify_with_a_clear_message() {
    for tampered in ["_transcript.txt", "_transcript.json"] {
        let data = tempfile::tempdir().unwrap();
        let folder = data.path().join("recordings");
        std::fs::create_dir_all(&folder).unwrap();
        let (identity, base) = sealed_set(data.path(), &folder);
        add_transcript(&identity, &folder, &base);
        let file = folder.join(format!("{base}{tampered}"));
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, text.replace("Aktien", "Anleihen")).unwrap();
        let problems = verify_set(&folder, None);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].file, file);
        assert!(
            problems[0].message.contains("the file was altered"),
            "{}",
            problems[0]
        );
        // The chain check reports it too, not as a chain problem.
        let chain = verify_chain(&folder, None);
        assert_eq!(chain.len(), 1, "{chain:?}");
    }
}

#[test]
fn replacing_the_set_breaks_its_addendum() {
    // An addendum moved next to another set (or a set re-sealed under the old
    // name) no longer matches: the set's checksum file is bound by hash.
    let data = tempfile::tempdir().unwrap();
    let folder = data.path().join("recordings");
    std::fs::create_dir_all(&folder).unwrap();
    let (identity, base) = sealed_set(data.path(), &folder);
    add_transcript(&identity, &folder, &base);
    let sums = folder.join(format!("{base}.sha256"));
    let mut text = std::fs::read_to_string(&sums).unwrap();
    text.push_str(&format!("{}  extra.wav\n", "0".repeat(64)));
    std::fs::write(&sums, text).unwrap();
    let problems = verify_set(&folder.join(format!("{base}_transcript.sha256")), None);
    assert!(
        problems
            .iter()
            .any(|p| p.file == sums && p.message.contains("altered")),
        "{problems:?}"
    );
}

#[test]
fn addendum_checks_with_shasum_and_openssl() {
    let data = tempfile::tempdir().unwrap();
    let folder = data.path().join("recordings");
    std::fs::create_dir_all(&folder).unwrap();
    let (identity, base) = sealed_set(data.path(), &folder);
    add_transcript(&identity, &folder, &base);
    let sums = format!("{base}_transcript.sha256");
    let out = Command::new("shasum")
        .args(["-a", "256", "-c", &sums])
        .current_dir(&folder)
        .output()
        .expect("shasum (perl) must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let pubkey = data.path().join("pub.pem");
    let st = Command::new("openssl")
        .args(["x509", "-in"])
        .arg(data.path().join("cert.pem"))
        .args(["-pubkey", "-noout", "-out"])
        .arg(&pubkey)
        .status()
        .expect("openssl must be installed");
    assert!(st.success());
    let sig_b64 = folder.join(format!("{sums}.SHA256withRSA.sig"));
    let sig_bin = data.path().join("sig.bin");
    let st = Command::new("openssl")
        .args(["base64", "-d", "-in"])
        .arg(&sig_b64)
        .arg("-out")
        .arg(&sig_bin)
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&pubkey)
        .arg("-signature")
        .arg(&sig_bin)
        .arg(folder.join(&sums))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Verified OK"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn local_purge_and_export_take_the_addendum_with_the_set() {
    let data = tempfile::tempdir().unwrap();
    let folder = data.path().join("recordings");
    std::fs::create_dir_all(&folder).unwrap();
    let (identity, base) = sealed_set(data.path(), &folder);
    add_transcript(&identity, &folder, &base);
    let files = callrec::archive::set_files(&folder.join(format!("{base}.sha256"))).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for n in ["_transcript.txt", "_transcript.json", "_transcript.sha256"] {
        assert!(names.contains(&format!("{base}{n}")), "{names:?}");
    }
    // A target deletes the set by name: the addendum's names are among them.
    let by_name = callrec::storage::UploadSet::by_name(&base);
    let remote: Vec<String> = by_name
        .files
        .iter()
        .map(|f| f.to_string_lossy().into_owned())
        .collect();
    for n in [
        "_transcript.txt",
        "_transcript.json",
        "_transcript.sha256",
        "_transcript.sha256.SHA256withRSA.sig",
    ] {
        assert!(
            remote.iter().any(|r| r.ends_with(&format!("{base}{n}"))),
            "{remote:?}"
        );
    }
}

/// A set with its transcript in `data/recordings`, its rows in the database
/// as the proxy writes them; returns the database and the base name.
fn recorded_with_transcript(data: &Path) -> (callrec::db::Db, String, Identity) {
    use callrec::db::Record;
    use callrec::transcribe::queue::QueueChange;
    let folder = data.join("recordings");
    std::fs::create_dir_all(&folder).unwrap();
    let (identity, base) = sealed_set(data, &folder);
    add_transcript(&identity, &folder, &base);
    let sums = std::fs::read(folder.join(format!("{base}.sha256"))).unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join(format!("{base}.json"))).unwrap())
            .unwrap();
    let position = callrec::seal::position_of(&meta).unwrap().unwrap();
    let db = callrec::db::Db::open_in(data).unwrap();
    let t_sums = std::fs::read(folder.join(format!("{base}_transcript.sha256"))).unwrap();
    db.write_sync(vec![
        Record::Recording {
            call_id: "c1".into(),
            base_name: base.clone(),
            profile: Some("default".into()),
            start_ms: 1_000,
            end_ms: Some(2_000),
            caller: Some("+49301".into()),
            callee: Some("200".into()),
            answered_by: None,
        },
        Record::Seal {
            base_name: base.clone(),
            at_ms: 2_000,
            checksum_sha256: sha256_hex(&sums),
            files: 4,
            chain: Some(serde_json::to_string(&position).unwrap()),
        },
        Record::Transcript(QueueChange::Queued(callrec::transcribe::queue::Job {
            base_name: base.clone(),
            folder: data.join("transcribe").join(&base),
            profile: Some("default".into()),
            language: "de".into(),
            targets: vec![],
            queued_ms: 2_500,
        })),
        Record::Transcript(QueueChange::Done {
            base_name: base.clone(),
            checksum_sha256: sha256_hex(&t_sums),
            words: callrec::transcribe::search::words("Ich kaufe Aktien"),
            at_ms: 3_000,
        }),
    ])
    .unwrap();
    (db, base, identity)
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

fn purge_request(identity: &Identity, staging: &Path) -> callrec::archive::PurgeRequest {
    callrec::archive::PurgeRequest {
        older_than: std::time::Duration::from_secs(60),
        dry_run: false,
        reason: "retention 1d".into(),
        profile: None,
        tombstones: Some(callrec::archive::TombstoneSigner {
            identity: identity.clone(),
            staging: staging.to_path_buf(),
        }),
        plan: Default::default(),
        transcript_staging: None,
    }
}

#[tokio::test]
async fn purge_deletes_the_transcript_with_the_set_and_its_tombstone_lists_it() {
    let data = tempfile::tempdir().unwrap();
    let (db, base, identity) = recorded_with_transcript(data.path());
    let folder = data.path().join("recordings");
    let t_sums =
        sha256_hex(&std::fs::read(folder.join(format!("{base}_transcript.sha256"))).unwrap());
    let report = callrec::archive::purge_everywhere(
        &db,
        std::slice::from_ref(&folder),
        &Default::default(),
        &purge_request(&identity, &data.path().join("tombstones")),
    )
    .await
    .unwrap();
    assert_eq!(report.sets(), 1, "{:?}", report.lines("deleted"));
    let left: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.contains(".deleted."))
        .collect();
    assert!(left.is_empty(), "left after the purge: {left:?}");
    let tomb: serde_json::Value = serde_json::from_slice(
        &std::fs::read(folder.join(format!("{base}.deleted.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        tomb["deleted"]["addenda"],
        serde_json::json!([format!("{t_sums}  {base}_transcript.sha256")])
    );
    // What was said is gone from the index too.
    db.flush();
    assert!(callrec::transcribe::search::sets_with_words(&db, "Aktien")
        .unwrap()
        .is_empty());
    let problems = verify_chain(&folder, None);
    assert!(problems.is_empty(), "{problems:?}");
}

#[tokio::test]
async fn a_held_set_keeps_its_transcript() {
    let data = tempfile::tempdir().unwrap();
    let (db, base, identity) = recorded_with_transcript(data.path());
    db.write_sync(vec![callrec::db::Record::Hold(callrec::hold::HoldChange {
        hold: callrec::hold::Hold {
            kind: callrec::hold::HoldKind::Set,
            value: base.clone(),
            reason: "case 7".into(),
            actor: "test".into(),
            at_ms: 1,
        },
        add: true,
    })])
    .unwrap();
    let folder = data.path().join("recordings");
    let report = callrec::archive::purge_everywhere(
        &db,
        std::slice::from_ref(&folder),
        &Default::default(),
        &purge_request(&identity, &data.path().join("tombstones")),
    )
    .await
    .unwrap();
    assert_eq!(report.sets(), 0);
    assert_eq!(report.held.len(), 1);
    assert!(folder.join(format!("{base}_transcript.txt")).is_file());
    assert_eq!(
        callrec::transcribe::search::sets_with_words(&db, "Aktien")
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn recordings_search_finds_sets_by_the_words_said() {
    let data = tempfile::tempdir().unwrap();
    let (db, base, _) = recorded_with_transcript(data.path());
    drop(db);
    let dir = data.path().to_str().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_callrec"))
            .args(args)
            .env_remove("CALLREC_DATA_DIR")
            .env_remove("CALLREC_CONFIG")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = run(&[
        "recordings",
        "search",
        "--text",
        "aktien",
        "--data-dir",
        dir,
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(&base), "{text}");
    let (code, text) = run(&[
        "recordings",
        "search",
        "--text",
        "Anleihen",
        "--data-dir",
        dir,
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains(&base), "{text}");
    // Words and number together: both must hold.
    let (_, text) = run(&[
        "recordings",
        "search",
        "--number",
        "200",
        "--text",
        "Aktien kaufe",
        "--data-dir",
        dir,
    ]);
    assert!(text.contains(&base), "{text}");
    let (_, text) = run(&[
        "recordings",
        "search",
        "--number",
        "201",
        "--text",
        "Aktien",
        "--data-dir",
        dir,
    ]);
    assert!(!text.contains(&base), "{text}");
    // Neither a number nor words: a usage error.
    let (code, _) = run(&["recordings", "search", "--data-dir", dir]);
    assert_eq!(code, Some(2));
}
