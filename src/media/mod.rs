//! Media anchoring: the RTP port pool, one relay per stream, SDP rewriting, and
//! the per-call `Session` that ties them to a call's offer/answer exchanges.

pub mod announce;
pub mod latch;
pub mod ports;
pub mod relay;
pub mod sdp;
pub mod threads;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use latch::PayloadTypes;
use ports::PortPool;
use relay::{Learning, Stream, Tap};
use sdp::Sdp;

/// A party of a call. The caller is the side that sent the initial INVITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Sent the initial INVITE (leg A).
    Caller,
    /// Received the initial INVITE from us (leg B).
    Callee,
}

impl Side {
    /// 0 for the caller, 1 for the callee.
    pub fn index(self) -> usize {
        match self {
            Side::Caller => 0,
            Side::Callee => 1,
        }
    }

    /// Inverse of `index`.
    pub fn from_index(i: usize) -> Side {
        if i == 0 {
            Side::Caller
        } else {
            Side::Callee
        }
    }

    /// The other party.
    pub fn other(self) -> Side {
        match self {
            Side::Caller => Side::Callee,
            Side::Callee => Side::Caller,
        }
    }

    /// Lower-case name for logs and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Side::Caller => "caller",
            Side::Callee => "callee",
        }
    }
}

/// Why media could not be anchored.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The SDP body was rejected.
    #[error("bad SDP: {0}")]
    Sdp(#[from] sdp::SdpError),
    /// No port pair could be bound, or the media threads could not start.
    #[error("{0}")]
    Ports(#[from] std::io::Error),
}

/// The anchored media of one call: a relay per `m=` line.
pub struct Session {
    pool: Arc<PortPool>,
    ip: IpAddr,
    tap: Option<Arc<dyn Tap>>,
    learning: Learning,
    streams: Vec<Stream>,
    last: [Option<Sdp>; 2],
    last_text: [Option<String>; 2],
}

impl Session {
    /// An empty session; streams are created by the first SDP and learn their
    /// peers' sources as `learning` says.
    pub fn new(
        pool: Arc<PortPool>,
        ip: IpAddr,
        tap: Option<Arc<dyn Tap>>,
        learning: Learning,
    ) -> Session {
        Session {
            pool,
            ip,
            tap,
            learning,
            streams: Vec::new(),
            last: [None, None],
            last_text: [None, None],
        }
    }

    /// Takes an SDP that `from` sent: points the relays at its addresses and
    /// returns the body to send to the other side.
    pub fn on_sdp(&mut self, from: Side, body: &[u8]) -> Result<Vec<u8>, MediaError> {
        let sdp = Sdp::parse(body)?;
        while self.streams.len() < sdp.media.len() {
            let a = self.pool.allocate()?;
            let b = self.pool.allocate()?;
            self.streams.push(Stream::start(
                a,
                b,
                self.tap.clone(),
                self.learning.clone(),
            )?);
        }
        let mut ports = Vec::with_capacity(sdp.media.len());
        for (m, s) in sdp.media.iter().zip(&self.streams) {
            s.set_peer(from, m.rtp, m.rtcp, PayloadTypes::from_formats(&m.formats));
            ports.push(s.port_facing(from.other()));
        }
        let out = sdp::rewrite(body, self.ip, &ports);
        self.last[from.index()] = Some(sdp);
        self.last_text[from.index()] = Some(String::from_utf8_lossy(body).into_owned());
        Ok(out)
    }

    /// Forks every stream's RTP into `tap` from now on (None stops it).
    pub fn set_tap(&mut self, tap: Option<Arc<dyn Tap>>) {
        for s in &self.streams {
            s.set_tap(tap.clone());
        }
        self.tap = tap;
    }

    /// Plays packets to the caller on the first stream; resolves when done
    /// (at once when there is no stream).
    pub fn play_to_caller(&self, packets: Vec<bytes::Bytes>) -> tokio::sync::oneshot::Receiver<()> {
        match self.streams.first() {
            Some(s) => s.play(packets),
            None => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let _ = tx.send(());
                rx
            }
        }
    }

    /// The last SDP body text each side sent, for payload maps.
    pub fn last_sdp_text(&self, side: Side) -> Option<&str> {
        self.last_text[side.index()].as_deref()
    }

    /// The last SDP each side sent.
    pub fn last_sdp(&self, side: Side) -> Option<&Sdp> {
        self.last[side.index()].as_ref()
    }

    /// True when the latest SDP of either side puts every stream on hold both ways.
    pub fn on_hold(&self) -> bool {
        self.last.iter().flatten().any(|s| s.all_inactive())
    }

    /// RTP packets relayed that `side` sent.
    pub fn rtp_packets(&self, side: Side) -> u64 {
        self.streams
            .iter()
            .map(|s| s.stats.rtp_packets[side.index()].load(Ordering::Relaxed))
            .sum()
    }

    /// RTCP packets relayed that `side` sent.
    pub fn rtcp_packets(&self, side: Side) -> u64 {
        self.streams
            .iter()
            .map(|s| s.stats.rtcp_packets[side.index()].load(Ordering::Relaxed))
            .sum()
    }

    /// Milliseconds (relay::now_ms clock) of the newest packet on any stream.
    pub fn last_rx_ms(&self) -> u64 {
        self.streams
            .iter()
            .map(|s| s.stats.last_rx_ms.load(Ordering::Relaxed))
            .max()
            .unwrap_or_else(relay::now_ms)
    }

    /// Local port facing the caller of stream `i`.
    pub fn caller_port(&self, i: usize) -> Option<u16> {
        self.streams.get(i).map(|s| s.port_facing(Side::Caller))
    }

    /// Packets from sources other than `side`'s, dropped at the ports facing `side`.
    pub fn foreign_dropped(&self, side: Side) -> u64 {
        self.streams
            .iter()
            .map(|s| s.stats.foreign_dropped[side.index()].load(Ordering::Relaxed))
            .sum()
    }

    /// Number of anchored streams.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }
}
