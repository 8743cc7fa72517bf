//! Which directions of one stream the kernel relays (`--kernel-relay`), and
//! keeping the stream's counters true while it does. The stream's relay owns
//! this: it says after every change what it would relay to whom, and the
//! kernel gets exactly the plain-RTP directions whose source is fixed. A
//! changed plan takes the old flow back before the new one goes in, and the
//! relay's end takes every flow back. Without the cargo feature, or without
//! the flag, nothing here does anything.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{StreamStats, Tap};
use crate::media::Side;

/// What the relay would hand to the kernel for packets from `side`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Direction {
    pub side: Side,
    pub from: SocketAddr,
    pub arrives_at: SocketAddr,
    pub leaves_from: SocketAddr,
    pub target: SocketAddr,
}

/// The kernel's share of one stream: the relay plans it, the call's handle
/// (`Stream`) ends it, so that the kernel's last counts are in the stream's
/// counters by the time the call reads them.
#[derive(Clone)]
pub(super) struct Offload {
    #[cfg(feature = "kernel-relay")]
    inner: Option<Arc<std::sync::Mutex<kernel_side::Inner>>>,
}

impl std::fmt::Debug for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Offload")
    }
}

impl Offload {
    pub(super) fn new(stats: &Arc<StreamStats>) -> Offload {
        #[cfg(not(feature = "kernel-relay"))]
        let _ = stats;
        Offload {
            #[cfg(feature = "kernel-relay")]
            inner: crate::media::kernel::get().map(|k| {
                Arc::new(std::sync::Mutex::new(kernel_side::Inner::new(
                    k,
                    stats.clone(),
                )))
            }),
        }
    }

    /// Whether the kernel may relay anything for this stream.
    pub(super) fn available(&self) -> bool {
        #[cfg(feature = "kernel-relay")]
        return self.inner.is_some();
        #[cfg(not(feature = "kernel-relay"))]
        false
    }

    /// Makes the kernel relay exactly `wanted` (None: that direction stays in
    /// userspace), recording into `tap` if there is one. Returns whether any
    /// flow is in the kernel now (its counters then need syncing), so that
    /// the relay keeps that answer instead of asking for it per packet.
    pub(super) fn plan(
        &mut self,
        wanted: [Option<Direction>; 2],
        tap: &Option<Arc<dyn Tap>>,
    ) -> bool {
        #[cfg(feature = "kernel-relay")]
        if let Some(i) = &self.inner {
            let mut inner = lock(i);
            inner.plan(wanted, tap);
            return inner.active();
        }
        let _ = (wanted, tap);
        false
    }

    /// Adds what the kernel relayed since the last call to the stream's counters.
    pub(super) fn sync(&self) {
        #[cfg(feature = "kernel-relay")]
        if let Some(i) = &self.inner {
            lock(i).sync();
        }
    }

    /// Takes every flow back from the kernel, adds its last counts, and
    /// keeps the kernel out of this stream from now on.
    pub(super) fn finish(&self) {
        #[cfg(feature = "kernel-relay")]
        if let Some(i) = &self.inner {
            lock(i).finish();
        }
    }
}

#[cfg(feature = "kernel-relay")]
fn lock(i: &std::sync::Mutex<kernel_side::Inner>) -> std::sync::MutexGuard<'_, kernel_side::Inner> {
    i.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(feature = "kernel-relay")]
mod kernel_side {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use tracing::warn;

    use std::net::{SocketAddr, SocketAddrV4};

    use super::{Direction, StreamStats, Tap};
    use crate::media::kernel::{self, FlowCounters, FlowSpec, KernelRelay};

    /// IPv4 with a specific local address on both relay sockets: what the
    /// program handles. Anything else stays in userspace.
    fn v4(d: &Direction) -> Option<[SocketAddrV4; 4]> {
        let one = |a: SocketAddr| match a {
            SocketAddr::V4(a) if !a.ip().is_unspecified() && a.port() != 0 => Some(a),
            _ => None,
        };
        Some([
            one(d.from)?,
            one(d.arrives_at)?,
            one(d.leaves_from)?,
            one(d.target)?,
        ])
    }

    pub(super) struct Inner {
        relay: &'static KernelRelay,
        stats: Arc<StreamStats>,
        stream: u64,
        /// Per sending side: the flow in the kernel and its counters as last synced.
        flows: [Option<(FlowSpec, FlowCounters)>; 2],
        tapped: bool,
        finished: bool,
    }

    impl Inner {
        pub(super) fn new(relay: &'static KernelRelay, stats: Arc<StreamStats>) -> Inner {
            Inner {
                relay,
                stats,
                stream: relay.new_stream(),
                flows: [None, None],
                tapped: false,
                finished: false,
            }
        }

        pub(super) fn active(&self) -> bool {
            self.flows.iter().any(Option::is_some)
        }

        pub(super) fn plan(&mut self, wanted: [Option<Direction>; 2], tap: &Option<Arc<dyn Tap>>) {
            if self.finished {
                return;
            }
            // The feed must know the tap before the first copy can arrive.
            if let Some(t) = tap {
                self.relay.set_tap(self.stream, t.clone());
                self.tapped = true;
            }
            for (i, want) in wanted.iter().enumerate() {
                let spec = want.and_then(|d| {
                    let [from, arrives_at, leaves_from, target] = v4(&d)?;
                    Some(FlowSpec {
                        from,
                        arrives_at,
                        leaves_from,
                        target,
                        side: d.side,
                        record: tap.is_some(),
                    })
                });
                let current = self.flows[i].map(|(s, _)| s);
                if current == spec {
                    continue;
                }
                if let Some((old, seen)) = self.flows[i].take() {
                    if let Some(last) = self.relay.remove(&old) {
                        add(&self.stats, i, seen, last);
                    }
                }
                if let Some(spec) = spec {
                    match self.relay.install(self.stream, &spec) {
                        Ok(true) => self.flows[i] = Some((spec, FlowCounters::default())),
                        // Not deliverable from the kernel (a routed target): userspace.
                        Ok(false) => {}
                        Err(e) => warn!(error = %e, "cannot hand a media flow to the kernel"),
                    }
                }
            }
            // Recording stopped: the old flows (which copied) are gone, so
            // what is still in the ring for the tap goes to it first.
            if tap.is_none() && self.tapped {
                self.tapped = false;
                self.relay.clear_tap(self.stream);
            }
        }

        pub(super) fn sync(&mut self) {
            for i in 0..2 {
                if let Some((spec, seen)) = self.flows[i].as_mut() {
                    if let Some(now) = self.relay.counters(spec) {
                        add(&self.stats, i, *seen, now);
                        *seen = now;
                    }
                }
            }
        }
    }

    /// Adds the kernel's counts since `seen` to the stream's counters and
    /// moves its last-packet time forward.
    fn add(stats: &StreamStats, side: usize, seen: FlowCounters, now: FlowCounters) {
        let packets = now.packets.saturating_sub(seen.packets);
        if packets == 0 {
            return;
        }
        stats.rtp_packets[side].fetch_add(packets, Ordering::Relaxed);
        stats.rtp_bytes[side].fetch_add(now.bytes.saturating_sub(seen.bytes), Ordering::Relaxed);
        let age_ms = kernel::monotonic_ns().saturating_sub(now.last_ns) / 1_000_000;
        let at = crate::media::relay::monotonic_ms().saturating_sub(age_ms);
        stats.last_rx_ms.fetch_max(at, Ordering::Relaxed);
    }

    impl Inner {
        /// Takes the flows back (their last counts into the stream's
        /// counters) and delivers the ring's copies before dropping the tap.
        pub(super) fn finish(&mut self) {
            self.finished = true;
            for f in self.flows.iter_mut() {
                if let Some((spec, seen)) = f.take() {
                    if let Some(last) = self.relay.remove(&spec) {
                        add(&self.stats, spec.side.index(), seen, last);
                    }
                }
            }
            if self.tapped {
                self.tapped = false;
                self.relay.clear_tap(self.stream);
            }
        }
    }

    impl Drop for Inner {
        fn drop(&mut self) {
            self.finish();
        }
    }
}
