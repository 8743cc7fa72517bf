//! SIP over TLS through the real binary: a PBX on UDP calling a trunk that
//! only speaks TLS, a trunk calling in over the TLS listener, next hops whose
//! certificate has the wrong name or has expired (refused, with a clear log
//! line), a TCP call beside TLS, and certificates reloaded on SIGHUP while a
//! connection stays up. The test CA and certificates are made with rcgen.

mod common;
mod tls_support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use callrec::sip::Message;
use common::*;
use tls_support::*;

#[test]
fn a_pbx_on_udp_calls_a_trunk_that_only_speaks_tls() {
    require_sipp();
    let pki = Pki::new();
    let leaf = pki.leaf("localhost", false);
    let trunk = TlsTrunk::new();
    let proxy = proxy_with_tls_trunk(&pki, &trunk, &[]);
    let run = proxy.call(pair("outgoing")).callee_at(trunk.addr);
    let dir = TestDir::new("tls-call");
    let caller = run.caller_sipp(dir.path()).spawn();
    let mut t = trunk
        .accept(&leaf, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_tail(60)));
    let invite = t.expect("INVITE", Duration::from_secs(10));
    let via = invite.header("Via").unwrap();
    assert!(via.starts_with("SIP/2.0/TLS "), "Via on the TLS leg: {via}");
    let contact = invite.header("Contact").unwrap();
    assert!(
        contact.contains(";transport=tls"),
        "Contact on the TLS leg: {contact}"
    );
    let ruri = invite.uri().unwrap();
    assert!(
        ruri.ends_with(";transport=tls"),
        "Request-URI on the TLS leg: {ruri}"
    );
    t.answer(&invite, 200, Some(&sdp(free_port())));
    t.expect("ACK", Duration::from_secs(10));
    // The caller hangs up; the BYE comes over the connection callrec opened.
    let bye = t.expect("BYE", Duration::from_secs(15));
    t.answer(&bye, 200, None);
    let out = caller.wait();
    assert!(out.success(), "{}\n{}", out.report(), proxy.log_tail(80));
    assert_eq!(
        metric(&proxy.metrics(), "callrec_tls_handshake_failures_total"),
        Some(0.0)
    );
    let log = proxy.log();
    let opened = log
        .lines()
        .find(|l| l.contains("SIP TLS connection opened, certificate verified"))
        .unwrap_or_else(|| panic!("the verified connection is logged\n{log}"));
    assert!(
        opened.contains("name=localhost") && opened.contains("TLSv1_3"),
        "{opened}"
    );
}

#[test]
fn a_trunk_calls_in_over_the_tls_listener_and_the_dialog_stays_on_its_connection() {
    require_sipp();
    let pki = Pki::new();
    let (cert, key) = pki.write("callrec", &pki.leaf("localhost", false));
    let tls_port = free_port();
    let trunk_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = Proxy::builder()
        .trunk(
            trunk_addr,
            &format!("tls://localhost:{}", trunk_addr.port()),
        )
        .arg("--tls-ca")
        .arg(pki.ca_path().to_str().unwrap())
        .arg("--listen-tls")
        .arg(&format!("127.0.0.1:{tls_port}"))
        .arg("--tls-cert")
        .arg(cert.to_str().unwrap())
        .arg("--tls-key")
        .arg(key.to_str().unwrap())
        .start();
    let run = proxy.call(pair("basic"));
    let dir = TestDir::new("tls-in");
    let mut callee = run.callee_sipp(dir.path()).spawn();
    assert!(callee.wait_ready(Duration::from_secs(10)));
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let mut c = connect_tls(&pki, tls_addr, "localhost");
    let me = c.local;
    let body = sdp(free_port());
    let mut inv = Message::request("INVITE", &format!("sips:0301234@localhost:{tls_port}"));
    inv.push("Via", format!("SIP/2.0/TLS {me};branch=z9hG4bK-in-1"));
    inv.push("Max-Forwards", "70");
    inv.push("From", format!("<sip:049111@{me}>;tag=tr1"));
    inv.push("To", format!("<sip:0301234@localhost:{tls_port}>"));
    inv.push("Call-ID", format!("tls-in-{}@trunk", me.port()));
    inv.push("CSeq", "1 INVITE");
    inv.push("Contact", format!("<sip:049111@{me};transport=tls>"));
    inv.push("Content-Type", "application/sdp");
    inv.push("Content-Length", body.len().to_string());
    inv.body = body.into_bytes();
    c.send(&inv);
    let ok = loop {
        let r = c
            .recv(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no 200 over TLS\n{}", proxy.log_tail(60)));
        if !r.is_request() && r.code() == 200 {
            break r;
        }
    };
    let contact = ok.header("Contact").unwrap().to_string();
    assert!(
        contact.contains(&format!(":{tls_port};transport=tls")),
        "the 200's Contact must lead back to the TLS listener: {contact}"
    );
    let target = callrec::sip::header_value::uri_of(&contact).to_string();
    let mut ack = Message::request("ACK", &target);
    ack.push("Via", format!("SIP/2.0/TLS {me};branch=z9hG4bK-in-ack"));
    ack.push("Max-Forwards", "70");
    ack.push("From", inv.header("From").unwrap());
    ack.push("To", ok.header("To").unwrap());
    ack.push("Call-ID", inv.header("Call-ID").unwrap());
    ack.push("CSeq", "1 ACK");
    ack.push("Content-Length", "0");
    c.send(&ack);
    thread::sleep(Duration::from_millis(800));
    let mut bye = Message::request("BYE", &target);
    bye.push("Via", format!("SIP/2.0/TLS {me};branch=z9hG4bK-in-bye"));
    bye.push("Max-Forwards", "70");
    bye.push("From", inv.header("From").unwrap());
    bye.push("To", ok.header("To").unwrap());
    bye.push("Call-ID", inv.header("Call-ID").unwrap());
    bye.push("CSeq", "2 BYE");
    bye.push("Content-Length", "0");
    c.send(&bye);
    let bye_ok = loop {
        let r = c
            .recv(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no answer to BYE over TLS\n{}", proxy.log_tail(60)));
        if !r.is_request() && r.cseq().is_some_and(|(_, m)| m == "BYE") {
            break r;
        }
    };
    assert_eq!(bye_ok.code(), 200);
    let out = callee.wait();
    assert!(out.success(), "{}\n{}", out.report(), proxy.log_tail(80));
    // The PBX leg is plain UDP: its Request-URI must not ask for TLS.
    let pbx_saw = out.read("messages.log");
    let ruri = pbx_saw
        .lines()
        .find(|l| l.starts_with("INVITE "))
        .expect("the PBX's INVITE in sipp's message log");
    assert!(
        ruri.starts_with("INVITE sip:0301234@127.0.0.2:") && !ruri.contains("transport=tls"),
        "Request-URI towards the UDP PBX: {ruri}"
    );
}

/// Starts a call towards a trunk showing `leaf` and returns callrec's log
/// once it has refused the connection.
fn refused_trunk(leaf_name: &str, expired: bool, expect: &str) {
    let pki = Pki::new();
    let leaf = pki.leaf(leaf_name, expired);
    let trunk = TlsTrunk::new();
    let proxy = proxy_with_tls_trunk(&pki, &trunk, &[]);
    let _pbx = invite_from_pbx(&proxy);
    // Our side of the handshake fails as soon as callrec sends its alert.
    let r = trunk.accept(&leaf, Duration::from_secs(10));
    assert!(
        r.is_err(),
        "callrec completed a handshake with a bad certificate"
    );
    let seen = wait_until(Duration::from_secs(10), || proxy.log().contains(expect));
    // Shown with --nocapture: the line an operator reads.
    eprintln!(
        "{}",
        proxy
            .log()
            .lines()
            .find(|l| l.contains(expect))
            .unwrap_or_default()
    );
    assert!(seen, "no log line {expect:?}\n{}", proxy.log_tail(60));
    let line = proxy
        .log()
        .lines()
        .find(|l| l.contains(expect))
        .unwrap()
        .to_string();
    assert!(
        line.contains("SIP TLS connection to localhost refused"),
        "the line names the next hop: {line}"
    );
    assert_eq!(
        metric(&proxy.metrics(), "callrec_tls_handshake_failures_total"),
        Some(1.0)
    );
}

#[test]
fn a_trunk_certificate_for_another_name_is_refused_with_a_clear_log_line() {
    refused_trunk(
        "wrong.example.net",
        false,
        "the certificate is not valid for this name",
    );
}

#[test]
fn an_expired_trunk_certificate_is_refused_with_a_clear_log_line() {
    refused_trunk("localhost", true, "the certificate has expired");
}

#[test]
fn a_tcp_call_keeps_working_beside_the_tls_listener() {
    require_sipp();
    let pki = Pki::new();
    let (cert, key) = pki.write("callrec", &pki.leaf("localhost", false));
    let proxy = Proxy::builder()
        .arg("--listen-tls")
        .arg(&format!("127.0.0.1:{}", free_port()))
        .arg("--tls-cert")
        .arg(cert.to_str().unwrap())
        .arg("--tls-key")
        .arg(key.to_str().unwrap())
        .start();
    let out = proxy.call(pair("outgoing")).caller_transport("t1").run();
    out.assert_success();
    out.assert_media_both_ways();
}

#[test]
fn certificates_are_reloaded_on_sighup_while_open_connections_stay() {
    let pki = Pki::new();
    let first = pki.leaf("localhost", false);
    let (cert, key) = pki.write("callrec", &first);
    let tls_port = free_port();
    let proxy = Proxy::builder()
        .arg("--listen-tls")
        .arg(&format!("127.0.0.1:{tls_port}"))
        .arg("--tls-cert")
        .arg(cert.to_str().unwrap())
        .arg("--tls-key")
        .arg(key.to_str().unwrap())
        .start();
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let options = |c: &mut SipTls<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
                   n: u32| {
        let me = c.local;
        let mut o = Message::request("OPTIONS", &format!("sip:callrec@{tls_addr}"));
        o.push("Via", format!("SIP/2.0/TLS {me};branch=z9hG4bK-o{n}"));
        o.push("Max-Forwards", "70");
        o.push("From", format!("<sip:probe@{me}>;tag=o{n}"));
        o.push("To", format!("<sip:callrec@{tls_addr}>"));
        o.push("Call-ID", format!("opt-{n}-{}", me.port()));
        o.push("CSeq", format!("{n} OPTIONS"));
        o.push("Content-Length", "0");
        c.send(&o);
        c.recv(Duration::from_secs(5)).map(|r| r.code())
    };
    let mut old = connect_tls(&pki, tls_addr, "localhost");
    assert_eq!(options(&mut old, 1), Some(200));
    assert_eq!(old.stream.conn.peer_certificates().unwrap()[0], first.der);

    let second = pki.leaf("localhost", false);
    pki.write("callrec", &second);
    // SAFETY: signals the child process we started.
    unsafe { libc::kill(proxy.pid() as i32, libc::SIGHUP) };
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .log()
            .contains("SIGHUP: TLS certificates reloaded")),
        "{}",
        proxy.log_tail(40)
    );
    let mut new = connect_tls(&pki, tls_addr, "localhost");
    assert_eq!(
        new.stream.conn.peer_certificates().unwrap()[0],
        second.der,
        "a new connection still gets the old certificate"
    );
    assert_eq!(options(&mut new, 2), Some(200));
    assert_eq!(
        options(&mut old, 3),
        Some(200),
        "the connection opened before the reload was dropped"
    );

    // A broken file on reload leaves the last good certificate in use.
    std::fs::write(&key, "not a key").unwrap();
    unsafe { libc::kill(proxy.pid() as i32, libc::SIGHUP) };
    assert!(wait_until(Duration::from_secs(5), || proxy.log().contains(
        "TLS certificates not reloaded, the old ones stay in use"
    )));
    let third = connect_tls(&pki, tls_addr, "localhost");
    assert_eq!(
        third.stream.conn.peer_certificates().unwrap()[0],
        second.der
    );
}

#[test]
fn a_trunk_that_demands_a_client_certificate_gets_the_configured_one() {
    let pki = Pki::new();
    let server = pki.leaf("localhost", false);
    let client = pki.leaf("callrec.example.net", false);
    let (cert, key) = pki.write("client", &client);
    let trunk = TlsTrunk::new();
    let proxy = proxy_with_tls_trunk(
        &pki,
        &trunk,
        &[
            "--tls-client-cert",
            cert.to_str().unwrap(),
            "--tls-client-key",
            key.to_str().unwrap(),
        ],
    );
    let _pbx = invite_from_pbx(&proxy);
    let mut t = trunk
        .accept_with(server_config(&server, Some(&pki)), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_tail(60)));
    assert_eq!(
        t.stream
            .conn
            .peer_certificates()
            .expect("a client certificate")[0],
        client.der
    );
    let invite = t.expect("INVITE", Duration::from_secs(10));
    assert!(invite.header("Via").unwrap().starts_with("SIP/2.0/TLS "));
}

#[test]
fn a_connection_that_never_completes_its_handshake_is_closed_after_the_header_timeout() {
    let pki = Pki::new();
    let (cert, key) = pki.write("callrec", &pki.leaf("localhost", false));
    let tls_port = free_port();
    let proxy = Proxy::builder()
        .arg("--listen-tls")
        .arg(&format!("127.0.0.1:{tls_port}"))
        .arg("--tls-cert")
        .arg(cert.to_str().unwrap())
        .arg("--tls-key")
        .arg(key.to_str().unwrap())
        .arg("--tcp-header-timeout")
        .arg("1")
        .start();
    // A peer opens the port and says nothing: it must not hold a connection
    // slot beyond the header timeout.
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], tls_port))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf);
    assert!(
        matches!(n, Ok(0)) || (n.is_err() && start.elapsed() < Duration::from_secs(7)),
        "the silent connection was not closed: {n:?}"
    );
    assert!(
        wait_until(Duration::from_secs(3), || metric(
            &proxy.metrics(),
            "callrec_tls_handshake_failures_total"
        ) == Some(1.0)),
        "{}",
        proxy.log_tail(20)
    );
    assert!(wait_until(Duration::from_secs(3), || metric(
        &proxy.metrics(),
        "callrec_tcp_connections_open"
    ) == Some(0.0)));
    assert!(proxy.log().contains("no handshake within"));
}

#[test]
fn sighup_without_tls_does_not_stop_callrec() {
    let mut proxy = Proxy::start();
    // SAFETY: signals the child process we started.
    unsafe { libc::kill(proxy.pid() as i32, libc::SIGHUP) };
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .log()
            .contains("SIGHUP: no TLS configured, nothing to reload")),
        "{}",
        proxy.log_tail(20)
    );
    assert!(
        proxy.is_running(),
        "SIGHUP (systemctl reload) killed callrec"
    );
    assert!(sip_options_answered(
        proxy.sip_addr(),
        Duration::from_secs(2)
    ));
}

#[test]
fn a_trunk_that_asks_for_alias_gets_our_requests_on_the_connection_it_opened() {
    let pki = Pki::new();
    let (cert, key) = pki.write("callrec", &pki.leaf("localhost", false));
    let tls_port = free_port();
    // Nothing listens on the trunk's own port: only its connection reaches it.
    let trunk_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = Proxy::builder()
        .trunk(
            trunk_addr,
            &format!("tls://localhost:{}", trunk_addr.port()),
        )
        .arg("--tls-ca")
        .arg(pki.ca_path().to_str().unwrap())
        .arg("--listen-tls")
        .arg(&format!("127.0.0.1:{tls_port}"))
        .arg("--tls-cert")
        .arg(cert.to_str().unwrap())
        .arg("--tls-key")
        .arg(key.to_str().unwrap())
        .start();
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let mut c = connect_tls(&pki, tls_addr, "localhost");
    let me = c.local;
    let mut o = Message::request("OPTIONS", &format!("sip:callrec@{tls_addr}"));
    o.push(
        "Via",
        format!("SIP/2.0/TLS {trunk_addr};branch=z9hG4bK-alias;alias"),
    );
    o.push("Max-Forwards", "70");
    o.push("From", format!("<sip:trunk@{me}>;tag=a1"));
    o.push("To", format!("<sip:callrec@{tls_addr}>"));
    o.push("Call-ID", format!("alias-{}", me.port()));
    o.push("CSeq", "1 OPTIONS");
    o.push("Content-Length", "0");
    c.send(&o);
    assert_eq!(c.recv(Duration::from_secs(5)).map(|r| r.code()), Some(200));
    let _pbx = invite_from_pbx(&proxy);
    let invite = c.expect("INVITE", Duration::from_secs(10));
    assert!(invite.header("Via").unwrap().starts_with("SIP/2.0/TLS "));
}

/// Whether `openssl s_client` output shows a completed handshake with `proto`
/// (it prints the session block, with "Cipher is (NONE)", after a failure too).
fn handshake_done(out: &str, proto: &str) -> bool {
    out.contains(&format!("Protocol  : {proto}")) && !out.contains("Cipher is (NONE)")
}

/// `openssl s_client` against `to` with `version` (e.g. "-tls1_1"); its output.
fn s_client(to: SocketAddr, version: &str) -> String {
    let mut child = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &to.to_string(), version])
        .args(["-cipher", "DEFAULT@SECLEVEL=0", "-servername", "localhost"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl (Debian package openssl) is needed for this test");
    // Closing stdin ends the session once the handshake is over.
    drop(child.stdin.take());
    let end = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn tls_1_1_is_refused_and_tls_1_2_accepted() {
    let pki = Pki::new();
    let (cert, key) = pki.write("callrec", &pki.leaf("localhost", false));
    // First show that this openssl can speak TLS 1.1 at all, against its own server.
    let port = free_port();
    let mut server = std::process::Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-tls1_1",
        ])
        .args(["-cipher", "DEFAULT@SECLEVEL=0", "-www", "-cert"])
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl (Debian package openssl) is needed for this test");
    let listening = wait_until(Duration::from_secs(5), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let control = s_client(SocketAddr::from(([127, 0, 0, 1], port)), "-tls1_1");
    let _ = server.kill();
    let _ = server.wait();
    assert!(listening, "openssl s_server did not start");
    assert!(
        handshake_done(&control, "TLSv1.1"),
        "this openssl cannot speak TLS 1.1, so the refusal below would prove nothing:\n{control}"
    );

    let tls_port = free_port();
    let proxy = Proxy::builder()
        .arg("--listen-tls")
        .arg(&format!("127.0.0.1:{tls_port}"))
        .arg("--tls-cert")
        .arg(cert.to_str().unwrap())
        .arg("--tls-key")
        .arg(key.to_str().unwrap())
        .start();
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let old = s_client(tls_addr, "-tls1_1");
    assert!(
        !handshake_done(&old, "TLSv1.1") && old.contains("Cipher is (NONE)"),
        "callrec completed a TLS 1.1 handshake:\n{old}"
    );
    let ok = s_client(tls_addr, "-tls1_2");
    assert!(
        handshake_done(&ok, "TLSv1.2"),
        "TLS 1.2 refused:\n{ok}\n{}",
        proxy.log_tail(20)
    );
}

#[test]
fn a_key_that_does_not_load_stops_the_start_with_exit_status_2() {
    let pki = Pki::new();
    let (cert, key) = pki.write("callrec", &pki.leaf("localhost", false));
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let data = pki.dir.join("data");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_callrec"))
        .args(["run", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--pbx", "127.0.0.2:5060", "--trunk", "127.0.0.3:5060"])
        .args([
            "--admin-listen",
            "off",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .args(["--listen-tls", &format!("127.0.0.1:{}", free_port())])
        .args([
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ])
        .env("CALLREC_ADMIN_TOKEN", TEST_ADMIN_TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() && Instant::now() < end {
        thread::sleep(Duration::from_millis(50));
    }
    let still_running = child.try_wait().unwrap().is_none();
    if still_running {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!still_running, "callrec started with a broken key");
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("cannot read --tls-key"), "{text}");
}
