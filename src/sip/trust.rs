//! Which peers callrec listens to: the trunk, the PBX and the operator's
//! `--trusted-source` networks may start calls; a smaller set (by default the
//! trunk and the PBX) forms the identity trust domain whose caller-ID headers
//! are believed and passed on. The predicate is by IP address only, because a
//! peer's source port changes with every TCP connection. See README, Security.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;

/// What happens to a request from a peer outside the trusted set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Untrusted {
    /// Answer 403 Forbidden.
    #[default]
    Reject,
    /// Send nothing back, so scanners learn nothing (OPTIONS included).
    Drop,
}

/// One entry of `--identity-trusted`: the trunk, the PBX or a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityPeer {
    /// The `--trunk` address.
    Trunk,
    /// The `--pbx` address.
    Pbx,
    /// Any address in this network.
    Net(IpNet),
}

/// Why a `--trusted-source` or `--identity-trusted` value was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is neither an IP address nor a network in CIDR notation (e.g. 10.0.0.0/24)")]
pub struct BadNet(String);

/// Parses `10.1.2.3`, `10.1.2.0/24`, `::1` or `fd00::/8`; a bare address is a host route.
pub fn parse_net(s: &str) -> Result<IpNet, BadNet> {
    let s = s.trim();
    IpNet::from_str(s)
        .or_else(|_| IpAddr::from_str(s).map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| BadNet(s.to_string()))
}

impl FromStr for IdentityPeer {
    type Err = BadNet;
    fn from_str(s: &str) -> Result<IdentityPeer, BadNet> {
        match s.trim().to_ascii_lowercase().as_str() {
            "trunk" => Ok(IdentityPeer::Trunk),
            "pbx" => Ok(IdentityPeer::Pbx),
            _ => parse_net(s).map(IdentityPeer::Net),
        }
    }
}

/// The trust flags of `callrec run`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrustArgs {
    /// Network (CIDR) or address besides --trunk and --pbx whose requests are accepted, e.g. a Kamailio in front (repeatable).
    #[arg(long = "trusted-source", env = "CALLREC_TRUSTED_SOURCE", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_sources: Vec<IpNet>,
    /// Peers whose identity headers (P-Asserted-Identity, Privacy, Diversion …) are passed on: "trunk", "pbx" or a network (repeatable; replaces the default, so name trunk and pbx too to keep them).
    #[arg(
        long = "identity-trusted",
        env = "CALLREC_IDENTITY_TRUSTED",
        value_delimiter = ',',
        default_value = "trunk,pbx"
    )]
    pub identity_trusted: Vec<IdentityPeer>,
    /// Address or network (CIDR) of a SIP load balancer in front (e.g. Kamailio) whose X-Callrec-Source header names the original sender; trust decisions then go by that sender (repeatable).
    #[arg(long = "dispatcher", env = "CALLREC_DISPATCHER", value_delimiter = ',', value_parser = parse_net)]
    pub dispatchers: Vec<IpNet>,
    /// What an untrusted peer's request gets: reject (403) or drop (no answer at all).
    #[arg(long, env = "CALLREC_UNTRUSTED", value_enum, default_value_t = Untrusted::Reject)]
    pub untrusted: Untrusted,
}

impl TrustArgs {
    /// The trust set for a proxy between `trunk` and `pbx`.
    pub fn build(&self, trunk: SocketAddr, pbx: SocketAddr) -> Trust {
        let host = |a: SocketAddr| IpNet::from(canonical(a.ip()));
        let identity = self
            .identity_trusted
            .iter()
            .map(|p| match p {
                IdentityPeer::Trunk => host(trunk),
                IdentityPeer::Pbx => host(pbx),
                IdentityPeer::Net(n) => *n,
            })
            .collect();
        let mut sources = vec![host(trunk), host(pbx)];
        sources.extend(self.trusted_sources.iter().copied());
        Trust {
            sources,
            identity,
            dispatchers: self.dispatchers.clone(),
            untrusted: self.untrusted,
        }
    }
}

/// The set of trusted peers; cheap to clone and to ask.
#[derive(Debug, Clone)]
pub struct Trust {
    sources: Vec<IpNet>,
    identity: Vec<IpNet>,
    dispatchers: Vec<IpNet>,
    /// What an untrusted request gets.
    pub untrusted: Untrusted,
}

impl Default for Trust {
    /// Trusts nobody (a proxy built without flags, e.g. in unit tests).
    fn default() -> Trust {
        Trust {
            sources: Vec::new(),
            identity: Vec::new(),
            dispatchers: Vec::new(),
            untrusted: Untrusted::Reject,
        }
    }
}

/// An IPv4 peer on a dual-stack socket shows up as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl Trust {
    /// May a peer at `ip` start calls (and keep a TCP connection idle)? A
    /// dispatcher is trusted as a peer; what it relays is judged by the
    /// original sender it names (see `relayed`).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.sources.iter().any(|n| n.contains(&ip)) || self.is_dispatcher(ip)
    }

    /// Is `ip` a `--dispatcher`, whose X-Callrec-Source header is believed?
    pub fn is_dispatcher(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.dispatchers.iter().any(|n| n.contains(&ip))
    }

    /// Does a peer at `ip` get answers (403, 400 …) when it is refused?
    /// Strangers get none with `--untrusted drop`.
    pub fn answers(&self, ip: IpAddr) -> bool {
        self.untrusted == Untrusted::Reject || self.is_trusted(ip)
    }

    /// Are identity headers from a peer at `ip` believed (RFC 3325 trust domain)?
    pub fn is_identity_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.identity.iter().any(|n| n.contains(&ip))
    }
}

/// Whether a request inside a dialog comes from that dialog leg's peer: from
/// the address its requests came from (or we send to) — the flow — or from
/// the host of its remote target (its Contact, when that is an IP address).
/// Anyone else who learnt the dialog's identifiers is a stranger.
pub fn is_leg_peer(src: IpAddr, flow: SocketAddr, target_uri: &str) -> bool {
    let src = canonical(src);
    if src == canonical(flow.ip()) {
        return true;
    }
    super::header_value::uri_hostport(target_uri)
        .and_then(|(h, _)| h.parse::<IpAddr>().ok())
        .is_some_and(|ip| canonical(ip) == src)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(sources: &[&str], identity: &[&str]) -> TrustArgs {
        TrustArgs {
            trusted_sources: sources.iter().map(|s| parse_net(s).unwrap()).collect(),
            identity_trusted: identity.iter().map(|s| s.parse().unwrap()).collect(),
            dispatchers: Vec::new(),
            untrusted: Untrusted::Reject,
        }
    }

    #[test]
    fn trunk_pbx_and_listed_networks_are_trusted() {
        let t = args(&["10.9.0.0/16", "192.0.2.7"], &["trunk", "pbx"]).build(
            "198.51.100.1:5060".parse().unwrap(),
            "10.0.0.2:5060".parse().unwrap(),
        );
        for ok in [
            "198.51.100.1",
            "10.0.0.2",
            "10.9.200.1",
            "192.0.2.7",
            "::ffff:10.0.0.2",
        ] {
            assert!(t.is_trusted(ok.parse().unwrap()), "{ok}");
        }
        for bad in ["198.51.100.2", "10.0.0.3", "192.0.2.8", "::1"] {
            assert!(!t.is_trusted(bad.parse().unwrap()), "{bad}");
        }
        assert!(t.is_identity_trusted("198.51.100.1".parse().unwrap()));
        assert!(!t.is_identity_trusted("10.9.0.1".parse().unwrap()));
    }

    #[test]
    fn identity_domain_can_leave_out_the_trunk() {
        let t = args(&[], &["pbx", "fd00::/8"]).build(
            "198.51.100.1:5060".parse().unwrap(),
            "10.0.0.2:5060".parse().unwrap(),
        );
        assert!(t.is_trusted("198.51.100.1".parse().unwrap()));
        assert!(!t.is_identity_trusted("198.51.100.1".parse().unwrap()));
        assert!(t.is_identity_trusted("10.0.0.2".parse().unwrap()));
        assert!(t.is_identity_trusted("fd00::5".parse().unwrap()));
    }

    #[test]
    fn bad_networks_are_refused() {
        for bad in ["", "10.0.0.0/33", "trunk.example", "10.0.0"] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
    }

    #[test]
    fn leg_peer_is_the_flow_or_the_contact_host() {
        let flow: SocketAddr = "127.0.0.3:5060".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(is_leg_peer(ip("127.0.0.3"), flow, "sip:a@127.0.0.3:5999"));
        assert!(is_leg_peer(
            ip("127.0.0.4"),
            flow,
            "sip:a@127.0.0.4:5070;transport=tcp"
        ));
        assert!(!is_leg_peer(ip("127.0.0.9"), flow, "sip:a@127.0.0.3"));
        assert!(!is_leg_peer(ip("127.0.0.9"), flow, "sip:a@pbx.example"));
    }
}
