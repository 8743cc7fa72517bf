//! Codecs the recorder knows, the per-party payload-type map built from SDP
//! rtpmap lines, and the audio decoders (G.711 own tables; G.722 through the
//! pure-Rust `audio-codec` crate, Opus through the pure-Rust `opus-rs`).

use std::fmt;

use crate::audio::g711;

/// A codec as named in an SDP rtpmap line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 A-law.
    Pcma,
    /// G.711 µ-law.
    Pcmu,
    /// G.722 (16 kHz audio, 8 kHz RTP clock).
    G722,
    /// Opus (48 kHz).
    Opus,
    /// RFC 4733 telephone-event (DTMF): never written as audio.
    TelephoneEvent,
    /// RFC 3389 comfort noise: recorded as silence.
    ComfortNoise,
    /// Any codec the recorder cannot decode: recorded as silence and counted.
    Unsupported,
}

impl Codec {
    /// Maps an rtpmap encoding name (case-insensitive) to a codec.
    pub fn from_encoding_name(name: &str) -> Codec {
        match name.to_ascii_lowercase().as_str() {
            "pcma" => Codec::Pcma,
            "pcmu" => Codec::Pcmu,
            "g722" => Codec::G722,
            "opus" => Codec::Opus,
            "telephone-event" => Codec::TelephoneEvent,
            "cn" => Codec::ComfortNoise,
            _ => Codec::Unsupported,
        }
    }

    /// Sample rate of the decoded audio, or None when the codec carries no audio we decode.
    pub fn audio_rate(self) -> Option<u32> {
        match self {
            Codec::Pcma | Codec::Pcmu => Some(8000),
            Codec::G722 => Some(16000),
            Codec::Opus => Some(48000),
            _ => None,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::Pcma => "PCMA",
            Codec::Pcmu => "PCMU",
            Codec::G722 => "G722",
            Codec::Opus => "opus",
            Codec::TelephoneEvent => "telephone-event",
            Codec::ComfortNoise => "CN",
            Codec::Unsupported => "unsupported",
        })
    }
}

/// One payload type's meaning: codec and RTP clock rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadType {
    /// The codec.
    pub codec: Codec,
    /// RTP timestamp clock rate in Hz.
    pub clock_rate: u32,
}

/// Payload type → codec for one party, from SDP rtpmap lines over the static defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadMap {
    entries: [Option<PayloadType>; 128],
}

impl Default for PayloadMap {
    fn default() -> Self {
        let mut entries = [None; 128];
        let stat = |codec, clock_rate| Some(PayloadType { codec, clock_rate });
        entries[0] = stat(Codec::Pcmu, 8000);
        entries[8] = stat(Codec::Pcma, 8000);
        entries[9] = stat(Codec::G722, 8000);
        entries[13] = stat(Codec::ComfortNoise, 8000);
        PayloadMap { entries }
    }
}

impl PayloadMap {
    /// Builds a map from (payload type, "NAME/clock[/channels]") pairs; static PTs 0, 8, 9, 13 stay as defaults unless overridden.
    pub fn from_sdp_rtpmaps<I, S>(rtpmaps: I) -> PayloadMap
    where
        I: IntoIterator<Item = (u8, S)>,
        S: AsRef<str>,
    {
        let mut map = PayloadMap::default();
        for (pt, desc) in rtpmaps {
            if pt >= 128 {
                continue;
            }
            let mut parts = desc.as_ref().trim().split('/');
            let name = parts.next().unwrap_or("");
            let clock = parts.next().and_then(|c| c.trim().parse::<u32>().ok());
            let codec = Codec::from_encoding_name(name.trim());
            let clock_rate = match (clock, codec) {
                (Some(c), _) if c > 0 => c,
                (_, Codec::Opus) => 48000,
                _ => 8000,
            };
            map.entries[pt as usize] = Some(PayloadType { codec, clock_rate });
        }
        map
    }

    /// Builds a map from the `a=rtpmap:` lines of an SDP body.
    pub fn from_sdp(sdp: &str) -> PayloadMap {
        let pairs = sdp.lines().filter_map(|line| {
            let rest = line.trim().strip_prefix("a=rtpmap:")?;
            let (pt, desc) = rest.split_once(' ')?;
            Some((pt.trim().parse::<u8>().ok()?, desc.trim().to_string()))
        });
        PayloadMap::from_sdp_rtpmaps(pairs)
    }

    /// Looks a payload type up.
    pub fn get(&self, pt: u8) -> Option<PayloadType> {
        self.entries.get(pt as usize).copied().flatten()
    }
}

/// A stateful audio decoder producing mono samples at the codec's audio rate.
pub(crate) enum AudioDecoder {
    Alaw,
    Ulaw,
    G722(Box<audio_codec::g722::G722Decoder>),
    Opus(Box<opus_rs::OpusDecoder>, Vec<f32>),
}

/// Longest Opus packet (120 ms) at 48 kHz, per channel.
const OPUS_MAX_FRAME: usize = 5760;

impl AudioDecoder {
    /// Creates a decoder for an audio codec; None for codecs without audio.
    pub(crate) fn new(codec: Codec) -> Option<AudioDecoder> {
        Some(match codec {
            Codec::Pcma => AudioDecoder::Alaw,
            Codec::Pcmu => AudioDecoder::Ulaw,
            Codec::G722 => AudioDecoder::G722(Box::new(audio_codec::g722::G722Decoder::new())),
            // Stereo output: mono packets come out on both channels, so the
            // downmix below is right for either kind of packet.
            Codec::Opus => AudioDecoder::Opus(
                Box::new(opus_rs::OpusDecoder::new(48000, 2).ok()?),
                vec![0.0; 2 * OPUS_MAX_FRAME],
            ),
            _ => return None,
        })
    }

    /// Decodes `payload`, appending mono samples to `out`; false when the payload could not be decoded.
    pub(crate) fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> bool {
        match self {
            AudioDecoder::Alaw => {
                g711::decode_alaw(payload, out);
                true
            }
            AudioDecoder::Ulaw => {
                g711::decode_ulaw(payload, out);
                true
            }
            _ => {
                // The third-party decoders see untrusted bytes: a panic in them must cost
                // one packet (and a fresh decoder), never the recording.
                let start = out.len();
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.decode_external(payload, out)
                }));
                match res {
                    Ok(ok) => ok,
                    Err(_) => {
                        out.truncate(start);
                        let codec = match self {
                            AudioDecoder::G722(_) => Codec::G722,
                            _ => Codec::Opus,
                        };
                        if let Some(fresh) = AudioDecoder::new(codec) {
                            *self = fresh;
                        }
                        false
                    }
                }
            }
        }
    }

    fn decode_external(&mut self, payload: &[u8], out: &mut Vec<i16>) -> bool {
        match self {
            AudioDecoder::Alaw | AudioDecoder::Ulaw => false,
            AudioDecoder::G722(dec) => {
                let start = out.len();
                out.resize(start + payload.len() * 2, 0);
                match dec.decode_frame_into(payload, &mut out[start..]) {
                    Ok(n) => {
                        out.truncate(start + n);
                        true
                    }
                    Err(_) => {
                        out.truncate(start);
                        false
                    }
                }
            }
            AudioDecoder::Opus(dec, scratch) => {
                if payload.len() <= 1 {
                    // Empty or TOC-only: a DTX frame, i.e. silence (no samples).
                    return !payload.is_empty();
                }
                match dec.decode(payload, OPUS_MAX_FRAME, scratch) {
                    Ok(n) if n > 0 => {
                        out.extend(scratch[..2 * n].chunks_exact(2).map(|c| {
                            ((c[0] + c[1]) * 0.5 * 32768.0)
                                .round()
                                .clamp(-32768.0, 32767.0) as i16
                        }));
                        true
                    }
                    _ => false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_defaults_and_dynamic_entries() {
        let map =
            PayloadMap::from_sdp_rtpmaps([(111u8, "opus/48000/2"), (101, "telephone-event/8000")]);
        assert_eq!(map.get(8).unwrap().codec, Codec::Pcma);
        assert_eq!(map.get(0).unwrap().codec, Codec::Pcmu);
        assert_eq!(map.get(9).unwrap().clock_rate, 8000);
        assert_eq!(map.get(13).unwrap().codec, Codec::ComfortNoise);
        assert_eq!(
            map.get(111),
            Some(PayloadType {
                codec: Codec::Opus,
                clock_rate: 48000
            })
        );
        assert_eq!(map.get(101).unwrap().codec, Codec::TelephoneEvent);
        assert_eq!(map.get(96), None);
    }

    #[test]
    fn parses_sdp_body() {
        let sdp = "v=0\r\nm=audio 4000 RTP/AVP 8 96\r\na=rtpmap:96 G722/8000\r\na=rtpmap:97 speex/16000\r\n";
        let map = PayloadMap::from_sdp(sdp);
        assert_eq!(map.get(96).unwrap().codec, Codec::G722);
        assert_eq!(map.get(97).unwrap().codec, Codec::Unsupported);
        assert_eq!(map.get(97).unwrap().clock_rate, 16000);
    }

    #[test]
    fn garbage_payloads_never_panic_out_of_the_decoders() {
        let mut x = 99u64;
        for codec in [Codec::G722, Codec::Opus] {
            let mut dec = AudioDecoder::new(codec).unwrap();
            for len in 0..300usize {
                let payload: Vec<u8> = (0..len)
                    .map(|_| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        (x >> 56) as u8
                    })
                    .collect();
                let mut out = Vec::new();
                let _ = dec.decode(&payload, &mut out);
                // At most 120 ms at 48 kHz (RFC 6716), downmixed to mono.
                assert!(out.len() <= 5760, "{codec}: {} samples", out.len());
            }
        }
    }

    #[test]
    fn opus_round_trip_is_a_tone() {
        use audio_codec::Encoder as _;
        let mut enc = audio_codec::opus::OpusEncoder::new(48000, 1);
        let mut dec = AudioDecoder::new(Codec::Opus).unwrap();
        let mut out = Vec::new();
        for k in 0..20 {
            let pcm: Vec<i16> = (0..960)
                .map(|i| {
                    let t = (k * 960 + i) as f64 / 48000.0;
                    ((t * 2.0 * std::f64::consts::PI * 440.0).sin() * 8000.0) as i16
                })
                .collect();
            assert!(dec.decode(&enc.encode(&pcm), &mut out));
        }
        assert_eq!(out.len(), 20 * 960);
        let tail = &out[10 * 960..];
        let rms =
            (tail.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / tail.len() as f64).sqrt();
        assert!(rms > 3000.0, "decoded rms {rms}");
    }

    fn opus_tone(enc: &mut audio_codec::opus::OpusEncoder, k: usize, channels: usize) -> Vec<u8> {
        use audio_codec::Encoder as _;
        let pcm: Vec<i16> = (0..960 * channels)
            .map(|i| {
                let t = (k * 960 + i / channels) as f64 / 48000.0;
                ((t * 2.0 * std::f64::consts::PI * 440.0).sin() * 8000.0) as i16
            })
            .collect();
        // `encode_into` takes interleaved stereo as it is (`encode` would upmix mono).
        let mut buf = vec![0u8; 1275];
        let n = enc.encode_into(&pcm, &mut buf).expect("opus encode");
        buf.truncate(n);
        buf
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn opus_stereo_and_40_ms_packets_decode() {
        let mut enc = audio_codec::opus::OpusEncoder::new(48000, 2);
        let mut dec = AudioDecoder::new(Codec::Opus).unwrap();
        let mut out = Vec::new();
        for k in 0..10 {
            assert!(dec.decode(&opus_tone(&mut enc, k, 2), &mut out));
        }
        assert_eq!(out.len(), 10 * 960);
        assert!(
            rms(&out[5 * 960..]) > 3000.0,
            "stereo rms {}",
            rms(&out[5 * 960..])
        );

        // Two 20 ms frames joined into one code-3 (VBR) packet of 40 ms (RFC 6716 §3.2.5).
        let mut enc = audio_codec::opus::OpusEncoder::new(48000, 1);
        let mut dec = AudioDecoder::new(Codec::Opus).unwrap();
        let mut out = Vec::new();
        for k in (0..20).step_by(2) {
            let a = opus_tone(&mut enc, k, 1);
            let b = opus_tone(&mut enc, k + 1, 1);
            assert_eq!(a[0] & 0xfc, b[0] & 0xfc, "same configuration");
            let len = a.len() - 1;
            let mut p = vec![(a[0] & 0xfc) | 3, 0x80 | 2];
            if len < 252 {
                p.push(len as u8);
            } else {
                let b0 = 252 + (len & 3);
                p.push(b0 as u8);
                p.push(((len - b0) >> 2) as u8);
            }
            p.extend_from_slice(&a[1..]);
            p.extend_from_slice(&b[1..]);
            assert!(dec.decode(&p, &mut out), "40 ms packet {k}");
        }
        assert_eq!(out.len(), 20 * 960);
        assert!(
            rms(&out[10 * 960..]) > 3000.0,
            "40 ms rms {}",
            rms(&out[10 * 960..])
        );
        let mut none = Vec::new();
        assert!(
            dec.decode(&[0x08], &mut none) && none.is_empty(),
            "DTX frame is silence"
        );
    }

    #[test]
    fn g722_round_trip_is_a_tone() {
        use audio_codec::Encoder as _;
        let mut enc = audio_codec::g722::G722Encoder::new();
        let pcm: Vec<i16> = (0..3200)
            .map(|i| {
                ((i as f64 * 2.0 * std::f64::consts::PI * 500.0 / 16000.0).sin() * 8000.0) as i16
            })
            .collect();
        let bytes = enc.encode(&pcm);
        assert_eq!(bytes.len(), 1600);
        let mut dec = AudioDecoder::new(Codec::G722).unwrap();
        let mut out = Vec::new();
        assert!(dec.decode(&bytes, &mut out));
        assert_eq!(out.len(), 3200);
        let energy: f64 = out[1600..].iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / 1600.0;
        assert!(energy.sqrt() > 3000.0, "decoded rms {}", energy.sqrt());
    }
}
