//! Transcription benchmark: the CPU a recorded call's transcript costs. A
//! simulated call of CALL_SECONDS has two parties taking turns (German speech
//! from espeak-ng, 8 kHz, G.711 A-law), each party's channel transcribed on its
//! own as callrec does. Reports model load time, CPU seconds per call minute,
//! peak RSS and the call minutes one core transcribes per hour.
//!
//! Run: `cargo bench --features transcribe --bench transcribe -- DIR [THREADS]`
//! with DIR a CTranslate2 Whisper model folder (default: $CALLREC_TEST_WHISPER_MODEL);
//! the figures go to BENCHMARKS.md, "Transcription".

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use callrec::audio::g711::{decode_alaw, encode_alaw};
use callrec::transcribe::{Engine, EngineSettings};

const SENTENCES: [&str; 6] = [
    "Guten Tag, ich möchte 1000 Aktien der Deutschen Bank kaufen.",
    "Gerne, zu welchem Kurs soll der Auftrag ausgeführt werden?",
    "Bitte verkaufen Sie 200 Anteile zum Kurs von 12 Euro.",
    "Der Auftrag wird heute an der Börse in Frankfurt ausgeführt.",
    "Können Sie mir den aktuellen Kontostand nennen?",
    "Vielen Dank für Ihren Anruf und auf Wiederhören.",
];
const CALL_SECONDS: usize = 120;
const RATE: usize = 8000;

/// (user + system CPU seconds, peak RSS in MB) of this process so far.
fn usage() -> (f64, f64) {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs(ru.ru_utime) + secs(ru.ru_stime),
        ru.ru_maxrss as f64 / 1024.0,
    )
}

/// One sentence as it arrives over an A-law call.
fn speech(dir: &std::path::Path, text: &str) -> Vec<i16> {
    let raw = dir.join("s.espeak.wav");
    let wav = dir.join("s.wav");
    let ok = Command::new("espeak-ng")
        .args(["-v", "de", "-s", "150", "-w"])
        .arg(&raw)
        .arg(text)
        .status()
        .expect("espeak-ng")
        .success()
        && Command::new("sox")
            .arg("-D") // no random dither: the same speech every run
            .arg(&raw)
            .args(["-b", "16", "-c", "1", "-r", "8000"])
            .arg(&wav)
            .status()
            .expect("sox")
            .success();
    assert!(ok, "making speech failed");
    let pcm: Vec<i16> = hound::WavReader::open(&wav)
        .unwrap()
        .samples::<i16>()
        .map(|s| s.unwrap())
        .collect();
    let alaw: Vec<u8> = pcm.iter().map(|&s| encode_alaw(s)).collect();
    let mut out = Vec::new();
    decode_alaw(&alaw, &mut out);
    out
}

/// Two channels of one call: the parties take turns, 0.7 s apart.
fn call(dir: &std::path::Path) -> [Vec<i16>; 2] {
    let clips: Vec<Vec<i16>> = SENTENCES.iter().map(|s| speech(dir, s)).collect();
    let n = CALL_SECONDS * RATE;
    let mut parties = [vec![0i16; n], vec![0i16; n]];
    let (mut at, mut turn) = (RATE / 2, 0);
    'fill: loop {
        for clip in &clips {
            if at + clip.len() > n {
                break 'fill;
            }
            parties[turn % 2][at..at + clip.len()].copy_from_slice(clip);
            at += clip.len() + RATE * 7 / 10;
            turn += 1;
        }
    }
    parties
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let model = args
        .first()
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CALLREC_TEST_WHISPER_MODEL").map(PathBuf::from))
        .expect("give a model folder, or set CALLREC_TEST_WHISPER_MODEL (deploy/test.sh)");
    let threads: usize = args.get(1).map_or(1, |t| t.parse().expect("threads"));
    let dir = tempfile::tempdir().unwrap();
    let parties = call(dir.path());

    let (cpu0, _) = usage();
    let t0 = Instant::now();
    let engine = Engine::load(&EngineSettings {
        model_dir: model.clone(),
        threads,
        ..EngineSettings::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let load_s = t0.elapsed().as_secs_f64();
    let (cpu1, rss_loaded) = usage();

    let t1 = Instant::now();
    let mut words = 0;
    for party in &parties {
        for seg in engine.transcribe(party, RATE as u32, "de").unwrap() {
            words += seg.text.split_whitespace().count();
        }
    }
    let wall = t1.elapsed().as_secs_f64();
    let (cpu2, rss_peak) = usage();

    let call_minutes = CALL_SECONDS as f64 / 60.0;
    let cpu_per_call_minute = (cpu2 - cpu1) / call_minutes;
    println!("model {}  threads {threads}", model.display());
    println!(
        "load: {load_s:.2} s wall, {:.2} CPU-s; RSS after load {rss_loaded:.0} MB",
        cpu1 - cpu0
    );
    println!(
        "one {CALL_SECONDS} s call, 2 parties ({words} words): {wall:.1} s wall, {:.1} CPU-s",
        cpu2 - cpu1
    );
    println!("CPU-s per call minute: {cpu_per_call_minute:.2}");
    println!(
        "CPU-s per minute of one party's channel: {:.2}",
        cpu_per_call_minute / 2.0
    );
    println!("peak RSS: {rss_peak:.0} MB");
    println!(
        "call minutes one core transcribes per hour: {:.0}",
        3600.0 / cpu_per_call_minute
    );
}
