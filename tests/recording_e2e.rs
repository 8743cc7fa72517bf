//! Recorded calls end to end (issues 3 and 4): a real SIPp call through the
//! proxy, caller sending a 440 Hz tone and callee a 1 kHz tone; the test reads
//! the WAV the proxy wrote and checks which tone is on which channel, how far
//! the other tone is down, and the length; then it verifies the sealed set
//! with callrec itself, deploy/verify.sh, shasum and openssl as real commands,
//! and checks that a flipped byte is caught.

mod common;

use common::audio::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Waits for the first complete (signed) set in the proxy's recordings folder.
/// A set's path without the checksum suffix: the stem of all its files.
fn base_of(set: &Path) -> String {
    set.to_string_lossy()
        .trim_end_matches(".sha256")
        .to_string()
}

fn sealed_sets(proxy: &Proxy, n: usize) -> Vec<PathBuf> {
    let dir = proxy.data_dir().join("recordings");
    let mut found = Vec::new();
    let ok = wait_until(Duration::from_secs(20), || {
        found = proxy.sealed_sets_now();
        found.len() >= n
    });
    assert!(
        ok,
        "no sealed set appeared in {}\n{}",
        dir.display(),
        proxy.log_tail(60)
    );
    found.sort();
    found
        .into_iter()
        .map(|sig| PathBuf::from(sig.to_string_lossy().trim_end_matches(".SHA256withRSA.sig")))
        .collect()
}

fn read_wav(path: &Path) -> (hound::WavSpec, Vec<Vec<f64>>) {
    let mut r = hound::WavReader::open(path)
        .unwrap_or_else(|e| panic!("{} is not a readable WAV: {e}", path.display()));
    let spec = r.spec();
    let ch = spec.channels as usize;
    let samples: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    let chans = (0..ch)
        .map(|c| {
            samples
                .iter()
                .skip(c)
                .step_by(ch)
                .map(|v| *v as f64)
                .collect()
        })
        .collect();
    (spec, chans)
}

/// Asserts the channel carries `want` and that `other` is at least 30 dB below it.
fn assert_tone(name: &str, x: &[f64], rate: f64, want: f64, other: f64) {
    // Skip the first 0.5 s (call set-up) and take 2 s of steady audio.
    let start = (rate * 0.5) as usize;
    let seg = &x[start..(start + (rate * 2.0) as usize).min(x.len())];
    let w = level_db(seg, rate, want);
    let o = level_db(seg, rate, other);
    for probe in [300.0, 700.0, 1500.0, 2000.0] {
        assert!(
            level_db(seg, rate, probe) < w - 20.0,
            "{name}: {probe} Hz is not far below {want} Hz"
        );
    }
    assert!(
        w - o >= 30.0,
        "{name}: {want} Hz at {w:.1} dB, {other} Hz at {o:.1} dB: less than 30 dB apart"
    );
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

#[test]
fn stereo_recording_has_each_party_on_its_channel_and_verifies() {
    let proxy = Proxy::start();
    let out = proxy.call(pair("basic")).run();
    out.assert_success();
    let set = sealed_sets(&proxy, 1).remove(0);
    let base = base_of(&set);
    let wav = PathBuf::from(format!("{base}.wav"));
    let (spec, ch) = read_wav(&wav);
    assert_eq!(spec.channels, 2, "stereo file expected");
    assert_eq!(spec.sample_rate, 8000);
    assert_eq!(spec.bits_per_sample, 16);
    assert_tone("left (caller)", &ch[0], 8000.0, 440.0, 1000.0);
    assert_tone("right (callee)", &ch[1], 8000.0, 1000.0, 440.0);

    // Duration: within 100 ms of the media time the relay saw (20 ms packets).
    let (_, body) = http_get(proxy.admin_addr(), "/api/calls/recent").unwrap();
    let calls: serde_json::Value = serde_json::from_str(&body).unwrap();
    let c = &calls[0];
    let packets = c["rtp_from_caller"]
        .as_u64()
        .unwrap()
        .max(c["rtp_from_callee"].as_u64().unwrap());
    let media_ms = packets as f64 * 20.0;
    let wav_ms = ch[0].len() as f64 / 8.0;
    assert!(
        (wav_ms - media_ms).abs() <= 100.0,
        "WAV lasts {wav_ms} ms, the relay carried {media_ms} ms of media"
    );

    // Metadata names both legs and the parties.
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{base}.json")).unwrap()).unwrap();
    assert_eq!(meta["call_ids"]["caller_leg"], c["caller_call_id"]);
    assert_eq!(meta["call_ids"]["callee_leg"], c["callee_call_id"]);
    assert_eq!(meta["direction"], "incoming");
    assert_eq!(meta["ended_by"], "caller");
    assert!(meta["schema_version"].as_u64().is_some());

    // Verification with callrec, the standalone script, shasum and openssl.
    let bin = env!("CARGO_BIN_EXE_callrec");
    let cert = proxy.data_dir().join("cert.pem");
    let (code, text) = run(Command::new(bin)
        .arg("verify")
        .arg(&set)
        .arg("--cert")
        .arg(&cert));
    assert_eq!(code, 0, "callrec verify failed: {text}");
    let (code, text) = run(Command::new("sh")
        .arg(repo_dir().join("deploy/verify.sh"))
        .arg("--cert")
        .arg(&cert)
        .arg(&set));
    assert_eq!(code, 0, "deploy/verify.sh failed: {text}");
    let folder = set.parent().unwrap();
    let name = set.file_name().unwrap();
    let (code, text) = run(Command::new("shasum")
        .args(["-a", "256", "-c"])
        .arg(name)
        .current_dir(folder));
    assert_eq!(code, 0, "shasum -c failed: {text}");
    let tmp = TestDir::new("verify");
    let pubkey = tmp.join("pub.pem");
    let sigbin = tmp.join("sig.bin");
    let (code, text) = run(Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(&cert)
        .arg("-out")
        .arg(&pubkey));
    assert_eq!(code, 0, "openssl x509 failed: {text}");
    let (code, text) = run(Command::new("openssl")
        .args(["base64", "-d", "-in"])
        .arg(format!("{}.SHA256withRSA.sig", set.display()))
        .arg("-out")
        .arg(&sigbin));
    assert_eq!(code, 0, "base64 -d failed: {text}");
    let (code, text) = run(Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&pubkey)
        .arg("-signature")
        .arg(&sigbin)
        .arg(&set));
    assert_eq!(code, 0, "openssl dgst -verify failed: {text}");
    assert!(text.contains("Verified OK"), "{text}");

    // One flipped byte in the audio is caught and named.
    let mut bytes = std::fs::read(&wav).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&wav, bytes).unwrap();
    let (code, text) = run(Command::new(bin)
        .arg("verify")
        .arg(&set)
        .arg("--cert")
        .arg(&cert));
    assert_eq!(code, 1, "altered WAV passed verification: {text}");
    assert!(
        text.contains(wav.file_name().unwrap().to_str().unwrap()),
        "the report does not name the WAV: {text}"
    );
}

#[test]
fn separate_mode_writes_one_mono_file_per_party() {
    let proxy = Proxy::builder().arg("--channels").arg("separate").start();
    proxy.call(pair("basic")).run().assert_success();
    let set = sealed_sets(&proxy, 1).remove(0);
    let base = base_of(&set);
    for (file, want, other) in [("caller", 440.0, 1000.0), ("callee", 1000.0, 440.0)] {
        let (spec, ch) = read_wav(Path::new(&format!("{base}_{file}.wav")));
        assert_eq!(spec.channels, 1, "{file}: mono file expected");
        assert_tone(file, &ch[0], 8000.0, want, other);
    }
    let checksums = std::fs::read_to_string(&set).unwrap();
    assert!(checksums.contains("_caller.wav") && checksums.contains("_callee.wav"));
}

#[test]
fn a_chain_of_calls_verifies_and_a_removed_set_is_detected() {
    let proxy = Proxy::start();
    for _ in 0..3 {
        proxy.call(pair("basic")).run().assert_success();
    }
    let sets = sealed_sets(&proxy, 3);
    let bin = env!("CARGO_BIN_EXE_callrec");
    let dir = proxy.data_dir().join("recordings");
    let (code, text) = run(Command::new(bin).arg("verify").arg("--chain").arg(&dir));
    assert_eq!(code, 0, "chain of 3 recorded calls fails: {text}");
    // Remove the middle set (the sets' names sort by start time).
    let middle = sets[1]
        .to_string_lossy()
        .trim_end_matches(".sha256")
        .to_string();
    // A missing set is named by its number and set id (its base name holds phone numbers).
    let middle_meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{middle}.json")).unwrap()).unwrap();
    let middle_id = middle_meta["set_id"].as_str().unwrap().to_string();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.to_string_lossy().starts_with(&middle) {
            std::fs::remove_file(p).unwrap();
        }
    }
    let (code, text) = run(Command::new(bin).arg("verify").arg("--chain").arg(&dir));
    assert_eq!(code, 1, "a removed set went unnoticed: {text}");
    assert!(
        text.contains("set number 2") && text.contains(&middle_id),
        "the report does not name the missing set: {text}"
    );
}

/// The recordings folder cannot be written (here: a file sits where the
/// folder should be): the call itself goes on normally, unrecorded, and the
/// log says what failed and where; the next call after the fault is gone is
/// recorded again.
#[test]
fn a_call_whose_recording_cannot_start_still_connects() {
    let proxy = Proxy::start();
    let work = proxy.data_dir().join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::write(&work, b"not a folder").unwrap();

    let out = proxy.call(pair("basic")).run();
    out.assert_success();
    out.assert_media_both_ways();
    let log = proxy.log();
    let line = log
        .lines()
        .find(|l| l.contains("cannot start recording"))
        .unwrap_or_else(|| panic!("no error logged\n{}", proxy.log_tail(30)));
    assert!(line.contains(&*work.to_string_lossy()), "{line}");
    assert!(proxy.sealed_sets_now().is_empty(), "a set appeared");

    std::fs::remove_file(&work).unwrap();
    proxy.call(pair("basic")).run().assert_success();
    assert_eq!(sealed_sets(&proxy, 1).len(), 1);
}

#[test]
fn a_data_dir_given_relative_to_the_working_directory_records_and_seals() {
    // `--data-dir data` as an operator types it: every file of the set must
    // land below it and verify, as with an absolute path.
    let proxy = Proxy::builder().relative_data_dir().start();
    proxy.call(pair("basic")).run().assert_success();
    let set = sealed_sets(&proxy, 1).remove(0);
    let base = base_of(&set);
    let (_, ch) = read_wav(Path::new(&format!("{base}.wav")));
    assert_tone("left (caller)", &ch[0], 8000.0, 440.0, 1000.0);
    let (code, out) = callrec_cli(&["verify", set.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{}", proxy.log_tail(40));
    assert!(
        !proxy.log().contains("No such file"),
        "{}",
        proxy.log_tail(40)
    );
}
