//! Fuzz target: two parties' recorder timelines fed a packet sequence derived
//! from the input (see `callrec::recorder::fuzzing::timeline_sequence`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    callrec::recorder::fuzzing::timeline_sequence(data);
});
