//! The command line as a user meets it: help texts name every flag, env
//! variables work like flags, `cert` and `cert --csr` print what openssl
//! accepts, and setup mistakes (bad flags, a wrong keystore password, a
//! missing path to verify) end with exit code 2 and a message saying what to
//! fix.

mod common;

use common::*;
use std::process::{Command, Output};

fn callrec(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_callrec"));
    c.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("CALLREC_") {
            c.env_remove(k);
        }
    }
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn help_explains_every_flag() {
    let top = callrec(&["--help"]).output().unwrap();
    assert!(top.status.success());
    for sub in ["run", "cert", "verify"] {
        assert!(text(&top).contains(sub), "--help does not list {sub}");
    }
    let run = callrec(&["run", "--help"]).output().unwrap();
    let t = text(&run);
    for flag in [
        "--listen",
        "--pbx",
        "--trunk",
        "--media-ip",
        "--rtp-ports",
        "--data-dir",
        "--rtp-timeout",
        "--channels",
        "--keystore-password-file",
        "--admin-listen",
        "--log-level",
    ] {
        let line = t
            .lines()
            .position(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("run --help lacks {flag}:\n{t}"));
        // The explanation follows on the flag's line or the next one.
        let explained = t.lines().skip(line).take(2).collect::<String>();
        assert!(
            explained.len() > flag.len() + 30,
            "{flag} is not explained: {explained}"
        );
        let env = format!("CALLREC_{}", flag[2..].to_uppercase().replace('-', "_"));
        assert!(t.contains(&env), "run --help does not name {env}");
    }
}

#[test]
fn bad_flags_are_usage_errors() {
    let o = callrec(&["run", "--pbx", "127.0.0.2:5060"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--trunk"), "{}", text(&o));
    let dir = TestDir::new("cli-ports");
    let o = callrec(&[
        "run",
        "--pbx",
        "127.0.0.2:5060",
        "--trunk",
        "127.0.0.3:5060",
        "--rtp-ports",
        "3000",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("LO-HI"), "{}", text(&o));
    // An empty data folder would put the state into whatever the working
    // directory is.
    let o = callrec(&["cert", "--data-dir", ""]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("must not be empty"), "{}", text(&o));
}

#[test]
fn flags_can_come_from_the_environment() {
    let dir = TestDir::new("cli-env");
    // A wrong value through env must be reported like the flag itself.
    let o = callrec(&["run"])
        .env("CALLREC_PBX", "127.0.0.2:5060")
        .env("CALLREC_TRUNK", "127.0.0.3:5060")
        .env("CALLREC_RTP_PORTS", "9-8")
        .env("CALLREC_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--rtp-ports"), "{}", text(&o));
}

#[test]
fn cert_and_csr_are_accepted_by_openssl_and_a_wrong_password_stops_the_start() {
    let dir = TestDir::new("cli-cert");
    let data = dir.join("data");
    let pw = dir.join("pw");
    std::fs::write(&pw, "correct horse\n").unwrap();
    let d = data.to_str().unwrap();
    let p = pw.to_str().unwrap();
    let o = callrec(&["cert", "--data-dir", d, "--keystore-password-file", p])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let pem = String::from_utf8(o.stdout.clone()).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let cert_file = dir.join("cert.pem");
    std::fs::write(&cert_file, &pem).unwrap();
    let subj = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-enddate", "-in"])
        .arg(&cert_file)
        .output()
        .unwrap();
    let s = text(&subj);
    assert!(subj.status.success() && s.contains("callrec "), "{s}");
    // Valid for 100 years.
    let year: i32 = s
        .split_whitespace()
        .find_map(|w| w.parse().ok().filter(|y: &i32| *y > 2100))
        .unwrap_or_else(|| panic!("no end year past 2100 in {s}"));
    assert!(year >= 2125, "{s}");

    // Same identity on the second call.
    let again = callrec(&["cert", "--data-dir", d, "--keystore-password-file", p])
        .output()
        .unwrap();
    assert_eq!(again.stdout, o.stdout);

    let csr = callrec(&[
        "cert",
        "--csr",
        "--data-dir",
        d,
        "--keystore-password-file",
        p,
    ])
    .output()
    .unwrap();
    assert!(csr.status.success(), "{}", text(&csr));
    let csr_file = dir.join("req.pem");
    std::fs::write(&csr_file, &csr.stdout).unwrap();
    let v = Command::new("openssl")
        .args(["req", "-noout", "-verify", "-in"])
        .arg(&csr_file)
        .output()
        .unwrap();
    assert!(v.status.success(), "openssl rejects the CSR: {}", text(&v));

    // Wrong password: refused with a message saying what to check.
    std::fs::write(&pw, "wrong\n").unwrap();
    let o = callrec(&[
        "run",
        "--pbx",
        "127.0.0.2:5060",
        "--trunk",
        "127.0.0.3:5060",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--data-dir",
        d,
        "--keystore-password-file",
        p,
    ])
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).to_lowercase().contains("password"), "{}", text(&o));
}

#[test]
fn verify_of_a_missing_path_is_a_usage_error() {
    let o = callrec(&["verify", "/nonexistent/set.sha256"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("does not exist"), "{}", text(&o));
}
