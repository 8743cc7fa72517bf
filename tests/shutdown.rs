//! Graceful shutdown: after SIGTERM new calls get 503,
//! running calls may finish within the grace period, calls still running
//! after it are hung up on both legs, and every recording is sealed before
//! the process exits 0.

mod common;

use common::ua::Ua;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn sealed_sets(proxy: &Proxy) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(proxy.data_dir().join("recordings"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(".sha256"))
                .collect()
        })
        .unwrap_or_default()
}

fn verify(set: &std::path::Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_callrec"))
        .arg("verify")
        .arg(set)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "set {} does not verify: {}",
        set.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Starts a call from the test's UA and confirms it; returns the UA and where to send RTP.
fn confirmed_call(proxy: &Proxy, dir: &TestDir) -> (Ua, SippProcess, std::net::SocketAddr) {
    let run = proxy.call(pair("basic")).timeout(Duration::from_secs(60));
    let mut callee = run.callee_sipp(dir.path()).spawn();
    assert!(callee.wait_ready(Duration::from_secs(10)));
    let mut ua = Ua::new("127.0.0.3", proxy.sip_addr());
    ua.invite("03012345678", "200");
    let ok = ua.wait_response("1 INVITE", Duration::from_secs(10), |c| c == 200);
    let to = ok.sdp_target().unwrap();
    ua.ack(&ok);
    (ua, callee, to)
}

#[test]
fn running_call_finishes_new_calls_get_503_and_the_recording_is_sealed() {
    let mut proxy = Proxy::builder().arg("--shutdown-grace").arg("20").start();
    let dir = TestDir::new("shutdown-graceful");
    let (mut ua, callee, to) = confirmed_call(&proxy, &dir);
    ua.send_tone(to, 440.0, Duration::from_secs(1));
    let pid = proxy.pid();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    // Draining once the health check says so (at once, or later on a busy machine).
    assert!(
        wait_until(Duration::from_secs(5), || {
            http_request(proxy.admin_addr(), "GET", "/health", None).is_ok_and(|(c, _)| c == 503)
        }),
        "the proxy did not start draining after SIGTERM"
    );

    // A new call is refused with 503 while the running one goes on.
    let mut other = Ua::new("127.0.0.3", proxy.sip_addr());
    other.invite("03099999999", "200");
    let refused = other.wait_response("1 INVITE", Duration::from_secs(5), |c| c >= 300);
    assert_eq!(refused.code(), 503, "{}", refused.0);
    assert!(refused.header("Retry-After").is_some());

    ua.send_tone(to, 440.0, Duration::from_secs(1));
    ua.bye();
    callee.wait().assert_success();
    let code = proxy.terminate(Duration::from_secs(15));
    assert_eq!(
        code,
        Some(0),
        "callrec did not exit cleanly\n{}",
        proxy.log_tail(40)
    );
    let sets = sealed_sets(&proxy);
    assert_eq!(sets.len(), 1, "expected the one recording sealed");
    verify(&sets[0]);
}

#[test]
fn calls_past_the_grace_period_are_hung_up_and_sealed() {
    let mut proxy = Proxy::builder().arg("--shutdown-grace").arg("1").start();
    let dir = TestDir::new("shutdown-grace-over");
    let (ua, callee, to) = confirmed_call(&proxy, &dir);
    ua.send_tone(to, 440.0, Duration::from_millis(600));
    let started = Instant::now();
    let code = proxy.terminate(Duration::from_secs(20));
    assert_eq!(
        code,
        Some(0),
        "callrec did not exit cleanly\n{}",
        proxy.log_tail(40)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // Both legs got a BYE: the SIPp callee ends its scenario successfully,
    // and the caller UA receives a BYE.
    callee.wait().assert_success();
    let mut buf = [0u8; 4096];
    let mut got_bye = false;
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end && !got_bye {
        if let Ok(n) = ua.sip.recv(&mut buf) {
            got_bye = buf[..n].starts_with(b"BYE ");
        }
    }
    assert!(got_bye, "the caller was not sent a BYE");
    let sets = sealed_sets(&proxy);
    assert_eq!(sets.len(), 1);
    verify(&sets[0]);
    let meta = sets[0].to_string_lossy().replace(".sha256", ".json");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(meta).unwrap()).unwrap();
    assert_eq!(meta["ended_by"], "proxy");
}
