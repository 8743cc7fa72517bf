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
    pub channels: crate::recorder::ChannelMode,
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
    /// The web console's sessions and cookies.
    pub console: crate::console::ConsoleSettings,
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
