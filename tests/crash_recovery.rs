//! Recovery at start after a crash: a proxy killed with `kill -9` in the
//! middle of a recorded SIPp call leaves a partial recording; the next start
//! on the same data directory seals it (valid WAV up to the kill, metadata
//! marked recovered), uploads it to the target, records it in the database
//! and counts it in /metrics. A proxy that dies after sealing a set but
//! before spooling it (the test hook CALLREC_TEST_CRASH_AFTER_SEAL) leaves
//! no gap in the chain either: the set is spooled at the next start.

mod common;

use common::audio::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SIG: &str = ".sha256.SHA256withRSA.sig";

/// The checksum files of the sealed sets in `dir`, sorted.
fn sets_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(SIG))
                .map(|p| PathBuf::from(p.to_string_lossy().trim_end_matches(".SHA256withRSA.sig")))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn wait_sets(proxy: &Proxy, dir: &Path, n: usize) -> Vec<PathBuf> {
    let ok = wait_until(Duration::from_secs(30), || sets_in(dir).len() >= n);
    assert!(
        ok,
        "{n} sealed set(s) expected in {}, found {:?}\n{}",
        dir.display(),
        sets_in(dir),
        proxy.log_tail(80)
    );
    sets_in(dir)
}

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Verifies one set independently of callrec: shasum over its checksum file,
/// openssl over its signature with the certificate's public key.
fn verify_independently(sums: &Path, cert: &Path) {
    let folder = sums.parent().unwrap();
    let (code, text) = run(Command::new("shasum")
        .args(["-a", "256", "-c"])
        .arg(sums.file_name().unwrap())
        .current_dir(folder));
    assert_eq!(code, 0, "shasum -c failed: {text}");
    let tmp = TestDir::new("verify");
    let pubkey = tmp.join("pub.pem");
    let sigbin = tmp.join("sig.bin");
    let (code, text) = run(Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(cert)
        .arg("-out")
        .arg(&pubkey));
    assert_eq!(code, 0, "openssl x509 failed: {text}");
    let (code, text) = run(Command::new("openssl")
        .args(["base64", "-d", "-in"])
        .arg(format!("{}.SHA256withRSA.sig", sums.display()))
        .arg("-out")
        .arg(&sigbin));
    assert_eq!(code, 0, "base64 -d failed: {text}");
    let (code, text) = run(Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&pubkey)
        .arg("-signature")
        .arg(&sigbin)
        .arg(sums));
    assert!(
        code == 0 && text.contains("Verified OK"),
        "openssl dgst -verify failed: {text}"
    );
}

fn verify_chain(dir: &Path) {
    let bin = env!("CARGO_BIN_EXE_callrec");
    let (code, text) = run(Command::new(bin).arg("verify").arg("--chain").arg(dir));
    assert_eq!(code, 0, "callrec verify --chain {}: {text}", dir.display());
}

fn metadata(sums: &Path) -> serde_json::Value {
    let json = sums.to_string_lossy().replace(".sha256", ".json");
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

/// Starts a long call's callee, then its caller, with traces in `dir`.
fn start_long_call(proxy: &Proxy, dir: &Path) -> (SippProcess, SippProcess) {
    let call = long_call(proxy);
    let mut callee = call.callee_sipp(dir).spawn();
    assert!(
        callee.wait_ready(Duration::from_secs(10)),
        "callee sipp not ready"
    );
    (call.caller_sipp(dir).spawn(), callee)
}

fn long_call(proxy: &Proxy) -> CallRun {
    let mut run = proxy.call(pair("basic")).timeout(Duration::from_secs(30));
    run.pair = Pair {
        name: "long-call",
        dir: "long-call",
        ..run.pair
    };
    run
}

#[test]
fn a_recording_cut_off_by_kill_9_is_sealed_uploaded_and_counted_at_the_next_start() {
    let keep = TestDir::new("recover-kill");
    let data = keep.join("data");
    let mut proxy = Proxy::builder().data_dir(&data).start();
    let sipp_dir = TestDir::new("recover-kill-sipp");
    let (caller, callee) = start_long_call(&proxy, sipp_dir.path());

    // The recording starts at the answer: its WAV appears in work/.
    let work = data.join("work");
    let wav_in_work = || {
        std::fs::read_dir(&work)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().ends_with(".wav"))
            })
            .unwrap_or(false)
    };
    assert!(
        wait_until(Duration::from_secs(10), wav_in_work),
        "no recording started\n{}",
        proxy.log_tail(40)
    );
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    proxy.kill_hard();
    // Taken once the proxy is gone: a slow kill adds audio, not a test failure.
    let cut_after = started.elapsed().as_secs_f64();
    // Without the proxy both SIPps fail; that is expected.
    let _ = caller.wait_at_most(Duration::from_secs(1));
    let _ = callee.wait_at_most(Duration::from_secs(1));
    drop(proxy);

    let proxy = Proxy::builder().data_dir(&data).start();
    let recordings = data.join("recordings");
    let sets = wait_sets(&proxy, &recordings, 1);
    let sums = &sets[0];
    let cert = data.join("cert.pem");
    verify_independently(sums, &cert);
    verify_chain(&recordings);

    // The metadata says what happened.
    let meta = metadata(sums);
    assert_eq!(meta["recovered"], true, "{meta:#}");
    assert_eq!(
        meta["recovery"]["reason"], "recovered_after_crash",
        "{meta:#}"
    );
    assert_eq!(meta["direction"], "incoming");
    assert_eq!(meta["caller"]["number"], "03012345678");

    // The audio is there up to the kill: caller on the left, callee on the right.
    let wav = sums.to_string_lossy().replace(".sha256", ".wav");
    let mut r = hound::WavReader::open(&wav).unwrap_or_else(|e| panic!("{wav}: {e}"));
    let spec = r.spec();
    assert_eq!((spec.channels, spec.sample_rate), (2, 8000));
    let samples: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    let secs = samples.len() as f64 / 2.0 / 8000.0;
    assert!(
        secs >= cut_after - 1.6 && secs <= cut_after + 0.5,
        "the recovered WAV lasts {secs:.2} s; the proxy was killed {cut_after:.2} s after the recording started"
    );
    let media_ms = meta["times"]["media_duration_ms"].as_u64().unwrap() as f64;
    assert!((media_ms / 1000.0 - secs).abs() < 0.05, "{meta:#}");
    let chan = |c: usize| -> Vec<f64> {
        samples
            .iter()
            .skip(c)
            .step_by(2)
            .skip(4000)
            .take(16000)
            .map(|v| *v as f64)
            .collect()
    };
    let (left, right) = (chan(0), chan(1));
    assert!(level_db(&left, 8000.0, 440.0) > level_db(&left, 8000.0, 1000.0) + 30.0);
    assert!(level_db(&right, 8000.0, 1000.0) > level_db(&right, 8000.0, 440.0) + 30.0);

    // Database and metrics count it once.
    let bin = env!("CARGO_BIN_EXE_callrec");
    let base = sums
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace(".sha256", "");
    let mut out = String::new();
    let found = wait_until(Duration::from_secs(10), || {
        out = run(Command::new(bin)
            .args([
                "recordings",
                "search",
                "--number",
                "03012345678",
                "--data-dir",
            ])
            .arg(&data))
        .1;
        out.contains(&base)
    });
    assert!(found, "recordings search does not find {base}: {out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("recovered"), "{out}");
    let m = proxy.metrics();
    assert_eq!(metric(&m, "callrec_recordings_recovered_total"), Some(1.0));
    assert_eq!(
        metric(
            &m,
            "callrec_recording_failures_total{reason=\"recovered_after_crash\"}"
        ),
        Some(1.0)
    );
    // Nothing of the recording is left; only emptied spare files for the next calls.
    let left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| {
            let spare = e.file_name().to_string_lossy().starts_with(".spare-");
            !(spare && e.metadata().unwrap().len() == 0)
        })
        .map(|e| e.path())
        .collect();
    assert!(
        left.is_empty(),
        "work/ is not empty after recovery: {left:?}"
    );

    // The next call chains onto the recovered set.
    proxy.call(pair("basic")).run().assert_success();
    let sets = wait_sets(&proxy, &recordings, 2);
    verify_chain(&recordings);
    let newest = sets.iter().find(|s| *s != sums).unwrap();
    // Linked by the recovered set's id (never by its base name).
    assert_eq!(metadata(newest)["previous"]["id"], metadata(sums)["set_id"]);
    assert_ne!(metadata(newest)["previous"]["id"], base.as_str());
}

#[test]
fn a_set_sealed_but_not_spooled_at_a_crash_is_uploaded_at_the_next_start() {
    let keep = TestDir::new("recover-seal");
    let data = keep.join("data");
    let mut proxy = Proxy::builder()
        .data_dir(&data)
        .env("CALLREC_TEST_CRASH_AFTER_SEAL", "1")
        .start();
    // The call itself ends normally; the proxy dies right after sealing its set.
    let _ = proxy.call(pair("basic")).run();
    let died = wait_until(Duration::from_secs(20), || !proxy.is_running());
    assert!(
        died,
        "the test hook did not stop the proxy\n{}",
        proxy.log_tail(40)
    );
    let work = data.join("work");
    let recordings = data.join("recordings");
    assert_eq!(
        sets_in(&work).len(),
        1,
        "the sealed set should wait in work/"
    );
    assert!(sets_in(&recordings).is_empty());
    drop(proxy);

    let proxy = Proxy::builder().data_dir(&data).start();
    let sets = wait_sets(&proxy, &recordings, 1);
    verify_independently(&sets[0], &data.join("cert.pem"));
    assert!(sets_in(&work).is_empty(), "the set is still in work/");
    // Sealed normally before the crash: not a recovered recording.
    assert!(metadata(&sets[0]).get("recovered").is_none());

    proxy.call(pair("basic")).run().assert_success();
    let sets = wait_sets(&proxy, &recordings, 2);
    verify_chain(&recordings);
    let first = sets[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace(".sha256", "");
    assert_eq!(
        metadata(&sets[1])["previous"]["id"],
        metadata(&sets[0])["set_id"],
        "{first} is not the previous set"
    );
    let pending = wait_until(Duration::from_secs(10), || {
        metric(&proxy.metrics(), "callrec_spool_sets") == Some(0.0)
    });
    assert!(pending, "uploads still pending\n{}", proxy.log_tail(40));
}

/// A WAV in work/ without a journal (left by an older version): nobody can
/// say whose call it is nor where it goes, so it is repaired, moved into
/// work/unrecoverable/ for the operator and reported, never left silently.
#[test]
fn a_wav_without_a_journal_is_set_aside_and_reported() {
    let keep = TestDir::new("recover-orphan");
    let data = keep.join("data");
    let work = data.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let name = "20260101_120000_in_0301_200_orphan01.wav";
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(work.join(name), spec).unwrap();
    for i in 0..16000 {
        w.write_sample((i % 100) as i16).unwrap();
    }
    w.finalize().unwrap();

    let proxy = Proxy::builder().data_dir(&data).start();
    let moved = work.join("unrecoverable").join(name);
    assert!(moved.is_file(), "not set aside\n{}", proxy.log_tail(40));
    assert!(!work.join(name).exists());
    assert_eq!(hound::WavReader::open(&moved).unwrap().len(), 16000);
    let m = proxy.metrics();
    assert_eq!(
        metric(
            &m,
            "callrec_recording_failures_total{reason=\"recovered_after_crash\"}"
        ),
        Some(1.0)
    );
    assert_eq!(metric(&m, "callrec_recordings_recovered_total"), Some(0.0));
    assert!(
        proxy.log().contains("unrecoverable"),
        "{}",
        proxy.log_tail(40)
    );
}

/// A crash after a set's signature but before the chain head moved: the next
/// start takes that set as the head, so the next set links to it and the
/// chain has neither a gap nor a fork.
#[test]
fn a_set_whose_head_update_was_cut_off_becomes_the_head() {
    use callrec::seal::{Identity, PasswordSource, Sealer};
    let keep = TestDir::new("recover-head");
    let data = keep.join("data");
    let work = data.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let identity = || Identity::load_or_create(&data, PasswordSource::Value("pw".into())).unwrap();
    let seal = |sealer: &mut Sealer, base: &str| {
        std::fs::write(work.join(format!("{base}.wav")), base.as_bytes()).unwrap();
        sealer
            .seal(
                &work,
                base,
                serde_json::json!({"base_name": base}),
                &[PathBuf::from(format!("{base}.wav"))],
            )
            .unwrap()
    };
    let head_file = data.join("chain-head.json");
    {
        let mut sealer = Sealer::new(identity(), &data).unwrap();
        seal(&mut sealer, "a");
        let head_after_a = std::fs::read(&head_file).unwrap();
        seal(&mut sealer, "b");
        // The crash: b is signed but the head still names a.
        std::fs::write(&head_file, head_after_a).unwrap();
    }
    let mut sealer = Sealer::new(identity(), &data).unwrap();
    assert_eq!(sealer.head("default").unwrap().base_name, "a");
    callrec::recovery::adopt_sealed_sets(&mut sealer, &work);
    assert_eq!(sealer.head("default").unwrap().base_name, "b");
    let c = seal(&mut sealer, "c");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&c.files[0]).unwrap()).unwrap();
    let b_meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("b.json")).unwrap()).unwrap();
    assert_eq!(meta["previous"]["id"], b_meta["set_id"]);
    // Taking the head is done once only.
    assert!(sealer.resume(&work).unwrap().is_empty());
    assert_eq!(sealer.head("default").unwrap().base_name, "c");
    verify_chain(&work);
}

/// A crash during sealing, before the signature: the metadata the recording's
/// end had written is kept (with its media counters), marked recovered, the
/// set is sealed and uploaded, and the database gets no second row for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_cut_off_while_sealing_keeps_its_metadata_and_is_uploaded() {
    use callrec::db::{Db, Record};
    use callrec::recorder::journal::{Journal, JOURNAL_VERSION};
    use callrec::recorder::metadata::{CallIds, PartyInfo};
    use callrec::recorder::WavWriter;
    use callrec::seal::service::SealService;
    use callrec::seal::{Identity, PasswordSource, Sealer};
    use callrec::spool::{Spool, SpoolConfig};
    use callrec::vocab::{ChannelMode, Direction};

    let keep = TestDir::new("recover-sealing");
    let data = keep.join("data");
    let work = data.join("work");
    let out = keep.join("out");
    std::fs::create_dir_all(&work).unwrap();
    let base = "20260101_120000_in_0301_200_sealing1";
    let wav = work.join(format!("{base}.wav"));
    let mut w = WavWriter::create(&wav, 2, 8000, u64::MAX, Duration::from_secs(3600)).unwrap();
    w.write_samples(&vec![3i16; 2 * 8000]).unwrap();
    w.finalize().unwrap();
    let party = |n: &str| PartyInfo {
        name: None,
        number: n.into(),
        ..Default::default()
    };
    Journal {
        version: JOURNAL_VERSION,
        base_name: base.into(),
        call_ids: CallIds {
            caller_leg: "a@x".into(),
            callee_leg: "b@y".into(),
        },
        caller: party("0301"),
        callee: party("200"),
        dialled_number: "200".into(),
        direction: Direction::Incoming,
        profile: "default".into(),
        matched_rule: "all".into(),
        channels: ChannelMode::Stereo,
        files: vec![format!("{base}.wav")],
        start_ms: 1_767_265_200_000,
        announcement: None,
        targets: vec![format!("file://{}", out.display())],
        instance_id: "i".into(),
        instance_name: "rec-a".into(),
    }
    .write(&work)
    .unwrap();
    // What the recording's end wrote before the crash: metadata and its row.
    std::fs::write(
        work.join(format!("{base}.json")),
        serde_json::json!({"base_name": base, "profile": "default", "previous": null,
            "media": {"caller": {"packets": 400}}})
        .to_string(),
    )
    .unwrap();
    let db = Db::open_in(&data).unwrap();
    db.send(Record::Recording {
        call_id: "a@x".into(),
        base_name: base.into(),
        profile: Some("default".into()),
        start_ms: 1_767_265_200_000,
        end_ms: Some(1_767_265_201_000),
        caller: Some("0301".into()),
        callee: Some("200".into()),
        answered_by: None,
    });
    db.flush();

    let spool = Spool::start(
        SpoolConfig::new(&data),
        db.clone(),
        callrec::storage::Secrets::new(),
        None,
    )
    .unwrap();
    let id = Identity::load_or_create(&data, PasswordSource::Value("pw".into())).unwrap();
    let sink_spool = spool.clone();
    let service = SealService::start(
        Sealer::new(id, &data).unwrap(),
        Box::new(move |group| {
            for (set, targets) in group {
                sink_spool.enqueue(&set, &targets).unwrap();
                Journal::remove(&set.folder, &set.base_name);
            }
        }),
    );
    let failures = callrec::recorder::failure::FailureReporter::new();
    let recovered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let recovery = callrec::recovery::Recovery {
        work: work.clone(),
        db: db.clone(),
        failures: failures.clone(),
        recovered: recovered.clone(),
        profile_targets: Default::default(),
        default_targets: vec![],
    };
    let (sender, sp) = (service.sender(), spool.clone());
    let summary = tokio::task::spawn_blocking(move || recovery.run(&sender, &sp))
        .await
        .unwrap();
    assert_eq!(summary.recovered, 1, "{summary:?}");
    drop(service);
    assert!(spool.wait_empty(Duration::from_secs(20)).await);
    let sums = out.join(format!("{base}.sha256"));
    verify_independently(&sums, &data.join("cert.pem"));
    let meta = metadata(&sums);
    assert_eq!(meta["recovered"], true);
    assert_eq!(meta["media"]["caller"]["packets"], 400, "{meta:#}");
    assert!(meta["previous"].is_null());
    db.flush();
    let rows = db.recordings(0, i64::MAX).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].recovered);
    assert_eq!(recovered.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(std::fs::read_dir(&work).unwrap().next().is_none());
}

/// A power cut can undo the removal of a journal whose set had already
/// reached the spool (the rename that retires it was not on disk yet). The
/// next start must not report that delivered recording as lost: its journal
/// is removed quietly, nothing is set aside, no failure is counted.
#[test]
fn a_journal_left_behind_by_a_delivered_set_is_not_reported_as_lost() {
    let keep = TestDir::new("recover-stale-journal");
    let data = keep.join("data");
    let work = data.join("work");
    let recordings = data.join("recordings");
    let proxy = Proxy::builder().data_dir(&data).start();
    let sipp_dir = TestDir::new("recover-stale-journal-sipp");
    let (caller, callee) = start_long_call(&proxy, sipp_dir.path());
    // Keep a copy of the journal while the call records: written in place
    // into a spare file, the only one in work/ that holds JSON.
    let journal_in_work = || {
        std::fs::read_dir(&work).ok().and_then(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .find(|p| std::fs::read(p).is_ok_and(|b| b.starts_with(b"{") && b.len() > 100))
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || journal_in_work().is_some()),
        "no recording started\n{}",
        proxy.log_tail(40)
    );
    let journal = journal_in_work().unwrap();
    assert!(
        journal
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".spare-"),
        "the journal is written in place into a spare: {}",
        journal.display()
    );
    let copy = std::fs::read(&journal).unwrap();
    let _ = caller.wait_at_most(Duration::from_secs(40));
    let _ = callee.wait_at_most(Duration::from_secs(5));
    let sets = wait_sets(&proxy, &recordings, 1);
    let delivered = wait_until(Duration::from_secs(20), || {
        metric(&proxy.metrics(), "callrec_spool_sets") == Some(0.0)
    });
    assert!(delivered, "set not delivered\n{}", proxy.log_tail(40));
    assert_eq!(
        std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0),
        0,
        "the journal is emptied once its set is in the spool"
    );
    drop(proxy);

    // The power cut took back the emptying of the journal.
    std::fs::write(&journal, &copy).unwrap();
    let proxy = Proxy::builder().data_dir(&data).start();
    let gone = wait_until(Duration::from_secs(10), || journal_in_work().is_none());
    assert!(
        gone,
        "the stale journal is still there\n{}",
        proxy.log_tail(40)
    );
    let m = proxy.metrics();
    assert_eq!(
        metric(
            &m,
            "callrec_recording_failures_total{reason=\"recovered_after_crash\"}"
        )
        .unwrap_or(0.0),
        0.0,
        "a delivered recording was reported as lost\n{}",
        proxy.log_tail(40)
    );
    let set_aside = std::fs::read_dir(work.join("unrecoverable"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    assert_eq!(
        set_aside,
        0,
        "something was set aside\n{}",
        proxy.log_tail(40)
    );
    assert_eq!(sets_in(&recordings), sets, "the delivered set is untouched");
    verify_independently(&sets[0], &data.join("cert.pem"));
}
