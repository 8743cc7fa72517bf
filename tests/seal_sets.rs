//! Integration tests of the seal module: sets made by the library are checked
//! with the real openssl, shasum, sha256sum, base64 and deploy/verify.sh, then
//! tampered with byte by byte; keystore and chain failure cases.
//! Over 600 lines: fifteen short cases against the same external verifiers,
//! which share their helpers here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use callrec::seal::{
    verify_chain, verify_set, Identity, PasswordSource, Problem, SealError, SealedSet, Sealer,
};
use serde_json::json;

const PASS: &str = "test-pass word";

/// Runs a real program in `cwd`; panics only when it cannot be started at all.
fn run(cwd: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("cannot start {program} (install it: deploy/test.sh): {e}"))
}

/// Runs deploy/verify.sh with `sh`.
fn verify_sh(args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/verify.sh");
    let mut all = vec![script.to_str().unwrap()];
    all.extend_from_slice(args);
    run(Path::new("."), "sh", &all)
}

/// A small WAV file: RIFF header of 8 kHz 16-bit stereo plus `seconds` of a pattern.
fn fake_wav(path: &Path, seconds: u32, seed: u8) {
    let data_len = seconds * 8000 * 4;
    let mut b = Vec::with_capacity(44 + data_len as usize);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&8000u32.to_le_bytes());
    b.extend_from_slice(&32000u32.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    b.extend((0..data_len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    std::fs::write(path, b).unwrap();
}

/// Identity and sealer in `data`, with the test password.
fn sealer(data: &Path) -> Sealer {
    let id = Identity::load_or_create(data, PasswordSource::Value(PASS.into())).unwrap();
    Sealer::new(id, data).unwrap()
}

/// Seals a set of one WAV and a transcript into `folder`.
fn seal_one(sealer: &mut Sealer, folder: &Path, base: &str) -> SealedSet {
    std::fs::create_dir_all(folder).unwrap();
    fake_wav(&folder.join(format!("{base}.wav")), 1, base.len() as u8);
    std::fs::write(
        folder.join(format!("{base}.txt")),
        "hello, this is a test\n",
    )
    .unwrap();
    let meta = json!({"call_id_a": format!("{base}@a"), "direction": "in"});
    sealer
        .seal(
            folder,
            base,
            meta,
            &[
                PathBuf::from(format!("{base}.wav")),
                folder.join(format!("{base}.txt")),
            ],
        )
        .unwrap()
}

/// Flips the lowest bit of the byte in the middle of `path`.
fn flip_middle_byte(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

/// Asserts that some problem names `needle`, and returns them as lines.
fn assert_names(problems: &[Problem], needle: &str) -> String {
    let text: String = problems.iter().map(|p| format!("{p}\n")).collect();
    assert!(
        problems.iter().any(|p| p.to_string().contains(needle)),
        "no problem names {needle}:\n{text}"
    );
    text
}

/// Copies every regular file of `from` into `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn set_passes_shasum_sha256sum_openssl_and_verify_sh() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let folder = data.join("spool/2026/11");
    let mut s = sealer(&data);
    let base = "20261129_101500_in_4930123_200_ab12";
    let set = seal_one(&mut s, &folder, base);

    let names: Vec<String> = set
        .files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            format!("{base}.json"),
            format!("{base}.wav"),
            format!("{base}.txt"),
            format!("{base}.sha256"),
            format!("{base}.sha256.SHA256withRSA.sig"),
        ]
    );
    for f in &set.files {
        assert!(f.is_file(), "{} not written", f.display());
    }
    let sums_name = format!("{base}.sha256");
    let sums = std::fs::read_to_string(folder.join(&sums_name)).unwrap();
    let lines: Vec<&str> = sums.lines().collect();
    assert_eq!(lines.len(), 3);
    for (line, name) in lines.iter().zip(&names[..3]) {
        let (hash, rest) = line.split_at(64);
        assert!(hash
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(rest, format!("  {name}"));
    }
    assert!(sums.ends_with('\n'));

    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join(format!("{base}.json"))).unwrap())
            .unwrap();
    assert!(meta["previous"].is_null());
    assert_eq!(meta["instance_id"], s.identity().instance_id());
    assert_eq!(meta["direction"], "in");

    // shasum and sha256sum, run in the set's folder.
    let out = run(&folder, "shasum", &["-a", "256", "-c", &sums_name]);
    assert!(out.status.success(), "shasum: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches(": OK").count(),
        3
    );
    let out = run(&folder, "sha256sum", &["-c", &sums_name]);
    assert!(out.status.success(), "sha256sum: {out:?}");
    // Our own checksum of the checksum file agrees with sha256sum's.
    let out = run(&folder, "sha256sum", &[&sums_name]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&set.checksum_sha256));

    // The README's verification recipe with openssl and base64.
    let cert = data.join("cert.pem");
    assert_eq!(
        std::fs::read_to_string(&cert).unwrap(),
        s.identity().certificate_pem()
    );
    let work = tmp.path();
    let out = run(
        work,
        "openssl",
        &["x509", "-in", cert.to_str().unwrap(), "-pubkey", "-noout"],
    );
    assert!(out.status.success());
    std::fs::write(work.join("pub.pem"), &out.stdout).unwrap();
    let sig = folder.join(format!("{sums_name}.SHA256withRSA.sig"));
    let out = run(work, "base64", &["-d", sig.to_str().unwrap()]);
    assert!(out.status.success(), "base64 -d: {out:?}");
    assert_eq!(out.stdout.len(), 256, "RSA-2048 signature is 256 bytes");
    std::fs::write(work.join("sig.bin"), &out.stdout).unwrap();
    let sums_path = folder.join(&sums_name);
    let out = run(
        work,
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            "pub.pem",
            "-signature",
            "sig.bin",
            sums_path.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "openssl dgst: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Verified OK"));

    let out = verify_sh(&[
        "--cert",
        cert.to_str().unwrap(),
        sums_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "verify.sh: {out:?}");
    assert!(out.stdout.is_empty());

    // The library: given certificate, found cert.pem, folder and .sig as path.
    assert_eq!(verify_set(&sums_path, Some(&cert)), vec![]);
    assert_eq!(verify_set(&sums_path, None), vec![]);
    assert_eq!(verify_set(&folder, None), vec![]);
    assert_eq!(verify_set(&sig, Some(&cert)), vec![]);
    assert_eq!(verify_chain(&data, None), vec![]);
}

#[test]
fn keystore_certificate_and_csr_open_with_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    let id = Identity::load_or_create(data, PasswordSource::Value(PASS.into())).unwrap();
    let iid = id.instance_id().to_string();
    assert_eq!(iid.len(), 16);
    assert!(iid.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        std::fs::read_to_string(data.join("instance-id"))
            .unwrap()
            .trim(),
        iid
    );

    let pass_arg = format!("pass:{PASS}");
    let out = run(
        data,
        "openssl",
        &[
            "pkcs12",
            "-info",
            "-in",
            "keystore.p12",
            "-passin",
            &pass_arg,
            "-nodes",
        ],
    );
    assert!(out.status.success(), "openssl pkcs12 -info: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let info = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("BEGIN PRIVATE KEY"), "{text}");
    assert!(text.contains(&format!("callrec {iid}")), "{text}");
    assert!(info.contains("AES-256-CBC"), "keystore encryption: {info}");
    let out = run(
        data,
        "openssl",
        &[
            "pkcs12",
            "-info",
            "-in",
            "keystore.p12",
            "-passin",
            "pass:wrong",
            "-nokeys",
        ],
    );
    assert!(
        !out.status.success(),
        "openssl opened the keystore with a wrong password"
    );

    std::fs::write(data.join("id.pem"), id.certificate_pem()).unwrap();
    let out = run(
        data,
        "openssl",
        &[
            "x509",
            "-in",
            "id.pem",
            "-noout",
            "-text",
            "-fingerprint",
            "-sha256",
        ],
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("Subject: CN = callrec {iid}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("Issuer: CN = callrec {iid}")),
        "{text}"
    );
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    assert!(
        text.contains("Signature Algorithm: sha256WithRSAEncryption"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Fingerprint={}", id.fingerprint_sha256())),
        "fingerprint {} not in {text}",
        id.fingerprint_sha256()
    );
    // Valid 100 years: still valid in 99 years (seconds), not in 101.
    let year = 365 * 24 * 3600u64;
    let ok = run(
        data,
        "openssl",
        &[
            "x509",
            "-in",
            "id.pem",
            "-noout",
            "-checkend",
            &(99 * year).to_string(),
        ],
    );
    assert!(ok.status.success(), "expires within 99 years: {ok:?}");
    let gone = run(
        data,
        "openssl",
        &[
            "x509",
            "-in",
            "id.pem",
            "-noout",
            "-checkend",
            &(101 * year).to_string(),
        ],
    );
    assert!(!gone.status.success(), "valid beyond 101 years");

    std::fs::write(data.join("req.pem"), id.csr_pem().unwrap()).unwrap();
    let out = run(
        data,
        "openssl",
        &["req", "-in", "req.pem", "-noout", "-verify", "-subject"],
    );
    assert!(out.status.success(), "openssl req -verify: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("callrec {iid}")));
    let out = run(
        data,
        "openssl",
        &["req", "-in", "req.pem", "-noout", "-pubkey"],
    );
    let csr_pub = out.stdout;
    let out = run(
        data,
        "openssl",
        &["x509", "-in", "id.pem", "-noout", "-pubkey"],
    );
    assert_eq!(csr_pub, out.stdout, "CSR carries the identity's key");
}

#[test]
fn restart_keeps_identity_and_continues_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let folder = tmp.path().join("rec");
    let (first, iid, pem) = {
        let mut s = sealer(&data);
        let set = seal_one(&mut s, &folder, "set_one");
        (
            set,
            s.identity().instance_id().to_string(),
            s.identity().certificate_pem(),
        )
    };
    let mut s = sealer(&data);
    assert_eq!(s.identity().instance_id(), iid);
    assert_eq!(s.identity().certificate_pem(), pem);
    let second = seal_one(&mut s, &folder, "set_two");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("set_two.json")).unwrap()).unwrap();
    let out = run(&folder, "sha256sum", &["set_one.sha256"]);
    let hex = String::from_utf8_lossy(&out.stdout)[..64].to_string();
    let first_meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("set_one.json")).unwrap()).unwrap();
    assert_eq!(
        meta["previous"],
        json!({"id": first_meta["set_id"], "seq": 1, "sha256": hex})
    );
    assert_eq!(meta["chain"]["seq"], 2);
    assert_eq!(first.checksum_sha256, hex);
    assert_eq!(
        s.head("default").unwrap().link.sha256,
        second.checksum_sha256
    );
    assert_eq!(verify_chain(&folder, Some(&data.join("cert.pem"))), vec![]);
}

#[test]
fn generated_password_is_stored_0600_and_reused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    let a = Identity::load_or_create(data, PasswordSource::None).unwrap();
    let pw = data.join("keystore.password");
    let mode = std::fs::metadata(&pw).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let b = Identity::load_or_create(data, PasswordSource::None).unwrap();
    assert_eq!(a.instance_id(), b.instance_id());
    let c = Identity::load_or_create(data, PasswordSource::File(pw.clone())).unwrap();
    assert_eq!(a.fingerprint_sha256(), c.fingerprint_sha256());
    let pass = std::fs::read_to_string(&pw).unwrap();
    let out = run(
        data,
        "openssl",
        &[
            "pkcs12",
            "-info",
            "-in",
            "keystore.p12",
            "-passin",
            &format!("pass:{}", pass.trim()),
            "-nokeys",
        ],
    );
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn wrong_password_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    Identity::load_or_create(data, PasswordSource::Value(PASS.into())).unwrap();
    let before = std::fs::read(data.join("keystore.p12")).unwrap();
    let err = Identity::load_or_create(data, PasswordSource::Value("not it".into())).unwrap_err();
    assert!(matches!(err, SealError::WrongPassword { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("wrong password") && msg.contains("keystore.p12"),
        "{msg}"
    );
    assert!(msg.contains("--keystore-password-file"), "{msg}");
    assert_eq!(std::fs::read(data.join("keystore.p12")).unwrap(), before);
    // No password at all beside a keystore made with one.
    let err = Identity::load_or_create(data, PasswordSource::None).unwrap_err();
    assert!(matches!(err, SealError::PasswordMissing { .. }), "{err:?}");
}

#[test]
fn missing_or_corrupt_keystore_with_existing_chain_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    {
        let mut s = sealer(&data);
        seal_one(&mut s, &tmp.path().join("rec"), "only");
    }
    let ks = data.join("keystore.p12");
    std::fs::write(&ks, b"garbage, not PKCS#12").unwrap();
    let err = Identity::load_or_create(&data, PasswordSource::Value(PASS.into())).unwrap_err();
    assert!(
        matches!(err, SealError::KeystoreUnreadable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("restore it from backup"), "{err}");

    std::fs::remove_file(&ks).unwrap();
    let err = Identity::load_or_create(&data, PasswordSource::Value(PASS.into())).unwrap_err();
    assert!(matches!(err, SealError::KeystoreMissing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("restore keystore.p12") && msg.contains("chain-head.json"),
        "{msg}"
    );
    assert!(!ks.exists(), "a new keystore was created");

    // The instance id alone is evidence too.
    std::fs::remove_file(data.join("chain-head.json")).unwrap();
    let err = Identity::load_or_create(&data, PasswordSource::Value(PASS.into())).unwrap_err();
    assert!(err.to_string().contains("instance-id"), "{err}");
    assert!(!ks.exists());
}

#[test]
fn one_flipped_byte_fails_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cert = data.join("cert.pem");
    let mut s = sealer(&data);
    let base = "20261129_120000_out_200_0301234_cd34";
    for (case, suffix) in [
        ("wav", ".wav"),
        ("json", ".json"),
        ("sums", ".sha256"),
        ("sig", ".sha256.SHA256withRSA.sig"),
    ] {
        let folder = tmp.path().join(case);
        seal_one(&mut s, &folder, base);
        let sums = folder.join(format!("{base}.sha256"));
        assert_eq!(
            verify_set(&sums, Some(&cert)),
            vec![],
            "{case} before tampering"
        );
        let target = format!("{base}{suffix}");
        flip_middle_byte(&folder.join(&target));

        let problems = verify_set(&sums, Some(&cert));
        assert!(!problems.is_empty(), "{case}: tampering not detected");
        let text = assert_names(&problems, &target);
        assert!(
            !text.trim().contains("\n\n"),
            "{case}: one line per problem"
        );

        let out = verify_sh(&["--cert", cert.to_str().unwrap(), sums.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "verify.sh {case}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&target),
            "verify.sh {case} does not name {target}: {stdout}"
        );
        let out = run(
            &folder,
            "shasum",
            &["-a", "256", "-c", &format!("{base}.sha256")],
        );
        if case != "sig" {
            assert!(!out.status.success(), "shasum accepted tampered {case}");
        }
    }
    // The whole tree: one set per folder, three of them tampered at content level.
    assert!(verify_set(tmp.path(), Some(&cert)).len() >= 4);
}

#[test]
fn set_checked_against_another_instances_certificate_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let mut sa = sealer(&a);
    let other = Identity::load_or_create(&b, PasswordSource::Value(PASS.into())).unwrap();
    assert_ne!(sa.identity().instance_id(), other.instance_id());
    let folder = tmp.path().join("rec");
    seal_one(&mut sa, &folder, "from_a");
    let sums = folder.join("from_a.sha256");
    let b_cert = b.join("cert.pem");
    let problems = verify_set(&sums, Some(&b_cert));
    let text = assert_names(&problems, "from_a.sha256.SHA256withRSA.sig");
    assert!(
        text.contains(&format!("callrec {}", other.instance_id())),
        "{text}"
    );
    assert_eq!(problems.len(), 1, "checksums themselves hold: {text}");
    let out = verify_sh(&["--cert", b_cert.to_str().unwrap(), sums.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(verify_set(&sums, Some(&a.join("cert.pem"))), vec![]);
}

#[test]
fn without_any_certificate_verification_says_one_is_needed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = sealer(&data);
    seal_one(&mut s, &tmp.path().join("rec"), "lonely");
    // Copied where no cert.pem is around (below the data dir it would be found).
    let elsewhere = tempfile::tempdir().unwrap();
    copy_dir(&tmp.path().join("rec"), elsewhere.path());
    let problems = verify_set(elsewhere.path(), None);
    assert_names(&problems, "no certificate");
    // Once cert.pem is beside the sets, it is used.
    std::fs::copy(data.join("cert.pem"), elsewhere.path().join("cert.pem")).unwrap();
    assert_eq!(verify_set(elsewhere.path(), None), vec![]);
}

#[test]
fn deleted_middle_set_breaks_the_chain_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = sealer(&data);
    // Sealing order differs from name order: the chain, not names, decides.
    let bases = ["c_first", "b_second", "a_third"];
    for (i, base) in bases.iter().enumerate() {
        seal_one(&mut s, &data.join(format!("spool/day{i}")), base);
    }
    assert_eq!(verify_chain(&data, None), vec![]);
    for e in std::fs::read_dir(data.join("spool/day1")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let problems = verify_chain(&data, None);
    // The missing set is named by its number and id (its base name is not evidence).
    let text = assert_names(&problems, "set number 2");
    assert!(
        text.contains("gap in chain") && text.contains("a_third"),
        "{text}"
    );
    assert_eq!(problems.len(), 1, "{text}");
}

#[test]
fn replaced_previous_set_is_reported_as_altered() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let folder = data.join("spool");
    let mut s = sealer(&data);
    seal_one(&mut s, &folder, "one");
    seal_one(&mut s, &folder, "two");
    // Re-seal "one" with other content under a new chain, as a forger with the key could.
    std::fs::remove_file(folder.join("one.sha256.SHA256withRSA.sig")).unwrap();
    std::fs::write(folder.join("one.txt"), "a different transcript\n").unwrap();
    let other_data = tmp.path().join("other");
    {
        let id = Identity::load_or_create(&other_data, PasswordSource::Value(PASS.into())).unwrap();
        let mut forger = Sealer::new(id, &other_data).unwrap();
        forger
            .seal(
                &folder,
                "one",
                json!({"instance_id": s.identity().instance_id()}),
                &[PathBuf::from("one.wav"), PathBuf::from("one.txt")],
            )
            .unwrap();
    }
    let problems = verify_chain(&folder, Some(&data.join("cert.pem")));
    let text = assert_names(&problems, "set number 1 of chain");
    assert!(
        text.contains("was altered or replaced")
            && text.contains("two.json")
            && text.contains("one.json"),
        "{text}"
    );
}

#[test]
fn restored_chain_head_shows_as_fork_and_second_sealer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let folder = data.join("spool");
    let head = data.join("chain-head.json");
    {
        let mut s = sealer(&data);
        let id2 = Identity::load_or_create(&data, PasswordSource::Value(PASS.into())).unwrap();
        let err = Sealer::new(id2, &data).unwrap_err();
        assert!(matches!(err, SealError::ChainLocked { .. }), "{err:?}");
        seal_one(&mut s, &folder, "s1");
    }
    let old_head = std::fs::read(&head).unwrap();
    {
        let mut s = sealer(&data);
        seal_one(&mut s, &folder, "s2");
    }
    std::fs::write(&head, old_head).unwrap();
    let mut s = sealer(&data);
    seal_one(&mut s, &folder, "s3");
    let problems = verify_chain(&folder, None);
    let text = assert_names(&problems, "fork");
    assert!(text.contains("s1") && text.contains("s2, s3"), "{text}");
}

#[test]
fn incomplete_set_and_bad_input_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let folder = data.join("spool");
    let mut s = sealer(&data);
    seal_one(&mut s, &folder, "x");
    // Sealing the same set again would fork the chain.
    let err = s.seal(&folder, "x", json!({}), &[]).unwrap_err();
    assert!(matches!(err, SealError::AlreadySealed { .. }), "{err:?}");
    let err = s.seal(&folder, "y", json!([1]), &[]).unwrap_err();
    assert!(err.to_string().contains("JSON object"), "{err}");
    let err = s
        .seal(&folder, "y", json!({}), &[tmp.path().join("outside.wav")])
        .unwrap_err();
    assert!(err.to_string().contains("not inside"), "{err}");
    std::fs::remove_file(folder.join("x.sha256.SHA256withRSA.sig")).unwrap();
    let problems = verify_set(&folder.join("x.sha256"), None);
    assert_names(&problems, "signature missing");
    let out = verify_sh(&[
        "--cert",
        data.join("cert.pem").to_str().unwrap(),
        folder.join("x.sha256").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    std::fs::remove_file(folder.join("x.wav")).unwrap();
    assert_names(&verify_set(&folder, None), "x.wav: missing");
}

#[test]
fn verify_sh_usage_errors_exit_2() {
    assert_eq!(verify_sh(&[]).status.code(), Some(2));
    assert_eq!(verify_sh(&["x.sha256"]).status.code(), Some(2));
    assert_eq!(verify_sh(&["--cert"]).status.code(), Some(2));
    let out = verify_sh(&["--cert", "/nonexistent/cert.pem", "x.sha256"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn verify_sh_needs_only_openssl_base64_and_shasum() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let folder = tmp.path().join("rec");
    let mut s = sealer(&data);
    seal_one(&mut s, &folder, "minimal");
    // A PATH with openssl, base64, shasum and the POSIX basics, but no sha256sum.
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for tool in [
        "openssl", "base64", "shasum", "dirname", "basename", "mktemp", "rm",
    ] {
        let out = run(tmp.path(), "sh", &["-c", &format!("command -v {tool}")]);
        let found = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{tool} not installed");
        std::os::unix::fs::symlink(found.trim(), bin.join(tool)).unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/verify.sh");
    let cert = data.join("cert.pem");
    let sums = folder.join("minimal.sha256");
    let check = || {
        Command::new("/bin/sh")
            .arg(&script)
            .arg("--cert")
            .arg(&cert)
            .arg(&sums)
            .env("PATH", &bin)
            .output()
            .unwrap()
    };
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    flip_middle_byte(&folder.join("minimal.txt"));
    let out = check();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("minimal.txt"),
        "{out:?}"
    );
}
