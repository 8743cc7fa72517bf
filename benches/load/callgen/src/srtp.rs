//! SRTP for the caller (trunk) side: SDES keys (RFC 4568) in the suite
//! AES_CM_128_HMAC_SHA1_80, a fresh master key per call from the OS random
//! source, the `a=crypto` line offered and the one the answer carries, and the
//! two crypto contexts of a call (what we send, what we get). The cipher work
//! is the `webrtc-srtp` crate's, the crate callrec terminates SRTP with.

use base64::Engine;
use bytes::Bytes;
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

/// The suite callgen offers, as SDP names it.
pub const SUITE: &str = "AES_CM_128_HMAC_SHA1_80";
const PROFILE: ProtectionProfile = ProtectionProfile::Aes128CmHmacSha1_80;
/// Master key (16 bytes) and master salt (14 bytes).
pub const KEY_LEN: usize = 30;
/// What protection adds to an RTP packet: the 80-bit authentication tag.
pub const OVERHEAD: usize = 10;

/// Master key and salt of one direction of one call.
pub type Key = [u8; KEY_LEN];

/// A fresh key from the kernel's random source (getrandom(2)).
pub fn fresh_key() -> std::io::Result<Key> {
    let mut k = [0u8; KEY_LEN];
    let mut at = 0;
    while at < KEY_LEN {
        // SAFETY: writes at most KEY_LEN - at bytes into our own array.
        let r = unsafe { libc::getrandom(k[at..].as_mut_ptr().cast(), KEY_LEN - at, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            at += r as usize;
        }
    }
    Ok(k)
}

/// The SDP attribute line (with CRLF) that offers `key` under tag 1.
pub fn crypto_line(key: &Key) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    format!("a=crypto:1 {SUITE} inline:{b64}\r\n")
}

/// The key of the answer's `a=crypto` line in our suite, if there is one we
/// can use (one inline key; a lifetime is allowed, an MKI is not).
pub fn answer_key(sdp: &str) -> Option<Key> {
    sdp.lines().find_map(|line| {
        let mut it = line.strip_prefix("a=crypto:")?.split_whitespace();
        let _tag = it.next()?;
        if it.next()? != SUITE {
            return None;
        }
        let inline = it.next()?.strip_prefix("inline:")?;
        let mut parts = inline.split('|');
        let b64 = parts.next()?;
        if parts.any(|p| p.contains(':')) || it.next().is_some() {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        raw.try_into().ok()
    })
}

/// Why the contexts of a call could not be made.
#[derive(Debug)]
pub struct BadKey;

/// The crypto state of one call's caller side: created once per call, then
/// used for every packet.
pub struct CallCrypto {
    tx: Context,
    rx: Context,
}

fn context(key: &Key) -> Result<Context, BadKey> {
    let (k, salt) = key.split_at(PROFILE.key_len());
    // No replay window: a repeated or reordered packet shows up in the
    // report's `late` count as it does with plain RTP, not as a failure.
    Context::new(k, salt, PROFILE, None, None).map_err(|_| BadKey)
}

impl CallCrypto {
    /// `send` protects what we send (the key we offered); `recv` checks what
    /// we get (the key the answer gave).
    pub fn new(send: &Key, recv: &Key) -> Result<CallCrypto, BadKey> {
        Ok(CallCrypto {
            tx: context(send)?,
            rx: context(recv)?,
        })
    }

    /// Encrypts and authenticates a plain RTP packet into `out`; returns the
    /// protected length, or None when it does not fit or cannot be protected.
    pub fn protect(&mut self, pkt: &[u8], out: &mut [u8]) -> Option<usize> {
        let p = self.tx.encrypt_rtp(pkt).ok()?;
        out.get_mut(..p.len())?.copy_from_slice(&p);
        Some(p.len())
    }

    /// Authenticates and decrypts an SRTP packet; None when it fails.
    pub fn unprotect(&mut self, pkt: &[u8]) -> Option<Bytes> {
        self.rx.decrypt_rtp(pkt).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 8];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&0x1000_0001u32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn offered_line_round_trips_and_keys_are_fresh() {
        let k = fresh_key().unwrap();
        assert_ne!(k, fresh_key().unwrap());
        let line = crypto_line(&k);
        assert!(line.starts_with("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
        let sdp = format!("v=0\r\nm=audio 4000 RTP/SAVP 8\r\n{line}a=sendrecv\r\n");
        assert_eq!(answer_key(&sdp), Some(k));
    }

    #[test]
    fn unusable_answers_have_no_key() {
        let k = crypto_line(&fresh_key().unwrap());
        let other = k.replace(SUITE, "AES_CM_128_HMAC_SHA1_32");
        assert_eq!(answer_key(&other), None);
        let mki = k.trim_end().to_string() + "|2^20|1:4";
        assert_eq!(answer_key(&mki), None);
        let session = k.trim_end().to_string() + " UNENCRYPTED_SRTP";
        assert_eq!(answer_key(&session), None);
        assert_eq!(
            answer_key("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA"),
            None
        );
        assert_eq!(answer_key("m=audio 4000 RTP/AVP 8\r\n"), None);
    }

    #[test]
    fn protected_packet_carries_the_payload_only_for_the_right_key() {
        let (a, b) = (fresh_key().unwrap(), fresh_key().unwrap());
        let mut sender = CallCrypto::new(&a, &b).unwrap();
        let mut receiver = CallCrypto::new(&b, &a).unwrap();
        let mut wrong = CallCrypto::new(&b, &b).unwrap();
        let payload = [0x55u8; 160];
        let mut out = [0u8; 12 + 160 + OVERHEAD];
        for seq in 0..3u16 {
            let plain = rtp(seq, &payload);
            let n = sender.protect(&plain, &mut out).unwrap();
            assert_eq!(n, plain.len() + OVERHEAD);
            // The payload on the wire is not the plain one.
            assert_ne!(&out[12..172], &payload[..]);
            assert!(wrong.unprotect(&out[..n]).is_none());
            assert_eq!(receiver.unprotect(&out[..n]).unwrap()[..], plain[..]);
            // A flipped payload bit fails authentication.
            out[20] ^= 1;
            assert!(receiver.unprotect(&out[..n]).is_none());
        }
        // Too small a buffer is refused, not a panic.
        assert!(sender.protect(&rtp(9, &payload), &mut [0u8; 100]).is_none());
        assert!(receiver.unprotect(&[0x80, 8, 0, 1]).is_none());
    }
}
