//! SDES key exchange (RFC 4568) across the two legs of a call: which legs get
//! SRTP, which key each direction uses, and the SDP rewrite that puts
//! callrec's own keys (never the other leg's) into what each leg receives.
//! A leg is offered keys only when its signalling is protected (TLS) unless
//! the operator allows SDES over plain UDP, since the keys travel in the SDP.

use std::fmt;
use std::str::FromStr;

use tracing::warn;

use super::srtp::{parse_crypto, CryptoLine, MasterKey, SUITES};
use super::Side;

/// What media one leg gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LegMedia {
    /// Plain RTP.
    Rtp,
    /// SRTP with SDES keys.
    Srtp,
    /// Whatever the other leg offered.
    #[default]
    Same,
}

impl FromStr for LegMedia {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "rtp" => Ok(LegMedia::Rtp),
            "srtp" => Ok(LegMedia::Srtp),
            "same" => Ok(LegMedia::Same),
            _ => Err(format!("{s:?}: expected rtp, srtp or same")),
        }
    }
}

impl fmt::Display for LegMedia {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LegMedia::Rtp => "rtp",
            LegMedia::Srtp => "srtp",
            LegMedia::Same => "same",
        })
    }
}

/// The SRTP policy of one call, by side (`Side::index`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SrtpPolicy {
    /// What the SDP sent to each side asks for.
    pub media: [LegMedia; 2],
    /// Whether SDES keys may be exchanged with each side (its leg runs over
    /// TLS, or SDES over UDP is allowed).
    pub sdes_allowed: [bool; 2],
}

/// The crypto facts of one `m=` section.
#[derive(Debug, Default)]
struct StreamCrypto {
    /// The transport protocol is a secure RTP profile (RTP/SAVP, RTP/SAVPF).
    savp: bool,
    /// Any other secure profile (DTLS-SRTP's UDP/TLS/RTP/SAVP…).
    other_secure: Option<String>,
    lines: Vec<CryptoLine>,
    fingerprint: bool,
}

/// Crypto facts of every `m=` section of `text`, in order; a=fingerprint at
/// session level counts for every stream.
fn read(text: &str) -> Vec<StreamCrypto> {
    let mut out: Vec<StreamCrypto> = Vec::new();
    let mut session_fp = false;
    for line in text.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            let proto = m.split_whitespace().nth(2).unwrap_or_default();
            let up = proto.to_ascii_uppercase();
            out.push(StreamCrypto {
                savp: up == "RTP/SAVP" || up == "RTP/SAVPF",
                other_secure: (up.contains("SAVP") && !up.starts_with("RTP/"))
                    .then(|| proto.to_string()),
                fingerprint: session_fp,
                ..Default::default()
            });
        } else if let Some(v) = line.strip_prefix("a=crypto:") {
            if let (Some(s), Some(l)) = (out.last_mut(), parse_crypto(v)) {
                s.lines.push(l);
            }
        } else if line.starts_with("a=fingerprint:") {
            match out.last_mut() {
                Some(s) => s.fingerprint = true,
                None => session_fp = true,
            }
        }
    }
    out
}

/// Why callrec cannot terminate the encryption `body` asks for, if it cannot:
/// DTLS-SRTP, keys only in suites or parameters it does not support, SDES on
/// a leg that may not carry keys, or keys on a plain profile. None for plain
/// RTP and for SDES it can terminate.
pub fn cannot_terminate(body: &[u8], sdes_allowed: bool) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    for s in read(&text) {
        if s.fingerprint {
            return Some("DTLS-SRTP (a=fingerprint)".into());
        }
        if let Some(p) = s.other_secure {
            return Some(format!("media profile {p}"));
        }
        if !s.savp {
            if !s.lines.is_empty() {
                return Some("SDES keys (a=crypto) on a plain RTP profile".into());
            }
            continue;
        }
        if !s.lines.iter().any(|l| l.key.is_some()) {
            let names: Vec<&str> = s.lines.iter().map(|l| l.suite_name.as_str()).collect();
            return Some(if names.is_empty() {
                "a secure RTP profile without SDES keys".into()
            } else {
                format!("no usable SDES crypto suite ({})", names.join(" "))
            });
        }
        if !sdes_allowed {
            return Some(
                "SDES keys on a leg without TLS (callrec sends no keys over plain UDP \
                 unless --allow-sdes-over-udp)"
                    .into(),
            );
        }
    }
    None
}

/// Keys for one side of one stream, as the relay needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegKeys {
    /// Plain RTP both ways.
    Plain,
    /// SRTP, keys not known yet (offer sent, no answer): nothing passes.
    Pending,
    /// SRTP: `rx` decrypts what the side sends, `tx` encrypts what it gets.
    Keys {
        /// The side's own key.
        rx: MasterKey,
        /// callrec's key towards the side.
        tx: MasterKey,
    },
}

/// What the negotiation keeps per stream between an offer and its answer.
#[derive(Debug, Default, Clone)]
struct Pending {
    /// The offerer's key and the tag to answer it with, when it used SDES.
    offerer: Option<(u32, MasterKey)>,
    /// Our keys offered to the answerer (tag = index + 1); empty when plain.
    offered: Vec<MasterKey>,
}

/// The SDES state of a call's session.
#[derive(Debug, Default)]
pub struct Negotiation {
    /// The call's policy.
    pub policy: SrtpPolicy,
    /// Who sent the latest offer.
    offerer: Option<Side>,
    streams: Vec<Pending>,
    /// The suite in use towards each side (first stream), for the metadata.
    suites: [Option<&'static str>; 2],
}

/// The result of one SDP for the relay and the other leg.
#[derive(Debug)]
pub struct Outcome {
    /// Per stream: keys to set, (side, keys).
    pub keys: Vec<Vec<(Side, LegKeys)>>,
    /// Per stream: the crypto lines the forwarded SDP carries (None: plain).
    pub lines: Vec<Option<Vec<String>>>,
}

impl Negotiation {
    /// Marks the next SDP as an offer, whoever sends it (a re-INVITE's).
    pub fn expect_offer(&mut self) {
        self.offerer = None;
    }

    /// Per stream, the crypto lines of callrec's answer to the latest offer
    /// (None: plain), for an answer callrec writes itself (an announcement's).
    pub fn answer_lines(&self) -> Vec<Option<Vec<String>>> {
        self.streams
            .iter()
            .map(|p| p.offerer.as_ref().map(|(tag, k)| vec![k.attribute(*tag)]))
            .collect()
    }

    /// The suite used with each side, by `Side::index`.
    pub fn suites(&self) -> [Option<&'static str>; 2] {
        self.suites
    }

    /// Takes an SDP from `from` whose media callrec can terminate (see
    /// `cannot_terminate`): an answer when the latest offer came from the
    /// other side, else an offer.
    pub fn on_sdp(&mut self, from: Side, body: &[u8]) -> Outcome {
        let text = String::from_utf8_lossy(body);
        let streams = read(&text);
        if self.offerer == Some(from.other()) {
            self.answer(from, streams)
        } else {
            self.offerer = Some(from);
            self.offer(from, streams)
        }
    }

    fn offer(&mut self, from: Side, streams: Vec<StreamCrypto>) -> Outcome {
        let to = from.other();
        let mut want = match self.policy.media[to.index()] {
            LegMedia::Rtp => Some(false),
            LegMedia::Srtp => Some(true),
            LegMedia::Same => None,
        };
        if want == Some(true) && !self.policy.sdes_allowed[to.index()] {
            warn!(
                "the {} leg is set to SRTP but has no TLS: it gets plain RTP (keys are not sent over plain UDP unless --allow-sdes-over-udp)",
                to.name()
            );
            want = Some(false);
        }
        self.streams.clear();
        let mut out = Outcome {
            keys: Vec::new(),
            lines: Vec::new(),
        };
        for s in streams {
            let theirs = s
                .savp
                .then(|| s.lines.iter().find_map(|l| Some((l.tag, l.key.clone()?))))
                .flatten();
            let mut keys = Vec::new();
            let offerer = theirs.map(|(tag, rx)| {
                let tx = MasterKey::fresh(rx.suite());
                keys.push((from, LegKeys::Keys { rx, tx: tx.clone() }));
                (tag, tx)
            });
            if offerer.is_none() {
                keys.push((from, LegKeys::Plain));
            }
            let srtp = want.unwrap_or(offerer.is_some()) && self.policy.sdes_allowed[to.index()];
            let offered: Vec<MasterKey> = if srtp {
                // The offerer's suite first: the answerer most likely has it.
                let mut suites = SUITES.to_vec();
                if let Some((_, k)) = &offerer {
                    suites.retain(|s| *s != k.suite());
                    suites.insert(0, k.suite());
                }
                suites.into_iter().map(MasterKey::fresh).collect()
            } else {
                Vec::new()
            };
            keys.push((
                to,
                if srtp {
                    LegKeys::Pending
                } else {
                    LegKeys::Plain
                },
            ));
            out.lines.push(srtp.then(|| {
                offered
                    .iter()
                    .enumerate()
                    .map(|(i, k)| k.attribute(i as u32 + 1))
                    .collect()
            }));
            out.keys.push(keys);
            self.streams.push(Pending { offerer, offered });
        }
        self.note_suites();
        out
    }

    fn answer(&mut self, from: Side, streams: Vec<StreamCrypto>) -> Outcome {
        let mut out = Outcome {
            keys: Vec::new(),
            lines: Vec::new(),
        };
        for (i, s) in streams.into_iter().enumerate() {
            let pending = self.streams.get(i).cloned().unwrap_or_default();
            let mut keys = Vec::new();
            let chosen = s
                .savp
                .then(|| {
                    s.lines.iter().find_map(|l| {
                        let ours = pending.offered.get((l.tag as usize).checked_sub(1)?)?;
                        let theirs = l.key.clone()?;
                        (theirs.suite() == ours.suite()).then(|| (theirs, ours.clone()))
                    })
                })
                .flatten();
            match chosen {
                Some((rx, tx)) => keys.push((from, LegKeys::Keys { rx, tx })),
                None => {
                    if !pending.offered.is_empty() {
                        warn!(
                            "the {} answered the SRTP offer with plain RTP; its leg stays plain",
                            from.name()
                        );
                    }
                    keys.push((from, LegKeys::Plain));
                }
            }
            out.lines.push(
                pending
                    .offerer
                    .as_ref()
                    .map(|(tag, k)| vec![k.attribute(*tag)]),
            );
            out.keys.push(keys);
        }
        // The offer's keys stay: a later answer (183, then 200) picks again.
        self.note_suites_from(&out);
        out
    }

    fn note_suites(&mut self) {
        for p in self.streams.iter().take(1) {
            if let (Some((_, k)), Some(o)) = (&p.offerer, self.offerer) {
                self.suites[o.index()] = Some(k.suite().name());
            }
        }
    }

    fn note_suites_from(&mut self, out: &Outcome) {
        if let Some(first) = out.keys.first() {
            for (side, k) in first {
                self.suites[side.index()] = match k {
                    LegKeys::Keys { tx, .. } => Some(tx.suite().name()),
                    LegKeys::Plain => None,
                    LegKeys::Pending => self.suites[side.index()],
                };
            }
        }
    }
}

/// Writes the crypto decision into `body` (already anchored): per stream,
/// `Some(lines)` gives it a secure profile and exactly those `a=crypto`
/// lines, `None` a plain profile and no keys.
pub fn apply(body: &[u8], lines: &[Option<Vec<String>>]) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let mut out = String::with_capacity(text.len() + 256);
    let mut idx: Option<usize> = None;
    let flush = |out: &mut String, idx: Option<usize>| {
        if let Some(Some(ls)) = idx.and_then(|i| lines.get(i)) {
            for l in ls {
                out.push_str(l);
                out.push_str("\r\n");
            }
        }
    };
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with("a=crypto:") {
            continue;
        }
        if let Some(v) = line.strip_prefix("m=") {
            flush(&mut out, idx);
            let i = idx.map_or(0, |i| i + 1);
            idx = Some(i);
            let secure = matches!(lines.get(i), Some(Some(_)));
            let mut parts: Vec<String> = v.split(' ').map(str::to_string).collect();
            if let Some(p) = parts.get_mut(2) {
                *p = profile(p, secure);
            }
            out.push_str(&format!("m={}\r\n", parts.join(" ")));
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    flush(&mut out, idx);
    out.into_bytes()
}

/// The RTP profile `proto` with or without the S.
fn profile(proto: &str, secure: bool) -> String {
    match (proto.to_ascii_uppercase().as_str(), secure) {
        ("RTP/AVP" | "RTP/SAVP", true) => "RTP/SAVP".into(),
        ("RTP/AVPF" | "RTP/SAVPF", true) => "RTP/SAVPF".into(),
        ("RTP/AVP" | "RTP/SAVP", false) => "RTP/AVP".into(),
        ("RTP/AVPF" | "RTP/SAVPF", false) => "RTP/AVPF".into(),
        _ => proto.to_string(),
    }
}

#[cfg(test)]
mod tests;
