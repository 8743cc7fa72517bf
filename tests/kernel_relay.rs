//! The kernel path of the relay (`--kernel-relay lo`, cargo feature
//! `kernel-relay`), driven with the load generator on loopback: the parties
//! must hear each other's tone, the kernel must have relayed nearly every
//! packet (the first few of each direction go through userspace until the
//! source is fixed), every packet must be in the recording and in the
//! counters, and nothing may be left in the kernel after the calls: neither
//! flows while the proxy runs nor a program relaying once the proxy is killed.
//! Runs as root (loading a BPF program needs CAP_BPF and CAP_NET_ADMIN).

#![cfg(feature = "kernel-relay")]

mod common;

use common::callgen::*;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn kernel_proxy() -> Proxy {
    Proxy::builder().arg("--kernel-relay").arg("lo").start()
}

#[test]
fn calls_relayed_in_the_kernel_reach_both_parties_and_every_packet_is_recorded() {
    let proxy = kernel_proxy();
    let (code, j) = run_callgen(&proxy, 3, 4, &[]);
    assert_eq!(code, Some(0), "{j}\n{}", proxy.log_tail(60));
    assert_eq!(j["calls_ok"], 3, "{j}");
    let per_party = j["packets_per_party"].as_u64().unwrap();
    let sent = j["packets_sent"].as_u64().unwrap();
    let received = j["packets_received"].as_u64().unwrap();
    // A packet at the very edge of a call may miss (as in userspace): the
    // callee's first one can arrive before its answer's SDP is applied.
    assert!(received * 1000 >= sent * 995, "{received} of {sent}: {j}");
    assert_eq!(
        j["tone_frames"], received,
        "every packet carried its tone: {j}"
    );

    let m = proxy.metrics();
    let kernel = metric(&m, "callrec_kernel_relayed_packets_total").unwrap_or(0.0);
    assert!(
        kernel >= 0.9 * sent as f64,
        "the kernel relayed {kernel} of {sent} packets\n{}",
        proxy.log_tail(40)
    );
    let counted = metric(&m, "callrec_rtp_packets_total").unwrap_or(0.0) as u64;
    assert!(
        counted * 1000 >= sent * 995,
        "the calls' counters include what the kernel relayed: {counted} of {sent}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || metric(
            &proxy.metrics(),
            "callrec_kernel_flows"
        ) == Some(0.0)),
        "flows left in the kernel after the calls"
    );
    let mut recorded = 0;
    for base in sealed_sets(&proxy, 3) {
        let md = meta(&base);
        for party in ["caller", "callee"] {
            let n = md["media"][party]["packets"].as_u64().unwrap_or(0);
            assert!(
                n * 100 >= per_party * 99,
                "{party}: {n} of {per_party}: {md}"
            );
            recorded += n;
        }
        let lv = tone_levels(&base.with_extension("wav"), &[440.0, 1000.0]);
        assert!(lv.iter().any(|c| c[0] >= 30.0), "440 Hz: {lv:?}");
        assert!(lv.iter().any(|c| c[1] >= 30.0), "1 kHz: {lv:?}");
    }
    // Every packet relayed, by the kernel or not, is in a recording.
    assert_eq!(recorded, counted, "recorded vs relayed");
}

#[test]
fn audio_up_to_the_hangup_is_in_the_recording_as_counted() {
    // Both parties talk until the caller's BYE: the kernel's last copies
    // must reach the recording before it is closed, and the calls'
    // counters must include the kernel's last packets.
    let proxy = kernel_proxy();
    let (code, j) = run_callgen(&proxy, 4, 3, &["--audio-seconds", "3"]);
    assert_eq!(j["calls_ok"], 4, "{j}\n{}", proxy.log_tail(40));
    let _ = code; // the last packets may cross the BYE: callgen may count them short
    let counted = metric(&proxy.metrics(), "callrec_rtp_packets_total").unwrap_or(0.0) as u64;
    let recorded: u64 = sealed_sets(&proxy, 4)
        .iter()
        .map(|b| recorded_packets(b))
        .sum();
    let sent = j["packets_sent"].as_u64().unwrap();
    assert!(
        counted * 100 >= sent * 99,
        "counted {counted} of {sent} sent"
    );
    assert_eq!(recorded, counted, "packets recorded vs relayed\n{j}");
}

#[test]
fn a_proxy_killed_mid_call_leaves_nothing_relaying_in_the_kernel() {
    let mut proxy = kernel_proxy();
    // One call of 8 s (7.5 s of audio per party); the proxy dies after ~3 s.
    let gen = callgen_command(&proxy, 1, 8)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("callgen runs");
    assert!(
        wait_until(Duration::from_secs(10), || metric(
            &proxy.metrics(),
            "callrec_kernel_relayed_packets_total"
        )
        .unwrap_or(0.0)
            >= 50.0),
        "the kernel relays the call\n{}",
        proxy.log_tail(40)
    );
    std::thread::sleep(Duration::from_secs(2));
    proxy.kill_hard();
    let out = gen.wait_with_output().expect("callgen ends");
    let j = summary(&out);
    // A program left attached with its flows would go on delivering the
    // caller's tone to the callee for the rest of the call.
    let per_party = j["packets_per_party"].as_u64().unwrap();
    let got = j["media_callee"]["received"].as_u64().unwrap();
    assert!(
        got > 50 && got * 10 < per_party * 7,
        "the callee got {got} of {per_party} packets: relaying went on after the proxy died\n{j}"
    );
}

/// A network namespace holding both parties, joined to this host by a veth
/// pair: 10.213.N.1 on the host's end, 10.213.N.2 (PBX) and .3 (trunk) in
/// the namespace, N and the names from the process id so that two runs on
/// one machine do not meet. Everything is removed on drop.
struct PartiesNetns {
    name: String,
    host_if: String,
    net: u8,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PartiesNetns {
    fn new() -> PartiesNetns {
        let id = std::process::id() % 100_000;
        let ns = PartiesNetns {
            name: format!("callrec-kr-{id}"),
            host_if: format!("crk{id}h"),
            net: (id % 250) as u8 + 1,
        };
        let peer = format!("crk{id}p");
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &ns.name,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.addr(1)),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        for host in [2, 3] {
            let a = format!("{}/24", ns.addr(host));
            ip(&["-n", &ns.name, "addr", "add", &a, "dev", &peer]);
        }
        ip(&["-n", &ns.name, "link", "set", &peer, "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn addr(&self, host: u8) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, 213, self.net, host)
    }
}

impl Drop for PartiesNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn media_for_another_host_leaves_through_the_media_interface_from_the_kernel() {
    // The parties are another host here: what the kernel relays must be
    // sent out of the veth with the next hop resolved, not delivered locally.
    let ns = PartiesNetns::new();
    let pbx = std::net::SocketAddr::from((ns.addr(2), 5060));
    let trunk = std::net::SocketAddr::from((ns.addr(3), 5060));
    let proxy = Proxy::builder()
        .on_ip(ns.addr(1))
        .pbx(pbx)
        .trunk(trunk, &trunk.to_string())
        .arg("--kernel-relay")
        .arg(&ns.host_if)
        .start();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(callgen_bin())
        .args(["--calls", "2", "--rate", "5", "--hold", "4"])
        .args(["--proxy", &proxy.sip_addr().to_string()])
        .args(["--caller", &trunk.to_string(), "--callee", &pbx.to_string()])
        .output()
        .expect("callgen runs in the namespace");
    let j = summary(&out);
    assert_eq!(out.status.code(), Some(0), "{j}\n{}", proxy.log_tail(40));
    assert_eq!(j["calls_ok"], 2, "{j}");
    let sent = j["packets_sent"].as_u64().unwrap();
    let received = j["packets_received"].as_u64().unwrap();
    assert!(received * 1000 >= sent * 995, "{received} of {sent}: {j}");
    assert_eq!(j["tone_frames"], received, "{j}");
    let kernel = metric(&proxy.metrics(), "callrec_kernel_relayed_packets_total").unwrap_or(0.0);
    assert!(
        kernel >= 0.9 * sent as f64,
        "the kernel relayed {kernel} of {sent} packets\n{}",
        proxy.log_tail(40)
    );
    let counted = metric(&proxy.metrics(), "callrec_rtp_packets_total").unwrap_or(0.0) as u64;
    let mut recorded = 0;
    for base in sealed_sets(&proxy, 2) {
        recorded += recorded_packets(&base);
        let lv = tone_levels(&base.with_extension("wav"), &[440.0, 1000.0]);
        assert!(lv.iter().any(|c| c[0] >= 30.0), "440 Hz: {lv:?}");
        assert!(lv.iter().any(|c| c[1] >= 30.0), "1 kHz: {lv:?}");
    }
    assert_eq!(recorded, counted, "packets recorded vs relayed");
}
