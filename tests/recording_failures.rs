//! Recording failures end to end: a disk that runs full in the middle of a
//! SIPp call (a small tmpfs mounted on `<data-dir>/work` only) leaves a sealed
//! set with the missing span as a gap, a database row, a metric and a mail;
//! `callrec report` reconciles the calls decided "record" with the sealed sets
//! and names, reports and mails a call left without one (once).

mod common;
mod storage_support;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use storage_support::MailSink;

const OPS: &str = "ops@test.example";

/// A tmpfs of `size` mounted on a folder; lazily unmounted on drop, so an
/// open file of a still-running proxy cannot keep it mounted.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mount tmpfs on {} failed (run as root)",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The mails' text with quoted-printable soft line breaks undone.
fn mails(sink: &MailSink) -> Vec<String> {
    sink.mails()
        .into_iter()
        .map(|m| m.replace("=\r\n", "").replace("=\n", ""))
        .collect()
}

fn sealed_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(".sha256.SHA256withRSA.sig"))
                .collect()
        })
        .unwrap_or_default()
}

fn proxy_with_mail(sink: &MailSink) -> Proxy {
    Proxy::builder()
        .arg("--smtp")
        .arg(&sink.url())
        .arg("--notify-email")
        .arg(OPS)
        .start()
}

fn long_call(proxy: &Proxy) -> CallRun {
    proxy.call(Pair {
        name: "long-call",
        dir: "long-call",
        media: true,
        direction: Direction::Incoming,
    })
}

/// The work folder runs full about 2 s into a 9 s call and gets space back
/// at about 5 s: the call goes on to its normal end, the set is sealed and
/// verifies, its metadata lists the missing span as a `disk_full` gap, the
/// audio after the gap is there, and the operator learns of it through the
/// database (`callrec report`), the metric and one mail.
#[test]
fn a_full_disk_mid_call_leaves_a_sealed_set_with_a_gap() {
    let tmp = TestDir::new("diskfull");
    let sink = MailSink::start(&tmp.join("mail"));
    let proxy = proxy_with_mail(&sink);
    let work = proxy.data_dir().join("work");
    let _mount = Tmpfs::mount(&work, "512k");
    let filler = work.join("filler");
    std::fs::write(&filler, vec![7u8; 416 * 1024]).unwrap();

    let run = long_call(&proxy);
    let dir = TestDir::new("diskfull-call");
    let mut callee = run.callee_sipp(dir.path()).spawn();
    assert!(
        callee.wait_ready(Duration::from_secs(10)),
        "callee not ready"
    );
    let caller = run.caller_sipp(dir.path()).spawn();
    std::thread::sleep(Duration::from_secs(5));
    std::fs::remove_file(&filler).unwrap();
    let caller = caller.wait();
    let callee = callee.wait();
    caller.assert_success();
    callee.assert_success();

    let recordings = proxy.data_dir().join("recordings");
    assert!(
        wait_until(Duration::from_secs(20), || !sealed_in(&recordings)
            .is_empty()),
        "no sealed set after the disk ran full\n{}",
        proxy.log_tail(80)
    );
    let sig = sealed_in(&recordings).remove(0);
    let sums = PathBuf::from(sig.to_string_lossy().trim_end_matches(".SHA256withRSA.sig"));
    let base = sums
        .to_string_lossy()
        .trim_end_matches(".sha256")
        .to_string();
    let (code, text) = callrec_cli(&[
        "verify",
        &sums.to_string_lossy(),
        "--cert",
        &proxy.data_dir().join("cert.pem").to_string_lossy(),
    ]);
    assert_eq!(code, 0, "the set with a gap does not verify: {text}");

    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{base}.json")).unwrap()).unwrap();
    let gaps = meta["gaps"].as_array().expect("metadata has a gaps list");
    let disk: Vec<_> = gaps.iter().filter(|g| g["reason"] == "disk_full").collect();
    assert_eq!(disk.len(), 1, "one disk_full gap expected: {gaps:?}");
    let (from, to) = (
        disk[0]["from_ms"].as_u64().unwrap(),
        disk[0]["to_ms"].as_u64().unwrap(),
    );
    let media_ms = meta["times"]["media_duration_ms"].as_u64().unwrap();
    assert!(from < to, "{gaps:?}");
    assert!(
        to + 1500 <= media_ms,
        "recording did not resume after space came back: gap {from}-{to} ms of {media_ms} ms"
    );
    // The audio after the gap is the caller's tone, inside the gap it is silence.
    let mut r = hound::WavReader::open(format!("{base}.wav")).unwrap();
    let s: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    let left = |ms: u64| s[(ms * 8 * 2) as usize];
    let loud = (media_ms - 1200..media_ms - 200).any(|ms| left(ms).unsigned_abs() > 1000);
    assert!(loud, "no audio after the gap");
    assert!(
        (from + 20..to.saturating_sub(20)).all(|ms| left(ms) == 0),
        "the gap is not silence"
    );

    let call_id = meta["call_ids"]["caller_leg"].as_str().unwrap().to_string();
    let m = proxy.metrics();
    assert_eq!(
        metric(
            &m,
            r#"callrec_recording_failures_total{reason="disk_full"}"#
        ),
        Some(1.0),
        "the disk_full failure is counted once"
    );
    let data = proxy.data_dir().to_string_lossy().to_string();
    let (code, text) = callrec_cli(&["report", "--data-dir", &data, "--settle-secs", "0"]);
    assert_eq!(code, 0, "a set exists, so nothing is missing: {text}");
    let row = text
        .lines()
        .find(|l| l.contains("disk_full"))
        .unwrap_or_else(|| panic!("no disk_full failure row in the report: {text}"));
    assert!(row.contains(&call_id), "{row}");
    assert!(
        wait_until(Duration::from_secs(15), || mails(&sink)
            .iter()
            .any(|m| m.contains("disk_full") && m.contains(&call_id))),
        "no mail about the full disk: {:?}",
        mails(&sink)
    );
}

/// A call decided "record" whose recording cannot start (a file where the
/// work folder should be) has no set: the proxy reports `start_failed` (metric,
/// mail), and `callrec report` exits 1 naming the call.
#[test]
fn report_names_a_recorded_call_without_a_set() {
    let tmp = TestDir::new("nostart");
    let sink = MailSink::start(&tmp.join("mail"));
    let proxy = proxy_with_mail(&sink);
    let work = proxy.data_dir().join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::write(&work, b"not a folder").unwrap();
    proxy.call(pair("basic")).run().assert_success();
    let call_id = proxy.recent_calls()[0]["caller_call_id"]
        .as_str()
        .unwrap()
        .to_string();
    let m = proxy.metrics();
    assert_eq!(
        metric(
            &m,
            r#"callrec_recording_failures_total{reason="start_failed"}"#
        ),
        Some(1.0)
    );
    assert!(
        wait_until(Duration::from_secs(15), || mails(&sink)
            .iter()
            .any(|m| m.contains("start_failed") && m.contains(&call_id))),
        "no mail about the recording that could not start: {:?}",
        mails(&sink)
    );
    let data = proxy.data_dir().to_string_lossy().to_string();
    let (code, text) = callrec_cli(&["report", "--data-dir", &data, "--settle-secs", "0"]);
    assert_eq!(
        code, 1,
        "a recorded call without a set must fail the report: {text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("MISSING") && l.contains(&call_id) && l.contains("start_failed")),
        "{text}"
    );
}

/// The proxy is killed in the middle of a recorded call: no set, no failure
/// reported. `callrec report` finds it, reports it as `not_sealed` (mail) and
/// exits 1; a second run still exits 1 but reports and mails nothing new.
#[test]
fn report_flags_an_unsealed_call_once() {
    let tmp = TestDir::new("unsealed");
    let sink = MailSink::start(&tmp.join("mail"));
    let proxy = Proxy::start();
    let run = long_call(&proxy);
    let dir = TestDir::new("unsealed-call");
    let mut callee = run.callee_sipp(dir.path()).spawn();
    assert!(
        callee.wait_ready(Duration::from_secs(10)),
        "callee not ready"
    );
    let caller = run.caller_sipp(dir.path()).spawn();
    let mut call_id = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (_, body) = http_get(proxy.admin_addr(), "/api/calls/active").unwrap();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            match v.as_array().and_then(|a| a.first()) {
                Some(c) if c["state"] == "answered" => {
                    call_id = c["caller_call_id"].as_str().unwrap().to_string();
                    true
                }
                _ => false,
            }
        }),
        "the call was never answered"
    );
    std::thread::sleep(Duration::from_secs(1));
    Command::new("kill")
        .args(["-KILL", &proxy.pid().to_string()])
        .status()
        .unwrap();
    let _ = caller.wait_at_most(Duration::from_secs(1));
    let _ = callee.wait_at_most(Duration::from_secs(1));

    let data = proxy.data_dir().to_string_lossy().to_string();
    let url = sink.url();
    let args = [
        "report",
        "--data-dir",
        &data,
        "--settle-secs",
        "0",
        "--max-call-duration",
        "1",
        "--smtp",
        &url,
        "--notify-email",
        OPS,
    ];
    std::thread::sleep(Duration::from_millis(1500));
    let (code, text) = callrec_cli(&args);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("not_sealed") && l.contains(&call_id)),
        "the report does not name the call: {text}"
    );
    assert!(
        wait_until(Duration::from_secs(15), || mails(&sink)
            .iter()
            .any(|m| m.contains("not_sealed") && m.contains(&call_id))),
        "no mail: {:?}",
        mails(&sink)
    );
    let (code, text) = callrec_cli(&args);
    assert_eq!(code, 1, "still missing: {text}");
    assert!(text.contains(&call_id), "{text}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(mails(&sink).len(), 1, "reported twice: {:?}", mails(&sink));
}

/// The work folder runs full soon after the answer and the profile says
/// `reject`: the call is ended with a BYE on both legs instead of going on
/// unrecorded, and what was recorded is sealed with its gap.
#[test]
fn a_full_disk_mid_call_under_reject_ends_the_call_and_seals_what_was_recorded() {
    let proxy = Proxy::builder()
        .arg("--on-record-failure")
        .arg("reject")
        .start();
    let work = proxy.data_dir().join("work");
    let _mount = Tmpfs::mount(&work, "512k");
    // Room for the recording's 64 KiB reserve and about 2 s of stereo audio.
    std::fs::write(work.join("filler"), vec![7u8; 384 * 1024]).unwrap();

    // Both parties stream until the proxy hangs up (each waits 15 s for a BYE).
    let run = proxy
        .call(Pair {
            name: "answer-late-bye",
            dir: "answer-late-bye",
            media: true,
            direction: Direction::Incoming,
        })
        .timeout(Duration::from_secs(30));
    let dir = TestDir::new("diskfull-reject");
    let mut callee = run.callee_sipp(dir.path()).spawn();
    assert!(
        callee.wait_ready(Duration::from_secs(10)),
        "callee not ready"
    );
    let caller = run.caller_sipp(dir.path()).spawn().wait();
    let callee = callee.wait_at_most(Duration::from_secs(10));
    caller.assert_success();
    callee.assert_success();

    let m = proxy.metrics();
    assert_eq!(
        metric(
            &m,
            r#"callrec_recording_failures_total{reason="disk_full"}"#
        ),
        Some(1.0),
        "{m:#?}"
    );
    assert_eq!(
        metric(&m, "callrec_calls_refused_unrecordable_total"),
        Some(1.0),
        "the call was not ended for its failed recording: {m:#?}"
    );
    let recordings = proxy.data_dir().join("recordings");
    assert!(
        wait_until(Duration::from_secs(20), || !sealed_in(&recordings)
            .is_empty()),
        "the partial recording was not sealed\n{}",
        proxy.log_tail(60)
    );
    let sig = sealed_in(&recordings).remove(0);
    let base = sig
        .to_string_lossy()
        .trim_end_matches(".sha256.SHA256withRSA.sig")
        .to_string();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{base}.json")).unwrap()).unwrap();
    let gaps = meta["gaps"].as_array().expect("metadata has a gaps list");
    assert!(
        gaps.iter().any(|g| g["reason"] == "disk_full"),
        "no disk_full gap in {gaps:?}"
    );
}
