//! Every SIPp scenario pair through a running callrec: the
//! caller sends to the proxy, the callee listens where the proxy's --pbx or
//! --trunk points. Asserted per run: both sipp exit codes 0 with every call
//! successful; for pairs with media, RTP arrived at both m= ports (the only
//! route there is through the proxy's relay, since each side's SDP names the
//! proxy) and the proxy's own RTP counter grew; afterwards no dialog and no
//! media port is left in use.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

/// Waits until the proxy reports no active call and no media port in use;
/// returns the metrics seen last.
fn settled(proxy: &Proxy) -> BTreeMap<String, f64> {
    let mut last = BTreeMap::new();
    let ok = wait_until(Duration::from_secs(10), || {
        last = proxy.metrics();
        metric_sum(&last, "callrec_calls_active") == 0.0
            && metric_sum(&last, "callrec_media_ports_in_use") == 0.0
    });
    assert!(
        ok,
        "calls or media ports left behind after the run: {last:#?}\n{}",
        proxy.log_tail(100)
    );
    last
}

fn through_proxy(run: impl FnOnce(&Proxy) -> CallRun) {
    let proxy = Proxy::start();
    let run = run(&proxy);
    let before = proxy.metrics();
    let out = run.run();
    eprintln!(
        "{} ({:?}): RTP at caller m= port {:?}, at callee m= port {:?}",
        out.run.pair.name, out.run.direction, out.caller_media, out.callee_media
    );
    out.assert_success();
    let after = settled(&proxy);
    let calls = |m: &BTreeMap<String, f64>| metric_sum(m, "callrec_calls_total");
    assert_eq!(
        calls(&after) - calls(&before),
        f64::from(out.run.calls),
        "the proxy counted a different number of calls\n{after:#?}"
    );
    if out.run.pair.media {
        out.assert_media_both_ways();
        let rtp = |m: &BTreeMap<String, f64>| metric_sum(m, "callrec_rtp_packets_total");
        // ~50 packets/s each way; every pair has at least ~1 s of two-way media per call.
        let relayed = rtp(&after) - rtp(&before);
        assert!(
            relayed >= 50.0 * f64::from(out.run.calls),
            "the proxy relayed only {relayed} RTP packets for {} call(s)\n{after:#?}",
            out.run.calls
        );
    }
}

fn incoming(name: &str) {
    through_proxy(|proxy| proxy.call(pair(name)));
}

fn reversed(name: &str) {
    through_proxy(|proxy| proxy.call_reversed(pair(name)));
}

#[test]
fn proxy_basic() {
    incoming("basic");
}

#[test]
fn proxy_callee_bye() {
    incoming("callee-bye");
}

#[test]
fn proxy_cancel() {
    incoming("cancel");
}

#[test]
fn proxy_busy() {
    incoming("busy");
}

#[test]
fn proxy_early_media() {
    incoming("early-media");
}

#[test]
fn proxy_hold() {
    incoming("hold");
}

#[test]
fn proxy_callee_hold() {
    incoming("callee-hold");
}

#[test]
fn proxy_late_offer() {
    incoming("late-offer");
}

#[test]
fn proxy_outgoing() {
    incoming("outgoing");
}

#[test]
fn proxy_outgoing_callee_bye() {
    reversed("callee-bye");
}

#[test]
fn proxy_outgoing_cancel() {
    reversed("cancel");
}

#[test]
fn proxy_outgoing_busy() {
    reversed("busy");
}

#[test]
fn proxy_outgoing_early_media() {
    reversed("early-media");
}

#[test]
fn proxy_outgoing_hold() {
    reversed("hold");
}

#[test]
fn proxy_outgoing_callee_hold() {
    reversed("callee-hold");
}

#[test]
fn proxy_outgoing_late_offer() {
    reversed("late-offer");
}

#[test]
fn proxy_load_200_calls_at_20_per_second() {
    through_proxy(|proxy| proxy.call(pair("load")).calls(200).rate(20.0));
}

#[test]
fn proxy_answers_options() {
    let proxy = Proxy::start();
    assert!(sip_options_answered(
        proxy.sip_addr(),
        Duration::from_secs(2)
    ));
}

/// SIP over TCP from the trunk, UDP on to the PBX (one port serves both).
#[test]
fn proxy_basic_caller_over_tcp() {
    through_proxy(|proxy| proxy.call(pair("basic")).caller_transport("t1"));
}
