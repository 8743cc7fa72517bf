//! Anchoring the chain heads with RFC 3161 time stamps, against a real TSA:
//! `openssl ts -reply` behind a tiny HTTP server on loopback, with a test CA
//! and a TSA certificate made by `openssl`. The head's time stamp lands beside
//! the head set on a folder target, verifies with stock `openssl ts -verify`,
//! and lets `verify --chain --tsa-ca` find sets cut off the end of the chain,
//! which without a time stamp go unnoticed. A running proxy with
//! `--tsa-url` stamps its chain head at shutdown.

mod common;
mod storage_support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use callrec::anchoring::{anchor_heads, AnchorConfig};
use callrec::db::Db;
use callrec::seal::{Identity, PasswordSource, Sealer};
use callrec::storage::Secrets;

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

/// A test CA, a TSA certificate it signed, and an `openssl ts` config in `dir`.
fn make_tsa(dir: &Path) {
    openssl(
        dir,
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
            "/CN=Test TSA CA",
            "-days",
            "2",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "tsa.key",
            "-out",
            "tsa.csr",
            "-subj",
            "/CN=Test TSA",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=critical,timeStamping\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "tsa.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "tsa.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    std::fs::write(dir.join("tsaserial"), "01\n").unwrap();
    std::fs::write(
        dir.join("tsa.cnf"),
        format!(
            "[ tsa ]\ndefault_tsa = tsa1\n[ tsa1 ]\ndir = {d}\nserial = $dir/tsaserial\n\
             crypto_device = builtin\nsigner_cert = $dir/tsa.pem\ncerts = $dir/ca.pem\n\
             signer_key = $dir/tsa.key\nsigner_digest = sha256\ndefault_policy = 1.2.3.4.1\n\
             digests = sha256\naccuracy = secs:1\nordering = yes\ntsa_name = no\n\
             ess_cert_id_chain = no\ness_cert_id_alg = sha256\n",
            d = dir.display()
        ),
    )
    .unwrap();
}

/// Serves up to `max` time-stamp requests over HTTP on loopback with `openssl ts -reply`.
fn serve_tsa(dir: PathBuf, max: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/tsa", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().take(max).enumerate() {
            let Ok(mut stream) = stream else { continue };
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length.min(1 << 16)];
            reader.read_exact(&mut body).unwrap();
            let (q, r) = (format!("q{i}.tsq"), format!("r{i}.tsr"));
            std::fs::write(dir.join(&q), &body).unwrap();
            let ok = Command::new("openssl")
                .args([
                    "ts",
                    "-reply",
                    "-config",
                    "tsa.cnf",
                    "-queryfile",
                    &q,
                    "-out",
                    &r,
                ])
                .current_dir(&dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            let reply = if ok {
                std::fs::read(dir.join(&r)).unwrap()
            } else {
                vec![]
            };
            let head = format!(
                "HTTP/1.1 {}\r\ncontent-type: application/timestamp-reply\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                if ok { "200 OK" } else { "500 Error" },
                reply.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&reply);
        }
    });
    url
}

fn verify_chain(target: &Path, cert: &Path, tsa_ca: Option<&Path>) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callrec"));
    cmd.args(["verify", "--chain"])
        .arg(target)
        .arg("--cert")
        .arg(cert);
    if let Some(ca) = tsa_ca {
        cmd.arg("--tsa-ca").arg(ca);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn chain_head_time_stamp_detects_sets_cut_off_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let tsa = tmp.path().join("tsa");
    std::fs::create_dir_all(&tsa).unwrap();
    make_tsa(&tsa);
    let url = serve_tsa(tsa.clone(), 4);

    let data = tmp.path().join("data");
    let target = tmp.path().join("target");
    let id = Identity::load_or_create(&data, PasswordSource::Value("pw".into())).unwrap();
    let mut sealer = Sealer::new(id, &data).unwrap();
    let mut sets = Vec::new();
    for i in 0..3 {
        let base = format!("20261201_10000{i}_in_0301_200_{i:04x}");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join(format!("{base}.wav")), format!("audio {i}")).unwrap();
        sets.push(
            sealer
                .seal(
                    &target,
                    &base,
                    serde_json::json!({"profile": "sales"}),
                    &[PathBuf::from(format!("{base}.wav"))],
                )
                .unwrap(),
        );
    }
    drop(sealer);
    let db = Db::open_in(&data).unwrap();
    let config = AnchorConfig {
        tsa_url: url,
        interval: Duration::from_secs(3600),
    };
    let targets_of = HashMap::from([(
        "sales".to_string(),
        vec![format!("file://{}", target.display())],
    )]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let put = rt.block_on(anchor_heads(
        &db,
        &data,
        &config,
        &targets_of,
        &[],
        &Secrets::new(),
    ));
    assert_eq!(put.len(), 1, "{put:?}");
    let tsr = target.join("chain-sales-3.tsr");
    assert!(tsr.is_file(), "{put:?}");
    db.flush();
    assert_eq!(
        db.count("anchors").unwrap(),
        1,
        "the token is kept in the database"
    );
    // A second round with no new set asks for nothing.
    assert!(rt
        .block_on(anchor_heads(
            &db,
            &data,
            &config,
            &targets_of,
            &[],
            &Secrets::new()
        ))
        .is_empty());

    // Stock openssl accepts the token for the head's checksum file.
    let head_sums = target.join(format!("{}.sha256", sets[2].base_name));
    let out = openssl(
        &tsa,
        &[
            "ts",
            "-verify",
            "-in",
            tsr.to_str().unwrap(),
            "-data",
            head_sums.to_str().unwrap(),
            "-CAfile",
            "ca.pem",
            "-untrusted",
            "tsa.pem",
        ],
    );
    assert!(out.contains("Verification: OK"), "{out}");

    let (cert, ca) = (data.join("cert.pem"), tsa.join("ca.pem"));
    let (code, out) = verify_chain(&target, &cert, Some(&ca));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("number 3 of chain") && out.contains("time stamp verified"),
        "{out}"
    );

    // The newest set removed: nothing in the chain shows it, the time stamp does.
    for f in &sets[2].files {
        std::fs::remove_file(f).unwrap();
    }
    let (code, out) = verify_chain(&target, &cert, None);
    assert_eq!(
        code, 0,
        "without checking the time stamp the cut is invisible: {out}"
    );
    let (code, out) = verify_chain(&target, &cert, Some(&ca));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("sets cut off the end of the chain"), "{out}");

    // A forged time stamp does not verify.
    let mut bytes = std::fs::read(&tsr).unwrap();
    let n = bytes.len();
    bytes[n - 40] ^= 0x01;
    std::fs::write(&tsr, bytes).unwrap();
    let (code, out) = verify_chain(&target, &cert, Some(&ca));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("time stamp does not verify"), "{out}");
    // Without any time stamp, cutting off the end goes unnoticed.
    std::fs::remove_file(&tsr).unwrap();
    let (code, out) = verify_chain(&target, &cert, Some(&ca));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn the_proxy_time_stamps_its_chain_head_at_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let tsa = tmp.path().join("tsa");
    std::fs::create_dir_all(&tsa).unwrap();
    make_tsa(&tsa);
    let url = serve_tsa(tsa.clone(), 4);
    let mut proxy = common::Proxy::builder()
        .arg("--tsa-url")
        .arg(&url)
        .arg("--anchor-interval")
        .arg("3600")
        .start();
    for _ in 0..2 {
        proxy.call(common::pair("basic")).run().assert_success();
    }
    assert_eq!(
        proxy.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        proxy.log_tail(30)
    );
    let rec = proxy.data_dir().join("recordings");
    // The round at start saw no set; the one at shutdown stamps number 2.
    assert!(
        rec.join("chain-default-2.tsr").is_file(),
        "no time stamp of the head beside the sets:\n{}",
        proxy.log_tail(30)
    );
    let (code, out) = verify_chain(
        &rec,
        &proxy.data_dir().join("cert.pem"),
        Some(&tsa.join("ca.pem")),
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("number 2 of chain") && out.contains("time stamp verified"),
        "{out}"
    );
}

#[test]
fn without_a_tsa_the_chain_head_is_mailed_to_the_auditor_at_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = storage_support::MailSink::start(&tmp.path().join("mail"));
    let mut proxy = common::Proxy::builder()
        .arg("--smtp")
        .arg(&sink.url())
        .arg("--anchor-email")
        .arg("auditor@example.org")
        .start();
    proxy.call(common::pair("basic")).run().assert_success();
    assert_eq!(
        proxy.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        proxy.log_tail(30)
    );
    let rec = proxy.data_dir().join("recordings");
    let sums: Vec<PathBuf> = std::fs::read_dir(&rec)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".sha256"))
        .collect();
    assert_eq!(sums.len(), 1);
    let hash = openssl(
        tmp.path(),
        &["dgst", "-sha256", "-r", sums[0].to_str().unwrap()],
    );
    let hash = hash.split_whitespace().next().unwrap().to_string();
    let mails = sink.mails();
    let mail = mails
        .iter()
        .find(|m| m.contains("auditor@example.org") && m.contains("chain heads"))
        .unwrap_or_else(|| panic!("no chain-head mail: {mails:?}"));
    // Undo quoted-printable's soft line breaks.
    let mail = mail.replace("=\r\n", "").replace("=\n", "");
    assert!(
        mail.contains("/default: number 1") && mail.contains(&hash),
        "the mail does not name the head and its hash {hash}:\n{mail}"
    );
}
