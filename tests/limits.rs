//! Resource limits as an attacker meets them, with real SIPp peers: an SDP
//! with thousands of m= lines is refused with 488 and binds no port (the call
//! goes on), and streams with port 0 hold no ports; --max-calls and --invite-rate-per-source turn new calls away
//! with 503 and Retry-After while trusted peers can be exempted;
//! --max-call-duration ends a held call with BYEs on both legs and seals its
//! recording; an empty admin token stops the start.

mod common;

use common::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// An address on the trunk's side that is neither the trunk nor the PBX.
const STRANGER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

/// Samples `callrec_media_ports_in_use` every 50 ms in the background.
struct PortGauge {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<f64>,
}

impl PortGauge {
    fn start(admin: SocketAddr) -> PortGauge {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = thread::spawn(move || {
            let mut max: f64 = 0.0;
            while !s.load(Ordering::Relaxed) {
                max = max.max(metric_sum(&metrics(admin), "callrec_media_ports_in_use"));
                thread::sleep(Duration::from_millis(50));
            }
            max
        });
        PortGauge { stop, handle }
    }

    /// The highest value seen.
    fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("gauge sampler")
    }
}

fn wait_metric(proxy: &Proxy, name: &str, want: f64) -> f64 {
    let mut v = f64::NAN;
    wait_until(Duration::from_secs(15), || {
        v = metric_sum(&proxy.metrics(), name);
        v == want
    });
    v
}

#[test]
fn reinvite_with_2000_media_lines_is_refused_and_binds_nothing() {
    let offer =
        std::fs::read_to_string(scenarios_dir().join("many-streams/offer-2000.sdp")).unwrap();
    let lines: Vec<&str> = offer.lines().filter(|l| l.starts_with("m=")).collect();
    assert_eq!(lines.len(), 2000);
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("m=audio 0 ")).count(),
        1000
    );

    let proxy = Proxy::start();
    let gauge = PortGauge::start(proxy.admin_addr());
    let many = Pair {
        name: "many-streams",
        dir: "many-streams",
        media: true,
        direction: Direction::Incoming,
    };
    let out = proxy.call(many).run();
    let max_in_use = gauge.finish();
    // The caller's SIPp got 488 for the re-INVITE, and both ends finished the
    // call normally afterwards (the caller's BYE answered by the callee).
    out.assert_success();
    out.assert_media_both_ways();
    assert_eq!(
        max_in_use,
        2.0,
        "the call's one stream holds two port pairs; the refused offer must bind none\n{}",
        proxy.log_tail(40)
    );
    assert_eq!(wait_metric(&proxy, "callrec_media_ports_in_use", 0.0), 0.0);
    let recent = proxy.recent_calls();
    assert_eq!(recent.len(), 1, "{recent:#?}");
    assert_eq!(recent[0]["status"], 200, "{:#}", recent[0]);
    assert_eq!(recent[0]["end_reason"], "caller hung up", "{:#}", recent[0]);
}

#[test]
fn disabled_and_rejected_streams_hold_no_ports() {
    let proxy = Proxy::start();
    let three = Pair {
        name: "port-zero",
        dir: "port-zero",
        media: true,
        direction: Direction::Incoming,
    };
    let run = proxy.call(three);
    let call = thread::spawn(move || run.run());
    // The caller talks for ~3 s after the answer: look at the ports meanwhile.
    let answered = wait_until(Duration::from_secs(15), || {
        metric_sum(&proxy.metrics(), "callrec_calls_answered_total") == 1.0
    });
    thread::sleep(Duration::from_millis(500));
    let in_use = metric_sum(&proxy.metrics(), "callrec_media_ports_in_use");
    let out = call.join().expect("call");
    assert!(answered, "the call was not answered\n{}", out.report());
    out.assert_success();
    out.assert_media_both_ways();
    assert_eq!(
        in_use,
        2.0,
        "of three m= lines only the first is in use (one with port 0, one rejected): two port pairs\n{}",
        proxy.log_tail(40)
    );
    assert_eq!(wait_metric(&proxy, "callrec_media_ports_in_use", 0.0), 0.0);
}

#[test]
fn initial_invite_with_nine_media_lines_gets_488() {
    let proxy = Proxy::start();
    let dir = TestDir::new("nine-streams");
    let caller = Sipp::new("nine", "many-streams/nine-streams-caller.xml")
        .local(SocketAddr::from((TRUNK_IP, free_port())))
        .remote(proxy.sip_addr())
        .media(IpAddr::V4(TRUNK_IP), media_ports())
        .key("caller", "03012345678")
        .service("200")
        .timeout(Duration::from_secs(10))
        .trace_dir(dir.path())
        .spawn()
        .wait();
    assert!(
        caller.success() && caller.successful_calls() == Some(1),
        "the INVITE with 9 m= lines was not refused with 488\n{}\n{}",
        caller.report(),
        proxy.log_tail(40)
    );
    let m = proxy.metrics();
    assert_eq!(metric_sum(&m, "callrec_media_ports_in_use"), 0.0, "{m:#?}");
}

#[test]
fn max_calls_turns_the_third_call_away_with_retry_after() {
    let proxy = Proxy::builder().arg("--max-calls").arg("2").start();
    // Two ~9 s calls at once, from the trunk to the PBX.
    let mut long = proxy
        .call(pair("basic"))
        .calls(2)
        .limit(2)
        .rate(10.0)
        .timeout(Duration::from_secs(40));
    long.pair = Pair {
        name: "long-call",
        dir: "long-call",
        ..long.pair
    };
    let both = thread::spawn(move || long.run());
    let up = wait_until(Duration::from_secs(15), || {
        metric_sum(&proxy.metrics(), "callrec_calls_active") == 2.0
    });
    assert!(up, "the two calls did not come up\n{}", proxy.log_tail(40));

    let dir = TestDir::new("third-call");
    let third = Sipp::new("third", "refused/caller.xml")
        .local(SocketAddr::from((TRUNK_IP, free_port())))
        .remote(proxy.sip_addr())
        .media(IpAddr::V4(TRUNK_IP), media_ports())
        .key("caller", "03099999999")
        .service("200")
        .timeout(Duration::from_secs(10))
        .trace_dir(dir.path())
        .spawn()
        .wait();
    let third_ok = third.success() && third.successful_calls() == Some(1);
    let both = both.join().expect("long calls");
    assert!(
        third_ok,
        "the third call was not refused with 503 and Retry-After\n{}\n{}",
        third.report(),
        proxy.log_tail(40)
    );
    both.assert_success();
    let m = proxy.metrics();
    assert_eq!(
        metric_sum(&m, "callrec_calls_over_limit_total"),
        1.0,
        "{m:#?}"
    );
    assert_eq!(metric_sum(&m, "callrec_calls_total"), 2.0, "{m:#?}");
}

#[test]
fn invite_burst_from_one_source_is_rate_limited_but_the_trunk_is_exempt() {
    // The limited source is an accepted peer (a --trusted-source, e.g. a
    // second carrier's SBC); strangers never get this far (403).
    let proxy = Proxy::builder()
        .arg("--invite-rate-per-source")
        .arg("2")
        .arg("--trusted-source")
        .arg(&STRANGER_IP.to_string())
        .start();
    // A stranger sends 8 INVITEs within ~80 ms: at most 2 (plus what refills
    // meanwhile) may become calls; the rest must get 503 with Retry-After.
    // Nobody answers at the PBX, so a call let in shows up as a failed SIPp
    // call (100 Trying instead of 503).
    let dir = TestDir::new("burst");
    let burst = Sipp::new("burst", "refused/caller.xml")
        .local(SocketAddr::from((STRANGER_IP, free_port())))
        .remote(proxy.sip_addr())
        .media(IpAddr::V4(STRANGER_IP), media_ports())
        .key("caller", "03011111111")
        .service("200")
        .calls(8)
        .rate(100.0)
        .timeout(Duration::from_secs(15))
        .trace_dir(dir.path())
        .spawn()
        .wait();
    let refused = burst.successful_calls().unwrap_or(0);
    let m = proxy.metrics();
    assert!(
        refused >= 5,
        "only {refused} of 8 INVITEs from one source within 80 ms got 503 with Retry-After (limit 2/s)\n{}\n{}",
        burst.report(),
        proxy.log_tail(40)
    );
    assert_eq!(
        metric_sum(&m, "callrec_invites_rate_limited_total"),
        refused as f64,
        "{m:#?}"
    );

    // With the exemption, the trunk sends the same burst of real calls: none is limited.
    let proxy = Proxy::builder()
        .arg("--invite-rate-per-source")
        .arg("2")
        .arg("--rate-limit-exempt-trusted")
        .start();
    let out = proxy
        .call(pair("basic"))
        .calls(8)
        .rate(100.0)
        .timeout(Duration::from_secs(40))
        .run();
    out.assert_success();
    let m = proxy.metrics();
    assert_eq!(
        metric_sum(&m, "callrec_invites_rate_limited_total"),
        0.0,
        "the trunk was rate limited: {m:#?}"
    );
}

#[test]
fn max_call_duration_ends_a_held_call_and_seals_it() {
    let proxy = Proxy::builder().arg("--max-call-duration").arg("3").start();
    let hold = Pair {
        name: "max-duration",
        dir: "max-duration",
        media: true,
        direction: Direction::Incoming,
    };
    // Both SIPp ends succeed only if each receives a BYE while on hold.
    let out = proxy.call(hold).timeout(Duration::from_secs(30)).run();
    out.assert_success();
    let recent = proxy.recent_calls();
    assert_eq!(recent.len(), 1, "{recent:#?}");
    assert_eq!(recent[0]["end_reason"], "max_duration", "{:#}", recent[0]);
    let m = proxy.metrics();
    assert_eq!(
        metric_sum(&m, "callrec_calls_max_duration_total"),
        1.0,
        "{m:#?}"
    );
    assert_eq!(wait_metric(&proxy, "callrec_media_ports_in_use", 0.0), 0.0);

    // The recording is sealed and verifies.
    let rec = proxy.data_dir().join("recordings");
    let mut sets = Vec::new();
    wait_until(Duration::from_secs(20), || {
        sets = std::fs::read_dir(&rec)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.to_string_lossy().ends_with(".sha256.SHA256withRSA.sig"))
                    .collect()
            })
            .unwrap_or_default();
        !sets.is_empty()
    });
    assert_eq!(
        sets.len(),
        1,
        "no sealed set in {}\n{}",
        rec.display(),
        proxy.log_tail(40)
    );
    let set = sets[0]
        .to_string_lossy()
        .trim_end_matches(".SHA256withRSA.sig")
        .to_string();
    let v = Command::new(env!("CARGO_BIN_EXE_callrec"))
        .arg("verify")
        .arg(&set)
        .arg("--cert")
        .arg(proxy.data_dir().join("cert.pem"))
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "callrec verify {set}: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
}

#[test]
fn max_call_duration_ends_a_call_that_rings_for_ever() {
    let proxy = Proxy::builder().arg("--max-call-duration").arg("2").start();
    let dir = TestDir::new("ringing");
    let mut callee = Sipp::new("callee", "cancel/callee.xml")
        .local(proxy.pbx_addr())
        .media(IpAddr::V4(PBX_IP), media_ports())
        .timeout(Duration::from_secs(20))
        .trace_dir(dir.path())
        .spawn();
    assert!(
        callee.wait_ready(Duration::from_secs(10)),
        "callee sipp did not start"
    );
    let caller = Sipp::new("caller", "max-duration/ringing-caller.xml")
        .local(proxy.trunk_addr())
        .remote(proxy.sip_addr())
        .media(IpAddr::V4(TRUNK_IP), media_ports())
        .key("caller", "03012345678")
        .service("200")
        .timeout(Duration::from_secs(20))
        .trace_dir(dir.path())
        .spawn()
        .wait();
    let callee = callee.wait_at_most(Duration::from_secs(10));
    assert!(
        caller.success() && callee.success(),
        "the ringing call was not ended with 408 to the caller and CANCEL to the callee\n{}\n{}\n{}",
        caller.report(),
        callee.report(),
        proxy.log_tail(40)
    );
    let recent = proxy.recent_calls();
    assert_eq!(recent[0]["end_reason"], "max_duration", "{recent:#?}");
    assert_eq!(recent[0]["status"], 408, "{recent:#?}");
}

/// Starts `callrec run` with an admin token from `file` or `env` and waits up
/// to 15 s for it to exit; returns (exit code, output), or None if it runs on.
fn start_with_token(file: Option<&std::path::Path>, env: Option<&str>) -> Option<(i32, String)> {
    let dir = TestDir::new("token");
    let rtp = free_ports(20);
    // CALLREC_TEST_BIN runs the tests against another build, as for `Proxy`.
    let bin = std::env::var("CALLREC_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_callrec").to_string());
    let mut c = Command::new(bin);
    c.args(["run", "--listen"])
        .arg(SocketAddr::from((PROXY_IP, free_port())).to_string())
        .arg("--pbx")
        .arg(SocketAddr::from((PBX_IP, free_port())).to_string())
        .arg("--trunk")
        .arg(SocketAddr::from((TRUNK_IP, free_port())).to_string())
        .arg("--admin-listen")
        .arg(SocketAddr::from((PROXY_IP, free_port())).to_string())
        .arg("--rtp-ports")
        .arg(format!("{rtp}-{}", rtp + 19))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("CALLREC_") {
            c.env_remove(k);
        }
    }
    if let Some(f) = file {
        c.arg("--admin-token-file").arg(f);
    }
    if let Some(v) = env {
        c.env("CALLREC_ADMIN_TOKEN", v);
    }
    let mut child = c.spawn().unwrap();
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        if let Ok(Some(status)) = child.try_wait() {
            let o = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            return Some((status.code().unwrap_or(-1), text));
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn an_empty_admin_token_stops_the_start() {
    let dir = TestDir::new("empty-token");
    let file = dir.join("admin.token");
    std::fs::write(&file, " \n\t\n").unwrap();
    let (code, text) = start_with_token(Some(&file), None)
        .expect("callrec started with an empty --admin-token-file (anyone sending an empty token gets into /api/)");
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(&file.display().to_string()) && text.contains("empty"),
        "the error does not name the file and the problem: {text}"
    );
    let (code, text) = start_with_token(None, Some("   "))
        .expect("callrec started with a blank CALLREC_ADMIN_TOKEN");
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("CALLREC_ADMIN_TOKEN") && text.contains("empty"),
        "{text}"
    );
}
