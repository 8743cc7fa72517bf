//! The recorder feed: what the program copied into its ring buffer goes to
//! each stream's tap, with the packet's arrival time. Drained every few ms by
//! its own thread, and at once by a stream that hands its flows back, so that
//! a recording is closed only after its last kernel-relayed packet is in it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{monotonic_ns, KernelRelay, Side, Tap};

/// Bytes before the packet in the program's `struct recorded`.
const HEADER: usize = 24;

impl KernelRelay {
    /// Hands everything in the ring to its stream's tap. The taps are looked
    /// up after the ring is read, so the lock a media thread takes to
    /// register one is held only for the lookups, not for the copying.
    pub(super) fn drain(&self) {
        let mut batch: Vec<(u64, Side, Bytes, u64)> = Vec::new();
        {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            while let Some(item) = ring.next() {
                if item.len() < HEADER {
                    continue;
                }
                let stream = u64::from_ne_bytes(item[0..8].try_into().expect("8 bytes"));
                let arrival_ns = u64::from_ne_bytes(item[8..16].try_into().expect("8 bytes"));
                let len = u32::from_ne_bytes(item[16..20].try_into().expect("4 bytes")) as usize;
                let side = if item[20] == 0 {
                    Side::Caller
                } else {
                    Side::Callee
                };
                if let Some(packet) = item.get(HEADER..HEADER + len) {
                    batch.push((stream, side, Bytes::copy_from_slice(packet), arrival_ns));
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        let mut taps: HashMap<u64, Option<Arc<dyn Tap>>> = HashMap::new();
        {
            let registered = self.taps.lock().unwrap_or_else(|p| p.into_inner());
            for (stream, ..) in &batch {
                taps.entry(*stream)
                    .or_insert_with(|| registered.get(stream).cloned());
            }
        }
        let (now, now_ns) = (Instant::now(), monotonic_ns());
        for (stream, side, packet, arrival_ns) in batch {
            // A stream whose recording stopped is no longer listed.
            if let Some(Some(tap)) = taps.get(&stream) {
                let arrival = now
                    .checked_sub(Duration::from_nanos(now_ns.saturating_sub(arrival_ns)))
                    .unwrap_or(now);
                tap.offer(side, packet, arrival);
            }
        }
    }
}
