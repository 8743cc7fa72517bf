//! Which calls are recorded, end to end: real SIPp calls through the
//! proxy with two profiles and the static directory in testdata/. Recorded
//! calls leave a sealed set naming the profile and rule; a call no profile
//! takes is proxied without media anchoring (its SDP untouched, no RTP through
//! the proxy); a member who logs out of the group over the admin API
//! makes unrecorded calls until logging in again.

mod common;

use common::*;
use std::time::Duration;

fn config(dir: &TestDir) -> std::path::PathBuf {
    let path = dir.join("callrec.toml");
    let directory = repo_dir().join("testdata/directory.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[numbers]
country_code = "49"
area_code = "30"
exit_code = "0"
max_extension_len = 4

[directory]
source = "{}"

[[profiles]]
name = "sales"
group = "Sales"
users = ["eva"]
record_direct_calls = true

[[profiles]]
name = "support"
group = "Support"
channels = "separate"
"#,
            directory.display()
        ),
    )
    .unwrap();
    path
}

/// The newest finished call as the admin API reports it.
fn last_call(proxy: &Proxy) -> serde_json::Value {
    let (code, body) = http_get(proxy.admin_addr(), "/api/calls/recent").unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v.as_array().unwrap().last().cloned().unwrap()
}

fn sealed_count(proxy: &Proxy) -> usize {
    std::fs::read_dir(proxy.data_dir().join("recordings"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().to_string_lossy().ends_with(".SHA256withRSA.sig"))
                .count()
        })
        .unwrap_or(0)
}

/// Runs one call and returns (anchored, newest metadata if a set was added).
fn call(
    proxy: &Proxy,
    outgoing: bool,
    caller: &str,
    dialled: &str,
) -> (bool, Option<serde_json::Value>) {
    let before = sealed_count(proxy);
    let run = if outgoing {
        proxy.call_reversed(pair("basic"))
    } else {
        proxy.call(pair("basic"))
    };
    let out = run.numbers(caller, dialled).run();
    out.assert_success();
    // Media flowed end to end either way (through the relay or directly).
    out.assert_media_both_ways();
    let c = last_call(proxy);
    let anchored = c["anchored"].as_bool().unwrap();
    if !anchored {
        assert_eq!(c["rtp_from_caller"], 0, "{c}");
        assert_eq!(c["rtp_from_callee"], 0, "{c}");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(sealed_count(proxy), before, "an unrecorded call left a set");
        return (false, None);
    }
    assert!(c["rtp_from_caller"].as_u64().unwrap() > 50, "{c}");
    assert!(
        wait_until(Duration::from_secs(15), || sealed_count(proxy) > before),
        "recorded call sealed no set\n{}",
        proxy.log_tail(40)
    );
    let newest = std::fs::read_dir(proxy.data_dir().join("recordings"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    let meta = serde_json::from_slice(&std::fs::read(newest).unwrap()).unwrap();
    (true, Some(meta))
}

#[test]
fn profiles_decide_and_unrecorded_calls_are_not_anchored() {
    let dir = TestDir::new("policy-e2e");
    let cfg = config(&dir);
    let proxy = Proxy::builder()
        .arg("--config")
        .arg(cfg.to_str().unwrap())
        .start();

    // 1. Incoming to the Sales group number, written nationally.
    let (rec, meta) = call(&proxy, false, "089555123", "03012345600");
    assert!(rec, "call to the group number was not recorded");
    let meta = meta.unwrap();
    assert_eq!(meta["profile"], "sales");
    assert_eq!(meta["matched_rule"], "GroupNumber");

    // 2. Incoming to Anna's own number (active Sales member, direct calls on).
    let (rec, meta) = call(&proxy, false, "089555123", "+493012345201");
    assert!(rec);
    assert_eq!(meta.unwrap()["matched_rule"], "DirectCallToActiveMember");

    // 3. Incoming to the Support group: second profile, separate files.
    let (rec, meta) = call(&proxy, false, "089555123", "00493012345601");
    assert!(rec);
    let meta = meta.unwrap();
    assert_eq!(meta["profile"], "support");
    assert_eq!(meta["audio"]["channel_layout"], "separate");

    // 4. Incoming to a number no profile knows: proxied, not anchored.
    let (rec, _) = call(&proxy, false, "089555123", "03099999999");
    assert!(!rec, "a call no profile takes was anchored");

    // 5. Outgoing by Ben, an active Sales member.
    let (rec, meta) = call(&proxy, true, "202", "004989123456");
    assert!(rec);
    assert_eq!(meta.unwrap()["matched_rule"], "OutgoingActiveMember");

    // 6. Ben logs out of Sales (a phone's URL key); without the token it is refused.
    let path = "/api/groups/Sales/members/ben/logout";
    let (code, _) = http_request(proxy.admin_addr(), "POST", path, None).unwrap();
    assert_eq!(code, 401);
    let (code, _) = http_request(proxy.admin_addr(), "POST", path, Some("wrong")).unwrap();
    assert_eq!(code, 401);
    let (code, body) =
        http_request(proxy.admin_addr(), "POST", path, Some(TEST_ADMIN_TOKEN)).unwrap();
    assert_eq!(code, 200, "{body}");
    let (rec, _) = call(&proxy, true, "202", "004989123456");
    assert!(!rec, "a logged-out member's outgoing call was recorded");

    // 7. The logout is stored in the protocol database.
    let db = rusqlite::Connection::open(proxy.data_dir().join("callrec.sqlite")).unwrap();
    let stored: i64 = db
        .query_row("SELECT COUNT(*) FROM logged_out_members", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, 1, "the logout is not in the database");
    drop(db);
    // And who did it is in the access log.
    let (code, audit) = callrec_cli(&["audit", "--data-dir", proxy.data_dir().to_str().unwrap()]);
    assert_eq!(code, 0, "{audit}");
    assert!(
        audit.lines().any(|l| l.contains("api:admin-token")
            && l.contains("configure")
            && l.contains("ben")
            && l.contains("recording off")
            && l.contains("Sales")),
        "the switch is not in the access log:\n{audit}"
    );

    // 8. Logged in again: recorded again.
    let (code, body) = http_request(
        proxy.admin_addr(),
        "POST",
        "/api/groups/Sales/members/ben/login",
        Some(TEST_ADMIN_TOKEN),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let (rec, _) = call(&proxy, true, "202", "004989123456");
    assert!(rec);

    // 9. Outgoing by a stranger extension: not recorded.
    let (rec, _) = call(&proxy, true, "206", "004989123456");
    assert!(!rec);

    // Every decision is in the log with its reason.
    let log = proxy.log();
    assert_eq!(
        log.matches("decision:").count(),
        8,
        "one decision per call expected in the log"
    );
}

#[test]
fn unknown_group_or_user_in_the_admin_api_is_a_clear_404() {
    let dir = TestDir::new("policy-404");
    let cfg = config(&dir);
    let proxy = Proxy::builder()
        .arg("--config")
        .arg(cfg.to_str().unwrap())
        .start();
    let (code, body) = http_request(
        proxy.admin_addr(),
        "POST",
        "/api/groups/Nope/members/nobody/logout",
        Some(TEST_ADMIN_TOKEN),
    )
    .unwrap();
    assert_eq!(code, 404);
    assert!(body.contains("unknown group"), "{body}");
}
