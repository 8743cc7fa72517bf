//! Media that cannot be recorded, offered later than the INVITE: a late offer
//! (INVITE without SDP, the offer in the callee's 200) and a re-INVITE that
//! switches a recorded call to DTLS-SRTP or to a codec the recorder cannot
//! decode. Each goes through the record-failure policy like an INVITE's offer:
//! under `continue` it is reported (never recorded as noise or silence and
//! sealed as valid); under `reject` the late-offer call is refused with 488
//! and the re-INVITE gets 488 while the call goes on recorded. A late offer of
//! SRTP with SDES keys callrec supports is terminated and recorded instead.

mod common;

use common::audio::*;
use common::*;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

const FINGERPRINT: &str = "fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF";

fn failures(proxy: &Proxy, reason: &str) -> f64 {
    metric(
        &proxy.metrics(),
        &format!("callrec_recording_failures_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Waits for every call to end and every recording to be handed on; returns
/// how many recordings were finished.
fn recordings_after_calls(proxy: &Proxy) -> f64 {
    let settled = wait_until(Duration::from_secs(15), || {
        let m = proxy.metrics();
        metric(&m, "callrec_calls_active") == Some(0.0)
            && metric(&m, "callrec_recordings_pending") == Some(0.0)
    });
    assert!(settled, "calls did not end\n{}", proxy.log_tail(40));
    metric(&proxy.metrics(), "callrec_recordings_finished_total").unwrap_or(-1.0)
}

/// The media keys of the `*-unrecordable` scenarios.
struct Offer {
    proto: &'static str,
    fmt: &'static str,
    codec: &'static str,
    attr: &'static str,
}

const DTLS: Offer = Offer {
    proto: "RTP/SAVP",
    fmt: "8",
    codec: "PCMA",
    attr: FINGERPRINT,
};

const G729: Offer = Offer {
    proto: "RTP/AVP",
    fmt: "18",
    codec: "G729",
    attr: "fmtp:18 annexb=no",
};

/// Runs `caller_xml` against `callee_xml` through the proxy, an incoming call
/// from the trunk, with `offer` in the scenarios' keys.
fn run(
    proxy: &Proxy,
    caller_xml: &str,
    callee_xml: &str,
    offer: &Offer,
) -> (SippOutcome, SippOutcome, TestDir) {
    let pair = Pair {
        name: "later-offer",
        dir: "basic",
        media: true,
        direction: Direction::Incoming,
    };
    let run = proxy.call(pair).timeout(Duration::from_secs(20));
    let dir = TestDir::new("later-offer");
    let keys = |s: Sipp| {
        s.key("proto", offer.proto)
            .key("fmt", offer.fmt)
            .key("codec", offer.codec)
            .key("attr", offer.attr)
            .trace_messages(true)
            .trace_dir(dir.path())
    };
    let mut callee = keys(
        Sipp::new("later-offer-callee", callee_xml)
            .local(run.callee_sip)
            .media(
                IpAddr::V4(run.direction.callee_ip()),
                run.callee_media().port(),
            )
            .timeout(Duration::from_secs(20)),
    )
    .spawn();
    assert!(callee.wait_ready(Duration::from_secs(10)));
    let caller = keys(
        Sipp::new("later-offer-caller", caller_xml)
            .remote(proxy.sip_addr())
            .local(run.caller_sip)
            .media(
                IpAddr::V4(run.direction.caller_ip()),
                run.caller_media().port(),
            )
            .key("caller", &run.caller_number)
            .service(&run.dialled)
            .timeout(Duration::from_secs(20)),
    )
    .spawn()
    .wait();
    let callee = callee.wait_at_most(Duration::from_secs(5));
    (caller, callee, dir)
}

fn assert_ok(who: &str, o: &SippOutcome) {
    assert!(o.success(), "{who} failed:\n{}", o.report());
}

/// The WAVs of the sets sealed so far.
fn sealed_wavs(proxy: &Proxy, n: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let dir = proxy.data_dir().join("recordings");
    assert!(
        wait_until(Duration::from_secs(20), || {
            found = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.to_string_lossy().ends_with(".sha256.SHA256withRSA.sig"))
                        .collect()
                })
                .unwrap_or_default();
            found.len() >= n
        }),
        "no sealed set\n{}",
        proxy.log_tail(60)
    );
    found
        .iter()
        .map(|sig| {
            PathBuf::from(
                sig.to_string_lossy()
                    .trim_end_matches(".sha256.SHA256withRSA.sig")
                    .to_string()
                    + ".wav",
            )
        })
        .collect()
}

#[test]
fn late_offer_of_dtls_srtp_with_continue_is_reported_and_not_recorded() {
    // Allowing SDES keys changes nothing for DTLS-SRTP: callrec cannot terminate it.
    let proxy = Proxy::builder().arg("--allow-sdes-over-udp").start();
    let (caller, callee, _dir) = run(
        &proxy,
        "late-offer/caller.xml",
        "late-offer-unrecordable/callee.xml",
        &DTLS,
    );
    assert_ok("caller", &caller);
    assert_ok("callee", &callee);
    assert_eq!(
        recordings_after_calls(&proxy),
        0.0,
        "encrypted media from a late offer was recorded\n{}",
        proxy.log_tail(30)
    );
    assert_eq!(failures(&proxy, "encrypted_media"), 1.0);
}

#[test]
fn late_offer_of_g729_only_with_continue_is_reported_and_not_recorded() {
    let proxy = Proxy::start();
    let (caller, callee, _dir) = run(
        &proxy,
        "late-offer/caller.xml",
        "late-offer-unrecordable/callee.xml",
        &G729,
    );
    assert_ok("caller", &caller);
    assert_ok("callee", &callee);
    assert_eq!(
        recordings_after_calls(&proxy),
        0.0,
        "{}",
        proxy.log_tail(30)
    );
    assert_eq!(failures(&proxy, "undecodable_codec"), 1.0);
}

#[test]
fn late_offer_of_dtls_srtp_with_reject_refuses_the_caller_and_hangs_up_the_pbx() {
    let proxy = Proxy::builder()
        .arg("--on-record-failure")
        .arg("reject")
        .start();
    let (caller, callee, _dir) = run(
        &proxy,
        "late-offer-unrecordable/caller-refused.xml",
        "late-offer-unrecordable/callee.xml",
        &DTLS,
    );
    assert_ok("caller (expects 488)", &caller);
    assert_ok("callee (expects ACK and BYE)", &callee);
    assert_eq!(
        recordings_after_calls(&proxy),
        0.0,
        "{}",
        proxy.log_tail(30)
    );
    assert_eq!(failures(&proxy, "encrypted_media"), 1.0);
    assert_eq!(
        metric(&proxy.metrics(), "callrec_calls_refused_unrecordable_total"),
        Some(1.0)
    );
}

#[test]
fn reinvite_to_g729_with_continue_is_reported() {
    let proxy = Proxy::start();
    let (caller, callee, _dir) = run(
        &proxy,
        "reinvite-unrecordable/caller.xml",
        "reinvite/callee.xml",
        &G729,
    );
    assert_ok("caller", &caller);
    assert_ok("callee", &callee);
    recordings_after_calls(&proxy);
    assert_eq!(
        failures(&proxy, "undecodable_codec"),
        1.0,
        "a recorded call switched to G.729 without a word\n{}",
        proxy.log_tail(30)
    );
}

#[test]
fn reinvite_to_dtls_srtp_with_continue_is_reported() {
    let proxy = Proxy::start();
    let (caller, callee, _dir) = run(
        &proxy,
        "reinvite-unrecordable/caller.xml",
        "reinvite/callee.xml",
        &DTLS,
    );
    assert_ok("caller", &caller);
    assert_ok("callee", &callee);
    recordings_after_calls(&proxy);
    assert_eq!(
        failures(&proxy, "encrypted_media"),
        1.0,
        "{}",
        proxy.log_tail(30)
    );
}

#[test]
fn reinvite_to_dtls_srtp_with_reject_gets_488_and_the_call_stays_recorded() {
    let proxy = Proxy::builder()
        .arg("--on-record-failure")
        .arg("reject")
        .start();
    let (caller, callee, _dir) = run(
        &proxy,
        "reinvite-unrecordable/caller-refused.xml",
        "basic/callee.xml",
        &DTLS,
    );
    assert_ok("caller (expects 488 to the re-INVITE)", &caller);
    assert_ok("callee", &callee);
    assert_eq!(recordings_after_calls(&proxy), 1.0);
    assert_eq!(failures(&proxy, "encrypted_media"), 1.0);
    // The caller's tone is in the recording after the refused re-INVITE too.
    let wav = sealed_wavs(&proxy, 1).remove(0);
    let mut r = hound::WavReader::open(&wav).unwrap();
    let ch = r.spec().channels as usize;
    let rate = r.spec().sample_rate as f64;
    let s: Vec<f64> = r.samples::<i16>().map(|s| s.unwrap() as f64).collect();
    let left: Vec<f64> = s.iter().step_by(ch).copied().collect();
    let late = &left[(2.5 * rate) as usize..(3.3 * rate) as usize];
    assert!(
        level_db(late, rate, 440.0) - level_db(late, rate, 1500.0) >= 30.0,
        "the caller's tone is missing after the refused re-INVITE"
    );
}

const SDES_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd";

#[test]
fn late_offer_of_sdes_srtp_is_terminated_and_unauthenticated_media_is_not_recorded() {
    let proxy = Proxy::builder().arg("--allow-sdes-over-udp").start();
    let attr = format!("crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{SDES_KEY}");
    let offer = Offer {
        proto: "RTP/SAVP",
        fmt: "8",
        codec: "PCMA",
        attr: Box::leak(attr.into_boxed_str()),
    };
    let (caller, callee, _dir) = run(
        &proxy,
        "late-offer/caller.xml",
        "late-offer-unrecordable/callee.xml",
        &offer,
    );
    assert_ok("caller", &caller);
    assert_ok("callee", &callee);
    assert_eq!(
        recordings_after_calls(&proxy),
        1.0,
        "{}",
        proxy.log_tail(30)
    );
    assert_eq!(failures(&proxy, "encrypted_media"), 0.0);
    // The callee got callrec's own key in the ACK's answer, never its own back.
    let seen = callee.read("messages.log");
    let ack = seen
        .split("ACK sip:")
        .nth(1)
        .unwrap_or_else(|| panic!("no ACK:\n{seen}"));
    let ack = ack.split("\n\n\n").next().unwrap_or(ack);
    assert!(
        ack.contains("RTP/SAVP") && ack.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
        "{ack}"
    );
    assert!(
        !ack.contains(SDES_KEY),
        "the callee's own key was sent back:\n{ack}"
    );
    // SIPp's callee sends plain RTP on an SRTP leg: every packet fails
    // authentication, is counted and never recorded; the caller is recorded.
    let wav = sealed_wavs(&proxy, 1).remove(0);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(wav.with_extension("json")).unwrap()).unwrap();
    assert_eq!(
        meta["media"]["callee"]["srtp"], "AES_CM_128_HMAC_SHA1_80",
        "{meta}"
    );
    assert!(
        meta["media"]["callee"]["srtp_auth_failed"]
            .as_u64()
            .unwrap_or(0)
            > 20,
        "{meta}"
    );
    assert_eq!(meta["media"]["callee"]["packets"], 0, "{meta}");
    assert!(metric(&proxy.metrics(), "callrec_srtp_auth_failed_total").unwrap_or(0.0) > 20.0);
    let mut r = hound::WavReader::open(&wav).unwrap();
    let ch = r.spec().channels as usize;
    let rate = r.spec().sample_rate as f64;
    let s: Vec<f64> = r.samples::<i16>().map(|s| s.unwrap() as f64).collect();
    let left: Vec<f64> = s.iter().step_by(ch).copied().collect();
    let right: Vec<f64> = s.iter().skip(1).step_by(ch).copied().collect();
    let mid = (1.0 * rate) as usize..(2.0 * rate) as usize;
    assert!(
        level_db(&left[mid.clone()], rate, 440.0) - level_db(&left[mid.clone()], rate, 1500.0)
            >= 30.0
    );
    assert!(
        level_db(&right[mid.clone()], rate, 1000.0) < level_db(&left[mid], rate, 440.0) - 40.0,
        "the callee's unauthenticated tone was recorded"
    );
}

#[test]
fn reinvite_to_sdes_srtp_is_terminated_not_reported() {
    let proxy = Proxy::builder().arg("--allow-sdes-over-udp").start();
    let attr = format!("crypto:7 AES_CM_128_HMAC_SHA1_32 inline:{SDES_KEY}");
    let offer = Offer {
        proto: "RTP/SAVP",
        fmt: "8",
        codec: "PCMA",
        attr: Box::leak(attr.into_boxed_str()),
    };
    let (caller, callee, _dir) = run(
        &proxy,
        "reinvite-unrecordable/caller.xml",
        "reinvite/callee.xml",
        &offer,
    );
    assert_ok("caller", &caller);
    assert_ok("callee", &callee);
    assert_eq!(recordings_after_calls(&proxy), 1.0);
    assert_eq!(
        failures(&proxy, "encrypted_media"),
        0.0,
        "{}",
        proxy.log_tail(30)
    );
    // The caller's re-INVITE is answered with callrec's key under its tag.
    let seen = caller.read("messages.log");
    let answer = seen
        .split("SIP/2.0 200 OK")
        .filter(|m| m.contains("CSeq: 2 INVITE"))
        .last()
        .unwrap_or_else(|| panic!("no 200 to the re-INVITE:\n{seen}"));
    assert!(
        answer.contains("RTP/SAVP")
            && answer.contains("a=crypto:7 AES_CM_128_HMAC_SHA1_32 inline:"),
        "{answer}"
    );
    assert!(
        !answer.contains(SDES_KEY),
        "the caller's own key was sent back"
    );
    // SIPp keeps sending plain RTP after switching to SRTP: refused, counted.
    let wav = sealed_wavs(&proxy, 1).remove(0);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(wav.with_extension("json")).unwrap()).unwrap();
    assert_eq!(
        meta["media"]["caller"]["srtp"], "AES_CM_128_HMAC_SHA1_32",
        "{meta}"
    );
    assert!(
        meta["media"]["caller"]["srtp_auth_failed"]
            .as_u64()
            .unwrap_or(0)
            > 20,
        "{meta}"
    );
}
