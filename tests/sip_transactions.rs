//! RFC 3261 transactions on the wire, with raw UDP peers
//! on loopback: a retransmitted INVITE is absorbed (one call, the last
//! response repeated), an unanswered INVITE is retransmitted to the callee on
//! timer A's schedule with the same branch, and the 200 to the caller is
//! repeated until the ACK arrives and not after.

mod common;

use common::ua::{Msg, Ua};
use common::*;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

/// Collects every datagram `sock` receives for `dur`.
fn collect(sock: &UdpSocket, dur: Duration) -> Vec<(Duration, String)> {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while start.elapsed() < dur {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            out.push((
                start.elapsed(),
                String::from_utf8_lossy(&buf[..n]).to_string(),
            ));
        }
    }
    out
}

#[test]
fn retransmitted_invite_is_absorbed_and_unanswered_invite_is_retransmitted() {
    let proxy = Proxy::start();
    // The PBX side: receives the proxy's INVITE and never answers.
    let pbx = UdpSocket::bind(proxy.pbx_addr()).unwrap();
    // Listening before the first INVITE, so that each one is timed as it
    // arrives (not when a late reader gets to it).
    // 4.5 s: the third retransmission (3.5 s after the first INVITE) is in
    // even when the proxy starts the call late; the fourth (7.5 s) is not.
    let collector = std::thread::spawn(move || collect(&pbx, Duration::from_millis(4500)));
    let mut ua = Ua::new("127.0.0.3", proxy.sip_addr());
    ua.invite("03012345678", "200");
    // The caller retransmits its INVITE twice (same branch, as timer A would).
    std::thread::sleep(Duration::from_millis(100));
    ua.invite("03012345678", "200");
    ua.invite("03012345678", "200");
    let seen = collector.join().unwrap();
    let invites: Vec<&(Duration, String)> = seen
        .iter()
        .filter(|(_, m)| m.starts_with("INVITE "))
        .collect();
    // One call only; its INVITE sent at 0 and again at ~0.5, ~1.5, ~3.5 s.
    let branches: std::collections::BTreeSet<String> = invites
        .iter()
        .map(|(_, m)| Msg(m.clone()).header("Via").unwrap_or("").to_string())
        .collect();
    assert_eq!(
        branches.len(),
        1,
        "more than one INVITE transaction: {branches:?}"
    );
    assert!(
        (4..=5).contains(&invites.len()),
        "timer A retransmissions at 0.5, 1.5, 3.5 s expected, got {:?}",
        invites.iter().map(|(t, _)| *t).collect::<Vec<_>>()
    );
    let gaps: Vec<f64> = invites
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).as_secs_f64())
        .collect();
    for (i, want) in [0.5, 1.0, 2.0].iter().enumerate() {
        assert!(
            (gaps[i] - want).abs() < 0.2,
            "retransmission interval {i} was {:.2} s, expected {want} s (doubling from T1)",
            gaps[i]
        );
    }
    let m = proxy.metrics();
    assert_eq!(metric_sum(&m, "callrec_calls_total"), 1.0, "{m:#?}");
    // The caller got 100 Trying for each copy of its INVITE, nothing else yet.
    let r = ua.wait_response("1 INVITE", Duration::from_secs(1), |c| c == 100);
    assert_eq!(r.code(), 100);
}

#[test]
fn the_200_is_repeated_until_the_ack_and_not_after() {
    let proxy = Proxy::start();
    let run = proxy.call(pair("basic")).timeout(Duration::from_secs(30));
    let dir = TestDir::new("txn-2xx");
    let mut callee = run.callee_sipp(dir.path()).spawn();
    assert!(callee.wait_ready(Duration::from_secs(10)));
    let mut ua = Ua::new("127.0.0.3", proxy.sip_addr());
    ua.invite("03012345678", "200");
    let first = ua.wait_response("1 INVITE", Duration::from_secs(10), |c| c == 200);
    // Do not ACK for ~2 s: the proxy must resend the 200 (T1, then 2·T1).
    let repeats = collect(&ua.sip, Duration::from_millis(2000));
    let oks = repeats
        .iter()
        .filter(|(_, m)| m.starts_with("SIP/2.0 200") && m.contains("1 INVITE"))
        .count();
    assert!(
        (2..=3).contains(&oks),
        "expected the 200 resent 2–3 times in 2 s, got {oks}"
    );
    ua.ack(&first);
    let after = collect(&ua.sip, Duration::from_millis(2500));
    assert!(
        !after
            .iter()
            .any(|(_, m)| m.starts_with("SIP/2.0 200") && m.contains("1 INVITE")),
        "the 200 was still repeated after the ACK"
    );
    ua.bye();
    callee.wait().assert_success();
}

/// The caller hangs up with a BYE in the early dialog, while the callee rings:
/// the BYE gets its 200, the caller's INVITE a 487, and the callee — which
/// rings until a CANCEL comes — gets the CANCEL and ends with 487 and an ACK
/// (the SIPp "cancel" callee exits 0 only after that whole exchange).
#[test]
fn a_bye_before_the_answer_cancels_the_callee() {
    let proxy = Proxy::start();
    let dir = TestDir::new("early-bye");
    let run = proxy.call(pair("cancel")).timeout(Duration::from_secs(30));
    let mut callee = run.callee_sipp(dir.path()).spawn();
    assert!(callee.wait_ready(Duration::from_secs(10)));
    let mut ua = Ua::new("127.0.0.3", proxy.sip_addr());
    ua.invite("03012345678", "200");
    let ringing = ua.wait_response("1 INVITE", Duration::from_secs(10), |c| c == 180);
    ua.join_dialog(&ringing);
    ua.bye();
    ua.wait_response("1 INVITE", Duration::from_secs(5), |c| c == 487);
    let out = callee.wait_at_most(Duration::from_secs(15));
    assert!(
        out.success(),
        "callee did not get its CANCEL:\n{}",
        out.report()
    );
}
