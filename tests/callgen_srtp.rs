//! The load generator (benches/load/callgen) with SRTP on the trunk leg,
//! against callrec: callgen's caller offers RTP/SAVP with a fresh SDES key per
//! call, callrec answers with its own (`--trunk-media srtp`, keys allowed over
//! UDP) and relays to callgen's callee in plain RTP (`--pbx-media rtp`). The
//! calls must pass callgen's own checks (every packet authenticated, the
//! callee's tone in what came back) and each recording must hold the caller's
//! tone, which it can only if callrec decrypted what callgen protected. With
//! keys one bit off (`--srtp-corrupt-key`) every packet fails authentication on
//! both sides: counted by callgen and by callrec, and neither crashes.

mod common;

use common::callgen::*;
use common::*;

fn srtp_proxy() -> Proxy {
    Proxy::builder()
        .arg("--allow-sdes-over-udp")
        .arg("--trunk-media")
        .arg("srtp")
        .arg("--pbx-media")
        .arg("rtp")
        .start()
}

#[test]
fn callgen_srtp_calls_pass_and_the_recordings_hold_the_decrypted_tone() {
    let proxy = srtp_proxy();
    let (code, j) = run_callgen(&proxy, 3, 3, &["--caller-media", "srtp"]);
    assert_eq!(code, Some(0), "{j}\n{}", proxy.log_tail(60));
    assert_eq!(j["caller_media"], "srtp", "{j}");
    assert_eq!(j["calls_ok"], 3, "{j}");
    assert_eq!(j["calls_failed"], 0, "{j}");
    assert_eq!(j["srtp_auth_failed"], 0, "{j}");
    // 3 s hold: 2.5 s of audio, 125 packets per party and call; a stream is
    // ok with at least 99 % of them (a packet at the edge of a call may be
    // lost on a busy machine), of which at least 95 % carry the tone.
    for party in ["media_caller", "media_callee"] {
        assert_eq!(j[party]["ok"], 3, "{j}");
        assert!(j[party]["received"].as_u64().unwrap() >= 372, "{j}");
    }
    assert_eq!(j["tone_frames"], j["packets_received"], "{j}");

    let m = proxy.metrics();
    assert_eq!(
        metric(&m, "callrec_srtp_auth_failed_total").unwrap_or(0.0),
        0.0
    );
    for base in sealed_sets(&proxy, 3) {
        let md = meta(&base);
        assert_eq!(
            md["media"]["caller"]["srtp"], "AES_CM_128_HMAC_SHA1_80",
            "{md}"
        );
        assert!(md["media"]["callee"]["srtp"].is_null(), "{md}");
        // One channel holds the caller's 440 Hz, the other the callee's 1 kHz.
        let lv = tone_levels(&base.with_extension("wav"), &[440.0, 1000.0]);
        assert!(
            lv.iter().any(|c| c[0] >= 30.0),
            "440 Hz not recorded: {lv:?}"
        );
        assert!(
            lv.iter().any(|c| c[1] >= 30.0),
            "1 kHz not recorded: {lv:?}"
        );
    }
}

#[test]
fn callgen_with_wrong_srtp_keys_counts_authentication_failures() {
    let mut proxy = srtp_proxy();
    let (code, j) = run_callgen(
        &proxy,
        2,
        3,
        &["--caller-media", "srtp", "--srtp-corrupt-key"],
    );
    // The media check fails (exit 1), the generator itself does not (3, or a signal).
    assert_eq!(code, Some(1), "{j}");
    assert_eq!(j["calls_ok"], 2, "the signalling is unaffected: {j}");
    assert_eq!(j["media_caller"]["received"], 0, "{j}");
    let failed = j["media_caller"]["srtp_auth_failed"].as_u64().unwrap();
    assert!(failed >= 240, "callrec's packets fail authentication: {j}");
    assert_eq!(j["srtp_auth_failed"].as_u64(), Some(failed), "{j}");

    // callrec refused everything the caller sent, and recorded none of it.
    let m = proxy.metrics();
    let refused = metric(&m, "callrec_srtp_auth_failed_total").unwrap_or(0.0);
    assert!(refused >= 240.0, "callrec counted {refused}");
    assert_eq!(
        j["media_callee"]["received"], 0,
        "nothing relayed to the PBX: {j}"
    );
    for base in sealed_sets(&proxy, 2) {
        let md = meta(&base);
        assert!(
            md["media"]["caller"]["srtp_auth_failed"]
                .as_u64()
                .unwrap_or(0)
                >= 120,
            "{md}"
        );
        let lv = tone_levels(&base.with_extension("wav"), &[440.0]);
        assert!(lv.iter().all(|c| c[0] < 10.0), "440 Hz recorded: {lv:?}");
    }
    assert!(proxy.is_running(), "callrec exited");
}
