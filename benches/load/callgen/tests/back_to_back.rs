//! The generator against itself: the caller's INVITE goes straight to the
//! callee's address (no proxy), so every message and RTP packet of a few short
//! calls goes through the real binary over loopback, and the JSON summary it
//! prints must show what happened.

use std::process::Command;

fn run(extra: &[&str], port: u16) -> (Option<i32>, String) {
    let callee = format!("127.0.57.2:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_callgen"))
        .args([
            "--calls", "3", "--rate", "10", "--hold", "1.5", "--proxy", &callee, "--callee",
            &callee,
        ])
        .args(["--caller", &format!("127.0.57.3:{port}")])
        .args(extra)
        .output()
        .expect("callgen runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn field(json: &str, key: &str) -> String {
    let at = json
        .find(&format!("\"{key}\": "))
        .unwrap_or_else(|| panic!("{key} in {json}"));
    let rest = &json[at + key.len() + 4..];
    rest[..rest.find([',', '}']).unwrap()].trim().to_string()
}

#[test]
fn calls_complete_and_every_packet_carries_the_other_partys_tone() {
    for sockets in ["shared", "per-call"] {
        let (code, json) = run(&["--rtp-sockets", sockets], 15061);
        assert_eq!(code, Some(0), "{sockets}: {json}");
        assert_eq!(field(&json, "calls_ok"), "3");
        assert_eq!(field(&json, "calls_failed"), "0");
        // 1.5 s hold: 1.0 s of audio per party, 50 packets, 2 parties, 3 calls.
        assert_eq!(field(&json, "packets_per_party"), "50");
        assert_eq!(field(&json, "packets_sent"), "300");
        assert_eq!(field(&json, "packets_received"), "300");
        assert_eq!(field(&json, "tone_frames"), "300");
        assert_eq!(field(&json, "gaps"), "0");
    }
}

#[test]
fn a_tone_that_is_not_sent_fails_the_check() {
    // Listening for 2 kHz where the callee sends 1 kHz: the caller's streams fail.
    let (code, json) = run(&["--callee-hz", "2000"], 15062);
    assert_eq!(code, Some(1), "{json}");
    assert_eq!(field(&json, "calls_ok"), "3");
    assert!(
        json.contains("\"media_caller\": {\"streams\": 3, \"ok\": 0,"),
        "{json}"
    );
    assert!(
        json.contains("\"media_callee\": {\"streams\": 3, \"ok\": 3,"),
        "{json}"
    );
}

#[test]
fn an_srtp_offer_answered_without_a_key_fails_the_calls() {
    // callgen's own callee answers plain RTP/AVP, no a=crypto: the caller
    // cannot protect its media, so each call is ended and counted as failed.
    let (code, json) = run(&["--caller-media", "srtp"], 15063);
    assert_eq!(code, Some(1), "{json}");
    assert_eq!(field(&json, "caller_media"), "\"srtp\"");
    assert_eq!(field(&json, "calls_ok"), "0");
    assert!(
        json.contains("\"failures\": {\"answer_without_crypto\": 3}"),
        "{json}"
    );
    // The caller opened no media; the callee, which knows nothing of it, did.
    assert!(
        json.contains("\"media_caller\": {\"streams\": 0,"),
        "{json}"
    );
}
