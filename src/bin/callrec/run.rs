//! `callrec run`: the proxy's flags (each also as `CALLREC_<FLAG>`), turned into
//! the library's `RunConfig`, and the runtime that serves it until SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use callrec::config::{Limits, RunConfig};
use callrec::policy::{DirectoryConfig, PolicyConfig, Profile};
use callrec::sip::transport::TcpLimits;

use crate::evidence::KeystoreArgs;

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Address for SIP over UDP and TCP (same port for both).
    #[arg(long, env = "CALLREC_LISTEN", default_value = "0.0.0.0:5060")]
    pub(crate) listen: SocketAddr,
    /// The PBX (HOST:PORT, tcp:// or tls://HOST:PORT, or a sips: URI): requests from its address are outgoing calls and go to the trunk.
    #[arg(long, env = "CALLREC_PBX")]
    pub(crate) pbx: String,
    /// The trunk (HOST:PORT, tcp:// or tls://HOST:PORT, or a sips: URI): outgoing calls are sent here; everything else goes to the PBX.
    #[arg(long, env = "CALLREC_TRUNK")]
    pub(crate) trunk: String,
    /// IP address written into rewritten SDP; relay sockets bind to it (default: the listen address, or 127.0.0.1 if that is 0.0.0.0).
    #[arg(long, env = "CALLREC_MEDIA_IP")]
    pub(crate) media_ip: Option<IpAddr>,
    /// Range of UDP ports for RTP and RTCP, as LO-HI.
    #[arg(long, env = "CALLREC_RTP_PORTS", default_value = "20000-29999")]
    pub(crate) rtp_ports: String,
    /// Folder for the instance's state: instance id, keystore, database, spool.
    #[arg(long, env = "CALLREC_DATA_DIR", default_value = "./callrec-data", value_parser = crate::data_dir_path)]
    pub(crate) data_dir: PathBuf,
    /// This instance's name (default: the host name): written into every set it seals and its database rows; keep it stable across restarts and unique among instances sharing a database.
    #[arg(long, env = "CALLREC_INSTANCE_NAME", default_value_t = callrec::instance::default_name())]
    pub(crate) instance_name: String,
    #[command(flatten)]
    pub(crate) database: crate::instance::DatabaseArgs,
    /// Seconds without any RTP in either direction after which a call is hung up on both legs.
    #[arg(long, env = "CALLREC_RTP_TIMEOUT", default_value_t = 60)]
    pub(crate) rtp_timeout: u64,
    /// Media sources accepted: strict (only the address:port each SDP names) or heuristic (also one other source, e.g. behind NAT, when nothing came from that address within 3 s of the offer/answer).
    #[arg(long, env = "CALLREC_MEDIA_LEARNING", default_value = "heuristic")]
    pub(crate) media_learning: callrec::media::latch::LearningMode,
    /// What the PBX leg gets: rtp, srtp (SDES keys) or same (what the other leg offered).
    #[arg(long, env = "CALLREC_PBX_MEDIA", default_value = "same")]
    pub(crate) pbx_media: callrec::media::sdes::LegMedia,
    /// What the trunk leg gets: rtp, srtp (SDES keys) or same (what the other leg offered).
    #[arg(long, env = "CALLREC_TRUNK_MEDIA", default_value = "same")]
    pub(crate) trunk_media: callrec::media::sdes::LegMedia,
    /// Relay plain RTP in the kernel, at ingress of these interfaces (those the media arrives on, e.g. eth0 or lo; repeatable). Needs a build with the `kernel-relay` feature, Linux 6.6 or later and CAP_BPF with CAP_NET_ADMIN (or root).
    #[arg(
        long = "kernel-relay",
        env = "CALLREC_KERNEL_RELAY",
        value_delimiter = ','
    )]
    pub(crate) kernel_relay: Vec<String>,
    /// Exchange SDES keys also on legs whose SIP is not carried over TLS (the keys are then readable on the wire).
    #[arg(long, env = "CALLREC_ALLOW_SDES_OVER_UDP")]
    pub(crate) allow_sdes_over_udp: bool,
    /// Address that gets an e-mail for every upload attempt in which a file failed, a low spool disk and a directory that cannot be refreshed (repeatable).
    #[arg(
        long = "notify-email",
        env = "CALLREC_NOTIFY_EMAIL",
        value_delimiter = ','
    )]
    pub(crate) notify_email: Vec<String>,
    /// SMTP server for those mails: smtp://host:port, smtp+starttls://host:port or smtps://host:port (user and password in the config file's [smtp] or env CALLREC_SMTP_PASSWORD).
    #[arg(long, env = "CALLREC_SMTP")]
    pub(crate) smtp: Option<String>,
    /// Seconds running calls may go on after SIGTERM (new calls get 503) before they are hung up and their recordings sealed.
    #[arg(long, env = "CALLREC_SHUTDOWN_GRACE", default_value_t = 30)]
    pub(crate) shutdown_grace: u64,
    /// Address of the admin HTTP API (health, metrics); "off" disables it.
    #[arg(long, env = "CALLREC_ADMIN_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) admin_listen: String,
    /// TOML file with several recording profiles, number plan, directory, targets, SMTP and secrets (see README); its profiles replace the single-profile flags below.
    #[arg(long, env = "CALLREC_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Record incoming calls to this group number, and outgoing calls of its active members.
    #[arg(long, env = "CALLREC_GROUP")]
    pub(crate) group: Option<String>,
    /// Record calls to and from this user (login or number); repeat for several users.
    #[arg(long = "user", env = "CALLREC_USER", value_delimiter = ',')]
    pub(crate) users: Vec<String>,
    /// Also record incoming calls to the personal number of an active member of the group.
    #[arg(long, env = "CALLREC_RECORD_DIRECT_CALLS")]
    pub(crate) record_direct_calls: bool,
    /// Record every call of the profile regardless of the rules.
    #[arg(long, env = "CALLREC_RECORD_ALL")]
    pub(crate) record_all: bool,
    /// Channel layout of recordings: caller, callee, stereo (left = caller, right = callee) or separate (two mono files).
    #[arg(long, env = "CALLREC_CHANNELS", default_value = "stereo")]
    pub(crate) channels: callrec::vocab::ChannelMode,
    /// WAV file played to callers of recorded incoming calls before the call is put through.
    #[arg(long, env = "CALLREC_ANNOUNCE_INCOMING")]
    pub(crate) announce_incoming: Option<PathBuf>,
    /// WAV file played to internal callers of recorded outgoing calls before the call is put through.
    #[arg(long, env = "CALLREC_ANNOUNCE_OUTGOING")]
    pub(crate) announce_outgoing: Option<PathBuf>,
    /// When a call cannot be recorded: continue (unrecorded, reported) or reject (488 codec/encryption, 480 otherwise).
    #[arg(long, env = "CALLREC_ON_RECORD_FAILURE", default_value = "continue")]
    pub(crate) on_record_failure: callrec::policy::OnRecordFailure,
    /// WAV file played to the caller before a call is refused because it cannot be recorded.
    #[arg(long, env = "CALLREC_RECORD_FAILURE_ANNOUNCEMENT")]
    pub(crate) record_failure_announcement: Option<PathBuf>,
    /// Record even when the announcement could not be played (default: such calls go unrecorded).
    #[arg(long, env = "CALLREC_RECORD_WITHOUT_ANNOUNCEMENT")]
    pub(crate) record_without_announcement: bool,
    /// Storage target URL for recordings (repeatable); default file://<data-dir>/recordings.
    #[arg(long = "target", env = "CALLREC_TARGET", value_delimiter = ',')]
    pub(crate) targets: Vec<String>,
    /// Language of the recordings for speech recognition (e.g. de, en).
    #[arg(long, env = "CALLREC_LANGUAGE", default_value = "de")]
    pub(crate) language: String,
    /// Directory of users and groups: a TOML/JSON file, or the PBX's REST API as https://pbx/rest (credentials in the config file or env CALLREC_DIRECTORY_PASSWORD).
    #[arg(long, env = "CALLREC_DIRECTORY")]
    pub(crate) directory: Option<String>,
    #[command(flatten)]
    pub(crate) keystore: KeystoreArgs,
    #[command(flatten)]
    pub(crate) transcribe: TranscribeArgs,
    #[command(flatten)]
    pub(crate) trust: callrec::sip::trust::TrustArgs,
    #[command(flatten)]
    pub(crate) tls: callrec::sip::tls::TlsArgs,
    /// File holding the bearer token for the admin API's /api/ paths (or the value in env CALLREC_ADMIN_TOKEN); default: generated into <data-dir>/admin.token.
    #[arg(long, env = "CALLREC_ADMIN_TOKEN_FILE")]
    pub(crate) admin_token_file: Option<PathBuf>,
    /// Most m= lines in one SDP (offer or answer); more is refused with 488.
    #[arg(long, env = "CALLREC_MAX_MEDIA_STREAMS", default_value_t = Limits::default().max_media_streams as u16, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) max_media_streams: u16,
    /// Most calls in progress at once; further INVITEs get 503 with Retry-After (0: no limit).
    #[arg(long, env = "CALLREC_MAX_CALLS", default_value_t = Limits::default().max_calls)]
    pub(crate) max_calls: usize,
    /// New INVITEs per second from one source address; more get 503 with Retry-After (0: no limit).
    #[arg(long, env = "CALLREC_INVITE_RATE_PER_SOURCE", default_value_t = Limits::default().invite_rate_per_source)]
    pub(crate) invite_rate_per_source: u32,
    /// Exempt trusted peers (trunk, PBX, --trusted-source) from --invite-rate-per-source.
    #[arg(long, env = "CALLREC_RATE_LIMIT_EXEMPT_TRUSTED")]
    pub(crate) rate_limit_exempt_trusted: bool,
    /// Seconds after its INVITE at which a call is hung up on both legs, held or not (at most a year).
    #[arg(long, env = "CALLREC_MAX_CALL_DURATION", default_value_t = Limits::default().max_call_duration.as_secs(), value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub(crate) max_call_duration: u64,
    /// Most SIP TCP connections open at once; strangers get 7/8 of them, the rest is kept for the trunk, the PBX and trusted sources.
    #[arg(long, env = "CALLREC_TCP_MAX_CONNECTIONS", default_value_t = TcpLimits::default().max_connections)]
    pub(crate) tcp_max_connections: usize,
    /// Most SIP TCP connections accepted from one source address.
    #[arg(long, env = "CALLREC_TCP_MAX_PER_SOURCE", default_value_t = TcpLimits::default().max_per_source)]
    pub(crate) tcp_max_per_source: usize,
    /// Seconds a TCP peer has to complete a message it has begun (an untrusted one also to send its first message after connecting).
    #[arg(long, env = "CALLREC_TCP_HEADER_TIMEOUT", default_value_t = TcpLimits::default().header_timeout.as_secs())]
    pub(crate) tcp_header_timeout: u64,
    /// Seconds without a complete message after which a TCP connection is closed (not for the trunk, the PBX and trusted sources).
    #[arg(long, env = "CALLREC_TCP_IDLE_TIMEOUT", default_value_t = TcpLimits::default().idle_timeout.as_secs())]
    pub(crate) tcp_idle_timeout: u64,
    /// How long the decisions and events of calls that were not recorded are kept (e.g. 90d, 1y); checked daily.
    #[arg(long, env = "CALLREC_UNRECORDED_RETENTION", default_value = "90d")]
    pub(crate) unrecorded_retention: String,
    /// RFC 3161 time-stamping authority (URL) that time-stamps each chain head; off without it.
    #[arg(long, env = "CALLREC_TSA_URL")]
    pub(crate) tsa_url: Option<String>,
    /// Without --tsa-url: address that gets each chain head's hash daily and at shutdown (repeatable; needs --smtp).
    #[arg(
        long = "anchor-email",
        env = "CALLREC_ANCHOR_EMAIL",
        value_delimiter = ','
    )]
    pub(crate) anchor_email: Vec<String>,
    /// Seconds between two time stamps of the chain heads (also done at shutdown).
    #[arg(long, env = "CALLREC_ANCHOR_INTERVAL", default_value_t = 3600)]
    pub(crate) anchor_interval: u64,
    /// Seconds without a request after which a web console session ends.
    #[arg(long, env = "CALLREC_CONSOLE_IDLE_TIMEOUT", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) console_idle_timeout: u64,
    /// Mark the console's cookies Secure: set this when the console is reached over HTTPS through a reverse proxy.
    #[arg(long, env = "CALLREC_CONSOLE_SECURE_COOKIES")]
    pub(crate) console_secure_cookies: bool,
    /// Serve the admin listener (API and web console) over HTTPS with --tls-cert and --tls-key; the console's cookies are then Secure.
    #[arg(long, env = "CALLREC_ADMIN_TLS")]
    pub(crate) admin_tls: bool,
    /// Header in which a trusted reverse proxy names the console user it authenticated (e.g. X-Remote-User); believed only from --console-trusted-proxy.
    #[arg(
        long,
        env = "CALLREC_CONSOLE_TRUSTED_HEADER",
        requires = "console_trusted_proxy"
    )]
    pub(crate) console_trusted_header: Option<axum::http::HeaderName>,
    /// Address or network (ADDR or ADDR/PREFIX) of a reverse proxy whose --console-trusted-header is believed (repeatable).
    #[arg(long, env = "CALLREC_CONSOLE_TRUSTED_PROXY", value_delimiter = ',', value_parser = parse_net)]
    pub(crate) console_trusted_proxy: Vec<ipnet::IpNet>,
    /// Most megabytes of sets fetched from remote targets for playing kept at once; the least recently used go first, a larger set is refused.
    #[arg(long, env = "CALLREC_CONSOLE_FETCH_MAX_MB", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) console_fetch_max_mb: u64,
    /// Address (ADDR:PORT) that serves the members' phone recording keys, GET /phone/<token>/recording/{login|logout|toggle}; off unless given.
    #[arg(long, env = "CALLREC_PHONE_LISTEN")]
    pub(crate) phone_listen: Option<SocketAddr>,
    /// Start of the phone links as phones reach them (e.g. http://callrec.example.com:8090); default http://<--phone-listen>.
    #[arg(long, env = "CALLREC_PHONE_BASE_URL")]
    pub(crate) phone_base_url: Option<String>,
    /// Seconds between reads of the group logouts from the protocol database (changes made through other instances sharing it apply within this time).
    #[arg(long, env = "CALLREC_MEMBERSHIP_REFRESH", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) membership_refresh: u64,
    /// Log level: error, warn, info, debug or trace (or a tracing filter such as "callrec=debug").
    #[arg(long, env = "CALLREC_LOG_LEVEL", default_value = "info")]
    pub(crate) log_level: String,
}

/// Transcripts: the single-profile switch, the model and the CPU budget.
#[derive(Args, Debug)]
pub(crate) struct TranscribeArgs {
    /// Transcribe each sealed set of the single profile in the background, in --language (profiles in --config use `transcribe = true`).
    #[arg(long, env = "CALLREC_TRANSCRIBE")]
    pub(crate) transcribe: bool,
    /// CTranslate2 Whisper model folder (model.bin, config.json, tokenizer.json, vocabulary) for transcripts.
    #[arg(long, env = "CALLREC_TRANSCRIBE_MODEL")]
    pub(crate) transcribe_model: Option<PathBuf>,
    /// Threads the speech engine uses per transcript.
    #[arg(long, env = "CALLREC_TRANSCRIBE_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) transcribe_threads: u16,
    /// Nice level of the transcription threads (0 = as the proxy, 19 = lowest).
    #[arg(long, env = "CALLREC_TRANSCRIBE_NICE", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub(crate) transcribe_nice: i32,
    /// At most this many sets are transcribed at a time.
    #[arg(long, env = "CALLREC_TRANSCRIBE_JOBS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) transcribe_jobs: u16,
}

impl TranscribeArgs {
    fn settings(&self) -> callrec::transcribe::TranscribeSettings {
        callrec::transcribe::TranscribeSettings {
            model_dir: self.transcribe_model.clone(),
            threads: usize::from(self.transcribe_threads),
            nice: self.transcribe_nice,
            jobs: usize::from(self.transcribe_jobs),
        }
    }
}

pub(crate) fn resolve(
    what: &str,
    s: &str,
) -> anyhow::Result<(SocketAddr, callrec::config::NextHop)> {
    use std::net::ToSocketAddrs;
    let hop: callrec::config::NextHop = s.parse().map_err(|e| anyhow::anyhow!("{what} {e}"))?;
    let addr = (hop.host.as_str(), hop.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {what} address {s:?}; give HOST:PORT"))?
        .next()
        .with_context(|| format!("{what} address {s:?} resolves to nothing"))?;
    Ok((addr, hop))
}

pub(crate) fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    callrec::sip::trust::parse_net(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_ports(s: &str) -> anyhow::Result<(u16, u16)> {
    let (lo, hi) = s
        .split_once('-')
        .with_context(|| format!("--rtp-ports {s:?}: expected LO-HI, e.g. 20000-29999"))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .context("--rtp-ports: LO is not a port number")?;
    let hi: u16 = hi
        .trim()
        .parse()
        .context("--rtp-ports: HI is not a port number")?;
    if lo >= hi || lo < 1024 {
        bail!("--rtp-ports {s:?}: need 1024 <= LO < HI");
    }
    Ok((lo, hi))
}

impl RunArgs {
    /// The profiles: from --config if it defines any, else one from the flags.
    pub(crate) fn policy(&self) -> anyhow::Result<PolicyConfig> {
        let mut policy = match &self.config {
            Some(path) => PolicyConfig::load(path)
                .with_context(|| format!("cannot use config file {}", path.display()))?,
            None => PolicyConfig::default(),
        };
        if policy.profiles.is_empty() {
            policy.profiles.push(Profile {
                name: "default".into(),
                group: self.group.clone(),
                users: self.users.clone(),
                record_direct_calls: self.record_direct_calls,
                record_all: self.record_all,
                channels: self.channels,
                announce_incoming: self.announce_incoming.clone(),
                announce_outgoing: self.announce_outgoing.clone(),
                targets: self.targets.clone(),
                language: self.language.clone(),
                notify_email: None,
                on_record_failure: self.on_record_failure,
                record_failure_announcement: self.record_failure_announcement.clone(),
                record_without_announcement: self.record_without_announcement,
                provision_phone_keys: false,
                transcribe: self.transcribe.transcribe,
            });
        }
        if let Some(src) = &self.directory {
            let mut d = policy.directory.take().unwrap_or(DirectoryConfig {
                source: String::new(),
                login_id: None,
                password: None,
                refresh_secs: 300,
                accept_invalid_certs: false,
                alert_after_secs: 3600,
            });
            d.source = src.clone();
            policy.directory = Some(d);
        }
        Ok(policy)
    }

    pub(crate) fn into_config(self) -> anyhow::Result<RunConfig> {
        let policy = self.policy()?;
        let media_ip = self.media_ip.unwrap_or_else(|| {
            if self.listen.ip().is_unspecified() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                self.listen.ip()
            }
        });
        let admin_listen =
            match self.admin_listen.as_str() {
                "off" | "" => None,
                a => Some(a.parse().with_context(|| {
                    format!("--admin-listen {a:?}: expected ADDR:PORT or \"off\"")
                })?),
            };
        let ((pbx, pbx_hop), (trunk, trunk_hop)) = (
            resolve("--pbx", &self.pbx)?,
            resolve("--trunk", &self.trunk)?,
        );
        let t = &self.tls;
        if self.admin_tls && (t.tls_cert.is_none() || t.tls_key.is_none()) {
            bail!("--admin-tls needs --tls-cert and --tls-key");
        }
        // Any TLS flag is loaded (and checked) at start, even if nothing uses it yet.
        let tls_wanted = t.listen_tls.is_some()
            || t.tls_cert.is_some()
            || t.tls_client_cert.is_some()
            || t.tls_ca.is_some()
            || [&pbx_hop, &trunk_hop].iter().any(|h| h.proto.is_secure());
        let tls = tls_wanted.then(|| callrec::sip::tls::TlsSettings {
            files: self.tls.clone(),
            names: vec![(pbx, pbx_hop.host.clone()), (trunk, trunk_hop.host.clone())],
        });
        Ok(RunConfig {
            listen: self.listen,
            pbx,
            trunk,
            trust: self.trust.build(trunk, pbx),
            media_ip,
            rtp_ports: parse_ports(&self.rtp_ports)?,
            database: self.database.location(&self.data_dir)?,
            data_dir: self.data_dir,
            instance_name: {
                callrec::instance::check_name(&self.instance_name)?;
                self.instance_name
            },
            rtp_timeout: Duration::from_secs(self.rtp_timeout.max(1)),
            media_learning: self.media_learning,
            srtp: callrec::config::SrtpConfig {
                pbx_media: self.pbx_media,
                trunk_media: self.trunk_media,
                allow_sdes_over_udp: self.allow_sdes_over_udp,
            },
            shutdown_grace: Duration::from_secs(self.shutdown_grace),
            smtp: self.smtp.clone(),
            notify_email: self.notify_email.clone(),
            admin_listen,
            admin_token: admin_token(self.admin_token_file.as_deref())?,
            keystore_password: self.keystore.source(),
            channels: self.channels,
            policy,
            limits: callrec::config::Limits {
                max_media_streams: usize::from(self.max_media_streams),
                max_calls: self.max_calls,
                invite_rate_per_source: self.invite_rate_per_source,
                rate_limit_exempt_trusted: self.rate_limit_exempt_trusted,
                max_call_duration: Duration::from_secs(self.max_call_duration),
            },
            tcp: callrec::sip::transport::TcpLimits {
                max_connections: self.tcp_max_connections.max(1),
                max_per_source: self.tcp_max_per_source.max(1),
                header_timeout: Duration::from_secs(self.tcp_header_timeout.max(1)),
                idle_timeout: Duration::from_secs(self.tcp_idle_timeout.max(1)),
                ..Default::default()
            },
            unrecorded_retention: callrec::archive::parse_age(&self.unrecorded_retention)
                .context("--unrecorded-retention")?,
            anchor_email: self.anchor_email.clone(),
            anchor: self
                .tsa_url
                .map(|tsa_url| callrec::anchoring::AnchorConfig {
                    tsa_url,
                    interval: Duration::from_secs(self.anchor_interval.max(1)),
                }),
            pbx_proto: pbx_hop.proto,
            trunk_proto: trunk_hop.proto,
            tls,
            console: callrec::console::ConsoleSettings {
                idle: Duration::from_secs(self.console_idle_timeout),
                secure_cookies: self.console_secure_cookies || self.admin_tls,
                trusted_header: self.console_trusted_header,
                trusted_proxies: self.console_trusted_proxy,
                fetch_max_bytes: self.console_fetch_max_mb.saturating_mul(1024 * 1024),
            },
            admin_tls: self.admin_tls,
            phone: callrec::phone::PhoneSettings {
                listen: self.phone_listen,
                base_url: self.phone_base_url,
            },
            membership_refresh: Duration::from_secs(self.membership_refresh),
            transcribe: self.transcribe.settings(),
        })
    }
}

/// The admin API's token from `--admin-token-file` or env CALLREC_ADMIN_TOKEN
/// (None: generated into the data dir). An empty token would let anyone in
/// who sends an empty one, so it stops the start instead.
#[cfg(feature = "kernel-relay")]
fn start_kernel_relay(ifaces: &[String]) -> anyhow::Result<()> {
    callrec::media::kernel::start(ifaces)?;
    Ok(())
}

#[cfg(not(feature = "kernel-relay"))]
fn start_kernel_relay(_: &[String]) -> anyhow::Result<()> {
    bail!("--kernel-relay: this callrec was built without the kernel relay; build it with `cargo build --release --features kernel-relay` (needs clang and libbpf's headers)")
}

pub(crate) fn admin_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let (token, origin) = match file {
        Some(f) => (
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read --admin-token-file {}", f.display()))?,
            format!("--admin-token-file {}", f.display()),
        ),
        None => match std::env::var("CALLREC_ADMIN_TOKEN") {
            Ok(t) => (t, "env CALLREC_ADMIN_TOKEN".to_string()),
            Err(_) => return Ok(None),
        },
    };
    let token = token.trim();
    if token.is_empty() {
        bail!("the admin token in {origin} is empty; put a long random token there (e.g. `openssl rand -hex 32`), or give neither to have one generated into <data-dir>/admin.token");
    }
    Ok(Some(token.to_string()))
}

pub(crate) fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

pub(crate) fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(&args.log_level);
    let kernel_relay = args.kernel_relay.clone();
    let cfg = args.into_config()?;
    if !kernel_relay.is_empty() {
        start_kernel_relay(&kernel_relay)?;
    }
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| {
        format!(
            "cannot create data dir {}; check permissions",
            cfg.data_dir.display()
        )
    })?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = rt.block_on(callrec::proxy::run(cfg));
    // Call tasks still absorbing retransmissions are not waited for.
    rt.shutdown_timeout(Duration::from_secs(2));
    result?;
    Ok(())
}
