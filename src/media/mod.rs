//! Media anchoring: the RTP port pool, one relay per stream, SDP rewriting,
//! SRTP termination, and the per-call `Session` that ties them to a call's
//! offer/answer exchanges.

pub mod announce;
#[cfg(feature = "kernel-relay")]
pub mod kernel;
pub mod latch;
pub mod ports;
pub mod recordable;
pub mod relay;
pub mod sdes;
pub mod sdp;
pub mod srtp;
pub mod tap;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use latch::PayloadTypes;
use ports::PortPool;
use relay::{Learning, Stream, Tap};
use sdp::Sdp;

use crate::vocab::Side;

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

/// Packet counts of streams that were taken down during the call.
#[derive(Debug, Default)]
struct Retired {
    rtp: [u64; 2],
    rtcp: [u64; 2],
    foreign: [u64; 2],
    auth_failed: [u64; 2],
}

impl Retired {
    /// Keeps the counts of a stream that is being dropped (its ports are freed).
    fn add(&mut self, stream: Option<Stream>) {
        let Some(s) = stream else { return };
        s.finish_kernel_relay();
        for i in 0..2 {
            self.rtp[i] += s.stats.rtp_packets[i].load(Ordering::Relaxed);
            self.rtcp[i] += s.stats.rtcp_packets[i].load(Ordering::Relaxed);
            self.foreign[i] += s.stats.foreign_dropped[i].load(Ordering::Relaxed);
            self.auth_failed[i] += s.stats.auth_failed[i].load(Ordering::Relaxed);
        }
    }
}

/// The anchored media of one call: a relay per `m=` line that has a port.
pub struct Session {
    pool: Arc<PortPool>,
    ip: IpAddr,
    tap: Option<Arc<dyn Tap>>,
    learning: Learning,
    /// By `m=` line; None where the latest SDP disabled the line (port 0), so
    /// that no port stays bound for it.
    streams: Vec<Option<Stream>>,
    /// Whether any stream was ever set up (the call's media was anchored).
    anchored: bool,
    /// Counters of streams already taken down, so the call's totals keep them.
    retired: Retired,
    last: [Option<Sdp>; 2],
    last_text: [Option<String>; 2],
    /// SDES keys and who gets SRTP.
    sdes: sdes::Negotiation,
    /// Why the latest SDP's encryption passed through untouched (callrec
    /// cannot terminate it), if it did.
    opaque: Option<String>,
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
            anchored: false,
            retired: Retired::default(),
            last: [None, None],
            last_text: [None, None],
            sdes: sdes::Negotiation::default(),
            opaque: None,
        }
    }

    /// Sets which legs get SRTP and may exchange SDES keys.
    pub fn set_srtp_policy(&mut self, policy: sdes::SrtpPolicy) {
        self.sdes.policy = policy;
    }

    /// The next SDP is an offer (a re-INVITE's), whoever sends it.
    pub fn expect_offer(&mut self) {
        self.sdes.expect_offer();
    }

    /// Takes an SDP that `from` sent: points the relays at its addresses and
    /// returns the body to send to the other side. A line with port 0 (a
    /// stream disabled or rejected) gets no ports and frees the ones it had;
    /// so do lines beyond the last one. On an error nothing has changed.
    pub fn on_sdp(&mut self, from: Side, body: &[u8]) -> Result<Vec<u8>, MediaError> {
        let sdp = Sdp::parse(body)?;
        // Bind what is missing first, so that running out of ports leaves the
        // streams as they were.
        let mut fresh = Vec::new();
        for (i, m) in sdp.media.iter().enumerate() {
            if m.port != 0 && self.streams.get(i).is_none_or(Option::is_none) {
                let a = self.pool.allocate()?;
                let b = self.pool.allocate()?;
                fresh.push((
                    i,
                    Stream::start(a, b, self.tap.clone(), self.learning.clone())?,
                ));
            }
        }
        for old in self
            .streams
            .drain(sdp.media.len().min(self.streams.len())..)
        {
            self.retired.add(old);
        }
        self.streams.resize_with(sdp.media.len(), || None);
        for (i, s) in fresh {
            self.streams[i] = Some(s);
            self.anchored = true;
        }
        // Encryption callrec cannot terminate passes untouched (the call's
        // failure policy decides about it); SDES it can is terminated here.
        self.opaque = sdes::cannot_terminate(body, self.sdes.policy.sdes_allowed[from.index()]);
        let crypto = match self.opaque {
            None => Some(self.sdes.on_sdp(from, body)),
            Some(_) => None,
        };
        if let Some(c) = &crypto {
            for (keys, slot) in c.keys.iter().zip(self.streams.iter()) {
                for (side, k) in keys {
                    if let Some(s) = slot {
                        s.set_keys(*side, k.clone());
                    }
                }
            }
        }
        let mut ports = Vec::with_capacity(sdp.media.len());
        for (m, slot) in sdp.media.iter().zip(self.streams.iter_mut()) {
            match slot {
                Some(s) if m.port != 0 => {
                    s.set_peer(from, m.rtp, m.rtcp, PayloadTypes::from_formats(&m.formats));
                    ports.push(s.port_facing(from.other()));
                }
                _ => {
                    self.retired.add(slot.take());
                    ports.push(0);
                }
            }
        }
        let mut out = sdp::rewrite(body, self.ip, &ports);
        if let Some(c) = crypto {
            out = sdes::apply(&out, &c.lines);
        }
        self.last[from.index()] = Some(sdp);
        // Kept for payload maps only; its keys are not needed and not kept.
        let text = String::from_utf8_lossy(body);
        self.last_text[from.index()] = Some(srtp::redact(&text).into_owned());
        Ok(out)
    }

    /// Streams that are set up, by `m=` line order.
    fn live(&self) -> impl Iterator<Item = &Stream> {
        self.streams.iter().flatten()
    }

    /// Forks every stream's RTP into `tap` from now on (None stops it).
    pub fn set_tap(&mut self, tap: Option<Arc<dyn Tap>>) {
        for s in self.live() {
            s.set_tap(tap.clone());
        }
        self.tap = tap;
    }

    /// Plays packets to the caller on the first stream; resolves when done
    /// (at once when there is no stream).
    pub fn play_to_caller(&self, packets: Vec<bytes::Bytes>) -> tokio::sync::oneshot::Receiver<()> {
        match self.streams.first().and_then(Option::as_ref) {
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

    /// Takes every stream's flows back from the kernel (`--kernel-relay`):
    /// the counters are final and the recorder has every copy once this
    /// returns. For the end of a call, before its counters are read.
    pub fn finish_kernel_relay(&self) {
        for s in self.live() {
            s.finish_kernel_relay();
        }
    }

    /// RTP packets relayed that `side` sent.
    pub fn rtp_packets(&self, side: Side) -> u64 {
        self.live()
            .map(|s| s.stats.rtp_packets[side.index()].load(Ordering::Relaxed))
            .sum::<u64>()
            + self.retired.rtp[side.index()]
    }

    /// RTCP packets relayed that `side` sent.
    pub fn rtcp_packets(&self, side: Side) -> u64 {
        self.live()
            .map(|s| s.stats.rtcp_packets[side.index()].load(Ordering::Relaxed))
            .sum::<u64>()
            + self.retired.rtcp[side.index()]
    }

    /// Time since the newest packet on any stream (zero without a live stream).
    pub fn silent_for(&self) -> std::time::Duration {
        let now = relay::monotonic_ms();
        let newest = self
            .live()
            .map(|s| s.stats.last_rx_ms.load(Ordering::Relaxed))
            .max()
            .unwrap_or(now);
        std::time::Duration::from_millis(now.saturating_sub(newest))
    }

    /// Local port facing the caller of stream `i`.
    pub fn caller_port(&self, i: usize) -> Option<u16> {
        self.streams
            .get(i)
            .and_then(Option::as_ref)
            .map(|s| s.port_facing(Side::Caller))
    }

    /// Packets from sources other than `side`'s, dropped at the ports facing `side`.
    pub fn foreign_dropped(&self, side: Side) -> u64 {
        self.live()
            .map(|s| s.stats.foreign_dropped[side.index()].load(Ordering::Relaxed))
            .sum::<u64>()
            + self.retired.foreign[side.index()]
    }

    /// An answer callrec wrote itself to the latest offer (an announcement's),
    /// with the SRTP profile and key the offerer's leg uses.
    pub fn secure_answer(&self, body: Vec<u8>) -> Vec<u8> {
        if self.opaque.is_some() {
            return body;
        }
        sdes::apply(&body, &self.sdes.answer_lines())
    }

    /// SRTP packets from `side` dropped because they failed authentication.
    pub fn auth_failed(&self, side: Side) -> u64 {
        self.live()
            .map(|s| s.stats.auth_failed[side.index()].load(Ordering::Relaxed))
            .sum::<u64>()
            + self.retired.auth_failed[side.index()]
    }

    /// The SRTP suite used with each side (None: plain RTP), for the metadata.
    pub fn suites(&self) -> [Option<&'static str>; 2] {
        self.sdes.suites()
    }

    /// Why the latest SDP carried encryption callrec passed through untouched.
    pub fn opaque_media(&self) -> Option<&str> {
        self.opaque.as_deref()
    }

    /// Number of streams set up now.
    pub fn stream_count(&self) -> usize {
        self.live().count()
    }

    /// Whether any stream was set up during the call.
    pub fn anchored(&self) -> bool {
        self.anchored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdp(ports: &[u16]) -> Vec<u8> {
        let mut b = String::from(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.9\r\ns=-\r\nc=IN IP4 127.0.0.9\r\nt=0 0\r\n",
        );
        for p in ports {
            b.push_str(&format!("m=audio {p} RTP/AVP 0\r\n"));
        }
        b.into_bytes()
    }

    /// A dropped stream's task frees its ports on its media thread, a moment later.
    async fn in_use(pool: &PortPool, want: usize) -> usize {
        for _ in 0..100 {
            if pool.in_use() == want {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        pool.in_use()
    }

    fn ports_of(body: &[u8]) -> Vec<u16> {
        Sdp::parse(body)
            .unwrap()
            .media
            .iter()
            .map(|m| m.port)
            .collect()
    }

    #[tokio::test]
    async fn only_streams_with_a_port_hold_ports() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 33000, 33039);
        let mut s = Session::new(
            pool.clone(),
            "127.0.0.1".parse().unwrap(),
            None,
            Learning::default(),
        );
        let out = s.on_sdp(Side::Caller, &sdp(&[4000, 0, 4002])).unwrap();
        assert_eq!(in_use(&pool, 4).await, 4, "two streams, two pairs each");
        let p = ports_of(&out);
        assert!(p[0] != 0 && p[1] == 0 && p[2] != 0, "{p:?}");
        // The callee rejects the third stream: its ports are freed at once.
        let out = s.on_sdp(Side::Callee, &sdp(&[5000, 0, 0])).unwrap();
        assert_eq!(in_use(&pool, 2).await, 2);
        assert_eq!(ports_of(&out)[1..], [0, 0]);
        // A re-offer enables the second, then one drops every line but the first.
        s.on_sdp(Side::Caller, &sdp(&[4000, 4004, 0])).unwrap();
        assert_eq!(in_use(&pool, 4).await, 4);
        s.on_sdp(Side::Caller, &sdp(&[4000])).unwrap();
        assert_eq!(in_use(&pool, 2).await, 2);
        assert_eq!(s.stream_count(), 1);
        assert!(s.anchored());
        drop(s);
        assert_eq!(in_use(&pool, 0).await, 0);
    }

    #[tokio::test]
    async fn running_out_of_ports_changes_nothing() {
        // Three pairs: one stream fits, a second does not.
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 32450, 32455);
        let mut s = Session::new(
            pool.clone(),
            "127.0.0.1".parse().unwrap(),
            None,
            Learning::default(),
        );
        s.on_sdp(Side::Caller, &sdp(&[4000])).unwrap();
        assert_eq!(in_use(&pool, 2).await, 2);
        assert!(s.on_sdp(Side::Caller, &sdp(&[4000, 4002, 4004])).is_err());
        assert_eq!(in_use(&pool, 2).await, 2, "the failed offer kept nothing");
        assert_eq!(s.stream_count(), 1);
    }
}
