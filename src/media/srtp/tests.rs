//! SRTP contexts against each other: every suite round-trips, tampering and
//! replays are refused, the rollover counter carries across the sequence
//! number wrap, and keys stay out of Debug output and logs.

use super::*;

/// A plain RTP packet: PCMA, `seq`, timestamp seq*160, SSRC `ssrc`.
fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 8];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..160u32).map(|i| (i as u8) ^ (seq as u8)));
    p
}

/// An RTCP receiver report without blocks from `ssrc`.
fn rtcp(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 201, 0, 1];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p
}

#[test]
fn every_suite_round_trips_rtp_and_rtcp_and_hides_the_payload() {
    for suite in SUITES {
        let key = MasterKey::fresh(suite);
        let mut tx = Protection::new(key.clone());
        let mut rx = Protection::new(key);
        let plain = rtp(7, 0x1234);
        let sealed = tx.protect(&plain, false).unwrap();
        assert_ne!(
            &sealed[12..172],
            &plain[12..],
            "{suite:?}: payload in the clear"
        );
        assert_eq!(
            &sealed[..12],
            &plain[..12],
            "{suite:?}: the header stays readable"
        );
        assert_eq!(&rx.unprotect(&sealed, false).unwrap()[..], &plain[..]);
        let report = rtcp(0x1234);
        let sealed = tx.protect(&report, true).unwrap();
        assert_eq!(&rx.unprotect(&sealed, true).unwrap()[..], &report[..]);
    }
}

#[test]
fn tampered_replayed_and_wrongly_keyed_packets_are_refused() {
    for suite in SUITES {
        let key = MasterKey::fresh(suite);
        let mut tx = Protection::new(key.clone());
        let mut rx = Protection::new(key);
        let sealed = tx.protect(&rtp(1, 9), false).unwrap();
        let mut bad = sealed.to_vec();
        bad[20] ^= 1;
        assert_eq!(rx.unprotect(&bad, false), Err(Refused::Auth), "{suite:?}");
        assert!(rx.unprotect(&sealed, false).is_ok());
        assert_eq!(rx.unprotect(&sealed, false), Err(Refused::Auth), "replay");
        let mut other = Protection::new(MasterKey::fresh(suite));
        let foreign = other.protect(&rtp(2, 9), false).unwrap();
        assert_eq!(rx.unprotect(&foreign, false), Err(Refused::Auth));
        assert_eq!(rx.unprotect(&[0x80, 8, 0], false), Err(Refused::Auth));
    }
}

#[test]
fn forged_packets_with_new_ssrcs_claim_no_context() {
    let mut rx = Protection::new(MasterKey::fresh(Suite::AesCm128HmacSha1_80));
    for ssrc in 0..1000u32 {
        let mut forger = Protection::new(MasterKey::fresh(Suite::AesCm128HmacSha1_80));
        let forged = forger.protect(&rtp(1, ssrc), false).unwrap();
        assert!(rx.unprotect(&forged, false).is_err());
    }
    assert!(rx.rtp.slots.is_empty());
}

#[test]
fn a_sender_refuses_more_streams_than_it_keeps_contexts_for() {
    // Making a context again for a forgotten SSRC would restart its rollover
    // counter and repeat keystream; a sender therefore refuses a fifth SSRC.
    let mut tx = Protection::new(MasterKey::fresh(Suite::AesCm128HmacSha1_80));
    for ssrc in 0..MAX_SSRCS as u32 {
        assert!(tx.protect(&rtp(1, ssrc), false).is_some());
    }
    assert!(tx.protect(&rtp(1, 99), false).is_none());
    assert!(tx.protect(&rtp(2, 0), false).is_some());
}

#[test]
fn the_rollover_counter_carries_across_the_sequence_wrap() {
    for suite in SUITES {
        let key = MasterKey::fresh(suite);
        let mut tx = Protection::new(key.clone());
        let mut rx = Protection::new(key.clone());
        // Starts 20 packets below the wrap and goes 20 past it, one lost and
        // one reordered around the wrap.
        let seqs: Vec<u16> = (0..40u32).map(|i| (65516 + i) as u16).collect();
        let mut sealed: Vec<(u16, Bytes)> = seqs
            .iter()
            .map(|&s| (s, tx.protect(&rtp(s, 77), false).unwrap()))
            .collect();
        sealed.retain(|(s, _)| *s != 65530);
        sealed.swap(19, 20);
        for (s, p) in &sealed {
            let got = rx
                .unprotect(p, false)
                .unwrap_or_else(|e| panic!("{suite:?}: seq {s} after the wrap: {e:?}"));
            assert_eq!(&got[..], &rtp(*s, 77)[..]);
        }
        // The receiver's context is in the second roll: a packet sealed with
        // roll 0 for seq 5 (a fresh sender) does not authenticate there.
        let mut fresh = Protection::new(key);
        let old_roll = fresh.protect(&rtp(25, 77), false).unwrap();
        assert!(rx.unprotect(&old_roll, false).is_err(), "{suite:?}");
    }
}

#[test]
fn crypto_lines_are_read_and_unusable_ones_have_no_key() {
    let key = MasterKey::fresh(Suite::AesCm128HmacSha1_80);
    let attr = key.attribute(3);
    let line = parse_crypto(attr.strip_prefix("a=crypto:").unwrap()).unwrap();
    assert_eq!(line.tag, 3);
    assert_eq!(line.key, Some(key.clone()));
    let b64 = attr.split("inline:").nth(1).unwrap();
    let with_lifetime = format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}|2^31");
    assert_eq!(parse_crypto(&with_lifetime).unwrap().key, Some(key.clone()));
    for unusable in [
        format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}|2^20|1:4"),
        format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64} UNENCRYPTED_SRTP"),
        format!("1 AES_256_CM_HMAC_SHA1_80 inline:{b64}"),
        format!("1 F8_128_HMAC_SHA1_80 inline:{b64}"),
        "1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=".to_string(),
        "1 AEAD_AES_128_GCM inline:!!!".to_string(),
    ] {
        let l = parse_crypto(&unusable).unwrap();
        assert_eq!(l.key, None, "{unusable}");
    }
    assert_eq!(parse_crypto("x AES_CM_128_HMAC_SHA1_80"), None);
}

#[test]
fn keys_never_show_in_debug_output_or_redacted_text() {
    let key = MasterKey::fresh(Suite::AeadAes128Gcm);
    let attr = key.attribute(1);
    let b64 = attr.split("inline:").nth(1).unwrap().to_string();
    let shown = format!("{key:?} {:?}", Protection::new(key.clone()));
    assert!(
        !shown.contains(&b64) && shown.contains("AEAD_AES_128_GCM"),
        "{shown}"
    );
    let sdp = format!(
        "m=audio 1 RTP/SAVP 8\r\n{attr}|2^20\r\na=crypto:2 X inline:{b64};inline:{b64}\r\n"
    );
    let red = redact(&sdp);
    assert!(!red.contains(&b64), "{red}");
    assert!(
        red.contains("a=crypto:1 AEAD_AES_128_GCM inline:[redacted]|2^20"),
        "{red}"
    );
    assert_eq!(redact("no keys here"), "no keys here");
}
