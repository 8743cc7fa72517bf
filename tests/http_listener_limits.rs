//! The HTTP listeners (admin API and web console; the phones' recording
//! keys) against clients that hold on to them, as an attacker would: a
//! request head sent a byte at a time is cut off, and hundreds of silent
//! connections hold no more of the proxy's file descriptors than the
//! listener's cap (the descriptors SIP, media and the recordings need),
//! after which the listener answers again.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Sends a request head to `addr` a byte a second; how long until the
/// listener closed the connection (None: still open after 25 s).
fn drip_until_closed(addr: std::net::SocketAddr) -> Option<Duration> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(900)))
        .unwrap();
    let head = b"GET /health HTTP/1.1\r\nHost: callrec\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let start = Instant::now();
    for b in head.iter().cycle() {
        if start.elapsed() > Duration::from_secs(25) {
            return None;
        }
        if s.write_all(&[*b]).is_err() {
            return Some(start.elapsed());
        }
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn a_request_head_sent_a_byte_at_a_time_is_cut_off() {
    let phone: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = Proxy::builder()
        .arg("--phone-listen")
        .arg(&phone.to_string())
        .start();
    let phone_side = std::thread::spawn(move || drip_until_closed(phone));
    for (listener, closed) in [
        ("admin", drip_until_closed(proxy.admin_addr())),
        ("phone", phone_side.join().unwrap()),
    ] {
        let closed = closed
            .unwrap_or_else(|| panic!("{listener}: a head dripping in for 25 s was never cut off"));
        assert!(
            closed < Duration::from_secs(15),
            "{listener}: cut off only after {closed:?}"
        );
    }
}

#[test]
fn silent_connections_beyond_the_cap_hold_no_descriptors() {
    let proxy = Proxy::start();
    let pid = proxy.pid();
    let before = open_fds(pid);
    let silent: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(proxy.admin_addr()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let held = open_fds(pid).saturating_sub(before);
    assert!(
        held <= 140,
        "300 silent connections hold {held} of the proxy's descriptors"
    );
    drop(silent);
    // Once they are gone, the listener answers again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(proxy.admin_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: callrec\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer after the silent connections went: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn one_address_cannot_take_every_place() {
    let proxy = Proxy::start();
    let silent: Vec<TcpStream> = (0..200)
        .map(|_| tcp_from([127, 0, 0, 5], proxy.admin_addr()))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Another client is answered at once, though 200 connections from one
    // address are open and silent.
    let start = Instant::now();
    let mut s = tcp_from([127, 0, 0, 6], proxy.admin_addr());
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: callrec\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "answered only after {:?}: one address held the places",
        start.elapsed()
    );
    drop(silent);
}

#[test]
fn a_request_body_that_never_comes_is_cut_off() {
    let proxy = Proxy::start();
    let mut s = TcpStream::connect(proxy.admin_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(25))).unwrap();
    s.write_all(
        b"POST /login HTTP/1.1\r\nHost: callrec\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nusername=a",
    )
    .unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "a body that never came held the connection {:?}",
        start.elapsed()
    );
}
