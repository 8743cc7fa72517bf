//! Requests relayed by a trusted dispatcher (a SIP load balancer such as
//! Kamailio in front of several instances): they arrive from the dispatcher's
//! address, so the dispatcher names the address the request really came from
//! in the `X-Callrec-Source` header (`ADDR:PORT;transport=udp`). That original
//! source, not the dispatcher's address, is what every trust decision uses
//! (who may call, whose identity headers count, the rate limit bucket, which
//! side is the PBX). The header is believed only from a `--dispatcher`
//! address; from anyone else it is ignored, and it never crosses to the other
//! leg (private headers do not pass, see `b2bua::headers`).

use std::net::{IpAddr, SocketAddr};

use super::message::Message;
use super::trust::Trust;

/// The header a dispatcher adds with the original source.
pub const SOURCE_HEADER: &str = "X-Callrec-Source";

/// Where an out-of-dialog request comes from, as far as trust is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Straight from its sender (any header naming another source is ignored).
    Direct(SocketAddr),
    /// Relayed by a dispatcher on behalf of this original sender.
    Relayed(SocketAddr),
    /// From a dispatcher that did not name the original sender (header
    /// missing, repeated or unreadable): nobody can vouch for it.
    Unnamed,
}

impl Source {
    /// The address trust decisions go by, if any.
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            Source::Direct(a) | Source::Relayed(a) => Some(a),
            Source::Unnamed => None,
        }
    }

    /// The IP address trust decisions go by, if any.
    pub fn ip(self) -> Option<IpAddr> {
        self.addr().map(|a| a.ip().to_canonical())
    }
}

/// The source of the out-of-dialog request `msg` received from `from`.
pub fn source_of(trust: &Trust, msg: &Message, from: SocketAddr) -> Source {
    if !trust.is_dispatcher(from.ip()) {
        return Source::Direct(from);
    }
    let named: Vec<&str> = msg
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(SOURCE_HEADER))
        .map(|h| h.value.as_str())
        .collect();
    // More than one: the dispatcher should have removed any the sender put in;
    // which one it added cannot be told, so none is believed.
    match named.as_slice() {
        [one] => parse_source(one).map_or(Source::Unnamed, Source::Relayed),
        _ => Source::Unnamed,
    }
}

/// Parses `ADDR:PORT`, `[V6]:PORT` or Kamailio's bare `V6:PORT`, with optional `;params`.
fn parse_source(value: &str) -> Option<SocketAddr> {
    let addr = value.split(';').next()?.trim();
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Some(a);
    }
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(SocketAddr::new(host.parse().ok()?, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::trust::TrustArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        trust: TrustArgs,
    }

    fn trust(args: &[&str]) -> Trust {
        let cli = Cli::parse_from(std::iter::once("x").chain(args.iter().copied()));
        cli.trust.build(
            "192.0.2.1:5060".parse().unwrap(),
            "10.0.0.2:5060".parse().unwrap(),
        )
    }

    fn req(extra: &str) -> Message {
        let text = format!(
            "INVITE sip:1@x SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.0.1;branch=z9hG4bK1\r\n\
             From: <sip:a@x>;tag=1\r\nTo: <sip:1@x>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n{extra}\
             Content-Length: 0\r\n\r\n"
        );
        Message::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn the_header_counts_only_from_a_dispatcher_and_only_alone() {
        let t = trust(&["--dispatcher", "10.1.0.0/24"]);
        let lb: SocketAddr = "10.1.0.5:5060".parse().unwrap();
        let stranger: SocketAddr = "10.9.0.1:5060".parse().unwrap();
        let named = req("X-Callrec-Source: 10.0.0.2:5080;transport=udp\r\n");
        assert_eq!(
            source_of(&t, &named, lb),
            Source::Relayed("10.0.0.2:5080".parse().unwrap())
        );
        assert_eq!(
            source_of(&t, &named, stranger),
            Source::Direct(stranger),
            "a forged header from a non-dispatcher is ignored"
        );
        assert_eq!(source_of(&t, &req(""), lb), Source::Unnamed);
        let two = req("X-Callrec-Source: 10.0.0.2:5080\r\nx-callrec-source: 10.9.0.1:5060\r\n");
        assert_eq!(source_of(&t, &two, lb), Source::Unnamed);
        assert_eq!(
            source_of(&t, &req("X-Callrec-Source: pbx.example:5060\r\n"), lb),
            Source::Unnamed
        );
        assert!(t.is_trusted(lb.ip()), "a dispatcher may keep a connection");
        assert!(!t.is_identity_trusted(lb.ip()));
    }

    #[test]
    fn addresses_in_all_spellings() {
        for (text, want) in [
            ("192.0.2.7:5060", "192.0.2.7:5060"),
            ("192.0.2.7:5062;transport=tcp", "192.0.2.7:5062"),
            ("[2001:db8::7]:5060;transport=udp", "[2001:db8::7]:5060"),
            ("2001:db8::7:5060", "[2001:db8::7]:5060"),
        ] {
            assert_eq!(parse_source(text), Some(want.parse().unwrap()), "{text}");
        }
        for bad in ["", "192.0.2.7", "x:5060", "192.0.2.7:port"] {
            assert_eq!(parse_source(bad), None, "{bad}");
        }
    }
}
