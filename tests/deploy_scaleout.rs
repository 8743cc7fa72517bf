//! The scale-out example of `deploy/kamailio/` with real Kamailio: Kamailio's
//! dispatcher in front of two callrec
//! instances, SIPp on both ends.
//!
//! Layout on loopback:
//!
//! ```text
//! SIPp caller 127.0.0.3 ──▶ Kamailio 127.0.0.1:K ──▶ callrec A 127.0.0.1:PA ──▶ SIPp callee 127.0.0.2
//!                                              └──▶ callrec B 127.0.0.1:PB ──┘
//! ```
//!
//! Kamailio runs the shipped `deploy/kamailio/kamailio.cfg` unchanged; only its
//! pre-processor defines (listen address, dispatcher list, ping interval,
//! timers, control socket) are set with `-A`. The instances run with
//! `--dispatcher` Kamailio's address; Kamailio names the caller (on the trunk
//! side), so every call is incoming and goes to `--pbx` (the callee).
//! Kamailio record-routes, and SIPp sends every
//! in-dialog request to Kamailio, so ACK and BYE pass it too.
//!
//! Asserted:
//! 1. `kamailio -c` accepts the shipped config, with its defaults and with the
//!    test's defines; the shipped dispatcher.list has the documented format.
//! 2. 10 calls through Kamailio: SIPp caller and callee count 10 successful
//!    calls (exit 0); both instances took calls (their /api/calls/recent lists
//!    answered, incoming calls, 10 together); each instance holds exactly as
//!    many sealed sets as it answered calls; Kamailio never had to fail over;
//!    the ACK and the BYE of every call passed Kamailio.
//! 3. Instance B stopped: Kamailio's OPTIONS keepalives mark it down (the
//!    config's dst-down event line in Kamailio's log). 5 more calls all
//!    succeed, all land on A (5 more answered calls and 5 more sealed sets
//!    there), Kamailio sent none of them to B first (no failover line), and
//!    their ACKs and BYEs passed Kamailio too.
//! 4. Failover before the keepalives notice (a second test): the set holds
//!    A and an address where nothing answers, keepalives every 30 s. The one
//!    call round robin sends to the silent address is retried on A after the
//!    1 s timer (one "retrying INVITE … after 408" line, the address logged
//!    down); all 4 calls succeed and are recorded on A.
//! 5. The other direction of the route set (a third test): when the PBX side
//!    hangs up, the instance's BYE to the caller follows the Record-Route
//!    Kamailio put into the INVITE (a "along the route set" line per call).
//!
//! The test installs nothing: `deploy/test.sh` installs the Debian package
//! `kamailio` (and SIPp) before running the tests.
//!
//! Over 600 lines: four scenarios, each starting Kamailio and several
//! instances and following calls and their sets across them.

mod common;

use common::kamailio::*;
use common::*;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

#[test]
fn deploy_shipped_kamailio_files_are_valid() {
    let cfg = kamailio_dir().join("kamailio.cfg");
    let (ok, out) = kamailio_check(&cfg, &[]);
    assert!(
        ok,
        "kamailio -c rejects {} with its defaults\n{out}",
        cfg.display()
    );
    let (ok, out) = kamailio_check(&cfg, &["-A".into(), "WITH_TCP".into()]);
    assert!(
        ok,
        "kamailio -c rejects {} with WITH_TCP\n{out}",
        cfg.display()
    );

    // setid sip-uri [flags [priority [attrs]]]
    let list = read_lossy(&kamailio_dir().join("dispatcher.list"));
    let mut entries = 0;
    for line in list.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(
            f.len() >= 2
                && f[0].parse::<u32>().is_ok()
                && f[1].starts_with("sip:")
                && f.get(2).is_none_or(|v| v.parse::<u32>().is_ok())
                && f.get(3).is_none_or(|v| v.parse::<i32>().is_ok())
                && f.len() <= 5,
            "dispatcher.list line not in `setid sip-uri flags priority attrs` form: {line:?}"
        );
        assert_eq!(f[0], "1", "the config dispatches to set 1: {line:?}");
        entries += 1;
    }
    assert!(
        entries >= 2,
        "dispatcher.list should list several instances:\n{list}"
    );
}

#[test]
fn deploy_kamailio_dispatches_to_two_instances_and_fails_over() {
    let started = Instant::now();
    let dir = TestDir::new("scaleout");
    let pbx = SocketAddr::from((PBX_IP, free_port()));
    let trunk = SocketAddr::from((TRUNK_IP, free_port()));
    let a = Instance::start("A", pbx, trunk);
    let mut b = Instance::start("B", pbx, trunk);
    let kamailio = Kamailio::start(&dir, &[a.sip, b.sip], 1);

    // --- 10 calls over both instances -----------------------------------
    calls_through(&kamailio, pbx, 10);
    let counts = settle(&[&a, &b], 10);
    eprintln!("after 10 calls, (answered, sealed sets) on A, B: {counts:?}");
    assert!(
        counts.iter().all(|(answered, _)| *answered > 0),
        "round robin should give both instances calls: {counts:?}\n{}",
        kamailio.log_tail(60)
    );
    for inst in [&a, &b] {
        for call in inst.answered() {
            assert_eq!(
                call["direction"], "incoming",
                "calls from Kamailio's address are incoming on {}: {call}",
                inst.name
            );
        }
    }
    assert_eq!(
        failovers(&kamailio.log()),
        0,
        "no call should have needed a second instance\n{}",
        kamailio.log_tail(60)
    );
    assert_eq!(
        assert_dialogs_passed(&kamailio),
        10,
        "Kamailio should have dispatched 10 calls\n{}",
        kamailio.log_tail(60)
    );

    // --- B stops; Kamailio's keepalives take it out ------------------------
    let (a_answered, a_sealed) = counts[0];
    b.stop();
    assert!(!b.is_running(), "instance B did not stop");
    let down_line = format!("callrec instance down: sip:{}", b.sip);
    let marked = wait_until(Duration::from_secs(15), || {
        kamailio.log().contains(&down_line)
    });
    assert!(
        marked,
        "Kamailio did not mark the stopped instance down (expected a line with {down_line:?})\n{}",
        kamailio.log_tail(80)
    );
    let marked_after = started.elapsed();

    // --- 5 more calls, all on A ----------------------------------------------
    calls_through(&kamailio, pbx, 5);
    let after = settle(&[&a], a_answered + 5);
    assert_eq!(
        after[0],
        (a_answered + 5, a_sealed + 5),
        "all 5 calls should be answered and recorded on A"
    );
    assert_eq!(
        failovers(&kamailio.log()),
        0,
        "Kamailio sent a call to the stopped instance before failing over\n{}",
        kamailio.log_tail(80)
    );
    assert_eq!(
        assert_dialogs_passed(&kamailio),
        15,
        "Kamailio should have dispatched 15 calls in all\n{}",
        kamailio.log_tail(60)
    );
    eprintln!(
        "B marked down {:.1} s into the test; whole test {:.1} s",
        marked_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let SocketAddr::V4(b4) = b.sip else {
        unreachable!()
    };
    assert!(
        !is_bound(SocketAddrV4::new(*b4.ip(), b4.port()), false),
        "B's SIP port is still bound"
    );
}

/// Failover before the keepalives notice: the dispatcher set holds A and an
/// address where nothing listens, and keepalives are only every 30 s. Round
/// robin sends one of the first two calls to the silent address; after
/// FR_TIMER_MS without a reply the config marks it inactive and retries the
/// call on A. All calls succeed and are recorded on A; Kamailio logs exactly
/// one retry.
#[test]
fn deploy_kamailio_fails_over_when_an_instance_does_not_answer() {
    let dir = TestDir::new("failover");
    let pbx = SocketAddr::from((PBX_IP, free_port()));
    let trunk = SocketAddr::from((TRUNK_IP, free_port()));
    let a = Instance::start("A", pbx, trunk);
    let silent = SocketAddr::from((PROXY_IP, free_port()));
    let kamailio = Kamailio::start(&dir, &[a.sip, silent], 30);

    let out = calls_through(&kamailio, pbx, 4);
    let counts = settle(&[&a], 4);
    assert_eq!(counts[0], (4, 4), "all 4 calls answered and sealed on A");
    let log = kamailio.log();
    let retries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("retrying INVITE "))
        .collect();
    assert_eq!(
        retries.len(),
        1,
        "exactly one call should have been retried after the silent destination\n{}",
        kamailio.log_tail(60)
    );
    assert!(
        retries[0].contains(&format!("on sip:{}", a.sip)) && retries[0].contains("after 408"),
        "the retry should go to A after the local timeout (408): {}",
        retries[0]
    );
    let down = format!("callrec instance down: sip:{silent}");
    assert!(
        log.contains(&down),
        "the silent destination should be logged down ({down:?})\n{}",
        kamailio.log_tail(60)
    );
    assert_eq!(assert_dialogs_passed(&kamailio), 4);
    assert_eq!(out.caller.successful_calls(), Some(4));
}

/// When the callee hangs up, the instance sends its BYE to the caller along
/// the route set it learnt from the INVITE's Record-Route, i.e. through
/// Kamailio, whose loose_route() relays it to the caller.
#[test]
fn deploy_kamailio_relays_the_instances_bye_along_the_route_set() {
    let dir = TestDir::new("callee-bye");
    let pbx = SocketAddr::from((PBX_IP, free_port()));
    let trunk = SocketAddr::from((TRUNK_IP, free_port()));
    let a = Instance::start("A", pbx, trunk);
    let kamailio = Kamailio::start(&dir, &[a.sip], 5);

    pair_through(&kamailio, pbx, "callee-bye", 2);
    assert_eq!(
        settle(&[&a], 2)[0],
        (2, 2),
        "both calls answered and sealed"
    );
    let log = kamailio.log();
    let routed_byes = log
        .lines()
        .filter(|l| l.contains("<script>: in-dialog BYE along the route set"))
        .count();
    assert_eq!(
        routed_byes,
        2,
        "each call's BYE from the instance should pass Kamailio by its Record-Route\n{}",
        kamailio.log_tail(60)
    );
}
