//! Where the relay hands the recorder its copies: one trait that the userspace
//! relay and the kernel path's feed both call, so that neither needs the other.

use std::time::Instant;

use bytes::Bytes;

use super::Side;

/// Receives a copy of every RTP packet for recording; must never block.
pub trait Tap: Send + Sync {
    /// Offers one RTP packet (whole, header included) that `from` sent.
    fn offer(&self, from: Side, packet: Bytes, arrival: Instant);
}
