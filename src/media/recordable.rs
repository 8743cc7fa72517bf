//! Whether an SDP offer describes media callrec can record: encrypted media
//! callrec cannot terminate (DTLS-SRTP, unknown SDES suites, SDES where keys
//! may not be exchanged) is detected so it is never recorded as noise, and the
//! offer's audio formats are cut down to the codecs the recorder decodes, so
//! that the answer can only pick one of them.

use crate::recorder::Codec;

/// What an offer means for its recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Recordable; the offer with only the recordable audio formats left.
    Recordable(Vec<u8>),
    /// The media is encrypted; the reason says how it was recognised.
    Encrypted(String),
    /// No audio format of the offer can be decoded; the formats it has.
    Undecodable(String),
}

/// Judges an SDP offer (or answer) for recording on a leg where SDES keys
/// may not be exchanged: any encryption counts as encrypted.
pub fn judge(body: &[u8]) -> Verdict {
    judge_terminating(body, false)
}

/// Judges an SDP offer (or answer) for recording; with `sdes_allowed`, SRTP
/// with SDES keys callrec supports is recordable (callrec terminates it).
pub fn judge_terminating(body: &[u8], sdes_allowed: bool) -> Verdict {
    if let Some(why) = super::sdes::cannot_terminate(body, sdes_allowed) {
        return Verdict::Encrypted(why);
    }
    let text = String::from_utf8_lossy(body);
    let Some(Formats { keep, all }) = first_audio_formats(&text) else {
        // No audio stream at all: nothing to filter, nothing to refuse here.
        return Verdict::Recordable(body.to_vec());
    };
    let audible = keep.iter().any(|(_, c)| c.audio_rate().is_some());
    if !audible {
        return Verdict::Undecodable(all.join(" "));
    }
    let pts: Vec<u8> = keep.iter().map(|(p, _)| *p).collect();
    if pts.len() == all.len() {
        return Verdict::Recordable(body.to_vec());
    }
    Verdict::Recordable(super::sdp::restrict_audio_formats(body, &pts))
}

/// The formats of an offer's first active audio stream.
struct Formats {
    /// The recordable ones, with their codec.
    keep: Vec<(u8, Codec)>,
    /// Every one, by name (for the report).
    all: Vec<String>,
}

/// The first active audio stream's formats.
fn first_audio_formats(text: &str) -> Option<Formats> {
    let mut lines = text.lines().map(str::trim);
    let fmts: Vec<String> = lines.by_ref().find_map(|l| {
        let m = l.strip_prefix("m=audio ")?;
        let parts: Vec<&str> = m.split_whitespace().collect();
        (parts.first() != Some(&"0")).then(|| parts.iter().skip(2).map(|s| s.to_string()).collect())
    })?;
    let mut names: Vec<(u8, String)> = Vec::new();
    for l in lines.take_while(|l| !l.starts_with("m=")) {
        if let Some(r) = l.strip_prefix("a=rtpmap:") {
            let mut it = r.split_whitespace();
            if let (Some(Ok(pt)), Some(enc)) = (it.next().map(str::parse::<u8>), it.next()) {
                names.push((pt, enc.split('/').next().unwrap_or(enc).to_string()));
            }
        }
    }
    let mut keep = Vec::new();
    let mut all = Vec::new();
    for f in &fmts {
        let Ok(pt) = f.parse::<u8>() else {
            all.push(f.clone());
            continue;
        };
        let name = names
            .iter()
            .find(|(p, _)| *p == pt)
            .map(|(_, n)| n.clone())
            .or_else(|| static_name(pt).map(str::to_string));
        let codec = name
            .as_deref()
            .map(Codec::from_encoding_name)
            .unwrap_or(Codec::Unsupported);
        all.push(name.unwrap_or_else(|| format!("PT {pt}")));
        if codec != Codec::Unsupported {
            keep.push((pt, codec));
        }
    }
    Some(Formats { keep, all })
}

/// Names of the static payload types the recorder knows (RFC 3551).
fn static_name(pt: u8) -> Option<&'static str> {
    match pt {
        0 => Some("PCMU"),
        8 => Some("PCMA"),
        9 => Some("G722"),
        13 => Some("CN"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(m: &str, attrs: &str) -> Vec<u8> {
        format!(
            "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n{m}\r\n{attrs}"
        )
        .into_bytes()
    }

    #[test]
    fn g729_only_is_undecodable_and_g729_is_dropped_beside_pcma() {
        let g729 = offer("m=audio 4000 RTP/AVP 18", "a=rtpmap:18 G729/8000\r\n");
        assert_eq!(judge(&g729), Verdict::Undecodable("G729".into()));
        let mixed = offer(
            "m=audio 4000 RTP/AVP 18 8 101",
            "a=rtpmap:18 G729/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:18 annexb=no\r\n",
        );
        let Verdict::Recordable(out) = judge(&mixed) else {
            panic!("PCMA is recordable")
        };
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("m=audio 4000 RTP/AVP 8 101\r\n"), "{out}");
        assert!(!out.contains("G729") && !out.contains("fmtp:18"), "{out}");
    }

    #[test]
    fn telephone_event_alone_is_not_recordable_audio() {
        let te = offer(
            "m=audio 4000 RTP/AVP 18 101",
            "a=rtpmap:101 telephone-event/8000\r\n",
        );
        assert!(matches!(judge(&te), Verdict::Undecodable(_)));
    }

    #[test]
    fn secure_profiles_and_keys_are_encrypted() {
        for (m, a) in [
            ("m=audio 4000 RTP/SAVP 8", ""),
            ("m=audio 4000 RTP/SAVPF 8", ""),
            ("m=audio 4000 UDP/TLS/RTP/SAVPF 111", ""),
            (
                "m=audio 4000 RTP/AVP 8",
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:abc\r\n",
            ),
            ("m=audio 4000 RTP/AVP 8", "a=fingerprint:sha-256 AB:CD\r\n"),
        ] {
            assert!(
                matches!(judge(&offer(m, a)), Verdict::Encrypted(_)),
                "{m} {a}"
            );
        }
    }

    #[test]
    fn sdes_callrec_supports_is_recordable_where_keys_may_be_exchanged() {
        let key = crate::media::srtp::MasterKey::fresh(crate::media::srtp::Suite::AeadAes128Gcm);
        let o = offer(
            "m=audio 4000 RTP/SAVP 18 8",
            &format!("{}\r\n", key.attribute(1)),
        );
        assert!(matches!(judge(&o), Verdict::Encrypted(_)));
        let Verdict::Recordable(out) = judge_terminating(&o, true) else {
            panic!("terminable SDES")
        };
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("RTP/SAVP 8\r\n") && out.contains("a=crypto:1 "),
            "{out}"
        );
        let g729 = offer(
            "m=audio 4000 RTP/SAVP 18",
            &format!("{}\r\n", key.attribute(1)),
        );
        assert!(matches!(
            judge_terminating(&g729, true),
            Verdict::Undecodable(_)
        ));
    }

    #[test]
    fn plain_g711_passes_unchanged() {
        let o = offer("m=audio 4000 RTP/AVP 0 8", "");
        assert_eq!(judge(&o), Verdict::Recordable(o.clone()));
    }
}
