//! Calls that cannot be recorded, end to end through the proxy with SIPp (and
//! the test's own UA where the early media must be inspected): a codec the
//! recorder cannot decode, encrypted media, an announcement that cannot be
//! played, a recording folder that cannot be written — under the profile's
//! `on_record_failure = continue` (connected, not recorded, failure counted)
//! and `reject` (488/480, the PBX never called; or BYE on both legs when the
//! recording fails at the answer). Also: an offer with G.729 beside PCMA
//! reaches the PBX with PCMA only, and that call is recorded.

mod common;

use common::audio::*;
use common::ua::{alaw_decode, Ua};
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn pair_of(name: &'static str) -> Pair {
    Pair {
        name,
        dir: name,
        media: true,
        direction: Direction::Incoming,
    }
}

fn failures(proxy: &Proxy, reason: &str) -> f64 {
    let m = proxy.metrics();
    metric(
        &m,
        &format!("callrec_recording_failures_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

fn refused_unrecordable(proxy: &Proxy) -> f64 {
    metric(&proxy.metrics(), "callrec_calls_refused_unrecordable_total").unwrap_or(-1.0)
}

/// Waits until every call has ended and every recording has been handed on,
/// then returns how many recordings were finished since start.
fn recordings_after_calls(proxy: &Proxy) -> f64 {
    let settled = wait_until(Duration::from_secs(15), || {
        let m = proxy.metrics();
        metric(&m, "callrec_calls_active") == Some(0.0)
            && metric(&m, "callrec_recordings_pending") == Some(0.0)
    });
    assert!(settled, "calls did not end\n{}", proxy.log_tail(40));
    metric(&proxy.metrics(), "callrec_recordings_finished_total").unwrap_or(-1.0)
}

/// Waits for `n` sealed sets; returns their WAV paths.
fn sealed_wavs(proxy: &Proxy, n: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            found = proxy.sealed_sets_now();
            found.len() >= n
        }),
        "no sealed set\n{}",
        proxy.log_tail(60)
    );
    found
        .iter()
        .map(|sig| {
            PathBuf::from(
                sig.to_string_lossy()
                    .trim_end_matches(".sha256.SHA256withRSA.sig")
                    .to_string()
                    + ".wav",
            )
        })
        .collect()
}

/// The left (caller) channel of a stereo WAV.
fn caller_channel(wav: &Path) -> Vec<f64> {
    let mut r = hound::WavReader::open(wav)
        .unwrap_or_else(|e| panic!("{} is not a readable WAV: {e}", wav.display()));
    let ch = r.spec().channels as usize;
    let s: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    s.iter().step_by(ch).map(|v| *v as f64).collect()
}

/// A call that went through: nothing was recorded or sealed, and the one
/// failure is counted under `reason`.
fn assert_connected_unrecorded(proxy: &Proxy, reason: &str) {
    assert_eq!(
        recordings_after_calls(proxy),
        0.0,
        "a {reason} call was recorded\n{}",
        proxy.log_tail(30)
    );
    assert!(proxy.sealed_sets_now().is_empty(), "a set was sealed");
    assert_eq!(failures(proxy, reason), 1.0);
}

/// Runs a caller scenario that expects a refusal while a callee waits at the
/// PBX; returns the caller's outcome and what the callee received.
fn refused_call(
    proxy: &Proxy,
    caller_xml: &str,
    callee_pair: &'static str,
) -> (SippOutcome, String) {
    let run = proxy
        .call(pair_of(callee_pair))
        .timeout(Duration::from_secs(15));
    let dir = TestDir::new("refused");
    let mut callee = run.callee_sipp(dir.path()).spawn();
    assert!(callee.wait_ready(Duration::from_secs(10)));
    let caller = Sipp::new("refused-caller", caller_xml)
        .remote(proxy.sip_addr())
        .local(run.caller_sip)
        .media(
            std::net::IpAddr::V4(run.direction.caller_ip()),
            run.caller_media().port(),
        )
        .key("caller", &run.caller_number)
        .service(&run.dialled)
        .timeout(Duration::from_secs(15))
        .trace_messages(true)
        .trace_dir(dir.path())
        .spawn()
        .wait();
    let callee = callee.wait_at_most(Duration::from_secs(1));
    let seen = callee.read("messages.log");
    (caller, seen)
}

#[test]
fn g729_only_caller_with_continue_connects_but_is_not_recorded() {
    let proxy = Proxy::start();
    let out = proxy.call(pair_of("g729")).run();
    out.assert_success();
    assert_connected_unrecorded(&proxy, "undecodable_codec");
    assert_eq!(refused_unrecordable(&proxy), 0.0);
}

#[test]
fn g729_only_caller_with_reject_gets_488_and_the_pbx_is_never_called() {
    let proxy = Proxy::builder()
        .arg("--on-record-failure")
        .arg("reject")
        .start();
    let (caller, callee_saw) = refused_call(&proxy, "unrecordable-refused/g729.xml", "g729");
    caller.assert_success();
    assert!(
        !callee_saw.contains("INVITE sip:"),
        "the PBX got the INVITE of a call that had to be refused:\n{callee_saw}"
    );
    assert_eq!(failures(&proxy, "undecodable_codec"), 1.0);
    assert_eq!(refused_unrecordable(&proxy), 1.0);
}

#[test]
fn g729_beside_pcma_reaches_the_pbx_as_pcma_only_and_is_recorded() {
    let proxy = Proxy::start();
    let out = proxy.call(pair_of("g729-pcma")).run();
    out.assert_success();
    out.assert_media_both_ways();
    let seen = out.callee.read("messages.log");
    let invite = seen
        .split("INVITE sip:")
        .nth(1)
        .unwrap_or_else(|| panic!("the callee got no INVITE:\n{seen}"));
    let m_line = invite
        .lines()
        .find(|l| l.trim_start().starts_with("m=audio"))
        .expect("the INVITE has an m=audio line");
    let fmts: Vec<&str> = m_line.split_whitespace().skip(3).collect();
    assert_eq!(fmts, ["8", "101"], "the PBX was offered {m_line:?}");
    assert!(!invite.contains("G729"), "G.729 still offered:\n{invite}");
    let wav = sealed_wavs(&proxy, 1).remove(0);
    let left = caller_channel(&wav);
    let seg = &left[4000..20000.min(left.len())];
    assert!(
        level_db(seg, 8000.0, 440.0) - level_db(seg, 8000.0, 1500.0) >= 30.0,
        "the caller's 440 Hz tone is not in the recording"
    );
    assert_eq!(failures(&proxy, "undecodable_codec"), 0.0);
}

#[test]
fn srtp_caller_with_continue_connects_unrecorded_with_its_sdp_untouched() {
    let proxy = Proxy::start();
    let out = proxy.call(pair_of("srtp")).run();
    out.assert_success();
    assert_connected_unrecorded(&proxy, "encrypted_media");
    // Not anchored: the key and the caller's own media address reach the PBX.
    let seen = out.callee.read("messages.log");
    assert!(
        seen.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80"),
        "{seen}"
    );
    let port = out.run.caller_media().port();
    assert!(
        seen.contains(&format!("m=audio {port} RTP/SAVP")),
        "the caller's media address was rewritten:\n{seen}"
    );
}

#[test]
fn srtp_caller_with_reject_gets_488() {
    let proxy = Proxy::builder()
        .arg("--on-record-failure")
        .arg("reject")
        .start();
    let (caller, callee_saw) = refused_call(&proxy, "unrecordable-refused/srtp.xml", "srtp");
    caller.assert_success();
    assert!(!callee_saw.contains("INVITE sip:"), "{callee_saw}");
    assert_eq!(failures(&proxy, "encrypted_media"), 1.0);
    assert_eq!(refused_unrecordable(&proxy), 1.0);
}

#[test]
fn caller_without_g711_for_the_announcement_is_connected_but_not_recorded() {
    let dir = TestDir::new("ann-g722");
    let ann = dir.join("in.wav");
    tone_wav(&ann, 8000, 1, 2000.0, 1.0);
    let proxy = Proxy::builder()
        .arg("--announce-incoming")
        .arg(ann.to_str().unwrap())
        .start();
    let out = proxy.call(pair_of("g722")).run();
    out.assert_success();
    assert_eq!(
        recordings_after_calls(&proxy),
        0.0,
        "recorded although the parties never heard the announcement\n{}",
        proxy.log_tail(30)
    );
    assert_eq!(failures(&proxy, "announcement_not_played"), 1.0);
}

#[test]
fn record_without_announcement_records_the_call_and_still_reports_it() {
    let dir = TestDir::new("ann-g722-rec");
    let ann = dir.join("in.wav");
    tone_wav(&ann, 8000, 1, 2000.0, 1.0);
    let proxy = Proxy::builder()
        .arg("--announce-incoming")
        .arg(ann.to_str().unwrap())
        .arg("--record-without-announcement")
        .start();
    let out = proxy.call(pair_of("g722")).run();
    out.assert_success();
    assert_eq!(sealed_wavs(&proxy, 1).len(), 1);
    assert_eq!(failures(&proxy, "announcement_not_played"), 1.0);
}

/// The recording folder cannot be written (a file where `work/` should be)
/// and the profile says reject: the caller hears the notice as early media,
/// then gets 480 (not 503); the PBX is never called.
#[test]
fn recording_that_cannot_start_under_reject_plays_the_notice_then_480() {
    let dir = TestDir::new("reject-480");
    let notice = dir.join("cannot-record.wav");
    tone_wav(&notice, 8000, 1, 1500.0, 1.0);
    let proxy = Proxy::builder()
        .arg("--on-record-failure")
        .arg("reject")
        .arg("--record-failure-announcement")
        .arg(notice.to_str().unwrap())
        .start();
    let work = proxy.data_dir().join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::write(&work, b"not a folder").unwrap();

    let mut ua = Ua::new("127.0.0.3", proxy.sip_addr());
    ua.invite("03012345678", "200");
    let progress = ua.wait_response("1 INVITE", Duration::from_secs(5), |c| c == 183);
    assert!(progress.sdp_target().is_some(), "183 without SDP");
    let alaw = |p: &[u8]| p.len() > 12 && p[1] & 0x7f == 8;
    let heard: Vec<f64> = ua
        .recv_rtp_until(Duration::from_secs(3), |got| {
            got.iter()
                .filter(|(_, p)| alaw(p))
                .map(|(_, p)| p.len() - 12)
                .sum::<usize>()
                >= 4400
        })
        .iter()
        .filter(|(_, p)| alaw(p))
        .flat_map(|(_, p)| {
            p[12..]
                .iter()
                .map(|b| alaw_decode(*b) as f64)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        heard.len() >= 4400,
        "the caller heard {} samples of the notice",
        heard.len()
    );
    let seg = &heard[400..4400];
    assert!(
        level_db(seg, 8000.0, 1500.0) - level_db(seg, 8000.0, 440.0) >= 30.0,
        "the notice's 1500 Hz tone was not heard"
    );
    let last = ua.wait_response("1 INVITE", Duration::from_secs(5), |c| c >= 300);
    assert_eq!(last.code(), 480, "{}", last.0);
    assert!(
        !proxy.log().contains("offering call to"),
        "the PBX was called\n{}",
        proxy.log_tail(30)
    );
    assert_eq!(failures(&proxy, "start_failed"), 1.0);
    assert_eq!(refused_unrecordable(&proxy), 1.0);
}

/// When a side's SIPp trace shows the first BYE it received (seconds of the day).
fn bye_received_at(messages: &str) -> Option<f64> {
    let lines: Vec<&str> = messages.lines().collect();
    let i = lines.iter().position(|l| l.starts_with("BYE sip:"))?;
    let stamp = lines[..i].iter().rev().find(|l| l.starts_with("-----"))?;
    let time = stamp.split_whitespace().last()?;
    let mut parts = time.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// Runs "answer-late-bye" with the recording folder broken while the PBX
/// rings; returns the caller's and the callee's outcome, and the folder
/// holding their traces.
fn call_whose_recording_breaks_at_the_answer(proxy: &Proxy) -> (SippOutcome, SippOutcome, TestDir) {
    let run = proxy
        .call(pair_of("answer-late-bye"))
        .timeout(Duration::from_secs(30));
    let dir = TestDir::new("late-bye");
    let mut callee = run.callee_sipp(dir.path()).spawn();
    assert!(callee.wait_ready(Duration::from_secs(10)));
    let caller = run.caller_sipp(dir.path()).spawn();
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .log()
            .contains("offering call to")),
        "the call never reached the PBX\n{}",
        proxy.log_tail(30)
    );
    let work = proxy.data_dir().join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::write(&work, b"not a folder").unwrap();
    let caller = caller.wait();
    let callee = callee.wait_at_most(Duration::from_secs(10));
    (caller, callee, dir)
}

/// The recording cannot start at the answer (the folder broke while the PBX
/// rang) and the profile says reject: the answered call is ended with a BYE
/// on both legs at once instead of going on unrecorded.
#[test]
fn recording_failing_at_the_answer_under_reject_hangs_up_both_legs() {
    let proxy = Proxy::builder()
        .arg("--on-record-failure")
        .arg("reject")
        .start();
    let (caller, callee, _traces) = call_whose_recording_breaks_at_the_answer(&proxy);
    caller.assert_success();
    callee.assert_success();
    assert_eq!(failures(&proxy, "start_failed"), 1.0);
    assert_eq!(refused_unrecordable(&proxy), 1.0);
}

/// As above with a notice: the callee is hung up first, the caller hears the
/// notice (1 s) and only then gets its BYE.
#[test]
fn recording_failing_at_the_answer_under_reject_plays_the_notice_before_the_callers_bye() {
    let dir = TestDir::new("late-bye-notice");
    let notice = dir.join("cannot-record.wav");
    tone_wav(&notice, 8000, 1, 1500.0, 1.0);
    let proxy = Proxy::builder()
        .arg("--on-record-failure")
        .arg("reject")
        .arg("--record-failure-announcement")
        .arg(notice.to_str().unwrap())
        .start();
    let (caller, callee, _traces) = call_whose_recording_breaks_at_the_answer(&proxy);
    caller.assert_success();
    callee.assert_success();
    let to_callee = bye_received_at(&callee.read("messages.log")).expect("callee got a BYE");
    let to_caller = bye_received_at(&caller.read("messages.log")).expect("caller got a BYE");
    assert!(
        to_caller - to_callee >= 0.8,
        "the caller was hung up {:.2} s after the callee: no time for the 1 s notice",
        to_caller - to_callee
    );
    assert_eq!(refused_unrecordable(&proxy), 1.0);
}

/// The policy per profile from the config file: one profile rejects what it
/// cannot record; a misspelt value is named at start.
#[test]
fn config_file_profile_with_on_record_failure_reject_refuses_g729() {
    let dir = TestDir::new("reject-config");
    let cfg = dir.join("callrec.toml");
    std::fs::write(
        &cfg,
        "[[profiles]]\nname = \"bank\"\nrecord_all = true\non_record_failure = \"reject\"\n",
    )
    .unwrap();
    let proxy = Proxy::builder()
        .arg("--config")
        .arg(cfg.to_str().unwrap())
        .start();
    let (caller, callee_saw) = refused_call(&proxy, "unrecordable-refused/g729.xml", "g729");
    caller.assert_success();
    assert!(!callee_saw.contains("INVITE sip:"), "{callee_saw}");
    assert_eq!(refused_unrecordable(&proxy), 1.0);

    let err = callrec::policy::PolicyConfig::parse(
        "[[profiles]]\nname = \"a\"\non_record_failure = \"rejected\"\n",
        Path::new("t.toml"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("rejected"), "{err}");
}
