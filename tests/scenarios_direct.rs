//! Proves the SIPp scenario pairs in `sip-scenarios/` work on their own: each
//! caller talks straight to its callee (no proxy), both sipp processes must
//! exit 0 with every call successful, and for pairs with media the RTP of
//! each side must arrive at the other side's m= port. Also checks the small
//! HTTP and Prometheus helpers the proxy tests use.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;

fn direct(name: &str) {
    let out = CallRun::direct(pair(name)).run();
    eprintln!(
        "{name}: RTP at caller m= port {:?}, at callee m= port {:?}",
        out.caller_media, out.callee_media
    );
    out.assert_success();
    if out.run.pair.media {
        out.assert_media_both_ways();
    }
}

#[test]
fn direct_basic() {
    direct("basic");
}

#[test]
fn direct_callee_bye() {
    direct("callee-bye");
}

#[test]
fn direct_cancel() {
    direct("cancel");
}

#[test]
fn direct_busy() {
    direct("busy");
}

#[test]
fn direct_early_media() {
    direct("early-media");
}

#[test]
fn direct_hold() {
    direct("hold");
}

#[test]
fn direct_callee_hold() {
    direct("callee-hold");
}

#[test]
fn direct_late_offer() {
    direct("late-offer");
}

#[test]
fn direct_outgoing() {
    let p = pair("outgoing");
    assert_eq!(p.direction, Direction::Outgoing);
    let run = CallRun::direct(p);
    assert_eq!(run.caller_sip.ip(), PBX_IP);
    assert_eq!(run.callee_sip.ip(), TRUNK_IP);
    let out = run.run();
    out.assert_success();
    out.assert_media_both_ways();
}

#[test]
fn direct_load_200_calls_at_20_per_second() {
    let out = CallRun::direct(pair("load")).calls(200).rate(20.0).run();
    out.assert_success();
    out.assert_media_both_ways();
}

/// A scenario that must fail does fail: the late-offer callee insists on an
/// INVITE without SDP, so the basic caller (early offer) breaks it. Guards
/// against a harness that reports success whatever happens.
#[test]
fn direct_mismatched_pair_fails() {
    let mut run = CallRun::direct(pair("basic")).timeout(std::time::Duration::from_secs(8));
    run.pair.name = "mismatch";
    let dir = TestDir::new("mismatch");
    let mut callee = Sipp::new("mismatch-callee", "late-offer/callee.xml")
        .local(run.callee_sip)
        .media(run.callee_sip.ip(), run.callee_media_port)
        .timeout(std::time::Duration::from_secs(8))
        .trace_dir(dir.path())
        .spawn();
    assert!(callee.wait_ready(std::time::Duration::from_secs(10)));
    let caller = run.caller_sipp(dir.path()).spawn().wait();
    let callee = callee.wait();
    assert!(
        !callee.success(),
        "the late-offer callee accepted an early offer\n{}\n{}",
        caller.report(),
        callee.report()
    );
    assert!(callee.read("errors.log").contains("Failed regexp match"));
}

#[test]
fn prometheus_parser() {
    let m = parse_prometheus(
        "# HELP a x\n# TYPE a counter\na 3\nb{leg=\"a b\",x=\"1\"} 2.5 1700000000\nb{leg=\"c\"} 1\nc +Inf\n\n",
    );
    assert_eq!(metric(&m, "a"), Some(3.0));
    assert_eq!(metric(&m, "b{leg=\"a b\",x=\"1\"}"), Some(2.5));
    assert!(m["c"].is_infinite());
    assert_eq!(metric_sum(&m, "b"), 3.5);
    assert_eq!(metric_sum(&m, "a"), 3.0);
}

#[test]
fn http_get_reads_chunked_and_plain_bodies() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let replies = [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nup 1\nx\r\n4\r\n 2\n\n\r\n0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope",
        ];
        for reply in replies {
            let (mut s, _) = listener.accept().unwrap();
            // read the whole request before answering, or closing with
            // unread bytes makes the kernel send a reset
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "request ended early");
                req.extend_from_slice(&buf[..n]);
            }
            assert!(req.starts_with(b"GET /"));
            s.write_all(reply.as_bytes()).unwrap();
        }
    });
    let (status, body) = http_get(addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "up 1\nx 2\n\n");
    assert_eq!(parse_prometheus(&body).get("x"), Some(&2.0));
    let (status, body) = http_get(addr, "/missing").unwrap();
    assert_eq!((status, body.as_str()), (404, "nope"));
    server.join().unwrap();
}

#[test]
fn direct_basic_over_tcp() {
    let out = CallRun::direct(pair("basic")).transport("t1").run();
    out.assert_success();
    out.assert_media_both_ways();
}
