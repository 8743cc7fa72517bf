//! The kernel path of the relay (cargo feature `kernel-relay`, flag
//! `--kernel-relay IFACE`): loads the tc program built from
//! `bpf/relay.bpf.c`, attaches it at ingress of the media interfaces, holds
//! the flows that settled streams hand to it, and feeds the recorder from the
//! program's ring buffer. A stream keeps its sockets and its userspace relay
//! the whole time; the kernel only takes over the plain RTP of a direction
//! whose source is fixed, so that anything unusual (a new source, RTCP,
//! SRTP, a packet the program does not understand) still meets the rules of
//! the userspace relay. Attached as a TCX link, which the kernel detaches
//! when the process ends, however it ends: a crashed callrec leaves no
//! program behind relaying to stale flows.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::Ebpf;
use tracing::{info, warn};

use super::tap::Tap;
use super::Side;

mod egress;
mod feed;

/// The program, compiled by build.rs from `bpf/relay.bpf.c`.
// Aligned: the ELF parser reads its headers in place.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay.bpf.o"));

/// How often the recorder feed empties the ring: the recorder works in
/// 20 ms batches, so a few ms here add nothing it would notice.
const FEED_INTERVAL: Duration = Duration::from_millis(5);

/// Why the kernel path could not be started; the proxy does not start then.
#[derive(Debug, thiserror::Error)]
pub enum KernelRelayError {
    /// The running kernel is older than TCX links.
    #[error("the kernel relay needs Linux 6.6 or later (TCX links, detached when the process ends); run without --kernel-relay")]
    KernelTooOld,
    /// Loading the program failed (permissions, verifier).
    #[error(
        "cannot load the kernel relay program: {0} (needs CAP_BPF and CAP_NET_ADMIN, or root)"
    )]
    Load(String),
    /// Attaching to an interface failed.
    #[error("cannot attach the kernel relay to interface {iface}: {reason}")]
    Attach {
        /// The interface named.
        iface: String,
        /// What the kernel said.
        reason: String,
    },
    /// Started twice.
    #[error("the kernel relay is already running in this process")]
    AlreadyRunning,
}

/// A flow's key as the program looks it up: the packet's source and
/// destination, network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    src_ip: u32,
    dst_ip: u32,
    src_port: u16,
    dst_port: u16,
}

/// What the program does with a matching packet, and its counters.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct FlowValue {
    new_src_ip: u32,
    new_dst_ip: u32,
    new_src_port: u16,
    new_dst_port: u16,
    record: u8,
    side: u8,
    pad: [u8; 2],
    out_ifindex: u32,
    pad2: u32,
    stream: u64,
    packets: u64,
    bytes: u64,
    last_ns: u64,
}

// SAFETY: plain C structs without implicit padding (every gap is a field;
// the sizes are asserted below), matching `bpf/relay.bpf.c`.
unsafe impl aya::Pod for FlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowValue {}
const _: () =
    assert!(std::mem::size_of::<FlowKey>() == 12 && std::mem::size_of::<FlowValue>() == 56);

/// One direction of a stream handed to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSpec {
    /// The party's fixed source.
    pub from: SocketAddrV4,
    /// The relay socket its packets arrive at.
    pub arrives_at: SocketAddrV4,
    /// The relay socket they leave from towards the other party.
    pub leaves_from: SocketAddrV4,
    /// Where the other party wants them.
    pub target: SocketAddrV4,
    /// Whose packets these are.
    pub side: Side,
    /// Whether a copy goes to the stream's recorder.
    pub record: bool,
}

impl FlowSpec {
    fn key(&self) -> FlowKey {
        FlowKey {
            src_ip: u32::from(*self.from.ip()).to_be(),
            dst_ip: u32::from(*self.arrives_at.ip()).to_be(),
            src_port: self.from.port().to_be(),
            dst_port: self.arrives_at.port().to_be(),
        }
    }
}

/// Packets and bytes the kernel relayed for one flow, and when it last did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// Packets relayed.
    pub packets: u64,
    /// RTP bytes relayed (UDP payload).
    pub bytes: u64,
    /// When the last one was relayed (CLOCK_MONOTONIC nanoseconds).
    pub last_ns: u64,
}

/// The kernel path of this process.
pub struct KernelRelay {
    flows: Mutex<BpfHashMap<MapData, FlowKey, FlowValue>>,
    counters: Mutex<PerCpuArray<MapData, u64>>,
    /// Flows installed now, kept beside the map so that reading it costs
    /// no walk over the map under the lock the media threads take.
    flow_count: AtomicU64,
    taps: Mutex<HashMap<u64, Arc<dyn Tap>>>,
    ring: Mutex<RingBuf<MapData>>,
    egress: egress::Cache,
    next_stream: AtomicU64,
    // Keeps the program and its TCX links (detached when this drops, or
    // by the kernel when the process ends).
    _ebpf: Mutex<Ebpf>,
}

static KERNEL: OnceLock<KernelRelay> = OnceLock::new();

/// The kernel path, if `start` ran.
pub fn get() -> Option<&'static KernelRelay> {
    KERNEL.get()
}

/// Loads the program, attaches it at ingress of every interface in
/// `ifaces` and starts the recorder feed; once per process.
pub fn start(ifaces: &[String]) -> Result<&'static KernelRelay, KernelRelayError> {
    if KERNEL.get().is_some() {
        return Err(KernelRelayError::AlreadyRunning);
    }
    if !tcx_supported() {
        return Err(KernelRelayError::KernelTooOld);
    }
    let mut ebpf = Ebpf::load(PROGRAM).map_err(|e| KernelRelayError::Load(chain(&e)))?;
    let program: &mut SchedClassifier = ebpf
        .program_mut("relay")
        .ok_or_else(|| KernelRelayError::Load("program `relay` missing".into()))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| KernelRelayError::Load(e.to_string()))?;
    program
        .load()
        .map_err(|e| KernelRelayError::Load(format!("{e:?}")))?;
    for iface in ifaces {
        // A TCX link (no qdisc needed), never a netlink filter, which would
        // outlive a crash and go on relaying.
        program
            .attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|e| KernelRelayError::Attach {
                iface: iface.clone(),
                reason: e.to_string(),
            })?;
        info!(iface, "kernel relay attached");
    }
    let flows = BpfHashMap::try_from(
        ebpf.take_map("flows")
            .ok_or_else(|| KernelRelayError::Load("map `flows` missing".into()))?,
    )
    .map_err(|e| KernelRelayError::Load(e.to_string()))?;
    let counters = PerCpuArray::try_from(
        ebpf.take_map("counters")
            .ok_or_else(|| KernelRelayError::Load("map `counters` missing".into()))?,
    )
    .map_err(|e| KernelRelayError::Load(e.to_string()))?;
    let ring = RingBuf::try_from(
        ebpf.take_map("recorder")
            .ok_or_else(|| KernelRelayError::Load("map `recorder` missing".into()))?,
    )
    .map_err(|e| KernelRelayError::Load(e.to_string()))?;
    let relay = KernelRelay {
        flows: Mutex::new(flows),
        counters: Mutex::new(counters),
        flow_count: AtomicU64::new(0),
        taps: Mutex::new(HashMap::new()),
        ring: Mutex::new(ring),
        egress: egress::Cache::default(),
        next_stream: AtomicU64::new(1),
        _ebpf: Mutex::new(ebpf),
    };
    if KERNEL.set(relay).is_err() {
        return Err(KernelRelayError::AlreadyRunning);
    }
    let relay = KERNEL.get().expect("just set");
    std::thread::Builder::new()
        .name("callrec-kfeed".into())
        .spawn(move || loop {
            std::thread::sleep(FEED_INTERVAL);
            relay.drain();
        })
        .map_err(|e| KernelRelayError::Load(format!("cannot start the recorder feed: {e}")))?;
    Ok(relay)
}

/// An error with its causes, for messages that must say what went wrong.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn tcx_supported() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
}

/// Monotonic nanoseconds, the clock of the program's timestamps.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl KernelRelay {
    /// A new stream's id for the recorder feed.
    pub fn new_stream(&self) -> u64 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }

    /// Sets where a stream's kernel-relayed packets are recorded.
    pub fn set_tap(&self, stream: u64, tap: Arc<dyn Tap>) {
        let mut taps = self.taps.lock().unwrap_or_else(|p| p.into_inner());
        taps.insert(stream, tap);
    }

    /// Stops recording a stream's kernel-relayed packets; call it after its
    /// flows are gone: what the ring still holds for it is delivered first.
    pub fn clear_tap(&self, stream: u64) {
        self.drain();
        let mut taps = self.taps.lock().unwrap_or_else(|p| p.into_inner());
        taps.remove(&stream);
    }

    /// Hands a flow to the kernel, with fresh counters. Ok(false): the
    /// kernel cannot take this one (see `egress`); it stays in userspace.
    pub fn install(&self, stream: u64, spec: &FlowSpec) -> Result<bool, String> {
        let Some(out_ifindex) = self
            .egress
            .out_ifindex(*spec.target.ip(), *spec.leaves_from.ip())
        else {
            return Ok(false);
        };
        let value = FlowValue {
            new_src_ip: u32::from(*spec.leaves_from.ip()).to_be(),
            new_dst_ip: u32::from(*spec.target.ip()).to_be(),
            new_src_port: spec.leaves_from.port().to_be(),
            new_dst_port: spec.target.port().to_be(),
            record: spec.record as u8,
            side: spec.side.index() as u8,
            pad: [0; 2],
            out_ifindex,
            pad2: 0,
            stream,
            packets: 0,
            bytes: 0,
            last_ns: 0,
        };
        let mut flows = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        flows
            .insert(spec.key(), value, 0)
            .map_err(|e| e.to_string())?;
        self.flow_count.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// What the kernel relayed for a flow so far (None: not installed).
    pub fn counters(&self, spec: &FlowSpec) -> Option<FlowCounters> {
        let flows = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        flows.get(&spec.key(), 0).ok().map(|v| FlowCounters {
            packets: v.packets,
            bytes: v.bytes,
            last_ns: v.last_ns,
        })
    }

    /// Takes a flow back; returns its last counters.
    pub fn remove(&self, spec: &FlowSpec) -> Option<FlowCounters> {
        let last = self.counters(spec);
        let mut flows = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        match flows.remove(&spec.key()) {
            Ok(()) => {
                self.flow_count.fetch_sub(1, Ordering::Relaxed);
            }
            Err(e) => warn!(error = %e, "cannot remove a kernel relay flow"),
        }
        last
    }

    /// Flows installed now (all streams).
    pub fn flow_count(&self) -> u64 {
        self.flow_count.load(Ordering::Relaxed)
    }

    /// Packets the program relayed, and packets it left to userspace because
    /// the recorder ring was full.
    pub fn totals(&self) -> [u64; 2] {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = [0u64; 2];
        for (i, o) in out.iter_mut().enumerate() {
            if let Ok(per_cpu) = counters.get(&(i as u32), 0) {
                *o = per_cpu.iter().sum();
            }
        }
        out
    }
}
