//! Certificate rollover with a real CA made by `openssl`: the instance's
//! signing request is signed by the CA, `callrec cert --import` takes it (and
//! refuses a certificate for another key), later sets carry it and the CA
//! chain, and `verify --chain` accepts the whole folder under the old
//! self-signed certificate as under the new one.

use std::path::{Path, PathBuf};
use std::process::Command;

use callrec::seal::{Identity, PasswordSource, Sealer};

const PASS: &str = "cert-pass";

fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_callrec"))
        .args(args)
        .env("CALLREC_KEYSTORE_PASSWORD", PASS)
        .env_remove("CALLREC_DATA_DIR")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed (deploy/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn seal(data: &Path, folder: &Path, base: &str) -> serde_json::Value {
    let id = Identity::load_or_create(data, PasswordSource::Value(PASS.into())).unwrap();
    let mut s = Sealer::new(id, data).unwrap();
    std::fs::create_dir_all(folder).unwrap();
    std::fs::write(folder.join(format!("{base}.wav")), base).unwrap();
    s.seal(
        folder,
        base,
        serde_json::json!({}),
        &[PathBuf::from(format!("{base}.wav"))],
    )
    .unwrap();
    serde_json::from_slice(&std::fs::read(folder.join(format!("{base}.json"))).unwrap()).unwrap()
}

#[test]
fn a_ca_signed_certificate_is_imported_and_both_certificates_verify_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, ca_dir, rec) = (
        tmp.path().join("data"),
        tmp.path().join("ca"),
        tmp.path().join("rec"),
    );
    std::fs::create_dir_all(&ca_dir).unwrap();
    let d = data.to_str().unwrap();
    let first = seal(&data, &rec, "set_one");
    assert_eq!(
        first["certificates"].as_array().unwrap().len(),
        1,
        "self-signed: no CA yet"
    );
    let old_cert = tmp.path().join("old-cert.pem");
    std::fs::copy(data.join("cert.pem"), &old_cert).unwrap();

    // The CA signs the instance's request.
    let (code, csr) = cli(&["cert", "--csr", "--data-dir", d]);
    assert_eq!(code, 0, "{csr}");
    std::fs::write(ca_dir.join("req.pem"), csr).unwrap();
    openssl(
        &ca_dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=Test Recording CA",
            "-days",
            "2",
        ],
    );
    openssl(
        &ca_dir,
        &[
            "x509",
            "-req",
            "-in",
            "req.pem",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "signed.pem",
            "-days",
            "2",
        ],
    );
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(ca_dir.join("signed.pem")).unwrap(),
        std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap()
    );
    std::fs::write(ca_dir.join("chain.pem"), chain).unwrap();

    // A certificate for another key is refused and changes nothing.
    let (code, out) = cli(&[
        "cert",
        "--import",
        ca_dir.join("ca.pem").to_str().unwrap(),
        "--data-dir",
        d,
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("another key"), "{out}");

    let (code, out) = cli(&[
        "cert",
        "--import",
        ca_dir.join("chain.pem").to_str().unwrap(),
        "--data-dir",
        d,
    ]);
    assert_eq!(code, 0, "{out}");
    let (_, now) = cli(&["cert", "--data-dir", d]);
    std::fs::write(tmp.path().join("now.pem"), &now).unwrap();
    let issuer = openssl(tmp.path(), &["x509", "-in", "now.pem", "-noout", "-issuer"]);
    assert!(issuer.contains("Test Recording CA"), "{issuer}");
    let ok = openssl(
        tmp.path(),
        &[
            "verify",
            "-CAfile",
            ca_dir.join("ca.pem").to_str().unwrap(),
            "now.pem",
        ],
    );
    assert!(ok.contains("OK"), "{ok}");

    // A later set carries the new certificate and the CA chain.
    let second = seal(&data, &rec, "set_two");
    let certs = second["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 2, "{second}");
    assert!(certs[0].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    assert_eq!(second["previous"]["id"], first["set_id"]);

    // Old and new certificate both verify the whole chain.
    for cert in [&old_cert, &ca_dir.join("signed.pem")] {
        let (code, out) = cli(&[
            "verify",
            "--chain",
            rec.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "with {}: {out}", cert.display());
    }
}
