//! The load generator (benches/load/callgen) as a test peer: built once per
//! target folder, run against a `Proxy`, its JSON summary parsed; and what
//! tests look at afterwards (sealed sets, their metadata, the tones in a WAV).

use super::audio::level_db;
use super::{repo_dir, wait_until, Proxy, SET_SIGNATURE_SUFFIX};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Builds callgen (its own crate and target folder) and returns the binary.
pub fn callgen_bin() -> PathBuf {
    let dir = repo_dir().join("benches/load/callgen");
    let target = dir.join("target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("cargo runs");
    assert!(st.success(), "building callgen failed");
    target.join("debug/callgen")
}

/// Runs `calls` calls of `hold` seconds through the proxy, 5 per second;
/// the exit code and the JSON summary.
pub fn run_callgen(
    proxy: &Proxy,
    calls: u32,
    hold: u32,
    extra: &[&str],
) -> (Option<i32>, serde_json::Value) {
    let out = callgen_command(proxy, calls, hold)
        .args(extra)
        .output()
        .expect("callgen runs");
    (out.status.code(), summary(&out))
}

/// callgen set up for `calls` calls of `hold` seconds through the proxy,
/// 5 per second, caller on its trunk address and callee on its PBX address.
pub fn callgen_command(proxy: &Proxy, calls: u32, hold: u32) -> Command {
    let mut cmd = Command::new(callgen_bin());
    cmd.args(["--calls", &calls.to_string(), "--rate", "5"])
        .args(["--hold", &hold.to_string()])
        .args(["--proxy", &proxy.sip_addr().to_string()])
        .args(["--caller", &proxy.trunk_addr().to_string()])
        .args(["--callee", &proxy.pbx_addr().to_string()]);
    cmd
}

/// callgen's JSON summary from its output; panics with what it printed.
pub fn summary(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "callgen's summary ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The base paths of the sealed sets, once `n` are there.
pub fn sealed_sets(proxy: &Proxy, n: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let done = wait_until(Duration::from_secs(30), || {
        found = proxy.sealed_sets_now();
        found.len() >= n
    });
    assert!(
        done,
        "{} of {n} sets sealed\n{}",
        found.len(),
        proxy.log_tail(60)
    );
    found
        .iter()
        .map(|sig| PathBuf::from(sig.to_string_lossy().trim_end_matches(SET_SIGNATURE_SUFFIX)))
        .collect()
}

/// How far each tone stands above a frequency nobody sent (dB), per channel
/// of the WAV's middle second.
pub fn tone_levels(wav: &Path, freqs: &[f64]) -> Vec<Vec<f64>> {
    let mut r = hound::WavReader::open(wav).unwrap();
    let (n, rate) = (r.spec().channels as usize, f64::from(r.spec().sample_rate));
    let s: Vec<f64> = r.samples::<i16>().map(|s| f64::from(s.unwrap())).collect();
    (0..n)
        .map(|ch| {
            let x: Vec<f64> = s.iter().skip(ch).step_by(n).copied().collect();
            assert!(x.len() > rate as usize * 2, "{wav:?}: too short");
            let mid = x.len() / 2;
            let sec = &x[mid - rate as usize / 2..mid + rate as usize / 2];
            freqs
                .iter()
                .map(|&f| level_db(sec, rate, f) - level_db(sec, rate, 1700.0))
                .collect()
        })
        .collect()
}

/// RTP packets a set's recording holds, both parties together.
pub fn recorded_packets(base: &Path) -> u64 {
    let md = meta(base);
    ["caller", "callee"]
        .iter()
        .map(|p| md["media"][p]["packets"].as_u64().unwrap_or(0))
        .sum()
}

/// A set's metadata.
pub fn meta(base: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(base.with_extension("json")).unwrap()).unwrap()
}
