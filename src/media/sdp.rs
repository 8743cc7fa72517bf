//! SDP (RFC 4566): the few facts the relay needs from an offer or answer, and
//! the rewrite that anchors media at the proxy (c=, m= ports, a=rtcp, ICE
//! attributes removed). Everything else in the body is kept byte for byte.

use std::net::{IpAddr, SocketAddr};

/// Why an SDP body was rejected.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SdpError {
    /// Not UTF-8 text.
    #[error("SDP is not valid UTF-8")]
    NotUtf8,
    /// No `v=0` line first.
    #[error("SDP does not start with v=0")]
    NoVersion,
    /// A line not of the form `x=value`.
    #[error("SDP line {0} is not of the form x=value")]
    BadLine(usize),
    /// An `m=` line that cannot be read.
    #[error("SDP m= line {0} is malformed")]
    BadMedia(usize),
    /// A `c=` line that cannot be read.
    #[error("SDP c= line {0} is malformed")]
    BadConnection(usize),
    /// A stream with a port but no connection address.
    #[error("SDP stream {0} has no connection address")]
    NoConnection(usize),
    /// More `m=` lines than the proxy accepts (each may cost two port pairs).
    #[error("SDP has {0} media streams; at most {1} are accepted")]
    TooManyStreams(usize, usize),
}

/// Refuses a body with more than `max` `m=` lines before anything is parsed
/// or allocated for it.
pub fn check_stream_count(body: &[u8], max: usize) -> Result<(), SdpError> {
    let n = body
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"m="))
        .count();
    if n > max {
        return Err(SdpError::TooManyStreams(n, max));
    }
    Ok(())
}

/// Which way a media stream flows: the SDP direction attribute (sendrecv,
/// sendonly, recvonly, inactive); not the direction of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaDirection {
    /// a=sendrecv (default).
    SendRecv,
    /// a=sendonly
    SendOnly,
    /// a=recvonly
    RecvOnly,
    /// a=inactive
    Inactive,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDesc {
    /// `audio`, `video`, …
    pub kind: String,
    /// Where the peer wants RTP (None when the port is 0 or the address is 0.0.0.0).
    pub rtp: Option<SocketAddr>,
    /// Where the peer wants RTCP (a=rtcp or port+1; the RTP address with rtcp-mux).
    pub rtcp: Option<SocketAddr>,
    /// Port as written (0 = stream rejected/disabled).
    pub port: u16,
    /// a=rtcp-mux present.
    pub rtcp_mux: bool,
    /// Payload types listed on the m= line.
    pub formats: Vec<String>,
    /// a=rtpmap entries: (payload type, "NAME/rate[/channels]").
    pub rtpmaps: Vec<(u8, String)>,
    /// Direction attribute (media level, else session level).
    pub direction: MediaDirection,
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    /// Media sections in order.
    pub media: Vec<MediaDesc>,
}

fn parse_c(value: &str, line: usize) -> Result<IpAddr, SdpError> {
    let mut it = value.split_whitespace();
    let (Some("IN"), Some(_), Some(addr)) = (it.next(), it.next(), it.next()) else {
        return Err(SdpError::BadConnection(line));
    };
    // Multicast TTL suffix (`/127`) is not used by telephony peers; strip it.
    let addr = addr.split('/').next().unwrap_or(addr);
    addr.parse().map_err(|_| SdpError::BadConnection(line))
}

fn parse_direction(attr: &str) -> Option<MediaDirection> {
    match attr {
        "sendrecv" => Some(MediaDirection::SendRecv),
        "sendonly" => Some(MediaDirection::SendOnly),
        "recvonly" => Some(MediaDirection::RecvOnly),
        "inactive" => Some(MediaDirection::Inactive),
        _ => None,
    }
}

impl Sdp {
    /// Parses and checks an SDP body.
    pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
        let text = std::str::from_utf8(body).map_err(|_| SdpError::NotUtf8)?;
        let lines: Vec<&str> = text
            .split('\n')
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.is_empty())
            .collect();
        if lines.first() != Some(&"v=0") {
            return Err(SdpError::NoVersion);
        }
        let mut session_c: Option<IpAddr> = None;
        let mut session_dir = MediaDirection::SendRecv;
        struct Raw {
            desc: MediaDesc,
            c: Option<IpAddr>,
            rtcp_attr: Option<(u16, Option<IpAddr>)>,
            dir: Option<MediaDirection>,
        }
        let mut media: Vec<Raw> = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let n = i + 1;
            let b = line.as_bytes();
            if b.len() < 2 || b[1] != b'=' || !b[0].is_ascii_lowercase() {
                return Err(SdpError::BadLine(n));
            }
            let value = &line[2..];
            match b[0] {
                b'm' => {
                    let parts: Vec<&str> = value.split_whitespace().collect();
                    if parts.len() < 4 {
                        return Err(SdpError::BadMedia(n));
                    }
                    let port: u16 = parts[1]
                        .split('/')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .ok_or(SdpError::BadMedia(n))?;
                    media.push(Raw {
                        desc: MediaDesc {
                            kind: parts[0].to_string(),
                            rtp: None,
                            rtcp: None,
                            port,
                            rtcp_mux: false,
                            formats: parts[3..].iter().map(|s| s.to_string()).collect(),
                            rtpmaps: Vec::new(),
                            direction: MediaDirection::SendRecv,
                        },
                        c: None,
                        rtcp_attr: None,
                        dir: None,
                    });
                }
                b'c' => {
                    let ip = parse_c(value, n)?;
                    match media.last_mut() {
                        Some(m) => m.c = Some(ip),
                        None => session_c = Some(ip),
                    }
                }
                b'a' => {
                    let (name, arg) = value.split_once(':').unwrap_or((value, ""));
                    match (name, media.last_mut()) {
                        (d, None) => {
                            if let Some(d) = parse_direction(d) {
                                session_dir = d;
                            }
                        }
                        ("rtcp-mux", Some(m)) => m.desc.rtcp_mux = true,
                        ("rtcp", Some(m)) => {
                            let mut it = arg.split_whitespace();
                            let port = it.next().and_then(|p| p.parse().ok());
                            let addr = it.nth(2).and_then(|a| a.parse().ok());
                            if let Some(port) = port {
                                m.rtcp_attr = Some((port, addr));
                            }
                        }
                        ("rtpmap", Some(m)) => {
                            let mut it = arg.split_whitespace();
                            if let (Some(pt), Some(enc)) =
                                (it.next().and_then(|p| p.parse().ok()), it.next())
                            {
                                m.desc.rtpmaps.push((pt, enc.to_string()));
                            }
                        }
                        (d, Some(m)) => {
                            if let Some(d) = parse_direction(d) {
                                m.dir = Some(d);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        let mut out = Vec::with_capacity(media.len());
        for (i, raw) in media.into_iter().enumerate() {
            let mut d = raw.desc;
            d.direction = raw.dir.unwrap_or(session_dir);
            let ip = raw.c.or(session_c);
            if d.port != 0 {
                let ip = ip.ok_or(SdpError::NoConnection(i + 1))?;
                if !ip.is_unspecified() {
                    d.rtp = Some(SocketAddr::new(ip, d.port));
                    d.rtcp = Some(match (d.rtcp_mux, raw.rtcp_attr) {
                        (true, _) => SocketAddr::new(ip, d.port),
                        (false, Some((p, a))) => SocketAddr::new(a.unwrap_or(ip), p),
                        (false, None) => SocketAddr::new(ip, d.port.wrapping_add(1)),
                    });
                }
            }
            out.push(d);
        }
        Ok(Sdp { media: out })
    }

    /// True when every stream is inactive or disabled (a held call, both ways).
    pub fn all_inactive(&self) -> bool {
        self.media
            .iter()
            .all(|m| m.port == 0 || m.direction == MediaDirection::Inactive)
    }
}

/// Rewrites a body so that stream `i` points at `ports[i]` (RTP; RTCP is RTP+1)
/// on `ip`. Streams with port 0 stay at 0. ICE attributes are dropped: the
/// proxy is the media peer now.
pub fn rewrite(body: &[u8], ip: IpAddr, ports: &[u16]) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let ipver = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut out = String::with_capacity(text.len() + 64);
    let mut idx: Option<usize> = None;
    let mut session_c_written = false;
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let rewritten: Option<String> = if let Some(v) = line.strip_prefix("m=") {
            idx = Some(idx.map_or(0, |i| i + 1));
            // Fields and the port read as `Sdp::parse` reads them, so that a
            // disabled stream written `0000` or `0/2` stays disabled.
            let mut parts: Vec<String> = v.split_whitespace().map(str::to_string).collect();
            let port = ports.get(idx.unwrap_or(0)).copied().unwrap_or(0);
            let disabled = parts
                .get(1)
                .and_then(|p| p.split('/').next())
                .and_then(|p| p.parse::<u16>().ok())
                == Some(0);
            if parts.len() > 1 && !disabled {
                parts[1] = port.to_string();
            }
            Some(format!("m={}", parts.join(" ")))
        } else if line.starts_with("c=") {
            if idx.is_none() {
                session_c_written = true;
            }
            Some(format!("c=IN {ipver} {ip}"))
        } else if line.starts_with("o=") {
            let mut parts: Vec<&str> = line.split(' ').collect();
            let ipstr = ip.to_string();
            if parts.len() == 6 {
                parts[4] = ipver;
                parts[5] = &ipstr;
            }
            Some(parts.join(" "))
        } else if line.starts_with("a=rtcp:") {
            let port = idx.and_then(|i| ports.get(i)).copied().unwrap_or(0);
            Some(format!("a=rtcp:{} IN {ipver} {ip}", port.wrapping_add(1)))
        } else if line.starts_with("a=candidate")
            || line.starts_with("a=ice-")
            || line.starts_with("a=end-of-candidates")
            || line.starts_with("a=remote-candidates")
        {
            continue;
        } else {
            None
        };
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push_str("\r\n");
    }
    let _ = session_c_written;
    out.into_bytes()
}

/// Our own answer to `offer` for playing an announcement: the first audio
/// stream with one G.711 format (and telephone-event, if offered) at `ports[0]`
/// on `ip`; every other stream rejected (port 0), as RFC 3264 §6 asks.
pub fn answer_for_announcement(offer: &Sdp, ip: IpAddr, port: u16, pt: u8, name: &str) -> Vec<u8> {
    let ipver = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let session: u32 = rand::random::<u32>() >> 1;
    let mut out = format!(
        "v=0\r\no=callrec {session} 1 IN {ipver} {ip}\r\ns=callrec\r\nc=IN {ipver} {ip}\r\nt=0 0\r\n"
    );
    let mut audio_done = false;
    for m in &offer.media {
        if m.kind == "audio" && m.port != 0 && !audio_done {
            audio_done = true;
            let te = m
                .rtpmaps
                .iter()
                .find(|(_, n)| n.to_ascii_lowercase().starts_with("telephone-event/8000"))
                .map(|(p, _)| *p);
            let fmts = match te {
                Some(t) => format!("{pt} {t}"),
                None => pt.to_string(),
            };
            out.push_str(&format!(
                "m=audio {port} RTP/AVP {fmts}\r\na=rtpmap:{pt} {name}/8000\r\n"
            ));
            if let Some(t) = te {
                out.push_str(&format!(
                    "a=rtpmap:{t} telephone-event/8000\r\na=fmtp:{t} 0-15\r\n"
                ));
            }
            out.push_str("a=ptime:20\r\na=sendrecv\r\n");
        } else {
            let proto = "RTP/AVP";
            let fmt = m.formats.first().cloned().unwrap_or_else(|| "0".into());
            out.push_str(&format!("m={} 0 {proto} {fmt}\r\n", m.kind));
        }
    }
    out.into_bytes()
}

/// Keeps only the payload types in `keep` on the first audio `m=` line (and
/// their rtpmap/fmtp lines), so that the callee answers with a codec the
/// caller already uses.
pub fn restrict_audio_formats(body: &[u8], keep: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let mut out = String::with_capacity(text.len());
    let mut in_first_audio = false;
    let mut seen_audio = false;
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        if let Some(v) = line.strip_prefix("m=") {
            in_first_audio = v.starts_with("audio ") && !seen_audio;
            seen_audio |= in_first_audio;
            if in_first_audio {
                let parts: Vec<&str> = v.split(' ').collect();
                if parts.len() >= 4 {
                    let fmts: Vec<&str> = parts[3..]
                        .iter()
                        .copied()
                        .filter(|f| f.parse::<u8>().is_ok_and(|p| keep.contains(&p)))
                        .collect();
                    if !fmts.is_empty() {
                        out.push_str(&format!(
                            "m={} {} {} {}\r\n",
                            parts[0],
                            parts[1],
                            parts[2],
                            fmts.join(" ")
                        ));
                        continue;
                    }
                }
            }
        } else if in_first_audio {
            let pt = line
                .strip_prefix("a=rtpmap:")
                .or_else(|| line.strip_prefix("a=fmtp:"))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|p| p.parse::<u8>().ok());
            if pt.is_some_and(|p| !keep.contains(&p)) {
                continue;
            }
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `sdp` fuzz target: a port of `0000` (or `0/2`) is a
    /// disabled stream to the parser but was given a live port by the rewrite.
    #[test]
    fn rewrite_keeps_disabled_streams_disabled_however_zero_is_written() {
        for zero in ["0000", "0/2", "0"] {
            let body = format!(
                "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nt=0 0\r\nm=audio {zero} RTP/AVP 8\r\n"
            );
            let sdp = Sdp::parse(body.as_bytes()).unwrap();
            assert_eq!(sdp.media[0].port, 0);
            let out = rewrite(body.as_bytes(), "192.0.2.1".parse().unwrap(), &[20000]);
            let again = Sdp::parse(&out).unwrap_or_else(|e| panic!("{zero}: {e:?}"));
            assert_eq!(again.media[0].port, 0, "{zero}");
        }
        // Extra blanks between fields do not shift the port field either.
        let body = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio  4000  RTP/AVP 8\r\n";
        let out = rewrite(body.as_bytes(), "192.0.2.1".parse().unwrap(), &[20000]);
        assert_eq!(Sdp::parse(&out).unwrap().media[0].port, 20000);
    }

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=sendonly\r\na=candidate:1 1 UDP 1 10.0.0.5 4000 typ host\r\n";

    #[test]
    fn parse_offer() {
        let s = Sdp::parse(OFFER.as_bytes()).unwrap();
        let m = &s.media[0];
        assert_eq!(m.rtp, Some("10.0.0.5:4000".parse().unwrap()));
        assert_eq!(m.rtcp, Some("10.0.0.5:4001".parse().unwrap()));
        assert_eq!(m.direction, MediaDirection::SendOnly);
        assert_eq!(m.rtpmaps.len(), 2);
    }

    #[test]
    fn rewrite_points_at_proxy() {
        let out = rewrite(OFFER.as_bytes(), "127.0.0.1".parse().unwrap(), &[20000]);
        let s = Sdp::parse(&out).unwrap();
        assert_eq!(s.media[0].rtp, Some("127.0.0.1:20000".parse().unwrap()));
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("candidate"));
        assert!(text.contains("a=rtpmap:101 telephone-event/8000"));
        assert!(text.contains("o=- 1 1 IN IP4 127.0.0.1"));
    }

    #[test]
    fn announcement_answer_and_restriction() {
        let offer = Sdp::parse(OFFER.as_bytes()).unwrap();
        let ans = answer_for_announcement(&offer, "127.0.0.1".parse().unwrap(), 20000, 8, "PCMA");
        let a = Sdp::parse(&ans).unwrap();
        assert_eq!(a.media[0].formats, vec!["8", "101"]);
        assert_eq!(a.media[0].rtp, Some("127.0.0.1:20000".parse().unwrap()));
        let r = restrict_audio_formats(OFFER.as_bytes(), &[8, 101]);
        let r = Sdp::parse(&r).unwrap();
        assert_eq!(r.media[0].formats, vec!["8", "101"]);
        let only_pcmu = restrict_audio_formats(OFFER.as_bytes(), &[0]);
        assert!(!String::from_utf8_lossy(&only_pcmu).contains("rtpmap:8"));
        assert_eq!(Sdp::parse(&only_pcmu).unwrap().media[0].formats, vec!["0"]);
    }

    #[test]
    fn stream_count_is_bounded() {
        let body = |n: usize| {
            let mut b = String::from("v=0\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n");
            for i in 0..n {
                b.push_str(&format!(
                    "m=audio {} RTP/AVP 0\r\na=sendrecv\r\n",
                    4000 + 2 * i
                ));
            }
            b
        };
        assert_eq!(check_stream_count(body(8).as_bytes(), 8), Ok(()));
        assert_eq!(
            check_stream_count(body(9).as_bytes(), 8),
            Err(SdpError::TooManyStreams(9, 8))
        );
        assert_eq!(check_stream_count(OFFER.as_bytes(), 1), Ok(()));
    }

    #[test]
    fn broken_sdp_is_rejected() {
        assert!(Sdp::parse(b"m=audio 1 RTP/AVP 0\r\n").is_err());
        assert!(Sdp::parse(b"v=0\r\nm=audio x RTP/AVP 0\r\n").is_err());
        assert!(Sdp::parse(b"v=0\r\nm=audio 4000 RTP/AVP 0\r\n").is_err());
        assert!(Sdp::parse(b"v=0\r\nc=IN IP4 nope\r\n").is_err());
        assert!(Sdp::parse(b"v=0\r\ngarbage\r\n").is_err());
    }
}
