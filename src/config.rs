//! Run-time configuration of the proxy, independent of how it was given (flags, env, file).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `callrec run` needs to start.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Address for SIP over UDP and TCP.
    pub listen: SocketAddr,
    /// The PBX: requests from its address are outgoing calls.
    pub pbx: SocketAddr,
    /// The trunk: outgoing calls are sent there.
    pub trunk: SocketAddr,
    /// Address written into rewritten SDP.
    pub media_ip: std::net::IpAddr,
    /// First and last RTP port (inclusive).
    pub rtp_ports: (u16, u16),
    /// Folder for the instance's state.
    pub data_dir: PathBuf,
    /// This instance's name: in its sets' metadata and its database rows.
    pub instance_name: String,
    /// The protocol database (the SQLite file in `data_dir`, or PostgreSQL).
    pub database: crate::db::Location,
    /// A call whose media is silent this long in both directions is ended.
    pub rtp_timeout: Duration,
    /// Whether media from a source the SDP did not name may be learned (NAT).
    pub media_learning: crate::media::latch::LearningMode,
    /// How long running calls may go on after SIGTERM before they are hung up.
    pub shutdown_grace: Duration,
    /// Admin HTTP listener (health, metrics).
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token for the admin API's /api/ paths (None: generated into the data dir).
    pub admin_token: Option<String>,
    /// Channel layout of recordings.
    pub channels: crate::vocab::ChannelMode,
    /// Profiles, dialling plan, directory, targets and SMTP (from --config or the single-profile flags).
    pub policy: crate::policy::PolicyConfig,
    /// SMTP server URL for failure mails (overrides the config file's).
    pub smtp: Option<String>,
    /// Addresses that get failure mails.
    pub notify_email: Vec<String>,
    /// Peers whose requests are accepted and whose identity headers are believed.
    pub trust: crate::sip::trust::Trust,
    /// Where the keystore password comes from.
    pub keystore_password: crate::seal::PasswordSource,
    /// Bounds on what peers can make the proxy hold (calls, streams, time).
    pub limits: Limits,
    /// Limits on SIP TCP connections.
    pub tcp: crate::sip::transport::TcpLimits,
    /// How long decisions (and events) of calls that were not recorded are kept.
    pub unrecorded_retention: Duration,
    /// Addresses that get each chain head's hash daily and at shutdown (used without a TSA).
    pub anchor_email: Vec<String>,
    /// RFC 3161 anchoring of the chain heads (None: off).
    pub anchor: Option<crate::anchoring::AnchorConfig>,
    /// Plain RTP or SRTP on each leg.
    pub srtp: SrtpConfig,
    /// Transport to the PBX and to the trunk (from `tls://`, `tcp://`, `sips:`).
    pub pbx_proto: crate::sip::Proto,
    /// See `pbx_proto`.
    pub trunk_proto: crate::sip::Proto,
    /// TLS listener and certificates (None: no TLS at all).
    pub tls: Option<crate::sip::tls::TlsSettings>,
    /// The web console's sessions and cookies.
    pub console: crate::console::ConsoleSettings,
    /// Serve the admin listener over TLS with the certificate of `tls`.
    pub admin_tls: bool,
    /// The phone listener for the members' recording keys (off unless set).
    pub phone: crate::phone::PhoneSettings,
    /// How often the group logouts are re-read from the protocol database.
    pub membership_refresh: Duration,
    /// Model and CPU budget of the transcripts (profiles with `transcribe`).
    pub transcribe: crate::transcribe::TranscribeSettings,
}

/// What media each leg gets, and where SDES keys may travel.
#[derive(Debug, Clone, Copy, Default)]
pub struct SrtpConfig {
    /// What the PBX leg is offered: rtp, srtp or the same as the other leg.
    pub pbx_media: crate::media::sdes::LegMedia,
    /// What the trunk leg is offered.
    pub trunk_media: crate::media::sdes::LegMedia,
    /// SDES keys may be exchanged on legs whose SIP runs over plain UDP/TCP.
    pub allow_sdes_over_udp: bool,
}

/// A next hop as `--trunk`/`--pbx` give it: `HOST:PORT` (UDP), `udp://`,
/// `tcp://` or `tls://HOST:PORT`, or a `sip:`/`sips:` URI (sips means TLS;
/// `;transport=tcp|tls` is honoured). TLS defaults to port 5061, else 5060.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    /// Transport.
    pub proto: crate::sip::Proto,
    /// Host name or address, as written (the name a TLS certificate must carry).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl std::str::FromStr for NextHop {
    type Err = String;
    fn from_str(s: &str) -> Result<NextHop, String> {
        use crate::sip::Proto;
        let t = s.trim();
        let lower = t.to_ascii_lowercase();
        let (mut proto, rest) = [
            ("tls://", Proto::Tls),
            ("tcp://", Proto::Tcp),
            ("udp://", Proto::Udp),
            ("sips:", Proto::Tls),
            ("sip:", Proto::Udp),
        ]
        .into_iter()
        .find(|(p, _)| lower.starts_with(p))
        .map(|(p, proto)| (proto, &t[p.len()..]))
        .unwrap_or((Proto::Udp, t));
        let rest = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
        let (hostport, params) = rest.split_once(';').unwrap_or((rest, ""));
        for p in params.split(';').map(str::to_ascii_lowercase) {
            match p.as_str() {
                "transport=tcp" if proto == Proto::Udp => proto = Proto::Tcp,
                "transport=tls" => proto = Proto::Tls,
                _ => {}
            }
        }
        let default_port = if proto == Proto::Tls { 5061 } else { 5060 };
        let (host, port) = match hostport.rsplit_once(':') {
            // A bare IPv6 address has colons but no brackets: no port then.
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => (
                h,
                p.parse()
                    .map_err(|_| format!("{s:?}: {p:?} is not a port number"))?,
            ),
            _ => (hostport, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{s:?}: no host; give HOST:PORT or tls://HOST:PORT"));
        }
        Ok(NextHop {
            proto,
            host: host.to_string(),
            port,
        })
    }
}

/// Resource limits: what one peer, or all of them together, may make the
/// proxy allocate. The README's "Security" section lists them with their flags.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most `m=` lines in one SDP body; more is refused with 488.
    pub max_media_streams: usize,
    /// Most calls in progress at once; more get 503 (0: no limit).
    pub max_calls: usize,
    /// New INVITEs per second from one source address; more get 503 (0: no limit).
    pub invite_rate_per_source: u32,
    /// Trusted peers (trunk, PBX, `--trusted-source`) are not rate limited:
    /// a trunk or a Kamailio in front carries every call of a site.
    pub rate_limit_exempt_trusted: bool,
    /// A call is hung up this long after its INVITE, whatever its state.
    pub max_call_duration: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_media_streams: 8,
            max_calls: 1000,
            invite_rate_per_source: 50,
            rate_limit_exempt_trusted: false,
            max_call_duration: Duration::from_secs(86_400),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::NextHop;
    use crate::sip::Proto;

    fn hop(s: &str) -> (Proto, String, u16) {
        let h: NextHop = s.parse().unwrap();
        (h.proto, h.host, h.port)
    }

    #[test]
    fn next_hops_in_every_spelling() {
        assert_eq!(hop("10.0.0.1:5080"), (Proto::Udp, "10.0.0.1".into(), 5080));
        assert_eq!(
            hop("tls://sip.example.net"),
            (Proto::Tls, "sip.example.net".into(), 5061)
        );
        assert_eq!(hop("tcp://pbx:5060"), (Proto::Tcp, "pbx".into(), 5060));
        assert_eq!(
            hop("sips:trunk.example.net:5062"),
            (Proto::Tls, "trunk.example.net".into(), 5062)
        );
        assert_eq!(
            hop("sip:pbx.lan;transport=tls"),
            (Proto::Tls, "pbx.lan".into(), 5061)
        );
        assert_eq!(hop("tls://[::1]:5061"), (Proto::Tls, "::1".into(), 5061));
        assert!("tls://:5061".parse::<NextHop>().is_err());
        assert!("host:x".parse::<NextHop>().is_err());
    }
}
