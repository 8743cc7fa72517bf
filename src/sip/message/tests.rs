//! Unit tests of `message` (kept beside it so the module itself stays short).

use super::*;
use crate::sip::header_value::{uri_hostport, uri_of, uri_user};

const INVITE: &str = "INVITE sip:100@127.0.0.1 SIP/2.0\r\n\
v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK2\r\n\
f: \"A, B\" <sip:200@x>;tag=abc\r\n\
t: <sip:100@y>\r\n\
i: call1@x\r\n\
CSeq: 1 INVITE\r\n\
m: <sip:200@10.0.0.1>\r\n\
c: application/sdp\r\n\
l: 4\r\n\
\r\n\
v=0\r\n";

#[test]
fn compact_headers_and_split_via() {
    let m = Message::parse(INVITE.as_bytes()).unwrap();
    assert_eq!(m.call_id(), Some("call1@x"));
    assert_eq!(m.headers.iter().filter(|h| h.name == "Via").count(), 2);
    assert_eq!(m.via(1).unwrap().branch.as_deref(), Some("z9hG4bK2"));
    assert_eq!(m.from_tag().as_deref(), Some("abc"));
    assert_eq!(m.to_tag(), None);
    assert_eq!(m.body, b"v=0\r");
    assert_eq!(uri_of(m.header("From").unwrap()), "sip:200@x");
}

#[test]
fn round_trip() {
    let m = Message::parse(INVITE.as_bytes()).unwrap();
    let again = Message::parse(&m.to_bytes()).unwrap();
    assert_eq!(m, again);
}

#[test]
fn framing() {
    let bytes = INVITE.as_bytes();
    assert_eq!(frame_len(&bytes[..20]).unwrap(), None);
    // The body declares 4 bytes; the fifth belongs to the next message.
    assert_eq!(frame_len(&bytes[..bytes.len() - 2]).unwrap(), None);
    assert_eq!(frame_len(bytes).unwrap(), Some(bytes.len() - 1));
}

#[test]
fn framing_never_wraps() {
    let attack = b"OPTIONS sip:a@b SIP/2.0\r\nl: 18446744073709551564\r\n\r\n";
    assert_eq!(frame_len(attack), Err(ParseError::TooLarge));
    let mut keepalive_first = b"\r\n\r\n\r\n".to_vec();
    keepalive_first.extend_from_slice(INVITE.as_bytes());
    assert_eq!(
        frame_len(&keepalive_first).unwrap(),
        Some(keepalive_first.len() - 1)
    );
}

#[test]
fn conflicting_content_lengths_are_rejected() {
    let two = INVITE.replace("l: 4\r\n", "l: 4\r\nContent-Length: 0\r\n");
    assert_eq!(
        Message::parse(two.as_bytes()),
        Err(ParseError::ConflictingContentLength)
    );
    assert_eq!(
        frame_len(two.as_bytes()),
        Err(ParseError::ConflictingContentLength)
    );
    // Repeating the same value is harmless.
    let same = INVITE.replace("l: 4\r\n", "l: 4\r\nContent-Length: 4\r\n");
    assert_eq!(Message::parse(same.as_bytes()).unwrap().body, b"v=0\r");
    for v in ["+4", "4 4", "99999999999999999999999"] {
        let bad = INVITE.replace("l: 4", &format!("l: {v}"));
        assert!(Message::parse(bad.as_bytes()).is_err(), "{v}");
    }
}

#[test]
fn control_characters_in_the_start_line_are_rejected() {
    for bad in [
        "INVITE sip:100\r@127.0.0.1 SIP/2.0",
        "INVITE sip:100\0@127.0.0.1 SIP/2.0",
        "INVITE sip:100@127.0.0.1\t SIP/2.0",
        "INVITE\u{7f} sip:100@127.0.0.1 SIP/2.0",
        "INVITE sip:100@127.0.0.1 SIP/2.0\r",
    ] {
        let text = INVITE.replace("INVITE sip:100@127.0.0.1 SIP/2.0", bad);
        assert_eq!(
            Message::parse(text.as_bytes()),
            Err(ParseError::BadStartLine),
            "{bad:?}"
        );
    }
    let ok = b"SIP/2.0 200 O\tK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n\
To: <sip:b@c>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(Message::parse(ok).unwrap().code(), 200);
    let bad = String::from_utf8_lossy(ok).replace("O\tK", "O\rK");
    assert_eq!(
        Message::parse(bad.as_bytes()),
        Err(ParseError::BadStartLine)
    );
}

#[test]
fn control_characters_in_values_are_rejected() {
    let bad = INVITE.replace("i: call1@x", "i: call1\0@x");
    assert_eq!(Message::parse(bad.as_bytes()), Err(ParseError::BadHeader));
}

#[test]
fn salvage_reads_what_a_400_needs() {
    // Content-Length beyond the body, a bad version and an over-long line.
    let huge = format!("X-Huge: {}", "a".repeat(MAX_HEADER_LINE + 1));
    let text = INVITE
        .replace("l: 4", "l: 400")
        .replace("SIP/2.0\r\n", "SIP/3.0\r\n")
        .replace("CSeq: 1 INVITE", &format!("{huge}\r\nCSeq: 1 INVITE"));
    assert!(Message::parse(text.as_bytes()).is_err());
    let s = Message::salvage_request(text.as_bytes()).unwrap();
    assert_eq!(s.version.as_deref(), Some("SIP/3.0"));
    assert_eq!(s.request.method(), "INVITE");
    assert_eq!(s.request.branch().as_deref(), Some("z9hG4bK1"));
    assert_eq!(s.request.header_all("Via").len(), 2);
    assert_eq!(s.request.call_id(), Some("call1@x"));
    assert_eq!(s.request.header("CSeq"), Some("1 INVITE"));
    assert_eq!(s.request.header("X-Huge"), None);
    // Truncated: no blank line at all.
    let cut = &INVITE[..INVITE.find("m: ").unwrap()];
    let s = Message::salvage_request(cut.as_bytes()).unwrap();
    assert_eq!(s.request.header("CSeq"), Some("1 INVITE"));
    // Status lines and garbage are never answered.
    assert!(Message::salvage_request(b"SIP/2.0 999 Odd\r\nCSeq: 1 INVITE\r\n\r\n").is_none());
    assert!(Message::salvage_request(b"\x16\x03\x01\x02\x00").is_none());
}

#[test]
fn uri_parts() {
    assert_eq!(uri_user("sip:+49301@h:5070"), Some("+49301"));
    assert_eq!(
        uri_hostport("sip:a@h:5070;transport=tcp"),
        Some(("h".into(), Some(5070)))
    );
    assert_eq!(
        uri_hostport("sip:[::1]:5062"),
        Some(("::1".into(), Some(5062)))
    );
}

#[test]
fn a_message_at_the_header_limit_still_parses_after_serialising() {
    // Found by the sip_parser fuzz target: 256 headers without a
    // Content-Length parsed, but to_bytes added one and the result did not.
    let head = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
                    From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n";
    let with = |n: usize| {
        let mut m = head.to_string();
        for i in 5..n {
            m.push_str(&format!("X-{i}: v\r\n"));
        }
        m.push_str("\r\n");
        m
    };
    let fits = Message::parse(with(MAX_HEADERS - 1).as_bytes()).expect("255 headers parse");
    assert_eq!(fits.headers.len(), MAX_HEADERS - 1);
    let again = Message::parse(&fits.to_bytes()).expect("and parse again after to_bytes");
    assert_eq!(again.headers.len(), MAX_HEADERS);
    assert_eq!(
        Message::parse(with(MAX_HEADERS).as_bytes()),
        Err(ParseError::TooLarge),
        "256 headers plus the Content-Length to_bytes adds do not fit"
    );
    let repro = include_bytes!("../../../fuzz/regressions/sip_parser-roundtrip-toolarge");
    if let Ok(m) = Message::parse(repro) {
        Message::parse(&m.to_bytes()).expect("the fuzzer's input round-trips");
    }
}
