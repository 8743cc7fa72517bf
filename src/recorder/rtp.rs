//! Minimal RTP (RFC 3550) header reader: the fields the timeline needs and the payload slice.

/// The parts of an RTP packet the recorder uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RtpPacket<'a> {
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

/// Parses an RTP packet; None when it is not version 2 or is truncated.
pub(crate) fn parse(packet: &[u8]) -> Option<RtpPacket<'_>> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return None;
    }
    let padding = packet[0] & 0x20 != 0;
    let extension = packet[0] & 0x10 != 0;
    let csrc_count = (packet[0] & 0x0f) as usize;
    let mut start = 12 + 4 * csrc_count;
    if extension {
        let ext = packet.get(start..start + 4)?;
        let words = u16::from_be_bytes([ext[2], ext[3]]) as usize;
        start += 4 + 4 * words;
    }
    let mut end = packet.len();
    if padding {
        let pad = *packet.last()? as usize;
        end = end.checked_sub(pad)?;
    }
    if start > end {
        return None;
    }
    Some(RtpPacket {
        payload_type: packet[1] & 0x7f,
        seq: u16::from_be_bytes([packet[2], packet[3]]),
        timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
        payload: &packet[start..end],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_csrc_extension_and_padding() {
        let mut p = vec![0xb1u8, 0x88, 0x12, 0x34, 0, 0, 1, 0, 0xde, 0xad, 0xbe, 0xef];
        p.extend_from_slice(&[1, 2, 3, 4]); // one CSRC
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]); // extension, one word
        p.extend_from_slice(&[7, 7, 7]); // payload
        p.extend_from_slice(&[0, 2]); // padding of 2
        let r = parse(&p).unwrap();
        assert_eq!(r.payload_type, 8);
        assert_eq!(r.seq, 0x1234);
        assert_eq!(r.timestamp, 256);
        assert_eq!(r.ssrc, 0xdeadbeef);
        assert_eq!(r.payload, &[7, 7, 7]);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(&[0x80, 8, 0]).is_none());
        assert!(parse(&[0x40; 20]).is_none());
        assert!(parse(&[0x8f; 20]).is_none()); // 15 CSRCs do not fit
    }
}
