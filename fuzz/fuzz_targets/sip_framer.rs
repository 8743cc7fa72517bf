//! Fuzz target: the TCP framer fed the input in chunks whose sizes come from
//! the input's first byte. Every chunking must give the same frames and the
//! same verdict as one push of everything, and no frame may be empty or
//! exceed the message limit.
#![no_main]

use callrec::sip::framer::{Frame, Framer, FramingError};
use callrec::sip::message::MAX_MESSAGE;
use libfuzzer_sys::fuzz_target;

fn run(data: &[u8], chunk: usize) -> (Vec<Frame>, Option<FramingError>) {
    let mut f = Framer::new();
    let mut frames = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        f.push(piece);
        loop {
            match f.next_frame() {
                Ok(Some(fr)) => {
                    if let Frame::Message(m) = &fr {
                        assert!(!m.is_empty() && m.len() <= MAX_MESSAGE);
                    }
                    frames.push(fr);
                }
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let whole = run(data, data.len());
    let chunked = run(data, usize::from(first % 64) + 1);
    assert_eq!(whole, chunked);
});
