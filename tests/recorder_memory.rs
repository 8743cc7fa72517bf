//! Memory a running recording holds: the heap bytes the process keeps per
//! recording while the calls are up (queue, both party timelines, WAV writer
//! buffer, commit buffers). A recorded call may cost at most 200 kB of memory
//! in all (BENCHMARKS.md, memory per call); the recorder's part must stay well under
//! half of that, so that thousands of concurrent calls fit.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use callrec::recorder::{encode_alaw, PayloadMap, Recorder, RecordingSpec};
use callrec::vocab::{ChannelMode, Side};

/// Counts the heap bytes currently allocated by the whole test process.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn packet(seq: u16, value: i16) -> Bytes {
    let mut p = vec![0x80u8, 8];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(seq as u32 * 160).to_be_bytes());
    p.extend_from_slice(&7u32.to_be_bytes());
    p.extend(std::iter::repeat_n(encode_alaw(value), 160));
    Bytes::from(p)
}

fn pcma() -> PayloadMap {
    PayloadMap::from_sdp("v=0\r\nm=audio 4000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n")
}

/// Starts a stereo recording and feeds it `secs` seconds of both parties' audio.
fn running(dir: &std::path::Path, name: &str, t0: Instant, secs: u16) -> Recorder {
    let mut spec = RecordingSpec::new(dir, name, ChannelMode::Stereo);
    spec.start = t0;
    let rec = Recorder::start(spec).unwrap();
    rec.set_payload_map(Side::Caller, pcma());
    rec.set_payload_map(Side::Callee, pcma());
    let fork = rec.fork();
    for k in 0..50 * secs {
        let at = t0 + Duration::from_millis(20 * u64::from(k));
        assert!(fork.offer(Side::Caller, packet(k, 1000), at));
        assert!(fork.offer(Side::Callee, packet(k, -1000), at));
    }
    rec
}

#[test]
fn a_running_recording_holds_under_96_kb() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    // The recorder threads start with the first recording; their own memory
    // is the process's, not a call's.
    running(tmp.path(), "warm", t0, 1).finish().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let before = LIVE.load(Ordering::Relaxed);
    const N: usize = 20;
    // Long enough for the timelines' and the writer's buffers to wrap and fill.
    let recs: Vec<Recorder> = (0..N)
        .map(|i| running(tmp.path(), &format!("r{i}"), t0, 6))
        .collect();
    // Let the lanes place what was queued (they take it every 100 ms; on a
    // busy machine later): until then a recording also holds its queued
    // packets. Its buffers stay as long as it runs, so a recording over
    // budget never gets under it.
    let budget = 96 * 1024;
    let per_call = || (LIVE.load(Ordering::Relaxed) - before) / N as isize;
    let deadline = Instant::now() + Duration::from_secs(5);
    while per_call() > budget && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let per_call = per_call();
    eprintln!("heap per running stereo recording: {} kB", per_call / 1024);
    for r in recs {
        let out = r.finish().unwrap();
        assert_eq!(out.caller.packets, 300, "every packet reached the recorder");
        assert_eq!(out.callee.queue_dropped, 0);
    }
    assert!(
        per_call <= budget,
        "a running stereo recording holds {} kB of heap (budget 96 kB)",
        per_call / 1024
    );
}
