//! G.711 A-law and µ-law: decoding through our own 256-entry tables, built at
//! compile time from the bit layout of ITU-T G.711, and encoding by segment search.

/// A-law code → 16-bit linear sample.
pub static ALAW_TO_LINEAR: [i16; 256] = build_alaw();
/// µ-law code → 16-bit linear sample.
pub static ULAW_TO_LINEAR: [i16; 256] = build_ulaw();

const fn alaw_sample(code: u8) -> i16 {
    // Even bits are inverted on the wire.
    let a = code ^ 0x55;
    let mantissa = (a & 0x0f) as i32;
    let segment = ((a & 0x70) >> 4) as i32;
    let mut t = (mantissa << 4) + 8;
    if segment >= 1 {
        t += 0x100;
    }
    if segment > 1 {
        t <<= segment - 1;
    }
    if a & 0x80 != 0 {
        t as i16
    } else {
        -t as i16
    }
}

const fn ulaw_sample(code: u8) -> i16 {
    // All bits are inverted on the wire.
    let u = !code;
    let mantissa = (u & 0x0f) as i32;
    let segment = ((u & 0x70) >> 4) as i32;
    let t = (((mantissa << 3) + 0x84) << segment) - 0x84;
    if u & 0x80 != 0 {
        -t as i16
    } else {
        t as i16
    }
}

const fn build_alaw() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = alaw_sample(i as u8);
        i += 1;
    }
    table
}

const fn build_ulaw() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = ulaw_sample(i as u8);
        i += 1;
    }
    table
}

/// Appends the A-law `payload` decoded to linear samples.
pub fn decode_alaw(payload: &[u8], out: &mut Vec<i16>) {
    out.extend(payload.iter().map(|&b| ALAW_TO_LINEAR[b as usize]));
}

/// Appends the µ-law `payload` decoded to linear samples.
pub fn decode_ulaw(payload: &[u8], out: &mut Vec<i16>) {
    out.extend(payload.iter().map(|&b| ULAW_TO_LINEAR[b as usize]));
}

/// Encodes one 16-bit linear sample as A-law (segment search per G.711).
pub fn encode_alaw(sample: i16) -> u8 {
    let mut v = (sample as i32) >> 3;
    let mask = if v >= 0 {
        0xd5
    } else {
        v = -v - 1;
        0x55
    };
    // Segment = position of the highest set bit above bit 4, 0..=7.
    let seg = (0..8).find(|&s| v < (0x20 << s)).unwrap_or(8);
    if seg >= 8 {
        return 0x7f ^ mask;
    }
    let mantissa = if seg < 2 {
        (v >> 1) & 0x0f
    } else {
        (v >> seg) & 0x0f
    };
    (((seg << 4) | mantissa) as u8) ^ mask
}

/// Encodes one 16-bit linear sample as µ-law (biased segment search per G.711).
pub fn encode_ulaw(sample: i16) -> u8 {
    const CLIP: i32 = 8159;
    let mut v = (sample as i32) >> 2;
    let mask = if v < 0 {
        v = -v;
        0x7f
    } else {
        0xff
    };
    v = v.min(CLIP) + 0x21;
    let seg = (0..8).find(|&s| v < (0x40 << s)).unwrap_or(8);
    if seg >= 8 {
        return 0x7f ^ mask;
    }
    (((seg << 4) | ((v >> (seg + 1)) & 0x0f)) as u8) ^ mask
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A-law per G.711: sign bit set (after the 0x55 inversion) is positive;
    /// magnitude in 1/8 units of the 16-bit scale is 2m+1 for segment 0 and
    /// (2m+33)·2^(e-1) otherwise.
    fn alaw_formula(code: u8) -> i32 {
        let c = code ^ 0x55;
        let positive = c >= 128;
        let e = ((c / 16) % 8) as u32;
        let m = (c % 16) as i32;
        let mag = if e == 0 {
            2 * m + 1
        } else {
            (2 * m + 33) * 2i32.pow(e - 1)
        };
        if positive {
            mag * 8
        } else {
            -mag * 8
        }
    }

    /// µ-law per G.711: after inverting all bits, the sign bit set is negative;
    /// the 14-bit magnitude is (2m+33)·2^e − 33, scaled by 4 to 16 bits.
    fn ulaw_formula(code: u8) -> i32 {
        let c = 255 - code;
        let negative = c >= 128;
        let e = ((c / 16) % 8) as u32;
        let m = (c % 16) as i32;
        let mag = (2 * m + 33) * 2i32.pow(e) - 33;
        if negative {
            -mag * 4
        } else {
            mag * 4
        }
    }

    #[test]
    fn alaw_all_256_codes_match_formula() {
        for code in 0..=255u8 {
            assert_eq!(
                ALAW_TO_LINEAR[code as usize] as i32,
                alaw_formula(code),
                "A-law code {code:#04x}"
            );
        }
        assert_eq!(ALAW_TO_LINEAR[0xd5], 8);
        assert_eq!(ALAW_TO_LINEAR[0x55], -8);
        assert_eq!(ALAW_TO_LINEAR[0xaa], 32256);
        assert_eq!(ALAW_TO_LINEAR[0x2a], -32256);
    }

    #[test]
    fn ulaw_all_256_codes_match_formula() {
        for code in 0..=255u8 {
            assert_eq!(
                ULAW_TO_LINEAR[code as usize] as i32,
                ulaw_formula(code),
                "µ-law code {code:#04x}"
            );
        }
        assert_eq!(ULAW_TO_LINEAR[0xff], 0);
        assert_eq!(ULAW_TO_LINEAR[0x7f], 0);
        assert_eq!(ULAW_TO_LINEAR[0x00], -32124);
        assert_eq!(ULAW_TO_LINEAR[0x80], 32124);
    }

    #[test]
    fn encode_round_trips_table_values() {
        for code in 0..=255u8 {
            let v = ALAW_TO_LINEAR[code as usize];
            assert_eq!(encode_alaw(v), code, "A-law {code:#04x}");
            let v = ULAW_TO_LINEAR[code as usize];
            assert_eq!(
                ULAW_TO_LINEAR[encode_ulaw(v) as usize],
                v,
                "µ-law {code:#04x}"
            );
        }
    }

    #[test]
    fn encoders_pick_a_nearby_level_for_every_sample() {
        for x in i16::MIN..=i16::MAX {
            let bound = (x as i32).abs() / 16 + 16;
            let a = ALAW_TO_LINEAR[encode_alaw(x) as usize] as i32;
            assert!((a - x as i32).abs() <= bound, "A-law {x} -> {a}");
            let u = ULAW_TO_LINEAR[encode_ulaw(x) as usize] as i32;
            assert!((u - x as i32).abs() <= bound, "µ-law {x} -> {u}");
        }
    }
}
