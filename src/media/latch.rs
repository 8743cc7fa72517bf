//! Media source learning: from which address one relay socket accepts packets.
//! A packet from the address the peer's SDP signalled is accepted at once and
//! fixes the source. Only in heuristic mode, and only when nothing came from
//! that address for a learning window after the offer/answer (a peer behind
//! NAT whose packets leave from another address), may one other source be
//! learned, and only after it sent a few valid RTP packets with a payload type
//! the stream negotiated. Once fixed, no other source is ever accepted, however
//! long the peer is silent; only a new SDP naming a new address moves it.
//! Everything here is plain state without sockets or clocks of its own.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// How long after the offer/answer only the signalled address is accepted.
pub const LEARNING_WINDOW: Duration = Duration::from_secs(3);

/// In-sequence RTP packets a source the SDP did not name must send before it
/// is learned (random garbage or a single spoofed packet does not qualify).
pub const PROBATION_PACKETS: u32 = 3;

/// Whether a source other than the signalled one may ever be learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LearningMode {
    /// Only the signalled address:port is accepted.
    Strict,
    /// The signalled address, or (NAT) one other source after the window.
    #[default]
    Heuristic,
}

impl FromStr for LearningMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "strict" => Ok(LearningMode::Strict),
            "heuristic" => Ok(LearningMode::Heuristic),
            _ => Err(format!("{s:?}: expected strict or heuristic")),
        }
    }
}

impl fmt::Display for LearningMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LearningMode::Strict => "strict",
            LearningMode::Heuristic => "heuristic",
        })
    }
}

/// A set of RTP payload types (0..=127).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PayloadTypes(u128);

impl PayloadTypes {
    /// The numeric formats of an `m=` line; anything else is ignored.
    pub fn from_formats(formats: &[String]) -> PayloadTypes {
        let mut set = 0u128;
        for pt in formats.iter().filter_map(|f| f.parse::<u8>().ok()) {
            if pt < 128 {
                set |= 1 << pt;
            }
        }
        PayloadTypes(set)
    }

    /// Both sets together.
    pub fn union(self, other: PayloadTypes) -> PayloadTypes {
        PayloadTypes(self.0 | other.0)
    }

    /// Whether `pt` is in the set.
    pub fn contains(self, pt: u8) -> bool {
        pt < 128 && self.0 & (1 << pt) != 0
    }
}

/// Largest RTP packet considered sane for learning (an audio or video frame
/// over UDP on an Ethernet path).
const MAX_RTP: usize = 1500;

/// The payload type and sequence number of a well-formed RTP packet (version
/// 2, header with its CSRCs, extension and padding inside the packet), or
/// None.
pub fn rtp_header(pkt: &[u8]) -> Option<(u8, u16)> {
    if pkt.len() < 12 || pkt.len() > MAX_RTP || pkt[0] >> 6 != 2 {
        return None;
    }
    let pt = pkt[1] & 0x7f;
    // 72..=79 with the marker bit are RTCP packet types (RFC 5761).
    if (72..=79).contains(&pt) {
        return None;
    }
    let mut header = 12 + 4 * usize::from(pkt[0] & 0x0f);
    if pkt[0] & 0x10 != 0 {
        let ext = pkt.get(header + 2..header + 4)?;
        header += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    let padding = if pkt[0] & 0x20 != 0 {
        usize::from(*pkt.last()?)
    } else {
        0
    };
    if header + padding > pkt.len() {
        return None;
    }
    Some((pt, u16::from_be_bytes([pkt[2], pkt[3]])))
}

/// Whether a packet is a well-formed RTCP compound packet's first part.
fn rtcp_ok(pkt: &[u8]) -> bool {
    pkt.len() >= 8
        && pkt.len().is_multiple_of(4)
        && pkt[0] >> 6 == 2
        && (200..=207).contains(&pkt[1])
}

/// What a socket carries, for judging a source that was not signalled.
#[derive(Debug, Clone, Copy)]
pub enum Carries {
    /// RTP (and muxed RTCP) with these negotiated payload types.
    Rtp(PayloadTypes),
    /// RTCP of the peer whose RTP comes from this address (None: RTP has no
    /// source yet, so RTCP cannot learn one either).
    Rtcp(Option<IpAddr>),
}

/// A source being tried out before it is learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probation {
    source: SocketAddr,
    next_seq: u16,
    packets: u32,
}

/// The learning state of one socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Latch {
    /// Waiting for the first packet from the signalled address (None: no
    /// address signalled yet, nothing is accepted).
    Expecting {
        /// Where the SDP said the peer's media comes from.
        signalled: Option<SocketAddr>,
        /// End of the learning window; None until the offer/answer is complete.
        window_until: Option<Instant>,
        /// A source on probation after the window.
        probation: Option<Probation>,
    },
    /// Every packet from `source` is accepted, from nowhere else.
    Fixed {
        /// The accepted source.
        source: SocketAddr,
        /// The address the SDP named (equal to `source` unless learned).
        signalled: Option<SocketAddr>,
    },
}

impl Default for Latch {
    fn default() -> Latch {
        Latch::Expecting {
            signalled: None,
            window_until: None,
            probation: None,
        }
    }
}

impl Latch {
    /// A new SDP of the peer names `addr` (None: no usable address, e.g. port
    /// 0 or c=0.0.0.0 for hold, which leaves everything as it is). The same
    /// address keeps the state; a new one accepts only the new address, with
    /// a fresh learning window started by `start_window`.
    pub fn signal(&mut self, addr: Option<SocketAddr>) {
        let Some(addr) = addr else { return };
        let current = match self {
            Latch::Expecting { signalled, .. } | Latch::Fixed { signalled, .. } => *signalled,
        };
        if current != Some(addr) {
            *self = Latch::Expecting {
                signalled: Some(addr),
                window_until: None,
                probation: None,
            };
        }
    }

    /// Whether the peer has signalled an address.
    pub fn is_signalled(&self) -> bool {
        match self {
            Latch::Expecting { signalled, .. } => signalled.is_some(),
            Latch::Fixed { .. } => true,
        }
    }

    /// Starts the learning window (once per signalled address), when both
    /// sides' SDP are known and media is due.
    pub fn start_window(&mut self, until: Instant) {
        if let Latch::Expecting {
            signalled: Some(_),
            window_until: w @ None,
            ..
        } = self
        {
            *w = Some(until);
        }
    }

    /// The source fixed so far.
    pub fn source(&self) -> Option<SocketAddr> {
        match self {
            Latch::Fixed { source, .. } => Some(*source),
            Latch::Expecting { .. } => None,
        }
    }

    /// Whether the fixed source is one learned, not the signalled address.
    pub fn learned(&self) -> bool {
        matches!(self, Latch::Fixed { source, signalled } if *signalled != Some(*source))
    }

    /// Where packets for this peer go: its fixed source, else what it signalled.
    pub fn target(&self) -> Option<SocketAddr> {
        match self {
            Latch::Fixed { source, .. } => Some(*source),
            Latch::Expecting { signalled, .. } => *signalled,
        }
    }

    /// Whether a packet from `src` is accepted (fixing the source if it is the
    /// first accepted one). On SRTP legs the packet must have authenticated
    /// before it is offered here: only packets that authenticate may fix or
    /// use a source.
    pub fn accept(
        &mut self,
        src: SocketAddr,
        pkt: &[u8],
        now: Instant,
        mode: LearningMode,
        carries: Carries,
    ) -> bool {
        let (signalled, window_until, probation) = match self {
            Latch::Fixed { source, .. } => return *source == src,
            Latch::Expecting {
                signalled,
                window_until,
                probation,
            } => (*signalled, *window_until, probation),
        };
        if signalled == Some(src) {
            *self = Latch::Fixed {
                source: src,
                signalled,
            };
            return true;
        }
        if mode == LearningMode::Strict || signalled.is_none() {
            return false;
        }
        if window_until.is_none_or(|until| now < until) {
            return false;
        }
        let seq = match carries {
            Carries::Rtp(pts) => match rtp_header(pkt) {
                Some((pt, seq)) if pts.contains(pt) => Some(seq),
                _ => return false,
            },
            Carries::Rtcp(rtp_ip) => {
                if rtp_ip != Some(src.ip()) || !rtcp_ok(pkt) {
                    return false;
                }
                None
            }
        };
        let next = match (*probation, seq) {
            (Some(p), Some(seq)) if p.source == src && p.next_seq == seq => Probation {
                source: src,
                next_seq: seq.wrapping_add(1),
                packets: p.packets + 1,
            },
            _ => Probation {
                source: src,
                next_seq: seq.unwrap_or(0).wrapping_add(1),
                packets: 1,
            },
        };
        // RTCP comes every few seconds and is already tied to the RTP source.
        let needed = if seq.is_some() { PROBATION_PACKETS } else { 1 };
        if next.packets >= needed {
            *self = Latch::Fixed {
                source: src,
                signalled,
            };
            return true;
        }
        *probation = Some(next);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn rtp(pt: u8, seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, pt];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 160, 1, 2, 3, 4]);
        p.extend_from_slice(&[0xd5; 160]);
        p
    }

    fn pcma() -> Carries {
        Carries::Rtp(PayloadTypes::from_formats(&["8".into(), "101".into()]))
    }

    /// A latch whose peer signalled `sig`, window started at `t0`.
    fn signalled(sig: &str, t0: Instant) -> Latch {
        let mut l = Latch::default();
        l.signal(Some(addr(sig)));
        l.start_window(t0 + LEARNING_WINDOW);
        l
    }

    const H: LearningMode = LearningMode::Heuristic;

    #[test]
    fn the_signalled_address_is_accepted_at_once_and_fixes_the_source() {
        let t0 = Instant::now();
        let mut l = signalled("10.0.0.5:4000", t0);
        assert!(l.accept(addr("10.0.0.5:4000"), &rtp(8, 1), t0, H, pcma()));
        assert_eq!(l.source(), Some(addr("10.0.0.5:4000")));
        // Nobody else, ever: not after any silence, not with valid RTP.
        let later = t0 + Duration::from_secs(3600);
        for seq in 0..10 {
            assert!(!l.accept(addr("10.0.0.9:4000"), &rtp(8, seq), later, H, pcma()));
        }
        assert!(l.accept(addr("10.0.0.5:4000"), &rtp(8, 2), later, H, pcma()));
    }

    #[test]
    fn nothing_is_accepted_before_an_address_is_signalled() {
        let t0 = Instant::now();
        let mut l = Latch::default();
        l.start_window(t0);
        let late = t0 + Duration::from_secs(60);
        for seq in 0..10 {
            assert!(!l.accept(addr("10.0.0.9:4000"), &rtp(8, seq), late, H, pcma()));
        }
        assert_eq!(l.target(), None);
    }

    #[test]
    fn another_source_waits_for_the_window_then_needs_valid_rtp_in_sequence() {
        let t0 = Instant::now();
        let mut l = signalled("192.168.1.5:4000", t0);
        let nat = addr("203.0.113.7:61000");
        // Inside the window: refused, however valid.
        for seq in 0..10 {
            let at = t0 + Duration::from_millis(20 * u64::from(seq));
            assert!(!l.accept(nat, &rtp(8, seq), at, H, pcma()));
        }
        let after = t0 + LEARNING_WINDOW;
        // A payload type the SDP did not name, and garbage: refused.
        assert!(!l.accept(nat, &rtp(0, 100), after, H, pcma()));
        assert!(!l.accept(nat, &[0x80, 8, 0, 1], after, H, pcma()));
        assert!(!l.accept(nat, &[0x40; 172], after, H, pcma()));
        // Three in sequence: learned on the third.
        assert!(!l.accept(nat, &rtp(8, 200), after, H, pcma()));
        assert!(!l.accept(nat, &rtp(8, 201), after, H, pcma()));
        assert!(l.accept(nat, &rtp(8, 202), after, H, pcma()));
        assert_eq!(l.target(), Some(nat));
        // Then the learned source only, even the signalled one is too late.
        assert!(!l.accept(addr("192.168.1.5:4000"), &rtp(8, 1), after, H, pcma()));
    }

    #[test]
    fn a_second_source_restarts_the_probation() {
        let t0 = Instant::now();
        let mut l = signalled("192.168.1.5:4000", t0);
        let after = t0 + LEARNING_WINDOW;
        let (a, b) = (addr("203.0.113.7:61000"), addr("198.51.100.1:5000"));
        assert!(!l.accept(a, &rtp(8, 1), after, H, pcma()));
        assert!(!l.accept(a, &rtp(8, 2), after, H, pcma()));
        assert!(!l.accept(b, &rtp(8, 9), after, H, pcma()));
        assert!(!l.accept(a, &rtp(8, 3), after, H, pcma()));
        assert!(!l.accept(a, &rtp(8, 4), after, H, pcma()));
        assert!(l.accept(a, &rtp(8, 5), after, H, pcma()));
    }

    #[test]
    fn strict_mode_never_learns() {
        let t0 = Instant::now();
        let mut l = signalled("192.168.1.5:4000", t0);
        let late = t0 + Duration::from_secs(60);
        for seq in 0..20 {
            assert!(!l.accept(
                addr("203.0.113.7:61000"),
                &rtp(8, seq),
                late,
                LearningMode::Strict,
                pcma()
            ));
        }
        assert!(l.accept(
            addr("192.168.1.5:4000"),
            &rtp(8, 1),
            late,
            LearningMode::Strict,
            pcma()
        ));
    }

    #[test]
    fn the_window_starts_only_with_the_offer_answer() {
        let t0 = Instant::now();
        let mut l = Latch::default();
        l.signal(Some(addr("192.168.1.5:4000")));
        let late = t0 + Duration::from_secs(60);
        for seq in 0..10 {
            assert!(!l.accept(addr("203.0.113.7:61000"), &rtp(8, seq), late, H, pcma()));
        }
    }

    #[test]
    fn an_sdp_keeping_the_address_opens_no_window_a_new_address_is_all_that_counts() {
        let t0 = Instant::now();
        let mut l = signalled("10.0.0.5:4000", t0);
        assert!(l.accept(addr("10.0.0.5:4000"), &rtp(8, 1), t0, H, pcma()));
        // Same address (and a hold with no address): still fixed, nobody else.
        l.signal(Some(addr("10.0.0.5:4000")));
        l.signal(None);
        l.start_window(t0);
        let late = t0 + Duration::from_secs(60);
        for seq in 0..10 {
            assert!(!l.accept(addr("10.0.0.9:4000"), &rtp(8, seq), late, H, pcma()));
        }
        // A new address: the old source is refused, the new one fixes.
        l.signal(Some(addr("10.0.0.5:4100")));
        l.start_window(late + LEARNING_WINDOW);
        assert_eq!(l.target(), Some(addr("10.0.0.5:4100")));
        assert!(!l.accept(addr("10.0.0.5:4000"), &rtp(8, 11), late, H, pcma()));
        assert!(l.accept(addr("10.0.0.5:4100"), &rtp(8, 1), late, H, pcma()));
    }

    #[test]
    fn rtcp_is_learned_only_from_the_host_whose_rtp_was_accepted() {
        let t0 = Instant::now();
        let mut l = signalled("192.168.1.5:4001", t0);
        let after = t0 + LEARNING_WINDOW;
        let sr = [0x80u8, 200, 0, 1, 1, 2, 3, 4];
        let nat_ip: IpAddr = "203.0.113.7".parse().unwrap();
        assert!(!l.accept(
            addr("198.51.100.1:5001"),
            &sr,
            after,
            H,
            Carries::Rtcp(Some(nat_ip))
        ));
        assert!(!l.accept(
            addr("203.0.113.7:61001"),
            &sr,
            after,
            H,
            Carries::Rtcp(None)
        ));
        assert!(!l.accept(
            addr("203.0.113.7:61001"),
            &rtp(8, 1),
            after,
            H,
            Carries::Rtcp(Some(nat_ip))
        ));
        assert!(l.accept(
            addr("203.0.113.7:61001"),
            &sr,
            after,
            H,
            Carries::Rtcp(Some(nat_ip))
        ));
    }

    #[test]
    fn rtp_headers_are_checked() {
        assert_eq!(rtp_header(&rtp(8, 7)), Some((8, 7)));
        // Version 1, too short, RTCP type, CSRCs or extension past the end, padding too long.
        let mut v1 = rtp(8, 1);
        v1[0] = 0x40;
        assert_eq!(rtp_header(&v1), None);
        assert_eq!(rtp_header(&[0x80, 8, 0, 1]), None);
        assert_eq!(rtp_header(&rtp(200, 1)), None);
        let mut cc = rtp(8, 1);
        cc.truncate(20);
        cc[0] = 0x8f;
        assert_eq!(rtp_header(&cc), None);
        let mut x = vec![
            0x90, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe, 0xde, 0x7f, 0xff,
        ];
        assert_eq!(rtp_header(&x), None);
        x[14] = 0;
        x[15] = 0;
        assert_eq!(rtp_header(&x), Some((8, 1)));
        let mut pad = rtp(8, 1);
        pad[0] |= 0x20;
        *pad.last_mut().unwrap() = 255;
        assert_eq!(rtp_header(&pad), None);
        assert_eq!(rtp_header(&vec![0x80; 2000]), None);
    }

    #[test]
    fn modes_parse_and_print() {
        assert_eq!("STRICT".parse::<LearningMode>(), Ok(LearningMode::Strict));
        assert_eq!(LearningMode::default().to_string(), "heuristic");
        assert!("loose".parse::<LearningMode>().is_err());
        let pts = PayloadTypes::from_formats(&["0".into(), "101".into(), "x".into(), "200".into()]);
        assert!(pts.contains(0) && pts.contains(101) && !pts.contains(8));
    }
}
