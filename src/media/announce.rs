//! Announcements (R3): a WAV of any common rate, width and channel count is
//! read once, mixed to mono and resampled to 8 kHz; for a call it becomes a
//! ready list of 20 ms G.711 RTP packets that the caller-facing relay plays as
//! early media. The callee never hears it: the call is offered to the callee
//! only when it has finished.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::sdp::Sdp;
use crate::audio::{encode_alaw, encode_ulaw};

/// Why an announcement file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// hound could not read it.
    #[error("cannot read announcement {path}: {source}; give a PCM or float WAV file")]
    Read {
        /// The file.
        path: PathBuf,
        /// What hound said.
        source: hound::Error,
    },
    /// It holds no samples.
    #[error("announcement {0} is empty")]
    Empty(PathBuf),
}

/// G.711 flavour used to play an announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum G711 {
    /// PCMA (payload type 8).
    Alaw,
    /// PCMU (payload type 0).
    Ulaw,
}

/// A loaded announcement, as 8 kHz mono PCM.
#[derive(Debug, Clone)]
pub struct Announcement {
    path: PathBuf,
    pcm: Vec<i16>,
}

impl Announcement {
    /// Reads and converts a WAV file.
    pub fn load(path: &Path) -> Result<Announcement, AnnounceError> {
        let err = |source| AnnounceError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut r = hound::WavReader::open(path).map_err(err)?;
        let spec = r.spec();
        let ch = spec.channels.max(1) as usize;
        let raw: Vec<f64> = match spec.sample_format {
            hound::SampleFormat::Int => {
                let scale = 2f64.powi(spec.bits_per_sample as i32 - 1);
                r.samples::<i32>()
                    .map(|s| s.map(|v| v as f64 / scale))
                    .collect::<Result<_, _>>()
                    .map_err(err)?
            }
            hound::SampleFormat::Float => r
                .samples::<f32>()
                .map(|s| s.map(|v| v as f64))
                .collect::<Result<_, _>>()
                .map_err(err)?,
        };
        let mono: Vec<i16> = raw
            .chunks(ch)
            .map(|c| {
                let v = c.iter().sum::<f64>() / c.len() as f64;
                (v * 32767.0).round().clamp(-32768.0, 32767.0) as i16
            })
            .collect();
        if mono.is_empty() {
            return Err(AnnounceError::Empty(path.to_path_buf()));
        }
        let m = (mono.len() as u64 * 8000 / spec.sample_rate.max(1) as u64) as usize;
        let mut pcm = Vec::with_capacity(m);
        let mut scratch = Vec::new();
        crate::audio::resample::resample(&mono, m.max(1), &mut pcm, &mut scratch);
        Ok(Announcement {
            path: path.to_path_buf(),
            pcm,
        })
    }

    /// The file it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Playing time.
    pub fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.pcm.len() as u64 / 8)
    }

    /// The announcement as RTP packets (20 ms each, random SSRC, sequence and
    /// timestamp origin as RFC 3550 asks), the first with the marker bit.
    pub fn rtp_packets(&self, codec: G711, pt: u8) -> Vec<Bytes> {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        let ssrc: u32 = rng.gen();
        let mut seq: u16 = rng.gen();
        let mut ts: u32 = rng.gen();
        let mut out = Vec::with_capacity(self.pcm.len() / 160 + 1);
        for (i, frame) in self.pcm.chunks(160).enumerate() {
            let mut p = Vec::with_capacity(172);
            p.push(0x80);
            p.push(if i == 0 { 0x80 | pt } else { pt });
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&ts.to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            let silence = match codec {
                G711::Alaw => encode_alaw(0),
                G711::Ulaw => encode_ulaw(0),
            };
            p.extend(frame.iter().map(|&s| match codec {
                G711::Alaw => encode_alaw(s),
                G711::Ulaw => encode_ulaw(s),
            }));
            p.resize(172, silence);
            out.push(Bytes::from(p));
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(160);
        }
        out
    }
}

/// The G.711 codec and payload type to play in, from the caller's offer: the
/// first PCMA or PCMU format of the first audio stream.
pub fn choose_codec(offer: &Sdp) -> Option<(G711, u8)> {
    let m = offer
        .media
        .iter()
        .find(|m| m.kind == "audio" && m.port != 0)?;
    m.formats.iter().find_map(|f| {
        let pt: u8 = f.parse().ok()?;
        let name = m
            .rtpmaps
            .iter()
            .find(|(p, _)| *p == pt)
            .map(|(_, n)| n.to_ascii_uppercase());
        match (pt, name.as_deref()) {
            (_, Some(n)) if n.starts_with("PCMA/8000") => Some((G711::Alaw, pt)),
            (_, Some(n)) if n.starts_with("PCMU/8000") => Some((G711::Ulaw, pt)),
            (8, None) => Some((G711::Alaw, 8)),
            (0, None) => Some((G711::Ulaw, 0)),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_wav(path: &Path, rate: u32, bits: u16, channels: u16, secs: f64) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        let amp = 2f64.powi(bits as i32 - 1) * 0.5;
        for i in 0..(rate as f64 * secs) as usize {
            let v = (2.0 * std::f64::consts::PI * 2000.0 * i as f64 / rate as f64).sin() * amp;
            for _ in 0..channels {
                w.write_sample(v as i32).unwrap();
            }
        }
        w.finalize().unwrap();
    }

    #[test]
    fn any_rate_and_width_becomes_8k_packets() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for (rate, bits, ch) in [(8000, 16, 1), (44100, 16, 2), (48000, 24, 1), (16000, 8, 1)] {
            let p = dir.join(format!("a{rate}-{bits}-{ch}.wav"));
            write_wav(&p, rate, bits, ch, 1.0);
            let a = Announcement::load(&p).unwrap();
            assert!(
                (a.duration().as_millis() as i64 - 1000).abs() <= 1,
                "{rate}/{bits}"
            );
            let pk = a.rtp_packets(G711::Alaw, 8);
            assert_eq!(pk.len(), 50, "{rate}/{bits}");
            assert_eq!(pk[0][1], 0x80 | 8);
            assert_eq!(pk[1][1], 8);
            // Half-scale 2 kHz tone: decoded samples reach about 16000.
            let mut pcm = Vec::new();
            for b in &pk[10][12..] {
                pcm.push(crate::audio::ALAW_TO_LINEAR[*b as usize]);
            }
            let peak = pcm.iter().map(|v| v.unsigned_abs()).max().unwrap();
            assert!((13000..20000).contains(&peak), "{rate}/{bits}: peak {peak}");
        }
    }

    #[test]
    fn unreadable_file_is_a_clear_error() {
        let e = Announcement::load(Path::new("/nonexistent.wav")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent.wav"));
    }

    #[test]
    fn codec_choice_follows_the_offer() {
        let s = Sdp::parse(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 9 0 8\r\n").unwrap();
        assert_eq!(choose_codec(&s), Some((G711::Ulaw, 0)));
        let s = Sdp::parse(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 9\r\n").unwrap();
        assert_eq!(choose_codec(&s), None);
    }
}
