//! Fuzz target: SIP message parsing. Whatever parses must serialise and
//! parse again to the same message (Content-Length is regenerated, so it is
//! compared apart), unless serialising expanded compact header names past
//! the message size limit; salvaging and one-shot framing must not panic.
#![no_main]

use callrec::sip::message::{frame_len, Message, MAX_MESSAGE};
use libfuzzer_sys::fuzz_target;

fn without_length(m: &Message) -> Message {
    let mut m = m.clone();
    m.remove("Content-Length");
    m
}

fuzz_target!(|data: &[u8]| {
    let _ = frame_len(data);
    let _ = Message::salvage_request(data);
    if let Ok(m) = Message::parse(data) {
        let bytes = m.to_bytes();
        if bytes.len() > MAX_MESSAGE {
            return;
        }
        let again = Message::parse(&bytes).expect("a serialised message parses");
        assert_eq!(without_length(&m), without_length(&again));
        let _ = (m.via(0), m.cseq(), m.from_tag(), m.max_forwards(), m.has_sdp());
    }
});
