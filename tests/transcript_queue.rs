//! The transcription queue and workers without a speech model: a stand-in
//! transcriber answers per channel, so these tests check what surrounds the
//! engine: each party transcribed on its own channel, the addendum sealed and
//! handed on with the set's targets, the queue row and word index, the
//! workers' lowered priority, a queue that survives a restart, the failure
//! report when the engine cannot load, and no trace for other profiles; and
//! the crash window: a set staged but whose queue row never reached the
//! database (a real `kill -9`), a garbage job file, a transcript sealed
//! before the stop, a staging cut short, a set purged while it waited.

mod transcript_support;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callrec::db::Record;
use callrec::recorder::failure::{FailureReason, FailureReporter};
use callrec::transcribe::service::{Loader, Transcriber};
use transcript_support::*;

#[test]
fn each_party_is_transcribed_sealed_and_handed_on_at_low_priority() {
    let mut s = setup();
    let base = "20260301_101502_in_49301_200_ab12";
    let set = seal_stereo(&mut s, base, "sales");
    let nice_seen = Arc::new(Mutex::new(None));
    let ns = nice_seen.clone();
    let loader: Loader = Arc::new(move || {
        // SAFETY: reads the calling thread's own nice value.
        let nice = unsafe {
            *libc_errno() = 0;
            libc_getpriority(libc_gettid())
        };
        *ns.lock().unwrap() = Some(nice);
        Ok(Box::new(ByChannel) as Box<dyn Transcriber>)
    });
    let (service, delivered) = start(&s, loader, FailureReporter::new());
    service.on_sealed(&set, &["file:///archive".to_string()]);
    copy_into(&set, &s.out);
    wait_for("the transcript", || !delivered.lock().unwrap().is_empty());
    let got = delivered.lock().unwrap().clone();
    assert_eq!(
        got,
        vec![(
            format!("{base}_transcript"),
            vec!["file:///archive".to_string()]
        )]
    );
    assert_eq!(
        *nice_seen.lock().unwrap(),
        Some(10),
        "worker threads run at nice 10"
    );

    let txt = std::fs::read_to_string(s.out.join(format!("{base}_transcript.txt"))).unwrap();
    assert!(
        txt.contains("[00:00.000-00:02.000] caller: Ich kaufe 1.000 Aktien"),
        "{txt}"
    );
    assert!(
        txt.contains("[00:01.200-00:02.000] callee: Gerne, zum Kurs von zwölf Euro"),
        "{txt}"
    );
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s.out.join(format!("{base}_transcript.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(json["language"], "de");
    assert_eq!(json["model"], "test-model");
    assert_eq!(json["parties"], serde_json::json!(["caller", "callee"]));
    assert_eq!(json["segments"][0]["party"], "caller");
    assert_eq!(json["addendum_to"]["base_name"], base);
    let problems = callrec::seal::verify_chain(&s.out, Some(&s.data.join("cert.pem")));
    assert!(problems.is_empty(), "{problems:?}");

    wait_for("the done row", || rows(&s.db).iter().any(|r| r.1 == "done"));
    let hits = callrec::transcribe::search::sets_with_words(&s.db, "Aktien Euro").unwrap();
    assert_eq!(hits.into_iter().collect::<Vec<_>>(), vec![base.to_string()]);
    assert!(
        callrec::transcribe::search::sets_with_words(&s.db, "Anleihen")
            .unwrap()
            .is_empty()
    );
    // The staging links are gone once the transcript is handed on.
    wait_for("the staging folder to go", || {
        !s.data.join("transcribe").join(base).exists()
    });
    assert_eq!(service.counts(), (1, 0));
}

#[test]
fn the_queue_survives_a_restart_and_a_missing_engine_is_reported() {
    let mut s = setup();
    let base = "20260301_111502_in_49301_200_cd34";
    let set = seal_stereo(&mut s, base, "sales");
    let failures = FailureReporter::new();
    let broken: Loader =
        Arc::new(|| Err("speech model folder /nowhere does not exist".to_string()));
    let (service, delivered) = start(&s, broken, failures.clone());
    service.on_sealed(&set, &["file:///archive".to_string()]);
    copy_into(&set, &s.out);
    wait_for("the failure report", || {
        failures
            .counts()
            .iter()
            .any(|(r, n)| *r == FailureReason::TranscriptionFailed && *n == 1)
    });
    drop(service);
    assert!(delivered.lock().unwrap().is_empty());
    assert_eq!(
        rows(&s.db),
        vec![(base.to_string(), "pending".to_string(), None)]
    );

    // The next start (model fixed) resumes the queue from the database.
    let good: Loader = Arc::new(|| Ok(Box::new(ByChannel) as Box<dyn Transcriber>));
    let (_service, delivered) = start(&s, good, FailureReporter::new());
    wait_for("the resumed transcript", || {
        !delivered.lock().unwrap().is_empty()
    });
    wait_for("the done row", || rows(&s.db).iter().any(|r| r.1 == "done"));
    assert!(s.out.join(format!("{base}_transcript.txt")).is_file());
}

#[test]
fn a_lost_staging_folder_is_found_again_in_the_recordings() {
    let mut s = setup();
    let base = "20260301_121502_in_49301_200_ef56";
    let set = seal_stereo(&mut s, base, "sales");
    copy_into(&set, &s.out);
    let broken: Loader = Arc::new(|| Err("not yet".to_string()));
    let (service, _) = start(&s, broken, FailureReporter::new());
    service.on_sealed(&set, &["file:///archive".to_string()]);
    drop(service);
    s.db.flush();
    std::fs::remove_dir_all(s.data.join("transcribe").join(base)).unwrap();
    let good: Loader = Arc::new(|| Ok(Box::new(ByChannel) as Box<dyn Transcriber>));
    let (_service, delivered) = start(&s, good, FailureReporter::new());
    wait_for("the transcript", || !delivered.lock().unwrap().is_empty());
    assert!(s.out.join(format!("{base}_transcript.sha256")).is_file());
}

/// Set in the child process of the kill test: the folder it works in.
const CHILD_ROOT: &str = "CALLREC_TEST_TRANSCRIPT_QUEUE_CHILD";
const KILL_TEST: &str = "a_set_staged_just_before_a_kill_9_is_transcribed_at_the_next_start";

/// The child's part of the kill test: seals a set, hands it on as the sealing
/// thread does (the set to the target, then `on_sealed`), says so and waits
/// for its `kill -9`.
fn stage_then_wait(root: &Path) {
    let mut s = setup_in(root, true);
    let base = "20260301_151502_in_49301_200_cc11";
    let set = seal_stereo(&mut s, base, "sales");
    copy_into(&set, &s.out);
    // No engine: nothing is transcribed before the kill.
    let idle: Loader = Arc::new(|| Err("not in this process".to_string()));
    let (service, _) = start(&s, idle, FailureReporter::new());
    service.on_sealed(&set, &["file:///archive".to_string()]);
    // On a line of its own: the test harness may have begun one ("test … ").
    println!("\nSTAGED:{base}");
    // Bounded: the parent kills this process long before.
    std::thread::sleep(Duration::from_secs(60));
    std::process::exit(3);
}

#[test]
fn a_set_staged_just_before_a_kill_9_is_transcribed_at_the_next_start() {
    if let Some(root) = std::env::var_os(CHILD_ROOT) {
        return stage_then_wait(Path::new(&root));
    }
    let dir = tempfile::tempdir().unwrap();
    // The child seals (it takes the chain lock); this process keeps the database and the key.
    let s = setup_in(dir.path(), false);
    // SQLite's write lock, held here, keeps the child's queue row from being
    // committed: the window between staging and commit stays open until the kill.
    let lock = rusqlite::Connection::open(s.data.join("callrec.sqlite")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", KILL_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ROOT, dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let until = Instant::now() + Duration::from_secs(60);
    let mut said = Vec::new();
    let base = loop {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(b) = line.strip_prefix("STAGED:") {
                    break b.to_string();
                }
                said.push(line);
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the child never staged its set ({e}); it said:\n{}",
                    said.join("\n")
                );
            }
        }
    };
    // SIGKILL: no destructor, no flush, as `kill -9` or the OOM killer.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    let staged = s.data.join("transcribe").join(&base);
    assert!(staged.is_dir(), "the child staged {}", staged.display());
    assert!(rows(&s.db).is_empty(), "the queue row died with the child");

    // The next start finds the staged set although the database has no row for it.
    let good: Loader = Arc::new(|| Ok(Box::new(ByChannel) as Box<dyn Transcriber>));
    let (_service, delivered) = start(&s, good, FailureReporter::new());
    wait_for("the transcript of the staged set", || {
        !delivered.lock().unwrap().is_empty()
    });
    assert_eq!(
        delivered.lock().unwrap().clone(),
        vec![(
            format!("{base}_transcript"),
            vec!["file:///archive".to_string()]
        )],
        "handed on once, to the targets the set had"
    );
    let txt = std::fs::read_to_string(s.out.join(format!("{base}_transcript.txt"))).unwrap();
    assert!(txt.contains("caller: Ich kaufe 1.000 Aktien"), "{txt}");
    let problems = callrec::seal::verify_chain(&s.out, Some(&s.data.join("cert.pem")));
    assert!(problems.is_empty(), "{problems:?}");
    wait_for("the done row", || {
        rows(&s.db) == vec![(base.clone(), "done".to_string(), None)]
    });
    let hits = callrec::transcribe::search::sets_with_words(&s.db, "Aktien").unwrap();
    assert_eq!(hits.into_iter().collect::<Vec<_>>(), vec![base.clone()]);
}

#[test]
fn a_staging_folder_with_a_garbage_job_file_is_reported_and_left_in_place() {
    let mut s = setup();
    let base = "20260301_161502_in_49301_200_dd22";
    let set = seal_stereo(&mut s, base, "sales");
    copy_into(&set, &s.out);
    let staged = staged_without_row(&s, &set);
    std::fs::write(staged.join("job.json"), b"{\"base_name\": 42, \"lang").unwrap();

    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let good: Loader = Arc::new(move || Ok(Box::new(Counting(c.clone())) as Box<dyn Transcriber>));
    let failures = FailureReporter::with_sinks(Some(s.db.clone()), None);
    let (service, delivered) = start(&s, good, failures.clone());
    // The operator hears of it: counted, and kept in the database with what is wrong.
    assert!(failures
        .counts()
        .iter()
        .any(|(r, n)| *r == FailureReason::TranscriptionFailed && *n == 1));
    s.db.flush();
    let kept = failure_rows(&s.data);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].0.as_deref(), Some(base));
    assert_eq!(kept[0].1, "transcription_failed");
    assert!(
        kept[0]
            .2
            .contains(&staged.join("job.json").display().to_string())
            && kept[0].2.contains("not a job file"),
        "{}",
        kept[0].2
    );
    // Nothing deleted: the folder and its links stay for inspection.
    assert!(staged.join(format!("{base}.sha256")).is_file());
    assert!(staged.join("job.json").is_file());

    // The service runs on: the next set is transcribed; the garbage one is not.
    let base2 = "20260301_161602_in_49301_200_dd23";
    let set2 = seal_stereo(&mut s, base2, "sales");
    copy_into(&set2, &s.out);
    service.on_sealed(&set2, &["file:///archive".to_string()]);
    wait_for("the next set's transcript", || {
        !delivered.lock().unwrap().is_empty()
    });
    wait_for("the done row", || rows(&s.db).iter().any(|r| r.1 == "done"));
    assert_eq!(
        rows(&s.db),
        vec![(base2.to_string(), "done".to_string(), None)]
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "two parties of one set");
    assert!(!s.out.join(format!("{base}_transcript.sha256")).exists());
    let problems = callrec::seal::verify_chain(&s.out, Some(&s.data.join("cert.pem")));
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn a_transcript_sealed_before_the_stop_is_handed_on_and_not_made_twice() {
    let mut s = setup();
    let base = "20260301_171502_in_49301_200_ee33";
    let set = seal_stereo(&mut s, base, "sales");
    copy_into(&set, &s.out);
    let staged = staged_without_row(&s, &set);
    // The worker had sealed the transcript into the staging folder when the process ended.
    let first = callrec::seal::seal_addendum(
        &s.identity,
        &staged,
        base,
        "transcript",
        serde_json::json!({"language": "de", "segments": [{"party": "caller", "start_ms": 0, "end_ms": 900, "text": "Ich kaufe Anleihen"}]}),
        &[(
            format!("{base}_transcript.txt"),
            b"[00:00.000-00:00.900] caller: Ich kaufe Anleihen\n".to_vec(),
        )],
    )
    .unwrap();

    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let good: Loader = Arc::new(move || Ok(Box::new(Counting(c.clone())) as Box<dyn Transcriber>));
    let failures = FailureReporter::new();
    let (_service, delivered) = start(&s, good, failures.clone());
    wait_for("the transcript handed on", || {
        !delivered.lock().unwrap().is_empty()
    });
    wait_for("the done row", || rows(&s.db).iter().any(|r| r.1 == "done"));
    assert_eq!(
        delivered.lock().unwrap().clone(),
        vec![(
            format!("{base}_transcript"),
            vec!["file:///archive".to_string()]
        )]
    );
    // The one sealed before: same checksum file, the engine never asked again.
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(
        callrec::transcribe::queue::addendum_checksum(&s.db, base).unwrap(),
        Some(first.checksum_sha256.clone())
    );
    let txt = std::fs::read_to_string(s.out.join(format!("{base}_transcript.txt"))).unwrap();
    assert!(txt.contains("Ich kaufe Anleihen"), "{txt}");
    let hits = callrec::transcribe::search::sets_with_words(&s.db, "Anleihen").unwrap();
    assert_eq!(hits.into_iter().collect::<Vec<_>>(), vec![base.to_string()]);
    let problems = callrec::seal::verify_chain(&s.out, Some(&s.data.join("cert.pem")));
    assert!(problems.is_empty(), "{problems:?}");
    assert!(failures.counts().iter().all(|(_, n)| *n == 0));
    wait_for("the staging folder to go", || !staged.exists());
}

#[test]
fn a_staging_cut_short_before_the_signature_is_made_whole_from_the_recordings() {
    let mut s = setup();
    let base = "20260301_181502_in_49301_200_ff44";
    let set = seal_stereo(&mut s, base, "sales");
    copy_into(&set, &s.out);
    let staged = staged_without_row(&s, &set);
    // The links are made in the set's order, the signature last: the process ended before it.
    std::fs::remove_file(staged.join(format!("{base}.sha256.SHA256withRSA.sig"))).unwrap();
    let good: Loader = Arc::new(|| Ok(Box::new(ByChannel) as Box<dyn Transcriber>));
    let failures = FailureReporter::new();
    let (_service, delivered) = start(&s, good, failures.clone());
    wait_for("the transcript", || !delivered.lock().unwrap().is_empty());
    wait_for("the done row", || {
        rows(&s.db) == vec![(base.to_string(), "done".to_string(), None)]
    });
    assert!(failures.counts().iter().all(|(_, n)| *n == 0));
    let problems = callrec::seal::verify_chain(&s.out, Some(&s.data.join("cert.pem")));
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn a_set_purged_while_it_waited_is_not_transcribed_and_its_links_go() {
    let mut s = setup();
    let base = "20260301_191502_in_49301_200_ab99";
    let set = seal_stereo(&mut s, base, "sales");
    copy_into(&set, &s.out);
    let staged = staged_without_row(&s, &set);
    // The rows the proxy writes for it, long ago; then retention purges it everywhere.
    s.db.write_sync(vec![
        Record::Recording {
            call_id: "call-1".into(),
            base_name: base.into(),
            profile: Some("sales".into()),
            start_ms: 1_000,
            end_ms: Some(2_000),
            caller: Some("+49301".into()),
            callee: Some("200".into()),
            answered_by: None,
        },
        Record::Seal {
            base_name: base.into(),
            at_ms: 2_000,
            checksum_sha256: set.checksum_sha256.clone(),
            files: set.files.len() as u32,
            chain: set.chain_json(),
        },
    ])
    .unwrap();
    let request = callrec::archive::PurgeRequest {
        older_than: Duration::from_secs(60),
        dry_run: false,
        reason: "retention 1d".into(),
        profile: None,
        tombstones: Some(callrec::archive::TombstoneSigner {
            identity: s.identity.clone(),
            staging: s.data.join("tombstones"),
        }),
        plan: Default::default(),
        transcript_staging: Some(s.data.join(callrec::transcribe::STAGING_FOLDER)),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let report = rt
        .block_on(callrec::archive::purge_everywhere(
            &s.db,
            std::slice::from_ref(&s.out),
            &Default::default(),
            &request,
        ))
        .unwrap();
    assert_eq!(report.sets(), 1, "{:?}", report.lines("deleted"));
    assert!(!s.out.join(format!("{base}.wav")).exists());
    s.db.flush();
    // The staging links are hard links to the audio: the purge takes them
    // too, or the recording would outlive its retention period on disk.
    assert!(
        !staged.exists(),
        "the purged set's staging links outlived the purge"
    );
    // A folder left by an older version (or a purge that could not delete
    // it) goes at the next start.
    assert_eq!(staged_without_row(&s, &set), staged);

    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let good: Loader = Arc::new(move || Ok(Box::new(Counting(c.clone())) as Box<dyn Transcriber>));
    let (_service, delivered) = start(&s, good, FailureReporter::new());
    assert!(
        !staged.exists(),
        "the purged set's staging links are deleted at start"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(delivered.lock().unwrap().is_empty());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(rows(&s.db).is_empty());
}

#[test]
fn a_tampered_set_is_not_transcribed() {
    let mut s = setup();
    let base = "20260301_131502_in_49301_200_ab78";
    let set = seal_stereo(&mut s, base, "sales");
    let failures = FailureReporter::new();
    let good: Loader = Arc::new(|| Ok(Box::new(ByChannel) as Box<dyn Transcriber>));
    // Altered between sealing and transcription: the worker must not sign a transcript of it.
    let wav = set
        .files
        .iter()
        .find(|f| f.extension().is_some_and(|e| e == "wav"))
        .unwrap()
        .clone();
    let mut bytes = std::fs::read(&wav).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x55;
    std::fs::write(&wav, bytes).unwrap();
    let (service, delivered) = start(&s, good, failures.clone());
    service.on_sealed(&set, &["file:///archive".to_string()]);
    wait_for("the failed row", || {
        rows(&s.db).iter().any(|r| r.1 == "failed")
    });
    let row = rows(&s.db).remove(0);
    assert!(row.2.unwrap().contains("does not verify"));
    assert!(delivered.lock().unwrap().is_empty());
    // The worker writes the row before it reports: the report may come a moment later.
    wait_for("the failure report", || {
        failures
            .counts()
            .iter()
            .any(|(r, n)| *r == FailureReason::TranscriptionFailed && *n == 1)
    });
}

#[test]
fn a_profile_without_transcripts_leaves_no_trace() {
    let mut s = setup();
    let set = seal_stereo(&mut s, "20260301_141502_in_49301_200_aa00", "support");
    let good: Loader = Arc::new(|| Ok(Box::new(ByChannel) as Box<dyn Transcriber>));
    let (service, delivered) = start(&s, good, FailureReporter::new());
    service.on_sealed(&set, &["file:///archive".to_string()]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(delivered.lock().unwrap().is_empty());
    assert!(rows(&s.db).is_empty());
    assert!(!s.data.join("transcribe").join(&set.base_name).exists());
}

// The thread's own nice value, through libc (a dev-dependency of the tests).
fn libc_gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}
unsafe fn libc_getpriority(tid: u32) -> i32 {
    libc::getpriority(libc::PRIO_PROCESS as _, tid)
}
unsafe fn libc_errno() -> *mut i32 {
    libc::__errno_location()
}
