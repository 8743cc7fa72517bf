//! Shared helpers for callrec's integration tests: real SIPp peers on loopback
//! (`Sipp`, `CallRun`), the proxy binary as a child process (`Proxy`), RTP
//! arrival checks from the kernel's socket table (`RtpWatch`), and a plain
//! `GET /metrics` with a Prometheus text parser; one file per thing driven
//! (see the `mod` lines below).
//!
//! Nothing here uses the callrec library: tests drive the built binary and
//! observe it from outside, like a user would.
//!
//! Addresses follow the project's loopback plan: the proxy on 127.0.0.1, the
//! PBX side on 127.0.0.2, the trunk side on 127.0.0.3. Ports are picked per
//! test (bound and released) so tests run in parallel.

#![allow(dead_code)]

pub mod audio;
pub mod callgen;
pub mod console;
pub mod files;
pub mod http;
pub mod kamailio;
pub mod net;
pub mod pairs;
pub mod proxy;
pub mod raw;
pub mod shared_db;
pub mod sipp;
pub mod speech;
pub mod ua;

// Every helper stays reachable as `common::NAME`, as before the split.
pub use files::*;
pub use http::*;
pub use net::*;
pub use pairs::*;
pub use proxy::*;
pub use sipp::*;

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Where the proxy listens in tests.
pub const PROXY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// The PBX side: calls from here are outgoing.
pub const PBX_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The trunk side: calls from here are incoming.
pub const TRUNK_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// The crate's root folder.
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `sip-scenarios/`: SIPp runs with this as its working folder, because the
/// scenarios name their audio files relative to it.
pub fn scenarios_dir() -> PathBuf {
    repo_dir().join("sip-scenarios")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    let mut out = String::new();
    if from > 0 {
        let _ = writeln!(out, "[... {from} lines before ...]");
    }
    for l in &all[from..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}
