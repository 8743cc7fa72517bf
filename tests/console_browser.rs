//! The web console in a real browser: a call is recorded through the proxy
//! by SIPp, users of each role are created with the CLI, then Debian's
//! chromium, driven headless by playwright-core (tests/browser/console.js),
//! logs in as each role, searches the number, plays the recording to its end,
//! sees "verified", downloads an export, is refused what the role does not
//! allow and finds the actions in the access log. The export it downloaded is
//! then verified here with the bundled verify.sh (openssl).
//!
//! Needs /usr/bin/chromium and playwright-core installed outside the source
//! tree from tests/browser/package-lock.json into CALLREC_TEST_NODE_MODULES
//! (default /var/tmp/callrec-test-node/node_modules; deploy/test.sh does
//! both); fails loudly without them. With CALLREC_TEST_SCREENSHOTS=DIR the
//! screenshots of the search and recording pages are copied to DIR.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn add_user(data: &std::path::Path, name: &str, role: &str, pw: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_callrec"))
        .args(["users", "add", name, "--role", role, "--data-dir"])
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{pw}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "users add {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn console_in_chromium() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run deploy/test.sh (installs Debian's chromium)"
    );
    let browser_dir = repo_dir().join("tests/browser");
    // playwright-core lives outside the source tree; deploy/test.sh installs it
    // from tests/browser/package-lock.json and names the folder.
    let node_modules = std::path::PathBuf::from(
        std::env::var_os("CALLREC_TEST_NODE_MODULES")
            .unwrap_or_else(|| "/var/tmp/callrec-test-node/node_modules".into()),
    );
    assert!(
        node_modules.join("playwright-core").is_dir(),
        "playwright-core is missing in {}: run deploy/test.sh (it installs it with npm ci)",
        node_modules.display()
    );
    let proxy = Proxy::start();
    proxy
        .call(pair("basic"))
        .numbers("03012345678", "200")
        .run()
        .assert_success();
    let data = proxy.data_dir().to_path_buf();
    // The recording's length, from its WAV file once the set is delivered.
    let rec = data.join("recordings");
    let mut wav = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            wav = find_wav(&rec);
            wav.is_some()
        }),
        "no delivered recording in {}",
        rec.display()
    );
    let reader = hound::WavReader::open(wav.unwrap()).unwrap();
    let secs = f64::from(reader.duration()) / f64::from(reader.spec().sample_rate);
    assert!(secs > 1.0, "recording of {secs} s is too short to play");
    let users = [
        ("vera", "viewer", "viewer password 1"),
        ("audrey", "auditor", "auditor password 2"),
        ("adam", "admin", "admin password 333"),
    ];
    for (n, r, p) in users {
        add_user(&data, n, r, p);
    }
    let out_dir = TestDir::new("browser");
    let mut cmd = Command::new("node");
    cmd.arg(browser_dir.join("console.js"))
        .current_dir(&browser_dir)
        .env("NODE_PATH", &node_modules)
        .env("CONSOLE_URL", format!("http://{}", proxy.admin_addr()))
        .env("CONSOLE_OUT_DIR", out_dir.path())
        .env("CONSOLE_NUMBER", "+49 (30) 1234-5678")
        .env("CONSOLE_EXPECT_SECONDS", format!("{secs:.2}"));
    for (n, r, p) in users {
        let k = r.to_uppercase();
        cmd.env(format!("CONSOLE_{k}"), n)
            .env(format!("CONSOLE_{k}_PASSWORD"), p);
    }
    let run = cmd.output().expect("cannot run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "browser run failed:\n{text}");
    assert!(text.contains("ALL OK"), "{text}");
    assert!(
        text.contains("viewer is refused /operations (403)"),
        "{text}"
    );

    // The export the browser downloaded verifies on its own with openssl.
    let zip = std::fs::read(out_dir.join("export.zip")).expect("export.zip");
    let unpacked = out_dir.join("export");
    zip::ZipArchive::new(std::io::Cursor::new(zip))
        .unwrap()
        .extract(&unpacked)
        .unwrap();
    let sums: Vec<_> = std::fs::read_dir(&unpacked)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sha256"))
        .collect();
    assert_eq!(sums.len(), 1, "one set in the export");
    let v = Command::new("sh")
        .arg(unpacked.join("verify.sh"))
        .arg("--cert")
        .arg(unpacked.join("cert.pem"))
        .args(&sums)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "the downloaded export does not verify: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    if let Ok(dir) = std::env::var("CALLREC_TEST_SCREENSHOTS") {
        for f in ["console-search.png", "console-recording.png"] {
            std::fs::copy(out_dir.join(f), std::path::Path::new(&dir).join(f)).unwrap();
        }
    }
}

fn find_wav(root: &std::path::Path) -> Option<std::path::PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "wav") {
                return Some(p);
            }
        }
    }
    None
}
