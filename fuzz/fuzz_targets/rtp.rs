//! Fuzz target: the recorder's RTP header reader on arbitrary datagrams.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    callrec::recorder::fuzzing::rtp_packet(data);
});
