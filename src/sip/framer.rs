//! Incremental framing of SIP over a stream transport (TCP): bytes go in as
//! they arrive, whole messages and keep-alive pings come out. The framer
//! remembers how far it has searched for the end of the header section, so
//! a slow sender never makes it rescan what it has already checked, and it
//! enforces the message size limit with checked arithmetic: a hostile
//! Content-Length can neither wrap the frame length nor yield empty frames.

use super::message::MAX_MESSAGE;

/// What the framer hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One whole message: header section plus exactly Content-Length body bytes.
    Message(Vec<u8>),
    /// A double-CRLF keep-alive ping between messages; the receiver answers
    /// with a single CRLF (RFC 5626 §3.5.1).
    Ping,
}

/// Why the stream cannot be framed any more; the connection must be closed
/// (after a 400 when the unframed bytes are readable enough to answer).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FramingError {
    /// The header section, the declared body or both exceed `MAX_MESSAGE`.
    #[error("message too large")]
    TooLarge,
    /// No Content-Length header: on a stream the body cannot be delimited.
    #[error("missing mandatory header Content-Length")]
    MissingContentLength,
    /// Content-Length is not a plain decimal number.
    #[error("malformed Content-Length header")]
    BadContentLength,
    /// Two Content-Length headers disagree: peers would split the stream differently.
    #[error("conflicting Content-Length headers")]
    ConflictingContentLength,
}

/// Rebuilds frames from a byte stream. Feed it with [`Framer::push`], drain it
/// with [`Framer::next_frame`] until that returns `Ok(None)`.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Offset in `buf` where the current, not yet framed message starts.
    start: usize,
    /// Bytes after `start` already searched for the end of the header section.
    scanned: usize,
    /// Whole length of the current message once its header section is known.
    need: Option<usize>,
    /// Set once framing failed; the stream is unusable from then on.
    failed: Option<FramingError>,
}

/// Compact the buffer when this many consumed bytes sit in front of it.
const COMPACT_AT: usize = 32 * 1024;

impl Framer {
    /// An empty framer.
    pub fn new() -> Framer {
        Framer::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && (self.start == self.buf.len() || self.start >= COMPACT_AT) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// True when no part of a message is buffered (at most separator CR/LF
    /// bytes): a header timeout need not run.
    pub fn is_idle(&self) -> bool {
        self.failed.is_none()
            && self.buf[self.start..]
                .iter()
                .all(|b| *b == b'\r' || *b == b'\n')
    }

    /// The bytes not yet framed, e.g. to answer a framing error with a 400.
    pub fn take_unframed(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.start);
        self.buf.clear();
        self.start = 0;
        self.scanned = 0;
        self.need = None;
        rest
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed. After an
    /// error every later call returns the same error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FramingError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.frame();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn frame(&mut self) -> Result<Option<Frame>, FramingError> {
        if self.need.is_none() && self.scanned == 0 {
            // Between messages: CRLFs are keep-alives (RFC 3261 §7.5 lets a
            // peer send CRLFs before a message; RFC 5626 pings are CRLFCRLF).
            loop {
                let rest = &self.buf[self.start..];
                if rest.starts_with(b"\r\n\r\n") {
                    self.start += 4;
                    return Ok(Some(Frame::Ping));
                }
                match rest.first() {
                    None => return Ok(None),
                    // Possibly the first half of a ping: wait for the rest.
                    Some(b'\r') if b"\r\n\r\n".starts_with(rest) => return Ok(None),
                    Some(b'\r') if rest.starts_with(b"\r\n") => self.start += 2,
                    Some(b'\r') | Some(b'\n') => self.start += 1,
                    Some(_) => break,
                }
            }
        }
        let need = match self.need {
            Some(n) => n,
            None => {
                let Some(body_at) = self.find_header_end() else {
                    if self.buf.len() - self.start > MAX_MESSAGE {
                        return Err(FramingError::TooLarge);
                    }
                    return Ok(None);
                };
                let head = &self.buf[self.start..self.start + body_at];
                let len = content_length(head)?.ok_or(FramingError::MissingContentLength)?;
                let need = body_at
                    .checked_add(len)
                    .filter(|n| *n > 0 && *n <= MAX_MESSAGE)
                    .ok_or(FramingError::TooLarge)?;
                self.need = Some(need);
                need
            }
        };
        if self.buf.len() - self.start < need {
            return Ok(None);
        }
        let data = self.buf[self.start..self.start + need].to_vec();
        self.start += need;
        self.scanned = 0;
        self.need = None;
        Ok(Some(Frame::Message(data)))
    }

    /// Offset (from `start`) of the first body byte, searching only bytes not
    /// searched before. The header section ends at the first CRLFCRLF or LFLF,
    /// whichever completes first, the same rule `Message::parse` applies.
    fn find_header_end(&mut self) -> Option<usize> {
        let msg = &self.buf[self.start..];
        let from = self.scanned.max(1);
        for i in from..msg.len() {
            if msg[i] == b'\n' && (msg[i - 1] == b'\n' || (i >= 3 && &msg[i - 3..i] == b"\r\n\r")) {
                self.scanned = i + 1;
                return Some(i + 1);
            }
        }
        self.scanned = msg.len();
        None
    }
}

/// The Content-Length of a header section (`head` includes the start line),
/// `Ok(None)` when there is none. Folded lines are joined as the parser joins
/// them; equal repetitions are tolerated, differing ones are not.
pub fn content_length(head: &[u8]) -> Result<Option<usize>, FramingError> {
    let mut found: Option<usize> = None;
    let mut check = |line: &[u8]| -> Result<(), FramingError> {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Ok(());
        };
        let name = line[..colon].trim_ascii_end();
        if !name.eq_ignore_ascii_case(b"content-length") && !name.eq_ignore_ascii_case(b"l") {
            return Ok(());
        }
        let len = parse_length(&line[colon + 1..])?;
        match found {
            Some(prev) if prev != len => Err(FramingError::ConflictingContentLength),
            _ => {
                found = Some(len);
                Ok(())
            }
        }
    };
    let mut logical: Vec<u8> = Vec::new();
    for (n, raw) in head.split(|b| *b == b'\n').enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if n == 0 {
            continue; // start line
        }
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            logical.push(b' ');
            logical.extend_from_slice(line.trim_ascii());
            continue;
        }
        check(&logical)?;
        logical.clear();
        logical.extend_from_slice(line);
    }
    check(&logical)?;
    Ok(found)
}

/// A Content-Length value: decimal digits only (no sign, no spaces inside).
/// Anything above `MAX_MESSAGE` is too large whatever its exact value, so
/// huge numbers are refused before they could overflow anything.
pub fn parse_length(value: &[u8]) -> Result<usize, FramingError> {
    let v = value.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(FramingError::BadContentLength);
    }
    let mut n: usize = 0;
    for d in v {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(d - b'0')))
            .filter(|n| *n <= MAX_MESSAGE)
            .ok_or(FramingError::TooLarge)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] =
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nl: 3\r\n\r\nabc";

    fn frames(f: &mut Framer) -> Result<Vec<Frame>, FramingError> {
        let mut out = Vec::new();
        // Bounded: every frame consumes at least one byte.
        for _ in 0..10_000 {
            match f.next_frame()? {
                Some(fr) => out.push(fr),
                None => return Ok(out),
            }
        }
        panic!("framer produced frames without consuming input");
    }

    #[test]
    fn wrapping_content_length_is_an_error_not_an_empty_frame() {
        // 2^64 - 52: added to the header length, it wraps to 0 or 1 in
        // unchecked arithmetic.
        let mut f = Framer::new();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nl: 18446744073709551564\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FramingError::TooLarge));
        assert_eq!(f.next_frame(), Err(FramingError::TooLarge));
        let mut f = Framer::new();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nl: 99999999999999999999999999\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FramingError::TooLarge));
    }

    #[test]
    fn content_length_above_the_limit_is_too_large() {
        let mut f = Framer::new();
        f.push(format!("OPTIONS sip:a@b SIP/2.0\r\nl: {}\r\n\r\n", MAX_MESSAGE + 1).as_bytes());
        assert_eq!(f.next_frame(), Err(FramingError::TooLarge));
        // Header plus body together above the limit.
        let mut f = Framer::new();
        f.push(format!("OPTIONS sip:a@b SIP/2.0\r\nl: {MAX_MESSAGE}\r\n\r\n").as_bytes());
        assert_eq!(f.next_frame(), Err(FramingError::TooLarge));
    }

    #[test]
    fn endless_header_section_is_too_large() {
        let mut f = Framer::new();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\n");
        let line = [b'X'; 1000];
        for _ in 0..MAX_MESSAGE / 1000 {
            f.push(&line);
            assert_eq!(f.next_frame(), Ok(None));
        }
        f.push(&line);
        assert_eq!(f.next_frame(), Err(FramingError::TooLarge));
        assert!(!f.is_idle());
    }

    #[test]
    fn conflicting_content_lengths_are_rejected() {
        for head in [
            "OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 3\r\nl: 0\r\n\r\nabc",
            "OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\nCONTENT-LENGTH : 3\r\n\r\nabc",
        ] {
            let mut f = Framer::new();
            f.push(head.as_bytes());
            assert_eq!(f.next_frame(), Err(FramingError::ConflictingContentLength));
        }
        // The same value twice frames normally.
        let mut f = Framer::new();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 3\r\nl: 3\r\n\r\nabc");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Message(m))) if m.ends_with(b"abc")));
    }

    #[test]
    fn malformed_or_missing_content_length() {
        for v in ["+3", "-1", "3 3", "0x3", ""] {
            let mut f = Framer::new();
            f.push(format!("OPTIONS sip:a@b SIP/2.0\r\nl: {v}\r\n\r\nabc").as_bytes());
            assert_eq!(f.next_frame(), Err(FramingError::BadContentLength), "{v:?}");
        }
        let mut f = Framer::new();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FramingError::MissingContentLength));
        assert!(f.take_unframed().starts_with(b"OPTIONS"));
    }

    #[test]
    fn folded_content_length_is_read_like_the_parser_reads_it() {
        assert_eq!(
            content_length(b"X sip:a SIP/2.0\r\nContent-Length:\r\n  12\r\nVia: v"),
            Ok(Some(12))
        );
    }

    #[test]
    fn every_chunking_gives_the_same_frames() {
        let mut stream = Vec::new();
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(OPTIONS);
        stream.extend_from_slice(b"\r\n");
        stream.extend_from_slice(OPTIONS);
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(b"INVITE sip:x SIP/2.0\nl: 0\n\n");
        let want = vec![
            Frame::Ping,
            Frame::Message(OPTIONS.to_vec()),
            Frame::Message(OPTIONS.to_vec()),
            Frame::Ping,
            Frame::Message(b"INVITE sip:x SIP/2.0\nl: 0\n\n".to_vec()),
        ];
        for size in 1..=stream.len() {
            let mut f = Framer::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(size) {
                f.push(chunk);
                got.extend(frames(&mut f).unwrap());
            }
            assert_eq!(got, want, "chunk size {size}");
            assert!(f.is_idle());
        }
    }

    #[test]
    fn a_single_crlf_is_skipped_not_answered() {
        let mut f = Framer::new();
        f.push(b"\r\n");
        assert_eq!(f.next_frame(), Ok(None));
        assert!(f.is_idle());
        f.push(OPTIONS);
        assert_eq!(f.next_frame(), Ok(Some(Frame::Message(OPTIONS.to_vec()))));
    }

    #[test]
    fn header_bytes_are_searched_once() {
        let mut f = Framer::new();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\n");
        for _ in 0..100 {
            f.push(b"X-A: b\r\n");
            assert_eq!(f.next_frame(), Ok(None));
            // Everything buffered has been searched; the next search starts here.
            assert_eq!(f.scanned, f.buf.len() - f.start);
        }
        f.push(b"l: 0\r\n\r\n");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Message(_)))));
        assert_eq!(f.scanned, 0);
    }
}
