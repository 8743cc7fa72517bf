//! Transcripts end to end through the real proxy and SIPp calls: with
//! transcription off nothing of it appears (no files, no queue rows, no
//! worker); with a missing model the start says so clearly, the failure is
//! counted and the call is still recorded, sealed and delivered, its
//! transcript waiting in the queue. With the speech engine built in
//! (`--features transcribe`, model from CALLREC_TEST_WHISPER_MODEL, see
//! deploy/test.sh) German speech made with espeak-ng goes through a call as
//! G.711 and as G.722 and the transcript must hold its key words.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Signed sets (their checksum files) in the proxy's recordings folder,
/// addenda not counted.
fn sealed_sets(proxy: &Proxy) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(proxy.data_dir().join("recordings"))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let n = p.to_string_lossy();
                    n.ends_with(".sha256.SHA256withRSA.sig") && !n.contains("_transcript.")
                })
                .map(|p| PathBuf::from(p.to_string_lossy().trim_end_matches(".SHA256withRSA.sig")))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn wait_for_set(proxy: &Proxy) -> PathBuf {
    let mut found = Vec::new();
    let ok = wait_until(Duration::from_secs(30), || {
        found = sealed_sets(proxy);
        !found.is_empty()
    });
    assert!(ok, "no sealed set delivered\n{}", proxy.log_tail(60));
    found.remove(0)
}

/// Every file below `dir` whose name mentions transcripts.
fn transcript_traces(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains("transcri") {
                out.push(p.clone());
            }
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// The transcription queue as (base name, state), read from the database file.
fn queue_rows(data: &Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open_with_flags(
        data.join("callrec.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT base_name, state FROM transcript_queue ORDER BY base_name")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn transcription_off_leaves_no_trace() {
    let mut proxy = Proxy::start();
    proxy.call(pair("basic")).run().assert_success();
    let set = wait_for_set(&proxy);
    assert!(set.is_file());
    proxy.terminate(Duration::from_secs(15));
    let traces = transcript_traces(proxy.data_dir());
    assert!(traces.is_empty(), "transcription is off, yet: {traces:?}");
    assert!(queue_rows(proxy.data_dir()).is_empty());
    assert!(
        !proxy.log().contains("transcri"),
        "the log speaks of transcription:\n{}",
        proxy.log_tail(40)
    );
}

#[test]
fn a_missing_model_is_a_clear_error_and_the_call_is_still_recorded() {
    let models = TestDir::new("no-model");
    let missing = models.join("whisper-base");
    let mut proxy = Proxy::builder()
        .arg("--transcribe")
        .arg("--transcribe-model")
        .arg(missing.to_str().unwrap())
        .start();
    let said = wait_until(Duration::from_secs(10), || {
        proxy.log().contains(&format!(
            "speech model folder {} does not exist",
            missing.display()
        ))
    });
    assert!(
        said,
        "no clear error about the model:\n{}",
        proxy.log_tail(40)
    );
    proxy.call(pair("basic")).run().assert_success();
    let set = wait_for_set(&proxy);
    // Recorded, sealed and delivered to the target as without transcripts.
    let (code, text) = callrec_cli(&["verify", set.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let failures = metric(
        &proxy.metrics(),
        r#"callrec_recording_failures_total{reason="transcription_failed"}"#,
    );
    assert_eq!(failures, Some(1.0), "{}", proxy.log_tail(40));
    // The transcript waits in the queue for a start with a model.
    let base = set
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".sha256")
        .to_string();
    let queued = wait_until(Duration::from_secs(10), || {
        queue_rows(proxy.data_dir()) == vec![(base.clone(), "pending".to_string())]
    });
    assert!(queued, "{:?}", queue_rows(proxy.data_dir()));
    let in_recordings: Vec<PathBuf> = transcript_traces(&proxy.data_dir().join("recordings"));
    assert!(in_recordings.is_empty(), "{in_recordings:?}");
    assert_eq!(proxy.terminate(Duration::from_secs(15)), Some(0));
}
