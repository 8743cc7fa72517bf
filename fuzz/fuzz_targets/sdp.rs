//! Fuzz target: SDP parsing and the rewrites the proxy applies to a body
//! before forwarding it. A body that parses must still parse, with the same
//! streams, after its addresses are rewritten.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use callrec::media::sdp::{restrict_audio_formats, rewrite, Sdp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = Sdp::parse(data) else {
        let _ = rewrite(data, IpAddr::V4(Ipv4Addr::LOCALHOST), &[20000]);
        return;
    };
    let ports: Vec<u16> = (0..sdp.media.len() as u16)
        .map(|i| 20000u16.wrapping_add(2 * i))
        .collect();
    let out = rewrite(data, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), &ports);
    let again = Sdp::parse(&out).expect("a rewritten SDP parses");
    assert_eq!(again.media.len(), sdp.media.len());
    let _ = sdp.all_inactive();
    let restricted = restrict_audio_formats(data, &[0, 8]);
    let _ = Sdp::parse(&restricted);
});
