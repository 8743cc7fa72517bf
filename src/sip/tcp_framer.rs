//! Incremental framing of a SIP TCP stream: keep-alive CRLFs and pings
//! between messages, the end of the headers found without rescanning bytes
//! already searched, the length from Content-Length with checked arithmetic.

use super::message::{ParseError, MAX_MESSAGE};

/// What the framer found next in the stream.
#[derive(Debug, PartialEq)]
pub(super) enum Frame {
    /// A whole message.
    Message(Vec<u8>),
    /// A double-CRLF keep-alive ping between messages.
    Ping,
    /// Part of a message; more bytes are needed.
    Partial,
    /// Between messages (at most the start of a ping); nothing pending.
    Between,
    /// The stream cannot be framed; the bytes left, for a 400.
    Error(ParseError, Vec<u8>),
}

/// Incremental stream framer: remembers how far the search for the end of
/// the headers got and the length of the message once the headers are in,
/// so bytes already looked at are never scanned again.
#[derive(Default)]
pub(super) struct Framer {
    buf: Vec<u8>,
    /// Start of the bytes not yet handed out.
    pos: usize,
    /// Inside a message (its first byte was not a keep-alive CR or LF).
    in_message: bool,
    /// Index in `buf` up to which the header-end search has looked.
    scanned: usize,
    /// Whole length of the current message, once its headers are complete.
    want: Option<usize>,
}

impl Framer {
    pub(super) fn push(&mut self, data: &[u8]) {
        if self.pos > 0 {
            // Each byte is moved at most once: only after the message before
            // it was handed out.
            self.buf.drain(..self.pos);
            self.scanned = self.scanned.saturating_sub(self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    pub(super) fn next(&mut self) -> Frame {
        if !self.in_message {
            loop {
                let rest = &self.buf[self.pos..];
                if rest.starts_with(b"\r\n\r\n") {
                    self.pos += 4;
                    return Frame::Ping;
                }
                // Nothing, or a ping that is still arriving.
                if b"\r\n\r\n".starts_with(rest) {
                    return Frame::Between;
                }
                // Leading CRLFs before a message (RFC 3261 §7.5), a lone pong.
                if rest[0] == b'\r' || rest[0] == b'\n' {
                    self.pos += 1;
                    continue;
                }
                break;
            }
            self.in_message = true;
            self.scanned = self.pos;
        }
        let want = match self.want {
            Some(w) => w,
            None => match self.header_end() {
                None if self.buf.len() - self.pos > MAX_MESSAGE => {
                    return self.fail(ParseError::TooLarge)
                }
                None => return Frame::Partial,
                Some(head) => match content_length(&self.buf[self.pos..self.pos + head]) {
                    Err(e) => return self.fail(e),
                    Ok(len) => match head.checked_add(len) {
                        Some(total) if total <= MAX_MESSAGE => {
                            self.want = Some(total);
                            total
                        }
                        _ => return self.fail(ParseError::TooLarge),
                    },
                },
            },
        };
        if self.buf.len() - self.pos < want {
            return Frame::Partial;
        }
        let data = self.buf[self.pos..self.pos + want].to_vec();
        self.pos += want;
        self.want = None;
        self.in_message = false;
        Frame::Message(data)
    }

    /// Length of the header section including the blank line, searching
    /// only bytes not searched before.
    fn header_end(&mut self) -> Option<usize> {
        let start = self.scanned.max(self.pos);
        for i in start..self.buf.len() {
            if self.buf[i] != b'\n' {
                continue;
            }
            let lf_lf = i > self.pos && self.buf[i - 1] == b'\n';
            let crlf_crlf = i >= self.pos + 3 && &self.buf[i - 3..=i] == b"\r\n\r\n";
            if lf_lf || crlf_crlf {
                self.scanned = i + 1;
                return Some(i + 1 - self.pos);
            }
        }
        self.scanned = self.buf.len();
        None
    }

    fn fail(&mut self, e: ParseError) -> Frame {
        let data = self.buf.split_off(self.pos);
        self.buf.clear();
        self.pos = 0;
        self.scanned = 0;
        self.want = None;
        self.in_message = false;
        Frame::Error(e, data)
    }
}

/// The Content-Length of a header section (full or compact name); required
/// on streams (RFC 3261 §18.3), and two differing values cannot be framed.
fn content_length(head: &[u8]) -> Result<usize, ParseError> {
    let mut found: Option<usize> = None;
    for line in head.split(|b| *b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let v = std::str::from_utf8(line[colon + 1..].trim_ascii())
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or(ParseError::Malformed("Content-Length"))?;
        if found.is_some_and(|f| f != v) {
            return Err(ParseError::Malformed("Content-Length"));
        }
        found = Some(v);
    }
    found.ok_or(ParseError::Missing("Content-Length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPT: &[u8] =
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\nContent-Length: 3\r\n\r\nabc";

    fn all(f: &mut Framer) -> Vec<Frame> {
        let mut out = Vec::new();
        loop {
            match f.next() {
                Frame::Partial | Frame::Between => return out,
                x => out.push(x),
            }
        }
    }

    #[test]
    fn frames_byte_by_byte_and_in_one_piece_alike() {
        let mut stream = b"\r\n".to_vec();
        stream.extend_from_slice(OPT);
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(OPT);
        let whole = {
            let mut f = Framer::default();
            f.push(&stream);
            all(&mut f)
        };
        let mut f = Framer::default();
        let mut trickled = Vec::new();
        for b in &stream {
            f.push(std::slice::from_ref(b));
            trickled.extend(all(&mut f));
        }
        let want = vec![
            Frame::Message(OPT.to_vec()),
            Frame::Ping,
            Frame::Message(OPT.to_vec()),
        ];
        assert_eq!(whole, want);
        assert_eq!(trickled, want);
    }

    #[test]
    fn header_search_never_rescans() {
        let mut f = Framer::default();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nSubject: ");
        assert_eq!(f.next(), Frame::Partial);
        let seen = f.scanned;
        assert_eq!(seen, f.buf.len());
        f.push(b"x");
        assert_eq!(f.next(), Frame::Partial);
        assert_eq!(f.scanned, seen + 1, "only the new byte was searched");
        // The terminator split across pushes is still found.
        f.push(b"\r\nContent-Length: 0\r\n\r");
        assert_eq!(f.next(), Frame::Partial);
        f.push(b"\n");
        assert!(matches!(f.next(), Frame::Message(_)));
    }

    #[test]
    fn a_huge_or_doubled_content_length_is_a_framing_error() {
        for head in [
            &b"OPTIONS sip:a@b SIP/2.0\r\nl: 18446744073709551564\r\n\r\n"[..],
            b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 70000\r\n\r\n",
            b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\nl: 4\r\n\r\nabcd",
            b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n",
        ] {
            let mut f = Framer::default();
            f.push(head);
            assert!(
                matches!(f.next(), Frame::Error(..)),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn an_endless_header_is_too_large() {
        let mut f = Framer::default();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\n");
        let line = [b'a'; 1024];
        let mut got = Frame::Partial;
        for _ in 0..80 {
            f.push(&line);
            got = f.next();
            if got != Frame::Partial {
                break;
            }
        }
        assert!(matches!(got, Frame::Error(ParseError::TooLarge, _)));
    }

    #[test]
    fn split_ping_waits_and_lone_crlf_is_skipped() {
        let mut f = Framer::default();
        f.push(b"\r\n");
        assert_eq!(f.next(), Frame::Between);
        f.push(b"\r\n");
        assert_eq!(f.next(), Frame::Ping);
        f.push(b"\r\nO");
        assert_eq!(f.next(), Frame::Partial);
        assert!(f.in_message);
    }
}
