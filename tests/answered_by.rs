//! Who answered a group call, end to end: a SIPp caller on the trunk calls
//! group 200, the SIPp PBX answers as agent 201 (P-Asserted-Identity 201,
//! Remote-Party-ID 299, Contact user 207: scenario `answered-by`). The sealed
//! metadata names the agent in `callee.answered_by` beside the group number,
//! carries the setup time (`times.setup`, the INVITE) no later than the
//! answer, and `callrec recordings search --number 201` finds the set. The
//! config key `answered_by_header` picks one source instead of the default
//! order (P-Asserted-Identity, then Remote-Party-ID, then the Contact user).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ANSWERED_BY: Pair = Pair {
    name: "answered-by",
    dir: "answered-by",
    media: true,
    direction: Direction::Incoming,
};

/// The metadata of the one set sealed in `data/recordings`, and its base name.
fn sealed_metadata(proxy: &Proxy) -> (String, serde_json::Value) {
    let dir = proxy.data_dir().join("recordings");
    let mut sig: Option<PathBuf> = None;
    let ok = wait_until(Duration::from_secs(20), || {
        sig = std::fs::read_dir(&dir).ok().and_then(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.to_string_lossy().ends_with(".SHA256withRSA.sig"))
        });
        sig.is_some()
    });
    assert!(
        ok,
        "no sealed set in {}\n{}",
        dir.display(),
        proxy.log_tail(60)
    );
    let sig = sig.unwrap().to_string_lossy().into_owned();
    let base = sig
        .trim_end_matches(".SHA256withRSA.sig")
        .trim_end_matches(".sha256")
        .to_string();
    let json = std::fs::read(format!("{base}.json")).expect("metadata file of the set");
    let name = Path::new(&base)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    (
        name,
        serde_json::from_slice(&json).expect("metadata is JSON"),
    )
}

fn time(v: &serde_json::Value, what: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("times.{what} missing: {v}"));
    chrono::DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("times.{what} {s:?}: {e}"))
}

#[test]
fn a_group_call_names_the_agent_who_answered_and_is_found_by_that_number() {
    let mut proxy = Proxy::builder().arg("--group").arg("200").start();
    proxy
        .call(ANSWERED_BY)
        .numbers("03012345678", "200")
        .run()
        .assert_success();
    let (base, meta) = sealed_metadata(&proxy);
    assert_eq!(
        meta["callee"]["number"], "200",
        "the group stays the callee"
    );
    assert_eq!(
        meta["callee"]["answered_by"], "201",
        "P-Asserted-Identity of the 200 names the agent: {meta:#}"
    );
    let times = &meta["times"];
    let setup = time(&times["setup"], "setup");
    let answer = time(&times["answer"], "answer");
    let end = time(&times["end"], "end");
    assert!(
        setup <= answer && answer <= end,
        "setup {setup} <= answer {answer} <= end {end}"
    );
    // The SIPp callee rings 300 ms before it answers.
    assert!(
        answer - setup >= chrono::Duration::milliseconds(250),
        "setup {setup} is the INVITE, before the 180 and the 200 ({answer})"
    );

    assert_eq!(
        proxy.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        proxy.log_tail(30)
    );
    let data = proxy.data_dir().to_str().unwrap().to_string();
    let (code, out) = callrec_cli(&[
        "recordings",
        "search",
        "--number",
        "201",
        "--data-dir",
        &data,
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 1, "one set answered by 201:\n{out}");
    assert!(out.contains(&base), "{base} expected in:\n{out}");
    assert!(out.contains("201"), "{out}");
    // The group and the caller still find it; a number nobody had does not.
    for n in ["200", "+49 30 12345678"] {
        let (_, out) = callrec_cli(&["recordings", "search", "--number", n, "--data-dir", &data]);
        assert_eq!(out.lines().count(), 1, "search {n}:\n{out}");
    }
    let (_, out) = callrec_cli(&[
        "recordings",
        "search",
        "--number",
        "299",
        "--data-dir",
        &data,
    ]);
    assert_eq!(
        out.lines().count(),
        0,
        "299 (Remote-Party-ID) did not answer:\n{out}"
    );
}

#[test]
fn the_config_key_picks_the_contact_user() {
    let dir = TestDir::new("answered-by-config");
    let config = dir.join("callrec.toml");
    std::fs::write(
        &config,
        "answered_by_header = \"contact\"\n\n[[profiles]]\nname = \"sales\"\nrecord_all = true\n",
    )
    .unwrap();
    let proxy = Proxy::builder()
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start();
    proxy
        .call(ANSWERED_BY)
        .numbers("03012345678", "200")
        .run()
        .assert_success();
    let (_, meta) = sealed_metadata(&proxy);
    assert_eq!(
        meta["callee"]["answered_by"], "207",
        "answered_by_header = contact takes the Contact user: {meta:#}"
    );
    let first = sealed_sets(&proxy);
    assert_eq!(first.len(), 1);

    // The same answer from the trunk on an outgoing call names no agent:
    // only the PBX answers for one.
    proxy
        .call(Pair {
            direction: Direction::Outgoing,
            ..ANSWERED_BY
        })
        .numbers("201", "004989123456")
        .run()
        .assert_success();
    let mut sets = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            sets = sealed_sets(&proxy);
            sets.len() == 2
        }),
        "a second sealed set\n{}",
        proxy.log_tail(40)
    );
    let second = sets.iter().find(|s| !first.contains(s)).unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{second}.json")).unwrap()).unwrap();
    assert_eq!(meta["direction"], "outgoing");
    assert!(
        meta["callee"].get("answered_by").is_none(),
        "no agent on an outgoing call: {meta:#}"
    );
}

/// Base names (with folder) of the sealed sets in `data/recordings` now.
fn sealed_sets(proxy: &Proxy) -> Vec<String> {
    std::fs::read_dir(proxy.data_dir().join("recordings"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().to_string_lossy().into_owned()))
                .filter_map(|p| {
                    p.strip_suffix(".sha256.SHA256withRSA.sig")
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}
