//! Entry points for the fuzz targets in fuzz/ (built only with the `fuzzing`
//! feature): they reach the recorder's private RTP reader and timeline the
//! way the recording worker drives them, without threads or files.

use super::codec::PayloadMap;
use super::rtp;
use super::timeline::{Thresholds, Timeline};

/// Parses one packet as RTP and checks the payload slice lies inside it.
pub fn rtp_packet(data: &[u8]) {
    if let Some(p) = rtp::parse(data) {
        let inside = data.as_ptr_range();
        let pay = p.payload.as_ptr_range();
        assert!(pay.start >= inside.start && pay.end <= inside.end);
        assert!(p.payload_type < 128);
    }
}

/// Feeds a packet sequence derived from `data` into two parties' timelines
/// and drains them as the worker does. Each record is 7 bytes of header
/// (payload-type choice, sequence step, timestamp step ×2, SSRC choice,
/// arrival step in ms, payload length) followed by the payload bytes, so the
/// fuzzer explores plausible streams (steps, reordering, jumps, SSRC and
/// codec changes) rather than mostly rejected headers.
pub fn timeline_sequence(data: &[u8]) {
    const PTS: [u8; 8] = [0, 8, 9, 13, 101, 111, 96, 127];
    const RATE: u32 = 8000;
    let map = PayloadMap::from_sdp(
        "a=rtpmap:101 telephone-event/8000\na=rtpmap:111 opus/48000/2\na=rtpmap:96 G722/8000\n",
    );
    // The worker's defaults at 8 kHz (250 ms jump, 10 ms drift, 5 s window, 200 ms reorder).
    let th = Thresholds {
        jump: 2000,
        drift: 80,
        drift_window: 40_000,
        settle: i64::from(RATE),
        settle_budget: 1600,
    };
    let window: i64 = 1600;
    let mut timelines = [Timeline::new(), Timeline::new()];
    let (mut seq, mut ts, mut arrival, mut written) = ([0u16; 2], [0u32; 2], 0i64, 0i64);
    let mut out = vec![0i16; 4096];
    let mut rest = data;
    while rest.len() >= 7 {
        let (h, tail) = rest.split_at(7);
        let len = usize::from(h[6]).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        let party = usize::from(h[4] & 1);
        seq[party] = seq[party].wrapping_add(u16::from(h[1]).wrapping_sub(8));
        ts[party] = ts[party].wrapping_add(u32::from(u16::from_be_bytes([h[2], h[3]])));
        arrival += i64::from(h[5]) * i64::from(RATE) / 1000;
        let mut pkt = vec![0x80, PTS[usize::from(h[0] & 7)] | (h[0] & 0x80)];
        pkt.extend_from_slice(&seq[party].to_be_bytes());
        pkt.extend_from_slice(&ts[party].to_be_bytes());
        pkt.extend_from_slice(&u32::from(h[4] >> 1 & 3).to_be_bytes());
        pkt.extend_from_slice(payload);
        let Some(p) = rtp::parse(&pkt) else { continue };
        timelines[party].push(&p, map.get(p.payload_type), arrival, RATE, &th);
        // Commit what is older than the reorder window, in bounded chunks.
        let target = arrival - window;
        while written < target {
            let n = ((target - written) as usize).min(out.len());
            for tl in timelines.iter_mut() {
                tl.drain_into(&mut out[..n]);
            }
            written += n as i64;
        }
    }
    for tl in &timelines {
        let _ = tl.lost();
    }
}
