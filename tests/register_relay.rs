//! Registration-based trunks through the real binary with SIPp on both sides:
//! the PBX registers its line with the carrier through callrec (a 401
//! challenge answered with digest credentials that the carrier verifies), the
//! carrier sees callrec's Contact, and its INVITE to that Contact reaches the
//! PBX addressed to the line the PBX registered.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

#[test]
fn a_pbx_registers_through_callrec_and_the_carrier_calls_the_registered_line() {
    require_sipp();
    let proxy = Proxy::start();
    let dir = TestDir::new("register");
    let pbx_uas = proxy.pbx_addr();
    let pbx_reg = SocketAddr::from((PBX_IP, free_port()));
    let mut trunk = Sipp::new("trunk", "register/trunk-registrar.xml")
        .local(proxy.trunk_addr())
        .media(TRUNK_IP.into(), free_ports(2))
        .timeout(Duration::from_secs(30))
        .trace_dir(dir.path())
        .spawn();
    let mut callee = Sipp::new("pbx-callee", "register/pbx-callee.xml")
        .local(pbx_uas)
        .media(PBX_IP.into(), free_ports(2))
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
