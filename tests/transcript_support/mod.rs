//! The fixture of the transcription queue tests: a stand-in transcriber that
//! answers per channel, a data folder with key and database, stereo sets sealed
//! with the real Sealer, a service whose hand-over records what it got, and a
//! staged set whose queue row was lost.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callrec::db::{Db, Record};
use callrec::recorder::failure::FailureReporter;
use callrec::seal::{Identity, PasswordSource, SealedSet, Sealer};
use callrec::transcribe::queue::QueueChange;
use callrec::transcribe::service::{Deliver, Deps, Loader, TranscribeService, Transcriber};
use callrec::transcribe::{Segment, TranscribeError, TranscribeSettings};

/// Says a fixed sentence per channel: what the caller's and the callee's
/// channel hold differs by sign, so a mixed-up channel shows in the text.
pub struct ByChannel;

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

/// A data folder (key, database, staging) and a target folder, in a temporary folder.
pub struct Setup {
    _dir: Option<tempfile::TempDir>,
    /// The data folder.
    pub data: PathBuf,
    /// Where sets and transcripts are handed on to; also the recordings folder searched.
    pub out: PathBuf,
    /// The protocol database in `data`.
    pub db: Db,
    /// The sealing key in `data`.
    pub identity: Identity,
    /// `None` where another process seals in the same data folder (it takes the chain lock).
    pub sealer: Option<Sealer>,
}

/// A fresh setup that seals.
pub fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup_in(dir.path(), true);
    s._dir = Some(dir);
    s
}

/// The data folder `data` and the target folder `target` below `root`.
pub fn setup_in(root: &Path, seals: bool) -> Setup {
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
pub fn seal_stereo(s: &mut Setup, base: &str, profile: &str) -> SealedSet {
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
pub fn copy_into(set: &SealedSet, out: &Path) {
    for f in &set.files {
        std::fs::copy(f, out.join(f.file_name().unwrap())).unwrap();
    }
}

/// The addenda handed on, with their targets.
pub type Delivered = Arc<Mutex<Vec<(String, Vec<String>)>>>;

/// Starts a service on `s` with the profile `sales` transcribing in German.
pub fn start(
    s: &Setup,
    loader: Loader,
    failures: FailureReporter,
) -> (TranscribeService, Delivered) {
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

/// Waits (at most 30 s) until `f` holds.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The queue rows once the writer has committed what was sent.
pub fn rows(db: &Db) -> Vec<(String, String, Option<String>)> {
    db.flush();
    callrec::transcribe::queue::rows(db).unwrap()
}

/// Stages `set` as the sealing thread does, then drops its queue row: the
/// state a process leaves that ends before the row is committed (the kill
/// test above makes that state for real).
pub fn staged_without_row(s: &Setup, set: &SealedSet) -> PathBuf {
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
pub struct Counting(pub Arc<AtomicUsize>);

impl Transcriber for Counting {
    fn transcribe(&self, s: &[i16], r: u32, l: &str) -> Result<Vec<Segment>, TranscribeError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        ByChannel.transcribe(s, r, l)
    }
}

/// (base name, reason, detail) of the failures kept in the database.
pub fn failure_rows(data: &Path) -> Vec<(Option<String>, String, String)> {
    let c = rusqlite::Connection::open(data.join("callrec.sqlite")).unwrap();
    let mut st = c
        .prepare("SELECT base_name, reason, detail FROM failures ORDER BY at_ms")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}
