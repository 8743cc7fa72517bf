//! Who callrec listens to, tried as an attacker would on loopback: a stranger
//! (127.0.0.9, neither trunk 127.0.0.3 nor PBX 127.0.0.2) may not start a call
//! (403, or silence with `--untrusted drop`), nor end or redirect a running
//! one with its correct dialog identifiers; caller-ID and auto-answer headers
//! cross only as the README's header policy allows (checked on the raw INVITE
//! the PBX side receives); and nobody outside the identity trust domain can
//! claim an internal call's de-duplication pair to suppress its recording.

mod common;

use common::ua::{Msg, Ua};
use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const STRANGER: &str = "127.0.0.9";

fn sock(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).expect("bind test socket");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// Every SIP message `s` receives within `dur`.
fn receive(s: &UdpSocket, dur: Duration) -> Vec<Msg> {
    let end = Instant::now() + dur;
    let mut buf = [0u8; 65536];
    let mut out = Vec::new();
    while Instant::now() < end {
        if let Ok(n) = s.recv(&mut buf) {
            out.push(Msg(String::from_utf8_lossy(&buf[..n]).to_string()));
        }
    }
    out
}

fn first_lines(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .map(|m| m.0.lines().next().unwrap_or("").to_string())
        .collect()
}

/// An INVITE with a PCMA offer from `me` (user `from`) to `to`@proxy, plus `extra` header lines.
fn invite(
    me: SocketAddr,
    proxy: SocketAddr,
    call_id: &str,
    from: &str,
    to: &str,
    extra: &str,
) -> String {
    let ip = me.ip();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    );
    format!(
        "INVITE sip:{to}@{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{call_id};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{from}@{ip}>;tag=t-{call_id}\r\nTo: <sip:{to}@{proxy}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:{from}@{me}>\r\n{extra}\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

fn options(me: SocketAddr, proxy: SocketAddr, call_id: &str) -> String {
    format!(
        "OPTIONS sip:ping@{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{call_id};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=p-{call_id}\r\nTo: <sip:ping@{proxy}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

fn untrusted_count(proxy: &Proxy) -> f64 {
    metric_sum(&proxy.metrics(), "callrec_untrusted_requests_total")
}

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
        .media(PBX_IP.into(), free_ports(4))
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

/// The INVITE the PBX-side (or trunk-side) socket receives for the call from `from_user`.
fn relayed_invite(at: &UdpSocket, from_user: &str) -> Msg {
    let end = Instant::now() + Duration::from_secs(3);
    let mut seen = Vec::new();
    while Instant::now() < end {
        for m in receive(at, Duration::from_millis(200)) {
            if m.0.starts_with("INVITE ") && m.header("From").is_some_and(|f| f.contains(from_user))
            {
                return m;
            }
            seen.push(m);
        }
    }
    panic!(
        "no INVITE from {from_user} arrived; saw {:?}",
        first_lines(&seen)
    );
}

const SPOOFED: &str = "P-Asserted-Identity: \"Bank CEO\" <sip:+4930999@bank.example>\r\n\
P-Preferred-Identity: <sip:+4930999@bank.example>\r\n\
Remote-Party-ID: <sip:+4930999@bank.example>;party=calling;screen=yes\r\n\
Privacy: none\r\n\
Diversion: <sip:+4930999@bank.example>;reason=unconditional\r\n\
Call-Info: <sip:127.0.0.9>;answer-after=0\r\n\
Alert-Info: <http://127.0.0.9/ring.wav>;info=alert-autoanswer\r\n\
Replaces: live-call@pbx;to-tag=a;from-tag=b\r\n\
X-Intercom: yes\r\n\
Supported: 100rel, timer\r\n\
Session-Expires: 1800\r\n\
Allow: INVITE, ACK, CANCEL, BYE\r\n";

fn has(m: &Msg, name: &str) -> bool {
    m.header(name).is_some()
}

#[test]
fn identity_and_auto_answer_headers_follow_the_policy() {
    let proxy = Proxy::builder()
        .arg("--trusted-source")
        .arg("127.0.0.5")
        .start();
    let pbx = UdpSocket::bind(proxy.pbx_addr()).unwrap();
    pbx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let trunk = UdpSocket::bind(proxy.trunk_addr()).unwrap();
    trunk
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let sip = proxy.sip_addr();

    // From the trunk: the provider's identity passes, auto-answer and ring
    // tone instructions, Replaces and private headers do not.
    let t = sock("127.0.0.3");
    t.send_to(
        invite(
            t.local_addr().unwrap(),
            sip,
            "hdr-1",
            "trunkcaller",
            "200",
            SPOOFED,
        )
        .as_bytes(),
        sip,
    )
    .unwrap();
    let got = relayed_invite(&pbx, "trunkcaller");
    for gone in ["Call-Info", "Alert-Info", "Replaces", "X-Intercom"] {
        assert!(
            !has(&got, gone),
            "{gone} from the trunk reached the PBX:\n{}",
            got.0
        );
    }
    for kept in [
        "P-Asserted-Identity",
        "Privacy",
        "Diversion",
        "Supported",
        "Session-Expires",
        "Allow",
    ] {
        assert!(
            has(&got, kept),
            "{kept} from the trunk was dropped:\n{}",
            got.0
        );
    }

    // From an allow-listed peer outside the identity trust domain: no identity either.
    let a = sock("127.0.0.5");
    a.send_to(
        invite(
            a.local_addr().unwrap(),
            sip,
            "hdr-2",
            "listed",
            "200",
            SPOOFED,
        )
        .as_bytes(),
        sip,
    )
    .unwrap();
    let got = relayed_invite(&pbx, "listed");
    for gone in [
        "P-Asserted-Identity",
        "P-Preferred-Identity",
        "Remote-Party-ID",
        "Privacy",
        "Diversion",
        "Call-Info",
        "Alert-Info",
        "Replaces",
        "X-Intercom",
    ] {
        assert!(
            !has(&got, gone),
            "{gone} from an allow-listed peer reached the PBX:\n{}",
            got.0
        );
    }
    assert!(
        has(&got, "Supported") && has(&got, "Session-Expires"),
        "{}",
        got.0
    );

    // From the PBX: its own Alert-Info, Call-Info and identity reach the trunk.
    let p = sock("127.0.0.2");
    p.send_to(
        invite(
            p.local_addr().unwrap(),
            sip,
            "hdr-3",
            "pbxcaller",
            "004989123456",
            SPOOFED,
        )
        .as_bytes(),
        sip,
    )
    .unwrap();
    let got = relayed_invite(&trunk, "pbxcaller");
    for kept in [
        "Alert-Info",
        "Call-Info",
        "P-Asserted-Identity",
        "P-Preferred-Identity",
    ] {
        assert!(
            has(&got, kept),
            "{kept} from the PBX was dropped:\n{}",
            got.0
        );
    }
    assert!(
        !has(&got, "Replaces") && !has(&got, "X-Intercom"),
        "{}",
        got.0
    );
}

#[test]
fn identity_trust_can_leave_out_the_trunk() {
    let proxy = Proxy::builder()
        .arg("--identity-trusted")
        .arg("pbx")
        .start();
    let pbx = UdpSocket::bind(proxy.pbx_addr()).unwrap();
    pbx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let sip = proxy.sip_addr();
    let t = sock("127.0.0.3");
    t.send_to(
        invite(
            t.local_addr().unwrap(),
            sip,
            "hdr-4",
            "trunkcaller",
            "200",
            SPOOFED,
        )
        .as_bytes(),
        sip,
    )
    .unwrap();
    let got = relayed_invite(&pbx, "trunkcaller");
    for gone in [
        "P-Asserted-Identity",
        "Privacy",
        "Diversion",
        "Remote-Party-ID",
    ] {
        assert!(
            !has(&got, gone),
            "{gone} from an untrusted trunk reached the PBX:\n{}",
            got.0
        );
    }
}

fn policy_config(dir: &TestDir) -> std::path::PathBuf {
    let path = dir.join("callrec.toml");
    let directory = repo_dir().join("testdata/directory.toml");
    std::fs::write(
        &path,
        format!(
            "[numbers]\ncountry_code = \"49\"\narea_code = \"30\"\nexit_code = \"0\"\nmax_extension_len = 4\n\n\
             [directory]\nsource = \"{}\"\n\n\
             [[profiles]]\nname = \"sales\"\ngroup = \"Sales\"\nusers = [\"eva\"]\nrecord_direct_calls = true\n",
            directory.display()
        ),
    )
    .unwrap();
    path
}

/// 206 → 201 is an internal call whose two legs may both pass the proxy; the
/// first one seen holds the pair. Neither a stranger nor an allow-listed peer
/// outside the identity trust domain may take it with forged numbers: the
/// real call from the PBX right after is recorded.
#[test]
fn outsiders_cannot_claim_the_internal_call_pair() {
    let dir = TestDir::new("trust-dedup");
    let cfg = policy_config(&dir);
    let proxy = Proxy::builder()
        .arg("--config")
        .arg(cfg.to_str().unwrap())
        .arg("--trusted-source")
        .arg("127.0.0.5")
        .start();
    // A PBX that lets the forged calls ring (and so hold any claim) while the real one goes out.
    let pbx = UdpSocket::bind(proxy.pbx_addr()).unwrap();
    pbx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let sip = proxy.sip_addr();
    for (ip, cid) in [(STRANGER, "claim-1"), ("127.0.0.5", "claim-2")] {
        let s = sock(ip);
        s.send_to(
            invite(
                s.local_addr().unwrap(),
                sip,
                cid,
                "206",
                "+493012345201",
                "",
            )
            .as_bytes(),
            sip,
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let out = proxy
        .call_reversed(pair("basic"))
        // Another port of the PBX's address: the silent socket holds --pbx.
        .caller_at(SocketAddr::from((PBX_IP, free_port())))
        .numbers("206", "201")
        .run();
    out.assert_success();
    let (code, body) = http_get(proxy.admin_addr(), "/api/calls/recent").unwrap();
    assert_eq!(code, 200);
    let recent: serde_json::Value = serde_json::from_str(&body).unwrap();
    let real = recent
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["direction"] == "outgoing")
        .cloned()
        .unwrap_or_else(|| panic!("no outgoing call among {body}"));
    assert_eq!(
        real["anchored"],
        true,
        "the real internal call was not recorded: {real}\n{}",
        proxy.log_tail(40)
    );
    drop(pbx);
}
