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
