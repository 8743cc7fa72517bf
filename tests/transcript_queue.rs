//! The transcription queue and workers without a speech model: a stand-in
//! transcriber answers per channel, so these tests check what surrounds the
//! engine: each party transcribed on its own channel, the addendum sealed and
//! handed on with the set's targets, the queue row and word index, the
//! workers' lowered priority, a queue that survives a restart, the failure
//! report when the engine cannot load, and no trace for other profiles.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callrec::db::{Db, Record};
use callrec::recorder::failure::{FailureReason, FailureReporter};
use callrec::seal::{Identity, PasswordSource, SealedSet, Sealer};
use callrec::transcribe::queue::QueueChange;
use callrec::transcribe::service::{Deliver, Deps, Loader, TranscribeService, Transcriber};
use callrec::transcribe::{Segment, TranscribeError, TranscribeSettings};

/// Says a fixed sentence per channel: what the caller's and the callee's
/// channel hold differs by sign, so a mixed-up channel shows in the text.
struct ByChannel;

impl Transcriber for ByChannel {
    fn transcribe(
        &self,
        samples: &[i16],
        rate: u32,
        language: &str,
    ) -> Result<Vec<Segment>, TranscribeError> {
        assert_eq!(rate, 8000);
        assert_eq!(language, "de");
        let sum: i64 = samples.iter().map(|&s| i64::from(s)).sum();
        let text = if sum > 0 {
            "Ich kaufe 1.000 Aktien"
        } else {
            "Gerne, zum Kurs von zwölf Euro"
        };
        Ok(vec![Segment {
            start_ms: if sum > 0 { 0 } else { 1200 },
            end_ms: 2000,
            text: text.into(),
        }])
    }
}

struct Setup {
    _dir: Option<tempfile::TempDir>,
    data: PathBuf,
    out: PathBuf,
    db: Db,
    identity: Identity,
    /// `None` where another process seals in the same data folder (it takes the chain lock).
    sealer: Option<Sealer>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup_in(dir.path(), true);
    s._dir = Some(dir);
    s
}

/// The data folder `data` and the target folder `target` below `root`.
fn setup_in(root: &Path, seals: bool) -> Setup {
    let data = root.join("data");
    let out = root.join("target");
    std::fs::create_dir_all(data.join("work")).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let identity = Identity::load_or_create(&data, PasswordSource::Value("pw".into())).unwrap();
    let sealer = seals.then(|| Sealer::new(identity.clone(), &data).unwrap());
    let db = Db::open_in(&data).unwrap();
    Setup {
        _dir: None,
        data,
        out,
        db,
        identity,
        sealer,
    }
}

/// Seals a stereo set of `profile`: left (caller) positive, right (callee) negative.
fn seal_stereo(s: &mut Setup, base: &str, profile: &str) -> SealedSet {
    let work = s.data.join("work");
    let wav = work.join(format!("{base}.wav"));
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav, spec).unwrap();
    for _ in 0..8000 {
        w.write_sample(1000i16).unwrap();
        w.write_sample(-1000i16).unwrap();
    }
    w.finalize().unwrap();
    let meta = serde_json::json!({
        "profile": profile,
        "call_ids": {"caller_leg": "call-1", "callee_leg": "call-1b"},
        "audio": {"channel_layout": "stereo", "files": [format!("{base}.wav")], "sample_rate": 8000},
    });
    let sealer = s.sealer.as_mut().expect("this setup seals");
    sealer.seal(&work, base, meta, &[wav]).unwrap()
}

/// Copies a set's files into `out` (what the spool and a file target do).
fn copy_into(set: &SealedSet, out: &Path) {
    for f in &set.files {
        std::fs::copy(f, out.join(f.file_name().unwrap())).unwrap();
    }
}

type Delivered = Arc<Mutex<Vec<(String, Vec<String>)>>>;

fn start(s: &Setup, loader: Loader, failures: FailureReporter) -> (TranscribeService, Delivered) {
    let delivered: Delivered = Arc::default();
    let (d, out) = (delivered.clone(), s.out.clone());
    let deliver: Deliver = Arc::new(move |set, targets| {
        copy_into(set, &out);
        d.lock()
            .unwrap()
            .push((set.base_name.clone(), targets.to_vec()));
        Ok(())
    });
    let settings = TranscribeSettings {
        model_dir: None,
        threads: 1,
        nice: 10,
        jobs: 1,
    };
    let languages = HashMap::from([("sales".to_string(), "de".to_string())]);
    let service = TranscribeService::start(
        &settings,
        languages,
        loader,
        Deps {
            db: s.db.clone(),
            identity: s.identity.clone(),
            failures,
            deliver,
            staging: s.data.join("transcribe"),
            roots: vec![s.out.clone()],
            model: "test-model".into(),
            engine: serde_json::json!({"threads": 1}),
        },
    );
    (service, delivered)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rows(db: &Db) -> Vec<(String, String, Option<String>)> {
    db.flush();
    callrec::transcribe::queue::rows(db).unwrap()
}

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

/// Stages `set` as the sealing thread does, then drops its queue row: the
/// state a process leaves that ends before the row is committed (the kill
/// test above makes that state for real).
fn staged_without_row(s: &Setup, set: &SealedSet) -> PathBuf {
    let idle: Loader = Arc::new(|| Err("not yet".to_string()));
    let (service, _) = start(s, idle, FailureReporter::new());
    service.on_sealed(set, &["file:///archive".to_string()]);
    drop(service);
    s.db.send(Record::Transcript(QueueChange::Forget {
        base_name: set.base_name.clone(),
    }));
    assert!(rows(&s.db).is_empty());
    s.data.join("transcribe").join(&set.base_name)
}

/// Counts its calls; a transcript must not be made twice.
struct Counting(Arc<AtomicUsize>);

impl Transcriber for Counting {
    fn transcribe(&self, s: &[i16], r: u32, l: &str) -> Result<Vec<Segment>, TranscribeError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        ByChannel.transcribe(s, r, l)
    }
}

/// (base name, reason, detail) of the failures kept in the database.
fn failure_rows(data: &Path) -> Vec<(Option<String>, String, String)> {
    let c = rusqlite::Connection::open(data.join("callrec.sqlite")).unwrap();
    let mut st = c
        .prepare("SELECT base_name, reason, detail FROM failures ORDER BY at_ms")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
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
    assert!(failures
        .counts()
        .iter()
        .any(|(r, n)| *r == FailureReason::TranscriptionFailed && *n == 1));
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
