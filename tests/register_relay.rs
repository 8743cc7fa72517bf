//! Registration-based trunks through the real binary with SIPp on both sides:
//! the PBX registers its line with the carrier through callrec (a 401
//! challenge answered with digest credentials that the carrier verifies), the
//! carrier sees callrec's Contact, and its INVITE to that Contact reaches the
//! PBX addressed to the line the PBX registered. Also with a trunk that only
//! speaks TLS: the carrier's INVITE comes over the connection callrec opened
//! for the REGISTER.

mod common;
mod tls_support;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use callrec::sip::header_value::uri_of;
use callrec::sip::Message;
use common::*;
use tls_support::*;

#[test]
fn a_pbx_registers_through_callrec_and_the_carrier_calls_the_registered_line() {
    require_sipp();
    let proxy = Proxy::start();
    let dir = TestDir::new("register");
    let pbx_uas = proxy.pbx_addr();
    let pbx_reg = SocketAddr::from((PBX_IP, free_port()));
    let mut trunk = Sipp::new("trunk", "register/trunk-registrar.xml")
        .local(proxy.trunk_addr())
        .media(TRUNK_IP.into(), media_ports())
        .timeout(Duration::from_secs(30))
        .trace_dir(dir.path())
        .spawn();
    let mut callee = Sipp::new("pbx-callee", "register/pbx-callee.xml")
        .local(pbx_uas)
        .media(PBX_IP.into(), media_ports())
        .timeout(Duration::from_secs(30))
        .trace_dir(dir.path())
        .spawn();
    assert!(
        trunk.wait_ready(Duration::from_secs(10)),
        "trunk sipp not bound"
    );
    assert!(
        callee.wait_ready(Duration::from_secs(10)),
        "PBX sipp not bound"
    );
    let register = Sipp::new("pbx-register", "register/pbx-register.xml")
        .local(pbx_reg)
        .remote(proxy.sip_addr())
        .service("0301234")
        .key("uas_port", &pbx_uas.port().to_string())
        .arg("-au")
        .arg("pbx")
        .arg("-ap")
        .arg("secret")
        .timeout(Duration::from_secs(20))
        .trace_dir(dir.path())
        .spawn()
        .wait();
    let (trunk, callee) = if register.success() {
        (trunk.wait(), callee.wait())
    } else {
        (
            trunk.wait_at_most(Duration::from_secs(2)),
            callee.wait_at_most(Duration::from_secs(2)),
        )
    };
    let log = proxy.log_tail(80);
    assert!(
        register.success(),
        "PBX REGISTER:\n{}\n{log}",
        register.report()
    );
    assert!(trunk.success(), "carrier:\n{}\n{log}", trunk.report());
    assert!(callee.success(), "PBX callee:\n{}\n{log}", callee.report());
    assert!(
        proxy.log().contains("PBX registered with the trunk"),
        "the binding is logged\n{log}"
    );
}

#[test]
fn a_register_from_anyone_but_the_pbx_is_not_relayed() {
    let proxy = Proxy::start();
    let sock = std::net::UdpSocket::bind((TRUNK_IP, 0)).unwrap();
    let me = sock.local_addr().unwrap();
    let msg = format!(
        "REGISTER sip:carrier.example SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-reg-x\r\n\
         Max-Forwards: 70\r\nFrom: <sip:x@carrier.example>;tag=1\r\nTo: <sip:x@carrier.example>\r\n\
         Call-ID: reg-x@{ip}\r\nCSeq: 1 REGISTER\r\nContact: <sip:x@{me}>\r\nContent-Length: 0\r\n\r\n",
        ip = me.ip()
    );
    sock.send_to(msg.as_bytes(), proxy.sip_addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).expect("an answer to the REGISTER");
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        answer.starts_with("SIP/2.0 405"),
        "the trunk's own REGISTER is answered, not relayed: {answer}"
    );
    assert!(!proxy.log().contains("REGISTER relayed"));
}

#[test]
fn a_pbx_on_udp_registers_with_a_tls_trunk_and_its_call_comes_back_on_that_connection() {
    require_sipp();
    let pki = Pki::new();
    let leaf = pki.leaf("localhost", false);
    let trunk = TlsTrunk::new();
    let proxy = proxy_with_tls_trunk(&pki, &trunk, &[]);
    let dir = TestDir::new("register-tls");
    let mut callee = Sipp::new("pbx-callee", "register/pbx-callee.xml")
        .local(proxy.pbx_addr())
        .media(PBX_IP.into(), media_ports())
        .timeout(Duration::from_secs(30))
        .trace_dir(dir.path())
        .spawn();
    assert!(
        callee.wait_ready(Duration::from_secs(10)),
        "PBX sipp not bound"
    );

    let pbx = UdpSocket::bind((PBX_IP, 0)).unwrap();
    let me = pbx.local_addr().unwrap();
    let own = format!("<sip:pbxline@{}>", proxy.pbx_addr());
    let reg = format!(
        "REGISTER sip:carrier.example SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-r1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:0301234@carrier.example>;tag=r1\r\n\
         To: <sip:0301234@carrier.example>\r\nCall-ID: reg-{p}@pbx\r\nCSeq: 1 REGISTER\r\n\
         Contact: {own};expires=600\r\nContent-Length: 0\r\n\r\n",
        p = me.port()
    );
    pbx.send_to(reg.as_bytes(), proxy.sip_addr()).unwrap();

    let mut t = trunk
        .accept(&leaf, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_tail(60)));
    let r = t.expect("REGISTER", Duration::from_secs(10));
    assert!(r.header("Via").unwrap().starts_with("SIP/2.0/TLS "));
    let contact = r.header("Contact").unwrap().to_string();
    assert!(
        contact.contains(";transport=tls") && !contact.contains("127.0.0.2"),
        "the carrier must see callrec's Contact on TLS: {contact}"
    );
    let token_uri = uri_of(&contact).to_string();
    let mut ok = Message::response(200, "OK");
    for v in r.header_all("Via") {
        ok.push("Via", v);
    }
    for h in ["From", "Call-ID", "CSeq"] {
        ok.push(h, r.header(h).unwrap());
    }
    ok.push("To", format!("{};tag=reg1", r.header("To").unwrap()));
    ok.push("Contact", format!("<{token_uri}>;expires=600"));
    ok.push("Content-Length", "0");
    t.send(&ok);

    pbx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    let back = loop {
        let (n, _) = pbx.recv_from(&mut buf).expect("the 200 reaches the PBX");
        let m = Message::parse(&buf[..n]).unwrap();
        if !m.is_request() && m.code() == 200 {
            break m;
        }
    };
    assert_eq!(back.branch().as_deref(), Some("z9hG4bK-r1"));
    assert_eq!(
        back.header("Contact"),
        Some(format!("{own};expires=600").as_str()),
        "the PBX gets its own Contact back"
    );

    // The carrier calls the registered line on the connection callrec opened.
    let body = sdp(free_port());
    let from = "<sip:049111@carrier.example>;tag=c1";
    let mut inv = Message::request("INVITE", &token_uri);
    inv.push("Via", format!("SIP/2.0/TLS {};branch=z9hG4bK-c1", t.local));
    inv.push("Max-Forwards", "70");
    inv.push("From", from);
    inv.push("To", format!("<{token_uri}>"));
    inv.push("Call-ID", "carrier-call-1");
    inv.push("CSeq", "1 INVITE");
    inv.push("Contact", format!("<sip:049111@{};transport=tls>", t.local));
    inv.push("Content-Type", "application/sdp");
    inv.push("Content-Length", body.len().to_string());
    inv.body = body.into_bytes();
    t.send(&inv);
    let answer = loop {
        let m = t
            .recv(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no 200 for the carrier's INVITE\n{}", proxy.log_tail(60)));
        if !m.is_request() && m.code() >= 200 {
            break m;
        }
    };
    assert_eq!(answer.code(), 200, "{}", proxy.log_tail(60));
    let target = uri_of(answer.header("Contact").unwrap()).to_string();
    for (method, cseq, branch) in [
        ("ACK", "1 ACK", "z9hG4bK-c1a"),
        ("BYE", "2 BYE", "z9hG4bK-c1b"),
    ] {
        let mut m = Message::request(method, &target);
        m.push("Via", format!("SIP/2.0/TLS {};branch={branch}", t.local));
        m.push("Max-Forwards", "70");
        m.push("From", from);
        m.push("To", answer.header("To").unwrap());
        m.push("Call-ID", "carrier-call-1");
        m.push("CSeq", cseq);
        m.push("Content-Length", "0");
        t.send(&m);
        std::thread::sleep(Duration::from_millis(300));
    }
    let bye_ok = loop {
        let m = t
            .recv(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no answer to BYE\n{}", proxy.log_tail(60)));
        if !m.is_request() && m.cseq().is_some_and(|(_, x)| x == "BYE") {
            break m;
        }
    };
    assert_eq!(bye_ok.code(), 200);
    let out = callee.wait();
    assert!(out.success(), "{}\n{}", out.report(), proxy.log_tail(80));
    // While the binding lasts callrec keeps the connection alive (a ping
    // every 25 s), so the carrier can keep reaching the line through it.
    assert!(
        t.wait_ping(Duration::from_secs(35)),
        "no keep-alive on the trunk connection\n{}",
        proxy.log_tail(20)
    );
}
