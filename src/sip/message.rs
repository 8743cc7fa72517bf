//! SIP messages: parsing from bytes, the header accessors a B2BUA needs, and
//! serialisation. Headers are kept in arrival order under their full names
//! (compact forms are expanded), so that a message can be copied onto the other
//! leg without losing anything the peers rely on. (Over 600 lines because the
//! parser, the accessors and the serialiser of one type are read together;
//! the grammar inside header values is in `header_value`.)

use std::fmt;

use super::header_value::{tag_of, Via};

/// Largest SIP message we accept; a datagram or TCP frame beyond it is malformed.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Longest single header line we accept.
pub const MAX_HEADER_LINE: usize = 8 * 1024;
/// Most headers we accept in one message.
pub const MAX_HEADERS: usize = 256;

/// Why a message could not be parsed; the text goes into the 400's reason phrase.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Nothing but whitespace.
    #[error("empty message")]
    Empty,
    /// The header section is not valid UTF-8.
    #[error("header section is not valid UTF-8")]
    NotUtf8,
    /// No blank line between headers and body.
    #[error("headers not terminated by an empty line")]
    Unterminated,
    /// First line is neither a request line nor a status line.
    #[error("bad start line")]
    BadStartLine,
    /// A header line without a colon or with an invalid name.
    #[error("bad header line")]
    BadHeader,
    /// A header line, or the whole message, exceeds our limits.
    #[error("message too large")]
    TooLarge,
    /// A header required by RFC 3261 §8.1.1 is absent.
    #[error("missing mandatory header {0}")]
    Missing(&'static str),
    /// A header that must have a particular shape does not.
    #[error("malformed {0} header")]
    Malformed(&'static str),
    /// Content-Length does not match the body.
    #[error("Content-Length does not match the body")]
    ContentLength,
    /// Two Content-Length headers with different values.
    #[error("conflicting Content-Length headers")]
    ConflictingContentLength,
}

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// `METHOD uri SIP/2.0`
    Request {
        /// Method token, e.g. `INVITE`.
        method: String,
        /// Request-URI as received.
        uri: String,
    },
    /// `SIP/2.0 code reason`
    Response {
        /// Status code 100–699.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
}

/// One header field (full name, value without surrounding whitespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Canonical full name, e.g. `Call-ID`.
    pub name: String,
    /// Value as received (folded lines joined).
    pub value: String,
}

/// A parsed SIP request or response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Request or status line.
    pub start: StartLine,
    /// Headers in order; multi-value Via headers are split into one entry each.
    pub headers: Vec<Header>,
    /// Body bytes (length equals Content-Length).
    pub body: Vec<u8>,
}

/// What `Message::salvage_request` could read from a malformed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvaged {
    /// Request line and the readable Via, From, To, Call-ID and CSeq headers.
    pub request: Message,
    /// The third token of the request line (`SIP/2.0` when well-formed).
    pub version: Option<String>,
}

/// Expands a compact header name (RFC 3261 §7.3.3 and later RFCs) and
/// canonicalises the case of the common ones.
fn canonical_name(name: &str) -> String {
    let full = match name.to_ascii_lowercase().as_str() {
        "i" | "call-id" => "Call-ID",
        "m" | "contact" => "Contact",
        "f" | "from" => "From",
        "t" | "to" => "To",
        "v" | "via" => "Via",
        "l" | "content-length" => "Content-Length",
        "c" | "content-type" => "Content-Type",
        "k" | "supported" => "Supported",
        "s" | "subject" => "Subject",
        "e" | "content-encoding" => "Content-Encoding",
        "o" | "event" => "Event",
        "r" | "refer-to" => "Refer-To",
        "b" | "referred-by" => "Referred-By",
        "x" | "session-expires" => "Session-Expires",
        "u" | "allow-events" => "Allow-Events",
        "a" | "accept-contact" => "Accept-Contact",
        "j" | "reject-contact" => "Reject-Contact",
        "d" | "request-disposition" => "Request-Disposition",
        "y" | "identity" => "Identity",
        "cseq" => "CSeq",
        "max-forwards" => "Max-Forwards",
        "record-route" => "Record-Route",
        "route" => "Route",
        "rseq" => "RSeq",
        "rack" => "RAck",
        "require" => "Require",
        "min-se" => "Min-SE",
        "www-authenticate" => "WWW-Authenticate",
        _ => return name.to_string(),
    };
    full.to_string()
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c)
}

/// Splits a header value at commas that are outside quotes and angle brackets.
pub fn split_commas(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut start) = (false, false, 0);
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            b',' if !quoted && !angle => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(value[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

/// Finds the end of the header section: index of the first body byte and the
/// length of the separator, accepting CRLF or bare LF line ends.
fn header_end(data: &[u8]) -> Option<(usize, usize)> {
    let crlf = data.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = data.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(c), Some(l)) if l < c => Some((l, 2)),
        (Some(c), _) => Some((c, 4)),
        (None, Some(l)) => Some((l, 2)),
        (None, None) => None,
    }
}

/// Where a message ends in a stream buffer: `Ok(Some(len))` when a whole message
/// is present, `Ok(None)` when more bytes are needed. A one-shot form of
/// [`Framer`](super::framer::Framer), which stream readers should prefer: it
/// does not rescan the header section on every call.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    let mut f = super::framer::Framer::new();
    f.push(buf);
    // Leading keep-alives count towards the length; each consumes bytes, so
    // this ends.
    loop {
        match f.next_frame()? {
            Some(super::framer::Frame::Ping) => continue,
            Some(super::framer::Frame::Message(_)) => {
                return Ok(Some(buf.len() - f.take_unframed().len()))
            }
            None => return Ok(None),
        }
    }
}

impl From<super::framer::FramingError> for ParseError {
    fn from(e: super::framer::FramingError) -> ParseError {
        use super::framer::FramingError as F;
        match e {
            F::TooLarge => ParseError::TooLarge,
            F::MissingContentLength => ParseError::Missing("Content-Length"),
            F::BadContentLength => ParseError::Malformed("Content-Length"),
            F::ConflictingContentLength => ParseError::ConflictingContentLength,
        }
    }
}

impl Message {
    /// Parses one message (a whole datagram or a framed TCP message) and checks
    /// the headers every request or response must have.
    pub fn parse(data: &[u8]) -> Result<Message, ParseError> {
        let msg = Self::parse_lenient(data)?;
        msg.validate()?;
        Ok(msg)
    }

    /// Parses structure only, without the mandatory-header checks; used to
    /// answer a malformed request with a 400 that the sender can match.
    pub fn parse_lenient(data: &[u8]) -> Result<Message, ParseError> {
        if data.len() > MAX_MESSAGE {
            return Err(ParseError::TooLarge);
        }
        let start_at = data
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .ok_or(ParseError::Empty)?;
        let data = &data[start_at..];
        let (end, sep) = header_end(data).ok_or(ParseError::Unterminated)?;
        let head = std::str::from_utf8(&data[..end]).map_err(|_| ParseError::NotUtf8)?;
        let body = &data[end + sep..];

        let mut lines: Vec<String> = Vec::new();
        for raw in head.split('\n') {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.len() > MAX_HEADER_LINE {
                return Err(ParseError::TooLarge);
            }
            if (line.starts_with(' ') || line.starts_with('\t')) && lines.len() > 1 {
                // Folded continuation of the previous header (RFC 3261 §7.3.1).
                let last = lines.last_mut().expect("checked non-empty");
                last.push(' ');
                last.push_str(line.trim());
                if last.len() > MAX_HEADER_LINE {
                    return Err(ParseError::TooLarge);
                }
            } else {
                lines.push(line.to_string());
            }
        }
        let start = parse_start_line(&lines[0])?;
        let mut headers = Vec::new();
        for line in &lines[1..] {
            let (name, value) = line.split_once(':').ok_or(ParseError::BadHeader)?;
            let name = name.trim_end();
            if name.is_empty() || !name.chars().all(is_token_char) {
                return Err(ParseError::BadHeader);
            }
            let name = canonical_name(name);
            let value = value.trim();
            // RFC 3261 §25.1: no control characters in header values (HTAB is LWS).
            if value.chars().any(|c| c.is_control() && c != '\t') {
                return Err(ParseError::BadHeader);
            }
            if name == "Via" {
                for v in split_commas(value) {
                    headers.push(Header {
                        name: name.clone(),
                        value: v.to_string(),
                    });
                }
            } else {
                headers.push(Header {
                    name,
                    value: value.to_string(),
                });
            }
            if headers.len() > MAX_HEADERS {
                return Err(ParseError::TooLarge);
            }
        }
        // `to_bytes` writes one Content-Length of its own: the limit counts
        // it, so that whatever parses still parses after being serialised.
        if headers
            .iter()
            .filter(|h| h.name != "Content-Length")
            .count()
            >= MAX_HEADERS
        {
            return Err(ParseError::TooLarge);
        }
        let mut msg = Message {
            start,
            headers,
            body: Vec::new(),
        };
        // Every Content-Length must agree: a stream framer that read another
        // one would split the stream differently from this parser.
        let mut declared: Option<usize> = None;
        for h in msg.headers.iter().filter(|h| h.name == "Content-Length") {
            let len = super::framer::parse_length(h.value.as_bytes())?;
            if declared.is_some_and(|d| d != len) {
                return Err(ParseError::ConflictingContentLength);
            }
            declared = Some(len);
        }
        let body = match declared {
            Some(len) => {
                if len > body.len() {
                    return Err(ParseError::ContentLength);
                }
                // Extra bytes after the declared length are ignored (RFC 3261 §18.3).
                &body[..len]
            }
            None => body,
        };
        msg.body = body.to_vec();
        Ok(msg)
    }

    /// Reads what a response needs from a request that failed to parse, so
    /// that it can still be answered (RFC 3261 §21.4.1, RFC 4475 §3.1.2):
    /// the request line's method, URI and version, and the Via, From, To,
    /// Call-ID and CSeq headers that are readable. The header section ends at
    /// the first blank line or, for a truncated datagram, at the end of the
    /// data; Content-Length and the body are ignored. Other headers, including
    /// over-long or undecodable ones, are skipped. None when the first line is
    /// not a request line (a status line, or garbage).
    pub fn salvage_request(data: &[u8]) -> Option<Salvaged> {
        const KEPT: [&str; 5] = ["Via", "From", "To", "Call-ID", "CSeq"];
        /// Most Via values echoed back: a response must not amplify.
        const MAX_VIAS: usize = 16;
        let data = &data[..data.len().min(MAX_MESSAGE)];
        let start_at = data.iter().position(|b| !b.is_ascii_whitespace())?;
        let data = &data[start_at..];
        let end = header_end(data).map(|(e, _)| e).unwrap_or(data.len());
        let head = String::from_utf8_lossy(&data[..end]);
        let mut lines: Vec<String> = Vec::new();
        for raw in head.split('\n') {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            match lines.last_mut() {
                Some(last) if line.starts_with([' ', '\t']) => {
                    if last.len() + line.len() < MAX_HEADER_LINE {
                        last.push(' ');
                        last.push_str(line.trim());
                    }
                }
                _ => lines.push(line.to_string()),
            }
        }
        let mut first = lines.first()?.split(' ').filter(|p| !p.is_empty());
        let method = first.next()?;
        if !method.chars().all(is_token_char) || method.to_ascii_uppercase().starts_with("SIP/") {
            return None;
        }
        let uri = first.next().unwrap_or_default();
        let version = first.next().map(str::to_string);
        let mut request = Message::request(method, uri);
        let mut vias = 0;
        for line in &lines[1..] {
            if line.len() > MAX_HEADER_LINE {
                continue;
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let name = canonical_name(name.trim());
            let value = value.trim();
            if !KEPT.contains(&name.as_str()) || value.chars().any(char::is_control) {
                continue;
            }
            if name == "Via" {
                for v in split_commas(value) {
                    if vias < MAX_VIAS {
                        request.push("Via", v);
                        vias += 1;
                    }
                }
            } else if request.header(&name).is_none() {
                request.push(&name, value);
            }
        }
        Some(Salvaged { request, version })
    }

    fn validate(&self) -> Result<(), ParseError> {
        for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
            let v = self.header(name).ok_or(ParseError::Missing(match name {
                "Via" => "Via",
                "From" => "From",
                "To" => "To",
                "Call-ID" => "Call-ID",
                _ => "CSeq",
            }))?;
            if v.is_empty() {
                return Err(ParseError::Missing("value"));
            }
        }
        let (_, cseq_method) = self.cseq().ok_or(ParseError::Malformed("CSeq"))?;
        if let StartLine::Request { method, uri } = &self.start {
            if cseq_method != *method && method != "ACK" && method != "CANCEL" {
                return Err(ParseError::Malformed("CSeq"));
            }
            if (method == "ACK" || method == "CANCEL") && cseq_method != *method {
                return Err(ParseError::Malformed("CSeq"));
            }
            if !uri.contains(':') {
                return Err(ParseError::BadStartLine);
            }
            if let Some(mf) = self.header("Max-Forwards") {
                mf.parse::<u8>()
                    .map_err(|_| ParseError::Malformed("Max-Forwards"))?;
            }
        }
        let via = self.via(0).ok_or(ParseError::Malformed("Via"))?;
        if via.branch.is_none() && self.is_request() {
            // RFC 2543 peers have no branch; we need one to match transactions.
            return Err(ParseError::Malformed("Via"));
        }
        for name in ["From", "To"] {
            let v = self.header(name).unwrap_or_default();
            if !v.contains(':') {
                return Err(ParseError::Malformed(if name == "From" {
                    "From"
                } else {
                    "To"
                }));
            }
        }
        if self.header("Content-Type").is_none() && !self.body.is_empty() {
            return Err(ParseError::Missing("Content-Type"));
        }
        Ok(())
    }

    /// A new request with the given method and URI and no headers.
    pub fn request(method: &str, uri: &str) -> Message {
        Message {
            start: StartLine::Request {
                method: method.to_string(),
                uri: uri.to_string(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A new response with no headers.
    pub fn response(code: u16, reason: &str) -> Message {
        Message {
            start: StartLine::Response {
                code,
                reason: reason.to_string(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// True for requests.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The method of a request, or the CSeq method of a response.
    pub fn method(&self) -> String {
        match &self.start {
            StartLine::Request { method, .. } => method.clone(),
            StartLine::Response { .. } => self.cseq().map(|c| c.1).unwrap_or_default(),
        }
    }

    /// Status code of a response (0 for requests).
    pub fn code(&self) -> u16 {
        match &self.start {
            StartLine::Response { code, .. } => *code,
            StartLine::Request { .. } => 0,
        }
    }

    /// Request-URI of a request.
    pub fn uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// All values of a header, in order, comma-separated lists split.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| split_commas(&h.value))
            .collect()
    }

    /// Appends a header.
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.headers.push(Header {
            name: name.to_string(),
            value: value.into(),
        });
    }

    /// Replaces every occurrence of a header by one value.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.remove(name);
        self.push(name, value);
    }

    /// Removes every occurrence of a header.
    pub fn remove(&mut self, name: &str) {
        self.headers.retain(|h| !h.name.eq_ignore_ascii_case(name));
    }

    /// Call-ID value.
    pub fn call_id(&self) -> Option<&str> {
        self.header("Call-ID")
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, String)> {
        let v = self.header("CSeq")?;
        let mut it = v.split_whitespace();
        let n = it.next()?.parse().ok()?;
        let m = it.next()?;
        if it.next().is_some() || !m.chars().all(is_token_char) {
            return None;
        }
        Some((n, m.to_string()))
    }

    /// The `i`-th Via, parsed.
    pub fn via(&self, i: usize) -> Option<Via> {
        let v = self.headers.iter().filter(|h| h.name == "Via").nth(i)?;
        Via::parse(&v.value)
    }

    /// Branch of the top Via.
    pub fn branch(&self) -> Option<String> {
        self.via(0).and_then(|v| v.branch)
    }

    /// Tag parameter of the From header.
    pub fn from_tag(&self) -> Option<String> {
        self.header("From").and_then(tag_of)
    }

    /// Tag parameter of the To header.
    pub fn to_tag(&self) -> Option<String> {
        self.header("To").and_then(tag_of)
    }

    /// Value of Max-Forwards (70 when absent, as RFC 3261 suggests for a UAC).
    pub fn max_forwards(&self) -> u8 {
        self.header("Max-Forwards")
            .and_then(|v| v.parse().ok())
            .unwrap_or(70)
    }

    /// True when the body is SDP.
    pub fn has_sdp(&self) -> bool {
        !self.body.is_empty()
            && self
                .header("Content-Type")
                .map(|c| c.to_ascii_lowercase().starts_with("application/sdp"))
                .unwrap_or(false)
    }

    /// Serialises the message with a correct Content-Length.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(512 + self.body.len());
        match &self.start {
            StartLine::Request { method, uri } => {
                out.push_str(&format!("{method} {uri} SIP/2.0\r\n"));
            }
            StartLine::Response { code, reason } => {
                out.push_str(&format!("SIP/2.0 {code} {reason}\r\n"));
            }
        }
        for h in &self.headers {
            if h.name == "Content-Length" {
                continue;
            }
            out.push_str(&h.name);
            out.push_str(": ");
            out.push_str(&h.value);
            out.push_str("\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.start {
            StartLine::Request { method, uri } => write!(f, "{method} {uri}"),
            StartLine::Response { code, reason } => write!(f, "{code} {reason}"),
        }
    }
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    // No control characters (a bare CR, NUL, DEL ...) anywhere in the start
    // line: they would be copied into the request we send on. The grammar
    // allows HTAB only inside a reason phrase (RFC 3261 §25.1).
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        if rest.chars().any(|c| c.is_control() && c != '\t') {
            return Err(ParseError::BadStartLine);
        }
        let code: u16 = code.parse().map_err(|_| ParseError::BadStartLine)?;
        if !(100..700).contains(&code) {
            return Err(ParseError::BadStartLine);
        }
        return Ok(StartLine::Response {
            code,
            reason: reason.to_string(),
        });
    }
    if line.chars().any(char::is_control) {
        return Err(ParseError::BadStartLine);
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::BadStartLine);
    };
    if method.is_empty() || !method.chars().all(is_token_char) || version != "SIP/2.0" {
        return Err(ParseError::BadStartLine);
    }
    if uri.is_empty() {
        return Err(ParseError::BadStartLine);
    }
    Ok(StartLine::Request {
        method: method.to_string(),
        uri: uri.to_string(),
    })
}

#[cfg(test)]
mod tests;
