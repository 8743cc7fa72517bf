//! Audio for the generated calls: G.711 A-law decoding (to check received
//! frames) and a Goertzel detector telling whether a 20 ms frame carries the
//! tone the other party sends.
//!
//! The A-law expansion is the ITU-T G.711 rule written out (a few lines); a
//! crate for it would be the only dependency besides libc.

/// Linear value of one A-law byte (ITU-T G.711, 13-bit magnitude scaled to 16 bits).
pub fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let seg = (a >> 4) & 0x07;
    let mant = i32::from(a & 0x0f);
    let mag = match seg {
        0 => (mant << 4) + 8,
        _ => ((mant << 4) + 0x108) << (seg - 1),
    };
    if a & 0x80 != 0 {
        mag as i16
    } else {
        -mag as i16
    }
}

/// All 256 A-law values decoded once, so a frame costs one lookup per sample.
pub struct Alaw([i16; 256]);

impl Alaw {
    pub fn new() -> Alaw {
        let mut t = [0i16; 256];
        for (i, v) in t.iter_mut().enumerate() {
            *v = alaw_to_linear(i as u8);
        }
        Alaw(t)
    }

    pub fn decode(&self, a: u8) -> i16 {
        self.0[a as usize]
    }
}

impl Default for Alaw {
    fn default() -> Self {
        Alaw::new()
    }
}

/// Goertzel detector for one frequency.
#[derive(Clone, Copy, Debug)]
pub struct Goertzel {
    coeff: f32,
}

impl Goertzel {
    pub fn new(freq_hz: f32, rate_hz: f32) -> Goertzel {
        Goertzel {
            coeff: 2.0 * (2.0 * std::f32::consts::PI * freq_hz / rate_hz).cos(),
        }
    }

    /// Share of the frame's energy at the detector's frequency: about 1 for a
    /// pure tone at that frequency, near 0 for another tone or noise, 0 for silence.
    pub fn share<I: Iterator<Item = f32>>(&self, samples: I) -> f32 {
        let (mut s1, mut s2, mut energy, mut n) = (0f32, 0f32, 0f32, 0usize);
        for x in samples {
            let s0 = x + self.coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
            energy += x * x;
            n += 1;
        }
        if n == 0 || energy <= 0.0 {
            return 0.0;
        }
        let power = s1 * s1 + s2 * s2 - self.coeff * s1 * s2;
        2.0 * power / (n as f32 * energy)
    }

    /// Whether an A-law frame carries this tone (more than half its energy).
    pub fn alaw_frame_has_tone(&self, table: &Alaw, payload: &[u8]) -> bool {
        let share = self.share(payload.iter().map(|&b| f32::from(table.decode(b))));
        share > 0.5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, n: usize, amp: f32) -> Vec<f32> {
        (0..n)
            .map(|i| amp * (2.0 * std::f32::consts::PI * freq * i as f32 / 8000.0).sin())
            .collect()
    }

    #[test]
    fn alaw_known_values() {
        // 0xD5 and 0x55 are the two smallest magnitudes, 0xAA / 0x2A the largest.
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
    }

    #[test]
    fn goertzel_tells_the_two_tones_apart() {
        let g440 = Goertzel::new(440.0, 8000.0);
        let g1000 = Goertzel::new(1000.0, 8000.0);
        let a = sine(440.0, 160, 8000.0);
        let b = sine(1000.0, 160, 8000.0);
        assert!(g440.share(a.iter().copied()) > 0.8);
        assert!(g440.share(b.iter().copied()) < 0.1);
        assert!(g1000.share(b.iter().copied()) > 0.8);
        assert!(g1000.share(a.iter().copied()) < 0.1);
        assert_eq!(g440.share(std::iter::repeat_n(0.0, 160)), 0.0);
    }

    #[test]
    fn the_shipped_tone_files_pass_the_frame_check() {
        // The same A-law files SIPp's pcaps are made of (sip-scenarios/audio).
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../sip-scenarios/audio/");
        let table = Alaw::new();
        for (file, f, other) in [
            ("caller-440.al", 440.0, 1000.0),
            ("callee-1000.al", 1000.0, 440.0),
        ] {
            let data = std::fs::read(format!("{dir}{file}")).expect("tone file");
            let (g, o) = (Goertzel::new(f, 8000.0), Goertzel::new(other, 8000.0));
            let frames: Vec<&[u8]> = data.chunks_exact(160).take(50).collect();
            assert_eq!(frames.len(), 50);
            assert!(
                frames.iter().all(|fr| g.alaw_frame_has_tone(&table, fr)),
                "{file}"
            );
            assert!(
                !frames.iter().any(|fr| o.alaw_frame_has_tone(&table, fr)),
                "{file}"
            );
            // Silence (A-law 0xD5 everywhere) carries no tone.
            assert!(!g.alaw_frame_has_tone(&table, &[0xD5; 160]));
        }
    }
}
