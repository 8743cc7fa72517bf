//! The back-to-back user agent: the router that turns datagrams and TCP frames
//! into calls, and the `Call` task that owns both legs of one call. Calls share
//! nothing mutable with each other; what they share (transport, port pool,
//! counters) is behind `Core`.

pub mod admission;
pub mod answered;
pub mod call;
pub mod headers;
pub mod peers;
pub mod plan;
pub mod recording;
pub mod register;
pub mod reply;
pub mod router;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::config::RunConfig;
use crate::media::ports::PortPool;
use crate::sip::{Flow, Proto, Transport};

use crate::vocab::Direction;

/// Process-wide counters, exported as Prometheus metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Calls whose dialog is not over yet.
    pub calls_active: AtomicU64,
    /// Call tasks alive (includes calls absorbing retransmissions after the end).
    pub call_tasks: AtomicU64,
    /// Calls started since launch.
    pub calls_total: AtomicU64,
    /// Calls that reached 200 OK.
    pub calls_answered: AtomicU64,
    /// SIP messages received.
    pub sip_received: AtomicU64,
    /// SIP messages that could not be parsed.
    pub sip_malformed: AtomicU64,
    /// RTP packets relayed (all calls, both directions), updated at call end.
    pub rtp_packets: AtomicU64,
    /// Calls ended because no RTP arrived for `--rtp-timeout`.
    pub rtp_timeouts: AtomicU64,
    /// Recordings whose files are being finished and not yet queued for sealing.
    pub recordings_pending: AtomicU64,
    /// Recordings queued for sealing.
    pub recordings_finished: AtomicU64,
    /// New calls refused while shutting down.
    pub calls_refused: AtomicU64,
    /// Calls refused or ended because they could not be recorded (`on_record_failure = reject`).
    pub calls_refused_unrecordable: AtomicU64,
    /// Requests refused because their sender was not trusted (or, inside a call, not that leg's peer).
    pub untrusted_requests: AtomicU64,
    /// Calls started, incoming.
    pub calls_incoming: AtomicU64,
    /// Calls started, outgoing.
    pub calls_outgoing: AtomicU64,
    /// Decisions to record.
    pub decisions_recorded: AtomicU64,
    /// Decisions not to record.
    pub decisions_not_recorded: AtomicU64,
    /// Media packets from a source other than a party's, dropped by the relays
    /// as they arrive (shared with every stream).
    pub rtp_foreign_dropped: Arc<AtomicU64>,
    /// SRTP/SRTCP packets that failed authentication or were replays,
    /// dropped by the relays as they arrive (shared with every stream).
    pub srtp_auth_failed: Arc<AtomicU64>,
    /// RTP packets the recorder's queue refused (slow disk), from finished recordings.
    pub recorder_queue_dropped: AtomicU64,
    /// New INVITEs refused because `--max-calls` calls were in progress.
    pub calls_over_limit: AtomicU64,
    /// New INVITEs refused by `--invite-rate-per-source`.
    pub invites_rate_limited: AtomicU64,
    /// Calls ended by `--max-call-duration`.
    pub calls_max_duration: AtomicU64,
    /// SIP messages dropped because their call's queue was full.
    pub sip_dropped_call_busy: AtomicU64,
    /// Sets sealed (shared with the sealing thread).
    pub sealed: Arc<AtomicU64>,
    /// Recordings left by a crash and finished at start-up (shared with the recovery).
    pub recordings_recovered: Arc<AtomicU64>,
    /// The SIP transport's counters (TCP limits, dropped sends).
    pub transport: Arc<crate::sip::transport::TransportStats>,
}

/// What the admin API shows about a finished call.
#[derive(Debug, Clone, Serialize)]
pub struct CallSummary {
    /// Call-ID on the caller's leg.
    pub caller_call_id: String,
    /// Call-ID on the callee's leg.
    pub callee_call_id: String,
    /// Direction.
    pub direction: Direction,
    /// Final status of the INVITE (0 if none).
    pub status: u16,
    /// Why the call ended.
    pub end_reason: String,
    /// Whether media was anchored.
    pub anchored: bool,
    /// RTP packets the caller sent that were relayed to the callee.
    pub rtp_from_caller: u64,
    /// RTP packets the callee sent that were relayed to the caller.
    pub rtp_from_callee: u64,
    /// RTCP packets relayed, both directions.
    pub rtcp_packets: u64,
    /// Packets from strangers dropped at the ports facing the caller.
    pub foreign_packets_caller_side: u64,
    /// Packets from strangers dropped at the ports facing the callee.
    pub foreign_packets_callee_side: u64,
}

/// A call in progress, as `GET /api/calls/active` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LiveCall {
    /// Call-ID on the caller's leg.
    pub caller_call_id: String,
    /// Call-ID on the callee's leg.
    pub callee_call_id: String,
    /// Direction.
    pub direction: Direction,
    /// Caller's number.
    pub caller: String,
    /// Dialled number.
    pub dialled: String,
    /// Whether the call is being recorded.
    pub recorded: bool,
    /// `ringing` or `answered`.
    pub state: &'static str,
    /// Start (ms since the epoch).
    pub started_ms: i64,
}

/// Shared services of all calls.
pub struct Core {
    /// Configuration.
    pub cfg: RunConfig,
    /// SIP transport.
    pub transport: Arc<Transport>,
    /// RTP ports.
    pub ports: Arc<PortPool>,
    /// Counters.
    pub stats: Stats,
    /// The last finished calls, newest last.
    pub recent: Mutex<VecDeque<CallSummary>>,
    /// Calls in progress, by call serial (each call updates only its own entry).
    pub live: Mutex<std::collections::HashMap<u64, LiveCall>>,
    /// Host part we put into Via and Contact.
    pub advertised: SocketAddr,
    /// How calls are recorded (None: proxy only).
    pub recording: Option<recording::RecordingSettings>,
    /// The recording policy (None: record every call).
    pub planner: Option<plan::Planner>,
    /// Set when the proxy is shutting down: new calls get 503.
    pub draining: std::sync::atomic::AtomicBool,
    /// Flips to true when running calls must be hung up (grace period over).
    pub hang_up_all: tokio::sync::watch::Sender<bool>,
    /// The protocol database: a finished call's end is written to it (see
    /// [`Core::remember`]); the admin API and console read it too.
    pub db: Option<crate::db::Db>,
    /// Where recording failures are reported (log, metrics, …).
    pub failures: crate::recorder::failure::FailureReporter,
}

/// How many finished calls `recent` keeps.
pub const RECENT_CALLS: usize = 1000;

impl Core {
    /// How a new call's media learns its peers' sources.
    pub fn learning(&self) -> crate::media::relay::Learning {
        crate::media::relay::Learning {
            mode: self.cfg.media_learning,
            window: crate::media::latch::LEARNING_WINDOW,
            foreign_total: self.stats.rtp_foreign_dropped.clone(),
            auth_failed_total: self.stats.srtp_auth_failed.clone(),
        }
    }

    /// Remembers a finished call for the admin API.
    pub fn remember(&self, s: CallSummary) {
        self.stats
            .rtp_packets
            .fetch_add(s.rtp_from_caller + s.rtp_from_callee, Ordering::Relaxed);
        // The end and final status: reconciliation tells answered calls
        // (which must have a set when recorded) from unanswered ones.
        if let Some(db) = &self.db {
            db.send(crate::db::Record::Call {
                call_id: s.caller_call_id.clone(),
                at_ms: crate::db::now_ms(),
                event: "end".into(),
                direction: Some(format!("{:?}", s.direction).to_lowercase()),
                caller: None,
                callee: None,
                detail: Some(format!("{} {}", s.status, s.end_reason)),
            });
        }
        let mut r = self.recent.lock().expect("recent calls poisoned");
        if r.len() == RECENT_CALLS {
            r.pop_front();
        }
        r.push_back(s);
    }

    /// Via value for a request we send on `proto`.
    pub fn via(&self, proto: Proto, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            proto.via_token(),
            host_port(self.advertised_for(proto))
        )
    }

    /// Contact value for a leg on `proto`.
    pub fn contact(&self, proto: Proto) -> String {
        let at = host_port(self.advertised_for(proto));
        match proto {
            Proto::Udp => format!("<sip:callrec@{at}>"),
            Proto::Tcp => format!("<sip:callrec@{at};transport=tcp>"),
            Proto::Tls => format!("<sip:callrec@{at};transport=tls>"),
        }
    }

    /// Our address as peers on `proto` should use it: the TLS listener's
    /// port for TLS (when there is one), the SIP port otherwise.
    pub fn advertised_for(&self, proto: Proto) -> SocketAddr {
        match (proto, self.transport.tls_local_addr()) {
            (Proto::Tls, Some(a)) => SocketAddr::new(self.advertised.ip(), a.port()),
            _ => self.advertised,
        }
    }

    /// Where the next hop of a call in `dir` is, on the transport that
    /// `--pbx`/`--trunk` name.
    pub fn next_hop(&self, dir: Direction) -> Flow {
        match dir {
            Direction::Incoming => Flow {
                addr: self.cfg.pbx,
                proto: self.cfg.pbx_proto,
            },
            Direction::Outgoing => Flow {
                addr: self.cfg.trunk,
                proto: self.cfg.trunk_proto,
            },
        }
    }
}

/// `host:port` with brackets for IPv6.
pub fn host_port(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.to_string(),
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    }
}
