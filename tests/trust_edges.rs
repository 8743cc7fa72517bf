//! Who may start a call or act on one, tried as an attacker would on
//! loopback: a stranger (127.0.0.9, neither trunk 127.0.0.3 nor PBX
//! 127.0.0.2) may not start a call (403, or silence with `--untrusted drop`),
//! nor end, redirect or cancel a running one with its correct dialog
//! identifiers; `--trusted-source` networks may start calls.

mod common;

use common::raw::*;
use common::ua::{Msg, Ua};
use common::*;
use std::net::UdpSocket;
use std::time::Duration;

#[test]
fn invite_from_a_stranger_gets_403_is_counted_and_never_reaches_the_pbx() {
    let proxy = Proxy::start();
    let pbx = UdpSocket::bind(proxy.pbx_addr()).unwrap();
    pbx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let s = sock(STRANGER);
    let me = s.local_addr().unwrap();
    s.send_to(
        invite(me, proxy.sip_addr(), "evil-1", "mallory", "200", "").as_bytes(),
        proxy.sip_addr(),
    )
    .unwrap();
    let got = first_lines(&receive(&s, Duration::from_millis(1500)));
    assert_eq!(
        got,
        vec!["SIP/2.0 403 Forbidden".to_string()],
        "{}",
        proxy.log_tail(30)
    );
    let at_pbx = receive(&pbx, Duration::from_millis(300));
    assert!(
        at_pbx.is_empty(),
        "the stranger's INVITE reached the PBX: {:?}",
        first_lines(&at_pbx)
    );
    let m = proxy.metrics();
    assert_eq!(
        metric_sum(&m, "callrec_untrusted_requests_total"),
        1.0,
        "{m:#?}"
    );
    assert_eq!(metric_sum(&m, "callrec_calls_total"), 0.0, "{m:#?}");
    // A keep-alive OPTIONS is still answered (load balancers, monitoring).
    s.send_to(
        options(me, proxy.sip_addr(), "evil-2").as_bytes(),
        proxy.sip_addr(),
    )
    .unwrap();
    let got = first_lines(&receive(&s, Duration::from_millis(1000)));
    assert_eq!(got, vec!["SIP/2.0 200 OK".to_string()]);
}

#[test]
fn trusted_source_networks_may_start_calls_and_others_may_not() {
    let proxy = Proxy::builder()
        .env("CALLREC_TRUSTED_SOURCE", "127.0.0.8/30,127.0.0.20")
        .start();
    let pbx = UdpSocket::bind(proxy.pbx_addr()).unwrap();
    pbx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    for (ip, allowed) in [
        ("127.0.0.9", true),
        ("127.0.0.20", true),
        ("127.0.0.12", false),
    ] {
        let s = sock(ip);
        let me = s.local_addr().unwrap();
        let cid = format!("net-{}", ip.replace('.', "-"));
        s.send_to(
            invite(me, proxy.sip_addr(), &cid, "caller", "200", "").as_bytes(),
            proxy.sip_addr(),
        )
        .unwrap();
        let answers = first_lines(&receive(&s, Duration::from_millis(800)));
        // The PBX may also see retransmissions of earlier calls: look for this sender's.
        let at_pbx: Vec<Msg> = receive(&pbx, Duration::from_millis(200))
            .into_iter()
            .filter(|m| {
                m.header("From")
                    .is_some_and(|f| f.contains(&format!("@{ip}>")))
            })
            .collect();
        if allowed {
            assert_eq!(answers, vec!["SIP/2.0 100 Trying".to_string()], "{ip}");
            assert!(
                at_pbx.iter().any(|m| m.0.starts_with("INVITE ")),
                "INVITE from {ip} did not reach the PBX\n{}",
                proxy.log_tail(30)
            );
        } else {
            assert_eq!(answers, vec!["SIP/2.0 403 Forbidden".to_string()], "{ip}");
            assert!(at_pbx.is_empty(), "INVITE from {ip} reached the PBX");
        }
    }
    assert_eq!(untrusted_count(&proxy), 1.0);
}

#[test]
fn untrusted_drop_answers_strangers_nothing() {
    let proxy = Proxy::builder().arg("--untrusted").arg("drop").start();
    let pbx = UdpSocket::bind(proxy.pbx_addr()).unwrap();
    pbx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // The start-up probe came from an untrusted address too.
    let before = untrusted_count(&proxy);
    let s = sock(STRANGER);
    let me = s.local_addr().unwrap();
    s.send_to(
        invite(me, proxy.sip_addr(), "drop-1", "mallory", "200", "").as_bytes(),
        proxy.sip_addr(),
    )
    .unwrap();
    s.send_to(
        options(me, proxy.sip_addr(), "drop-2").as_bytes(),
        proxy.sip_addr(),
    )
    .unwrap();
    // A malformed request gets no 400 either (a trusted peer would).
    let bad =
        options(me, proxy.sip_addr(), "drop-4").replace("Content-Length: 0", "Content-Length: ten");
    s.send_to(bad.as_bytes(), proxy.sip_addr()).unwrap();
    let got = receive(&s, Duration::from_millis(1500));
    assert!(
        got.is_empty(),
        "a stranger got answers: {:?}",
        first_lines(&got)
    );
    assert!(receive(&pbx, Duration::from_millis(200)).is_empty());
    assert_eq!(untrusted_count(&proxy) - before, 2.0);
    // The trunk still gets its answers.
    let t = sock("127.0.0.3");
    let me = t.local_addr().unwrap();
    t.send_to(
        options(me, proxy.sip_addr(), "drop-3").as_bytes(),
        proxy.sip_addr(),
    )
    .unwrap();
    assert_eq!(
        first_lines(&receive(&t, Duration::from_millis(1000))),
        vec!["SIP/2.0 200 OK".to_string()]
    );
}

/// A stranger who knows the caller leg's Call-ID and both tags sends a BYE
/// and a re-INVITE pointing the media at itself: both are refused, the SIPp
/// callee never sees them, media keeps flowing and the caller ends the call.
#[test]
fn stranger_with_the_dialog_identifiers_cannot_end_or_redirect_a_call() {
    let proxy = Proxy::start();
    let dir = TestDir::new("stranger-bye");
    let mut callee = Sipp::new("long-call-callee", "long-call/callee.xml")
        .local(proxy.pbx_addr())
        .media(PBX_IP.into(), media_ports())
        .timeout(Duration::from_secs(40))
        .trace_dir(dir.path())
        .spawn();
    assert!(
        callee.wait_ready(Duration::from_secs(10)),
        "callee sipp did not start"
    );

    let mut ua = Ua::new("127.0.0.3", proxy.sip_addr());
    ua.invite("03012345678", "200");
    let ok = ua.wait_response("1 INVITE", Duration::from_secs(10), |c| c == 200);
    ua.ack(&ok);
    let media_to = ok.sdp_target().expect("SDP in the 200");
    ua.send_tone(media_to, 440.0, Duration::from_millis(600));

    let s = sock(STRANGER);
    let me = s.local_addr().unwrap();
    let from = format!("<sip:03012345678@127.0.0.3>;tag=ua{}", ua.local.port());
    let to = ok.header("To").unwrap().to_string();
    let target = ua.local; // any URI: the proxy routes by Call-ID
    let in_dialog = |method: &str, cseq: u32, body: &str| {
        let ct = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        format!(
            "{method} sip:200@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-evil{cseq};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n\
             Contact: <sip:mallory@{me}>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
            ua.call_id,
            body.len()
        )
    };
    let hijack = format!(
        "v=0\r\no=- 2 2 IN IP4 {STRANGER}\r\ns=-\r\nc=IN IP4 {STRANGER}\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    );
    s.send_to(
        in_dialog("INVITE", 50, &hijack).as_bytes(),
        proxy.sip_addr(),
    )
    .unwrap();
    s.send_to(in_dialog("BYE", 51, "").as_bytes(), proxy.sip_addr())
        .unwrap();
    let answers = receive(&s, Duration::from_millis(1500));
    let finals: Vec<(u16, String)> = answers
        .iter()
        .filter(|m| m.code() >= 200)
        .map(|m| (m.code(), m.cseq().to_string()))
        .collect();
    assert!(
        finals.contains(&(403, "50 INVITE".into()))
            && finals.contains(&(403, "51 BYE".into()))
            && finals.iter().all(|(c, _)| *c == 403),
        "the stranger's requests were not refused: {:?}\n{}",
        first_lines(&answers),
        proxy.log_tail(40)
    );

    // The call goes on: the callee's tone still reaches the caller.
    let rtp = ua.recv_rtp(Duration::from_millis(1000));
    assert!(
        rtp.len() >= 20,
        "only {} RTP packets reached the caller after the attack",
        rtp.len()
    );
    ua.send_tone(media_to, 440.0, Duration::from_millis(400));
    ua.bye();
    let out = callee.wait();
    assert!(
        out.success(),
        "callee sipp: {}\n{}",
        out.report(),
        proxy.log_tail(40)
    );
    let recent = proxy.recent_calls();
    let entry = recent
        .iter()
        .find(|c| c["caller_call_id"] == ua.call_id.as_str())
        .unwrap_or_else(|| panic!("call not among the recent calls: {recent:#?}"));
    assert_eq!(entry["status"], 200, "{entry:#}");
    assert_eq!(entry["end_reason"], "caller hung up", "{entry:#}");
    assert_eq!(untrusted_count(&proxy), 2.0);
}

/// While the PBX rings, a stranger copies the caller's CANCEL (same Call-ID,
/// tags and branch): refused, the PBX keeps ringing and the caller's own
/// CANCEL still works.
#[test]
fn stranger_cannot_cancel_a_ringing_call() {
    let proxy = Proxy::start();
    let pbx = UdpSocket::bind(proxy.pbx_addr()).unwrap();
    pbx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut ua = Ua::new("127.0.0.3", proxy.sip_addr());
    ua.invite("03012345678", "200");
    let inv = relayed_invite(&pbx, "03012345678");
    let ringing = format!(
        "SIP/2.0 180 Ringing\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=pbx1\r\nCall-ID: {}\r\nCSeq: {}\r\n\
         Contact: <sip:200@{}>\r\nContent-Length: 0\r\n\r\n",
        inv.header("Via").unwrap(),
        inv.header("From").unwrap(),
        inv.header("To").unwrap(),
        inv.header("Call-ID").unwrap(),
        inv.cseq(),
        proxy.pbx_addr()
    );
    pbx.send_to(ringing.as_bytes(), proxy.sip_addr()).unwrap();
    ua.wait_response("1 INVITE", Duration::from_secs(5), |c| c == 180);

    let s = sock(STRANGER);
    let me = s.local_addr().unwrap();
    let port = ua.local.port();
    let cancel = format!(
        "CANCEL sip:200@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKua{port};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:03012345678@127.0.0.3>;tag=ua{port}\r\nTo: <sip:200@{sip}>\r\n\
         Call-ID: {}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
        ua.call_id,
        sip = proxy.sip_addr()
    );
    s.send_to(cancel.as_bytes(), proxy.sip_addr()).unwrap();
    let got = first_lines(&receive(&s, Duration::from_millis(1000)));
    assert_eq!(
        got,
        vec!["SIP/2.0 403 Forbidden".to_string()],
        "{}",
        proxy.log_tail(30)
    );
    let at_pbx: Vec<String> = first_lines(&receive(&pbx, Duration::from_millis(300)))
        .into_iter()
        .filter(|l| l.starts_with("CANCEL"))
        .collect();
    assert!(
        at_pbx.is_empty(),
        "the stranger's CANCEL reached the PBX: {at_pbx:?}"
    );
    assert_eq!(untrusted_count(&proxy), 1.0);
    // The caller's own CANCEL is relayed (and answered by the proxy at once).
    ua.cancel();
}
