//! The SDES exchange across two legs: each leg gets callrec's own keys, never
//! the other leg's; plain and SRTP legs meet; what cannot be terminated is named.

use super::*;
use crate::media::srtp::Suite;

fn body(proto: &str, crypto: &[String]) -> Vec<u8> {
    let mut b = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.5\r\ns=-\r\nc=IN IP4 127.0.0.5\r\nt=0 0\r\nm=audio 4000 {proto} 8 101\r\na=rtpmap:8 PCMA/8000\r\n"
    );
    for c in crypto {
        b.push_str(c);
        b.push_str("\r\n");
    }
    b.into_bytes()
}

fn policy(media: [LegMedia; 2]) -> Negotiation {
    Negotiation {
        policy: SrtpPolicy {
            media,
            sdes_allowed: [true, true],
        },
        ..Default::default()
    }
}

fn keys_of(o: &Outcome, side: Side) -> LegKeys {
    o.keys[0]
        .iter()
        .find(|(s, _)| *s == side)
        .unwrap()
        .1
        .clone()
}

#[test]
fn srtp_caller_to_srtp_callee_gets_fresh_keys_on_each_leg() {
    let mut n = policy([LegMedia::Same, LegMedia::Same]);
    let caller_key = MasterKey::fresh(Suite::AesCm128HmacSha1_32);
    let offer = body("RTP/SAVP", &[caller_key.attribute(5)]);
    let o = n.on_sdp(Side::Caller, &offer);
    let LegKeys::Keys {
        rx,
        tx: ours_to_caller,
    } = keys_of(&o, Side::Caller)
    else {
        panic!("caller keys")
    };
    assert_eq!(rx, caller_key);
    assert_eq!(keys_of(&o, Side::Callee), LegKeys::Pending);
    let fwd = String::from_utf8(apply(&offer, &o.lines)).unwrap();
    assert!(fwd.contains("m=audio 4000 RTP/SAVP 8 101"), "{fwd}");
    assert!(
        fwd.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:"),
        "the caller's suite first: {fwd}"
    );
    assert!(
        !fwd.contains(&caller_key.attribute(5)[20..]),
        "the caller's key leaked: {fwd}"
    );
    // The callee answers with our second line's suite and its own key.
    let line2 = fwd.lines().find(|l| l.starts_with("a=crypto:2 ")).unwrap();
    let suite2 = Suite::from_name(line2.split(' ').nth(1).unwrap()).unwrap();
    let callee_key = MasterKey::fresh(suite2);
    let answer = body("RTP/SAVP", &[callee_key.attribute(2)]);
    let a = n.on_sdp(Side::Callee, &answer);
    let LegKeys::Keys { rx, tx } = keys_of(&a, Side::Callee) else {
        panic!("callee keys")
    };
    assert_eq!(rx, callee_key);
    assert_eq!(tx.attribute(2), line2, "our key from the offered line 2");
    let back = String::from_utf8(apply(&answer, &a.lines)).unwrap();
    assert!(back.contains(&ours_to_caller.attribute(5)), "{back}");
    // An answer callrec writes itself (an announcement) carries the same key.
    assert_eq!(
        n.answer_lines(),
        vec![Some(vec![ours_to_caller.attribute(5)])]
    );
    assert_eq!(back.matches("a=crypto:").count(), 1, "{back}");
    assert_eq!(
        n.suites(),
        [Some("AES_CM_128_HMAC_SHA1_32"), Some(suite2.name())]
    );
    // A second answer (the 200 after a 183) finds the same key.
    let again = n.on_sdp(Side::Callee, &answer);
    assert_eq!(keys_of(&again, Side::Callee), keys_of(&a, Side::Callee));
}

#[test]
fn srtp_trunk_meets_a_plain_pbx_and_back() {
    // An SRTP caller, a callee leg set to plain RTP.
    let mut n = policy([LegMedia::Same, LegMedia::Rtp]);
    let k = MasterKey::fresh(Suite::AeadAes128Gcm);
    let offer = body("RTP/SAVP", &[k.attribute(1)]);
    let o = n.on_sdp(Side::Caller, &offer);
    let fwd = String::from_utf8(apply(&offer, &o.lines)).unwrap();
    assert!(
        fwd.contains("RTP/AVP 8 101") && !fwd.contains("crypto"),
        "{fwd}"
    );
    assert_eq!(keys_of(&o, Side::Callee), LegKeys::Plain);
    let answer = body("RTP/AVP", &[]);
    let a = n.on_sdp(Side::Callee, &answer);
    let back = String::from_utf8(apply(&answer, &a.lines)).unwrap();
    assert!(
        back.contains("RTP/SAVP 8 101") && back.contains("a=crypto:1 AEAD_AES_128_GCM inline:"),
        "{back}"
    );
    // A plain caller, the callee leg set to SRTP.
    let mut n = policy([LegMedia::Same, LegMedia::Srtp]);
    let o = n.on_sdp(Side::Caller, &body("RTP/AVP", &[]));
    let fwd = String::from_utf8(apply(&body("RTP/AVP", &[]), &o.lines)).unwrap();
    assert_eq!(fwd.matches("a=crypto:").count(), 3, "{fwd}");
    assert_eq!(keys_of(&o, Side::Caller), LegKeys::Plain);
    // Without TLS (and no --allow-sdes-over-udp) the callee leg stays plain.
    let mut n = policy([LegMedia::Same, LegMedia::Srtp]);
    n.policy.sdes_allowed = [true, false];
    let o = n.on_sdp(Side::Caller, &body("RTP/AVP", &[]));
    assert_eq!(o.lines[0], None);
}

#[test]
fn a_late_offer_from_the_callee_is_answered_by_the_caller() {
    let mut n = policy([LegMedia::Same, LegMedia::Same]);
    let k = MasterKey::fresh(Suite::AesCm128HmacSha1_80);
    let o = n.on_sdp(Side::Callee, &body("RTP/SAVP", &[k.attribute(1)]));
    assert!(matches!(keys_of(&o, Side::Callee), LegKeys::Keys { .. }));
    assert_eq!(keys_of(&o, Side::Caller), LegKeys::Pending);
    let line = o.lines[0].as_ref().unwrap()[0].clone();
    let ck = MasterKey::fresh(Suite::AesCm128HmacSha1_80);
    assert!(line.starts_with("a=crypto:1 AES_CM_128_HMAC_SHA1_80"));
    let a = n.on_sdp(Side::Caller, &body("RTP/SAVP", &[ck.attribute(1)]));
    assert!(matches!(keys_of(&a, Side::Caller), LegKeys::Keys { rx, .. } if rx == ck));
    // A re-INVITE from the callee is an offer again.
    n.expect_offer();
    let o = n.on_sdp(Side::Callee, &body("RTP/AVP", &[]));
    assert_eq!(keys_of(&o, Side::Callee), LegKeys::Plain);
}

#[test]
fn what_callrec_cannot_terminate_is_named() {
    let k = MasterKey::fresh(Suite::AesCm128HmacSha1_80).attribute(1);
    let b64 = k.split("inline:").nth(1).unwrap().to_string();
    assert_eq!(cannot_terminate(&body("RTP/AVP", &[]), false), None);
    assert_eq!(
        cannot_terminate(&body("RTP/SAVP", std::slice::from_ref(&k)), true),
        None
    );
    for (b, allowed, want) in [
        (
            body("RTP/SAVP", std::slice::from_ref(&k)),
            false,
            "without TLS",
        ),
        (body("UDP/TLS/RTP/SAVP", &[]), true, "UDP/TLS/RTP/SAVP"),
        (
            body("RTP/SAVP", &["a=fingerprint:sha-256 AB".into()]),
            true,
            "DTLS",
        ),
        (body("RTP/SAVP", &[]), true, "without SDES keys"),
        (
            body(
                "RTP/SAVP",
                &[format!("a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{b64}")],
            ),
            true,
            "AES_256_CM_HMAC_SHA1_80",
        ),
        (
            body("RTP/AVP", std::slice::from_ref(&k)),
            true,
            "plain RTP profile",
        ),
    ] {
        let why = cannot_terminate(&b, allowed).unwrap_or_default();
        assert!(why.contains(want), "{want}: {why}");
    }
}
