//! Connection reuse (RFC 5923): a peer that opened a TCP or TLS connection to
//! us and puts `;alias` on its Via asks that our requests to its sent-by
//! address use that connection instead of a new one. Only an alias for the
//! connection's own IP address is honoured, so a peer can never draw traffic
//! meant for another host onto its connection.

use std::net::{IpAddr, SocketAddr};

use super::header_value::Via;

/// The address a request's top Via names with `;alias`, when it is the
/// connection's own IP on another port. Looks at the header section only.
pub fn alias_of(data: &[u8], peer: SocketAddr) -> Option<SocketAddr> {
    // Requests only: a response's Via is ours.
    if data.starts_with(b"SIP/2.0 ") {
        return None;
    }
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(data.len());
    let head = std::str::from_utf8(&data[..end]).ok()?;
    let value = head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        (name.eq_ignore_ascii_case("via") || name.eq_ignore_ascii_case("v")).then_some(value)
    })?;
    // The first of possibly several comma-separated values.
    let top = value.split(',').next()?;
    let has_alias = top
        .split(';')
        .skip(1)
        .any(|p| p.trim().eq_ignore_ascii_case("alias"));
    if !has_alias {
        return None;
    }
    let via = Via::parse(top)?;
    let ip: IpAddr = via.host.trim_matches(['[', ']']).parse().ok()?;
    if ip.to_canonical() != peer.ip().to_canonical() {
        return None;
    }
    let addr = SocketAddr::new(peer.ip(), via.port.unwrap_or(5060));
    (addr != peer).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(via: &str) -> Vec<u8> {
        format!("OPTIONS sip:a@b SIP/2.0\r\nVia: {via}\r\nContent-Length: 0\r\n\r\n").into_bytes()
    }

    #[test]
    fn alias_only_for_the_connection_s_own_address() {
        let peer: SocketAddr = "10.0.0.3:40000".parse().unwrap();
        assert_eq!(
            alias_of(
                &req("SIP/2.0/TLS 10.0.0.3:5061;branch=z9hG4bK1;alias"),
                peer
            ),
            Some("10.0.0.3:5061".parse().unwrap())
        );
        // Another host's address is never taken over.
        assert_eq!(
            alias_of(
                &req("SIP/2.0/TLS 10.0.0.9:5061;branch=z9hG4bK1;alias"),
                peer
            ),
            None
        );
        // No alias asked for, a name instead of an address, a response.
        assert_eq!(
            alias_of(&req("SIP/2.0/TLS 10.0.0.3:5061;branch=z9hG4bK1"), peer),
            None
        );
        assert_eq!(alias_of(&req("SIP/2.0/TLS sbc.example;alias"), peer), None);
        assert_eq!(
            alias_of(
                b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 10.0.0.3:5061;alias\r\n\r\n",
                peer
            ),
            None
        );
    }
}
