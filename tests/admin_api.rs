//! The admin API as monitoring sees it: /health is 200 while
//! everything works and 503 with the reason while shutting down; /metrics
//! counts calls by direction, decisions, sealed recordings and upload attempts
//! per target; /api/ refuses requests without the bearer token.

mod common;

use common::ua::Ua;
use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn health_metrics_and_token() {
    let proxy = Proxy::start();
    let (code, body) = http_request(proxy.admin_addr(), "GET", "/health", None).unwrap();
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, _) = http_request(proxy.admin_addr(), "GET", "/api/calls/recent", None).unwrap();
    assert_eq!(code, 401, "/api/ without a token must be refused");

    proxy.call(pair("basic")).run().assert_success();
    proxy.call_reversed(pair("basic")).run().assert_success();
    let mut m = proxy.metrics();
    assert!(
        wait_until(Duration::from_secs(15), || {
            m = proxy.metrics();
            metric_sum(&m, "callrec_recordings_sealed_total") == 2.0
                && metric_sum(&m, "callrec_spool_sets") == 0.0
        }),
        "{m:#?}"
    );
    assert_eq!(metric_sum(&m, "callrec_calls_incoming_total"), 1.0);
    assert_eq!(metric_sum(&m, "callrec_calls_outgoing_total"), 1.0);
    assert_eq!(metric_sum(&m, "callrec_decisions_recorded_total"), 2.0);
    assert_eq!(
        metric_sum(&m, "callrec_upload_failures_total"),
        0.0,
        "{m:#?}"
    );
    assert!(
        metric_sum(&m, "callrec_upload_attempts_total") >= 2.0,
        "{m:#?}"
    );
    assert!(
        m.keys()
            .any(|k| k.starts_with("callrec_upload_attempts_total{target=\"file://")),
        "per-target label missing: {m:#?}"
    );
    assert_eq!(metric_sum(&m, "callrec_recorder_queue_dropped_total"), 0.0);
    assert_eq!(
        metric_sum(&m, "callrec_spool_oldest_age_seconds"),
        0.0,
        "nothing waiting"
    );

    // Recordings search over the API, in another spelling of the number.
    let mut body = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            body = http_get(proxy.admin_addr(), "/api/recordings?number=%2B493012345678")
                .unwrap()
                .1;
            body.matches("base_name").count() == 1
        }),
        "{body}"
    );
    // The search is in the access log under the API token's name.
    let (code, audit) = callrec_cli(&["audit", "--data-dir", proxy.data_dir().to_str().unwrap()]);
    assert_eq!(code, 0, "{audit}");
    assert!(
        audit.contains("  api:admin-token  search  +493012345678  1 set(s)"),
        "API search not in the access log:\n{audit}"
    );
    let (_, active) = http_get(proxy.admin_addr(), "/api/calls/active").unwrap();
    assert_eq!(active.trim(), "[]");
}

#[test]
fn health_turns_503_while_shutting_down() {
    let mut proxy = Proxy::builder().arg("--shutdown-grace").arg("10").start();
    let dir = TestDir::new("health-drain");
    let run = proxy.call(pair("basic")).timeout(Duration::from_secs(30));
    let mut callee = run.callee_sipp(dir.path()).spawn();
    assert!(callee.wait_ready(Duration::from_secs(10)));
    let mut ua = Ua::new("127.0.0.3", proxy.sip_addr());
    ua.invite("03012345678", "200");
    let ok = ua.wait_response("1 INVITE", Duration::from_secs(10), |c| c == 200);
    ua.ack(&ok);
    let (_, active) = http_get(proxy.admin_addr(), "/api/calls/active").unwrap();
    let active: serde_json::Value = serde_json::from_str(&active).unwrap();
    assert_eq!(active[0]["state"], "answered", "{active}");
    assert_eq!(active[0]["recorded"], true, "{active}");
    let _ = Command::new("kill")
        .args(["-TERM", &proxy.pid().to_string()])
        .status();
    // The signal takes effect within moments (longer on a busy machine).
    let mut health = (0, String::new());
    wait_until(Duration::from_secs(5), || {
        health = http_request(proxy.admin_addr(), "GET", "/health", None).unwrap();
        health.0 == 503
    });
    let (code, body) = health;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    ua.bye();
    callee.wait().assert_success();
    assert_eq!(proxy.terminate(Duration::from_secs(20)), Some(0));
}

/// The PBX's REST API is down: calls are still decided on the last snapshot,
/// and /metrics shows the failed refreshes (and no snapshot age until a fetch
/// succeeds); with a directory that loads, the snapshot's age is there.
#[test]
fn metrics_show_whether_the_directory_is_fresh() {
    let dir = TestDir::new("admin-directory");
    // Nobody listens on this port: every refresh fails at once.
    let dead = free_port();
    let down = dir.join("down.toml");
    std::fs::write(
        &down,
        format!(
            "[directory]\nsource = \"http://127.0.0.1:{dead}/rest\"\nlogin_id = \"0001\"\npassword = \"secret\"\nrefresh_secs = 1\n"
        ),
    )
    .unwrap();
    let proxy = Proxy::builder()
        .arg("--config")
        .arg(down.to_str().unwrap())
        .start();
    let mut m = proxy.metrics();
    assert!(
        wait_until(Duration::from_secs(15), || {
            m = proxy.metrics();
            metric_sum(&m, "callrec_directory_refresh_failures") >= 2.0
        }),
        "{m:#?}"
    );
    assert!(
        !m.contains_key("callrec_directory_snapshot_age_seconds"),
        "no snapshot was ever fetched: {m:#?}"
    );
    drop(proxy);

    let up = dir.join("up.toml");
    std::fs::write(
        &up,
        format!(
            "[directory]\nsource = \"{}\"\nrefresh_secs = 1\n",
            repo_dir().join("testdata/directory.toml").display()
        ),
    )
    .unwrap();
    let proxy = Proxy::builder()
        .arg("--config")
        .arg(up.to_str().unwrap())
        .start();
    let m = proxy.metrics();
    assert_eq!(metric_sum(&m, "callrec_directory_refresh_failures"), 0.0);
    let age = m
        .get("callrec_directory_snapshot_age_seconds")
        .copied()
        .unwrap_or_else(|| panic!("snapshot age missing: {m:#?}"));
    assert!(
        age <= 5.0,
        "a snapshot refreshed every second is {age} s old"
    );
}
