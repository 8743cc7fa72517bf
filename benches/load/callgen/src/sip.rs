//! SIP messages as the generator needs them: parsing a received request or
//! response into its start line, the few headers the call flow reads, and the
//! SDP's audio address; building requests and responses as text. The flow is
//! the one of the SIPp scenarios in benches/load/scenarios (INVITE with a
//! PCMA offer, 180 and 200 with the answer, ACK, BYE, 200).

use std::net::{Ipv4Addr, SocketAddrV4};

#[derive(Debug, Default)]
pub struct Msg<'a> {
    /// Request method, or None for a response.
    pub method: Option<&'a str>,
    pub status: u16,
    pub vias: Vec<&'a str>,
    pub record_routes: Vec<&'a str>,
    pub from: &'a str,
    pub to: &'a str,
    pub call_id: &'a str,
    pub cseq: &'a str,
    pub contact: &'a str,
    pub body: &'a str,
}

/// Full header name for the compact forms SIP allows.
fn long_name(name: &str) -> &str {
    match name {
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "i" => "call-id",
        "m" => "contact",
        _ => name,
    }
}

pub fn parse(data: &[u8]) -> Option<Msg<'_>> {
    let text = std::str::from_utf8(data).ok()?;
    let (head, body) = match text.find("\r\n\r\n") {
        Some(i) => (&text[..i], &text[i + 4..]),
        None => (text, ""),
    };
    let mut lines = head.split("\r\n");
    let first = lines.next()?;
    let mut m = Msg {
        body,
        ..Default::default()
    };
    if let Some(rest) = first.strip_prefix("SIP/2.0 ") {
        m.status = rest.get(..3)?.parse().ok()?;
    } else {
        let (method, rest) = first.split_once(' ')?;
        if !rest.ends_with("SIP/2.0") {
            return None;
        }
        m.method = Some(method);
    }
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match long_name(name.trim().to_ascii_lowercase().as_str()) {
            "via" => m.vias.extend(value.split(',').map(str::trim)),
            "record-route" => m.record_routes.extend(value.split(',').map(str::trim)),
            "from" => m.from = value,
            "to" => m.to = value,
            "call-id" => m.call_id = value,
            "cseq" => m.cseq = value,
            "contact" => m.contact = value,
            _ => {}
        }
    }
    if m.call_id.is_empty() || m.cseq.is_empty() {
        return None;
    }
    Some(m)
}

impl Msg<'_> {
    /// The method named in CSeq ("INVITE" in "1 INVITE").
    pub fn cseq_method(&self) -> &str {
        self.cseq.split_whitespace().nth(1).unwrap_or("")
    }

    /// The URI inside the Contact header (between < > when present).
    pub fn contact_uri(&self) -> &str {
        uri_of(self.contact)
    }

    /// The audio address of the SDP body: c= address and m=audio port.
    pub fn sdp_audio(&self) -> Option<SocketAddrV4> {
        let mut ip: Option<Ipv4Addr> = None;
        let mut port: Option<u16> = None;
        for line in self.body.lines() {
            if let Some(c) = line.strip_prefix("c=IN IP4 ") {
                // A media-level c= line overrides the session-level one.
                ip = c.trim().split('/').next()?.parse().ok();
            } else if let Some(m) = line.strip_prefix("m=audio ") {
                port = m.split_whitespace().next()?.parse().ok();
            }
        }
        Some(SocketAddrV4::new(ip?, port?))
    }
}

fn uri_of(v: &str) -> &str {
    match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v.split(';').next().unwrap_or(v).trim(),
    }
}

/// The SDP each party offers or answers: PCMA 20 ms (plus telephone-event), as
/// the SIPp scenarios; with `crypto` (an `a=crypto` line) SRTP, RTP/SAVP.
pub fn sdp(ip: Ipv4Addr, port: u16, session: u64, who: &str, crypto: Option<&str>) -> String {
    let proto = if crypto.is_some() {
        "RTP/SAVP"
    } else {
        "RTP/AVP"
    };
    let crypto = crypto.unwrap_or("");
    format!(
        "v=0\r\no=- {session} 1 IN IP4 {ip}\r\ns=callgen {who}\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} {proto} 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-15\r\na=ptime:20\r\n{crypto}a=sendrecv\r\n"
    )
}

/// A request; `extra` holds further header lines, each ending in CRLF.
#[allow(clippy::too_many_arguments)]
pub fn request(
    method: &str,
    uri: &str,
    via: &str,
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
    extra: &str,
    body: &str,
) -> String {
    let ctype = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!(
        "{method} {uri} SIP/2.0\r\nVia: {via}\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\n{extra}Max-Forwards: 70\r\nUser-Agent: callgen\r\n{ctype}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A response to `req`; `to_tag` is added to To when it has none yet.
pub fn response(
    req: &Msg<'_>,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra: &str,
    body: &str,
) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for v in &req.vias {
        out.push_str("Via: ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    for rr in &req.record_routes {
        out.push_str("Record-Route: ");
        out.push_str(rr);
        out.push_str("\r\n");
    }
    let to = match to_tag {
        Some(tag) if !req.to.contains(";tag=") => format!("{};tag={tag}", req.to),
        _ => req.to.to_string(),
    };
    let ctype = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    out.push_str(&format!(
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}{ctype}Content-Length: {}\r\n\r\n{body}",
        req.from,
        req.call_id,
        req.cseq,
        body.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_with_sdp() {
        let body = sdp(Ipv4Addr::new(127, 0, 1, 3), 40002, 7, "caller", None);
        let req = request(
            "INVITE",
            "sip:200@127.0.1.1:5060",
            "SIP/2.0/UDP 127.0.1.3:5060;branch=z9hG4bK-1",
            "<sip:0301@127.0.1.3:5060>;tag=a1",
            "<sip:200@127.0.1.1:5060>",
            "cg-1@x",
            1,
            "Contact: <sip:0301@127.0.1.3:5060>\r\n",
            &body,
        );
        let m = parse(req.as_bytes()).unwrap();
        assert_eq!(m.method, Some("INVITE"));
        assert_eq!(m.cseq_method(), "INVITE");
        assert_eq!(m.contact_uri(), "sip:0301@127.0.1.3:5060");
        assert_eq!(m.sdp_audio(), Some("127.0.1.3:40002".parse().unwrap()));
        assert!(req.contains(&format!("Content-Length: {}\r\n", body.len())));
    }

    #[test]
    fn response_copies_vias_and_record_routes_and_tags_to() {
        let raw = "INVITE sip:b@127.0.1.2 SIP/2.0\r\nv: SIP/2.0/UDP 127.0.1.1:5070;branch=z1, SIP/2.0/UDP 127.0.1.3:5060;branch=z2\r\n\
                   Record-Route: <sip:127.0.1.1:5070;lr>\r\nf: <sip:a@x>;tag=1\r\nt: <sip:b@y>\r\ni: abc\r\nCSeq: 5 INVITE\r\n\
                   Content-Length: 0\r\n\r\n";
        let req = parse(raw.as_bytes()).unwrap();
        assert_eq!(req.vias.len(), 2);
        let resp = response(&req, 200, "OK", Some("t9"), "", "");
        let r = parse(resp.as_bytes()).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.vias, req.vias);
        assert_eq!(r.record_routes, vec!["<sip:127.0.1.1:5070;lr>"]);
        assert_eq!(r.to, "<sip:b@y>;tag=t9");
        assert_eq!(r.cseq, "5 INVITE");
        assert_eq!(r.call_id, "abc");
    }

    #[test]
    fn garbage_is_not_a_message() {
        assert!(parse(b"hello").is_none());
        assert!(parse(b"SIP/2.0 2x0 OK\r\nCall-ID: a\r\nCSeq: 1 X\r\n\r\n").is_none());
        assert!(parse(&[0xff, 0xfe]).is_none());
    }
}
