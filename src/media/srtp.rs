//! SRTP with SDES keys (RFC 3711, RFC 4568, RFC 7714): the suites callrec can
//! terminate, the `a=crypto` attribute read and written, fresh master keys
//! from the OS random source, and the per-direction crypto contexts the relay
//! uses. The cipher work itself is the `webrtc-srtp` crate's; this module only
//! decides which key protects which packets. Keys never appear in `Debug`
//! output, logs or files: a key prints as its suite name.

use std::fmt;

use base64::Engine;
use bytes::Bytes;
use rand::RngCore;
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use webrtc_srtp::protection_profile::ProtectionProfile;

/// An SDES crypto suite callrec terminates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// AES counter mode, HMAC-SHA1 with an 80-bit tag (RFC 4568 §6.2).
    AesCm128HmacSha1_80,
    /// The same with a 32-bit tag on SRTP packets (SRTCP keeps 80 bits).
    AesCm128HmacSha1_32,
    /// AES-GCM with a 128-bit key (RFC 7714 §14.2).
    AeadAes128Gcm,
}

/// Suites in the order callrec prefers them when it offers keys itself.
pub const SUITES: [Suite; 3] = [
    Suite::AesCm128HmacSha1_80,
    Suite::AeadAes128Gcm,
    Suite::AesCm128HmacSha1_32,
];

impl Suite {
    /// The suite's name as SDP writes it.
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            Suite::AeadAes128Gcm => "AEAD_AES_128_GCM",
        }
    }

    /// The suite an SDP name stands for, if callrec supports it.
    pub fn from_name(name: &str) -> Option<Suite> {
        SUITES.into_iter().find(|s| s.name() == name)
    }

    fn profile(self) -> ProtectionProfile {
        match self {
            Suite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            Suite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
            Suite::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        }
    }

    /// Master key plus master salt length in bytes.
    fn key_material_len(self) -> usize {
        let p = self.profile();
        p.key_len() + p.salt_len()
    }
}

/// A master key and salt for one direction of one stream.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    suite: Suite,
    material: Vec<u8>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key itself: Debug output ends up in logs.
        write!(f, "MasterKey({})", self.suite.name())
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        // Best effort: the key should not linger in freed memory.
        self.material.iter_mut().for_each(|b| *b = 0);
    }
}

impl MasterKey {
    /// A fresh key for `suite` from the operating system's random source.
    pub fn fresh(suite: Suite) -> MasterKey {
        let mut material = vec![0u8; suite.key_material_len()];
        rand::rngs::OsRng.fill_bytes(&mut material);
        MasterKey { suite, material }
    }

    /// The suite this key is for.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The key parameter as `a=crypto` writes it.
    fn inline(&self) -> String {
        format!(
            "inline:{}",
            base64::engine::general_purpose::STANDARD.encode(&self.material)
        )
    }

    /// The `a=crypto` attribute value offering or answering with this key.
    pub fn attribute(&self, tag: u32) -> String {
        format!("a=crypto:{tag} {} {}", self.suite.name(), self.inline())
    }

    fn context(&self) -> Option<Context> {
        let p = self.suite.profile();
        let (key, salt) = self.material.split_at(p.key_len());
        Context::new(
            key,
            salt,
            p,
            Some(srtp_replay_protection(REPLAY_WINDOW)),
            Some(srtcp_replay_protection(REPLAY_WINDOW)),
        )
        .ok()
    }
}

/// Packets this far behind the newest are refused as replays (RFC 3711 §3.3.2
/// asks for at least 64).
const REPLAY_WINDOW: usize = 128;

/// One `a=crypto` line of an SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoLine {
    /// The line's tag, which the answer repeats.
    pub tag: u32,
    /// The suite as written.
    pub suite_name: String,
    /// The key, when the suite is supported and the key parameters are ones
    /// callrec can use (one inline key, no MKI, no session parameters).
    pub key: Option<MasterKey>,
}

/// Reads the value of an `a=crypto:` attribute (after the colon).
pub fn parse_crypto(value: &str) -> Option<CryptoLine> {
    let mut it = value.split_whitespace();
    let tag = it.next()?.parse().ok()?;
    let suite_name = it.next()?.to_string();
    let params = it.next()?;
    // Session parameters (UNENCRYPTED_SRTP, KDR, …) change what the suite
    // means; callrec does not implement them, so such a line is unusable.
    let plain = it.next().is_none();
    let key = Suite::from_name(&suite_name)
        .filter(|_| plain)
        .and_then(|suite| inline_key(suite, params));
    Some(CryptoLine {
        tag,
        suite_name,
        key,
    })
}

/// The key of a key-params field with exactly one `inline:` key; a lifetime is
/// allowed, an MKI is not (callrec's packets carry none).
fn inline_key(suite: Suite, params: &str) -> Option<MasterKey> {
    if params.contains(';') {
        return None;
    }
    let rest = params.strip_prefix("inline:")?;
    let mut parts = rest.split('|');
    let b64 = parts.next()?;
    let extra: Vec<&str> = parts.collect();
    if extra.len() > 1 || extra.iter().any(|p| p.contains(':')) {
        return None;
    }
    let material = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    (material.len() == suite.key_material_len()).then_some(MasterKey { suite, material })
}

/// Replaces the key of every `a=crypto` line in a line of SDP (or a whole
/// message) with `…`, for logs.
pub fn redact(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("inline:") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("inline:") {
        out.push_str(&rest[..i + "inline:".len()]);
        rest = &rest[i + "inline:".len()..];
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '|' || c == ';')
            .unwrap_or(rest.len());
        out.push_str("[redacted]");
        rest = &rest[end..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// At most this many SSRCs keep a crypto context per direction: a peer uses
/// one or two; on receipt only authenticated packets can claim a slot.
const MAX_SSRCS: usize = 4;

/// Why a packet was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Authentication failed, a replay, or not a packet at all.
    Auth,
}

/// Contexts by SSRC for one kind of packet (RTP or RTCP) in one direction.
#[derive(Default)]
struct BySsrc {
    slots: Vec<(u32, Context, u64)>,
    clock: u64,
}

impl BySsrc {
    /// Runs `f` on the context of `ssrc`. A new SSRC gets a fresh context that
    /// is kept only if `f` succeeds, so that forged packets leave no state.
    /// When every slot is taken, a receiver evicts the least recently used
    /// context; a sender refuses instead, because a context made again for an
    /// evicted SSRC would start its rollover counter anew and so repeat
    /// keystream.
    fn with<T>(
        &mut self,
        key: &MasterKey,
        ssrc: u32,
        evict: bool,
        f: impl FnOnce(&mut Context) -> Option<T>,
    ) -> Option<T> {
        self.clock += 1;
        let now = self.clock;
        if let Some(slot) = self.slots.iter_mut().find(|s| s.0 == ssrc) {
            let out = f(&mut slot.1)?;
            slot.2 = now;
            return Some(out);
        }
        if self.slots.len() >= MAX_SSRCS && !evict {
            return None;
        }
        let mut ctx = key.context()?;
        let out = f(&mut ctx)?;
        if self.slots.len() >= MAX_SSRCS {
            if let Some(i) = (0..self.slots.len()).min_by_key(|&i| self.slots[i].2) {
                self.slots.swap_remove(i);
            }
        }
        self.slots.push((ssrc, ctx, now));
        Some(out)
    }
}

/// The SSRC of an RTP packet (bytes 8..12) or RTCP packet (bytes 4..8).
fn ssrc_at(pkt: &[u8], at: usize) -> Option<u32> {
    let b = pkt.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// One direction's SRTP state: a key and the contexts derived from it.
pub struct Protection {
    key: MasterKey,
    rtp: BySsrc,
    rtcp: BySsrc,
}

impl fmt::Debug for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protection({})", self.key.suite.name())
    }
}

impl Protection {
    /// Contexts for `key`.
    pub fn new(key: MasterKey) -> Protection {
        Protection {
            key,
            rtp: BySsrc::default(),
            rtcp: BySsrc::default(),
        }
    }

    /// The key these contexts use.
    pub fn key(&self) -> &MasterKey {
        &self.key
    }

    /// Authenticates and decrypts an SRTP (or, with `rtcp`, SRTCP) packet.
    pub fn unprotect(&mut self, pkt: &[u8], rtcp: bool) -> Result<Bytes, Refused> {
        let (slots, at) = if rtcp {
            (&mut self.rtcp, 4)
        } else {
            (&mut self.rtp, 8)
        };
        let ssrc = ssrc_at(pkt, at).ok_or(Refused::Auth)?;
        slots
            .with(&self.key, ssrc, true, |c| {
                if rtcp {
                    c.decrypt_rtcp(pkt).ok()
                } else {
                    c.decrypt_rtp(pkt).ok()
                }
            })
            .ok_or(Refused::Auth)
    }

    /// Encrypts and authenticates a plain RTP (or RTCP) packet.
    pub fn protect(&mut self, pkt: &[u8], rtcp: bool) -> Option<Bytes> {
        let (slots, at) = if rtcp {
            (&mut self.rtcp, 4)
        } else {
            (&mut self.rtp, 8)
        };
        let ssrc = ssrc_at(pkt, at)?;
        slots.with(&self.key, ssrc, false, |c| {
            if rtcp {
                c.encrypt_rtcp(pkt).ok()
            } else {
                c.encrypt_rtp(pkt).ok()
            }
        })
    }
}

#[cfg(test)]
mod tests;
