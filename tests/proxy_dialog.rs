//! In-dialog signalling through a running callrec: INFO, MESSAGE, NOTIFY,
//! UPDATE and REFER relayed both ways,
//! 100rel with PRACK, UPDATE in the early dialog, and a caller that writes
//! compact headers with two Via values in one line. Each test runs one SIPp
//! pair from sip-scenarios/ (the receiving scenario checks what arrives with
//! `ereg ... check_it`) and asserts here, from outside:
//! - both sipp exit codes 0 with the call counted successful on both sides;
//! - from the two sipp message logs, that each request and its response
//!   crossed the proxy with the right content (bodies byte for byte, the
//!   headers that matter), on the receiving leg's own Call-ID;
//! - that the proxy counted the call, saw it end from the expected side
//!   (GET /api/calls/recent), and left no call or media port behind.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

// ---------------------------------------------------------------------------
// The sipp message logs
// ---------------------------------------------------------------------------

/// One SIP message from a sipp `-message_file`.
#[derive(Debug, Clone)]
struct Logged {
    received: bool,
    /// Start line, headers and body as on the wire (CRLF line ends).
    text: String,
}

/// Full header name for the compact forms our scenarios use.
fn full_name(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    match n.as_str() {
        "v" => "via",
        "i" => "call-id",
        "f" => "from",
        "t" => "to",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "r" => "refer-to",
        "b" => "referred-by",
        "o" => "event",
        _ => return n,
    }
    .to_string()
}

impl Logged {
    fn head(&self) -> &str {
        self.text.split("\r\n\r\n").next().unwrap_or("")
    }

    fn start_line(&self) -> &str {
        self.text.lines().next().unwrap_or("").trim_end()
    }

    /// Every value of header `name` (compact forms understood, one entry per
    /// comma-separated value for Via).
    fn headers(&self, name: &str) -> Vec<String> {
        let want = full_name(name);
        let mut out = Vec::new();
        for line in self.head().lines().skip(1) {
            let Some((n, v)) = line.split_once(':') else {
                continue;
            };
            if full_name(n) != want {
                continue;
            }
            if want == "via" {
                out.extend(v.split(',').map(|s| s.trim().to_string()));
            } else {
                out.push(v.trim().to_string());
            }
        }
        out
    }

    fn header(&self, name: &str) -> String {
        self.headers(name)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {name} header in this message:\n{}", self.text))
    }

    /// The body: exactly Content-Length bytes after the blank line.
    fn body(&self) -> String {
        let len: usize = self
            .headers("Content-Length")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let start = self
            .text
            .find("\r\n\r\n")
            .map(|i| i + 4)
            .unwrap_or(self.text.len());
        let rest = &self.text.as_bytes()[start..];
        String::from_utf8_lossy(&rest[..len.min(rest.len())]).into_owned()
    }

    /// CSeq as (number, method).
    fn cseq(&self) -> (u32, String) {
        let v = self.header("CSeq");
        let (n, m) = v.split_once(' ').unwrap_or((&v, ""));
        (
            n.trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad CSeq {v:?}")),
            m.trim().to_string(),
        )
    }
}

/// Every message sipp logged, in order (retransmissions included).
fn messages(side: &SippOutcome) -> Vec<Logged> {
    let log = side.read("messages.log");
    let mut out = Vec::new();
    for block in log.split("----------------------------------------------- ") {
        let mut parts = block.splitn(2, "\n\n");
        let (Some(meta), Some(text)) = (parts.next(), parts.next()) else {
            continue;
        };
        let received = meta.contains("message received");
        if !received && !meta.contains("message sent") {
            continue;
        }
        out.push(Logged {
            received,
            text: text.to_string(),
        });
    }
    out
}

/// The sides' message logs of one finished run.
struct Logs {
    caller: Vec<Logged>,
    callee: Vec<Logged>,
    report: String,
}

impl Logs {
    fn of(out: &CallOutcome) -> Logs {
        Logs {
            caller: messages(&out.caller),
            callee: messages(&out.callee),
            report: out.report(),
        }
    }

    fn side(&self, caller: bool) -> &[Logged] {
        if caller {
            &self.caller
        } else {
            &self.callee
        }
    }

    fn find(
        &self,
        caller: bool,
        received: bool,
        what: &str,
        pred: impl Fn(&Logged) -> bool,
    ) -> &Logged {
        self.side(caller)
            .iter()
            .find(|m| m.received == received && pred(m))
            .unwrap_or_else(|| {
                panic!(
                    "the {} never {} {what}\n{}",
                    if caller { "caller" } else { "callee" },
                    if received { "received" } else { "sent" },
                    self.report
                )
            })
    }

    /// The first request of `method` that `caller`'s side sent or received.
    fn request(&self, caller: bool, received: bool, method: &str) -> &Logged {
        let prefix = format!("{method} ");
        self.find(caller, received, &format!("a {method}"), |m| {
            m.start_line().starts_with(&prefix)
        })
    }

    /// The first response `code` to a `method` that `caller`'s side received.
    fn response(&self, caller: bool, code: u16, method: &str) -> &Logged {
        let prefix = format!("SIP/2.0 {code} ");
        self.find(caller, true, &format!("a {code} to {method}"), |m| {
            m.start_line().starts_with(&prefix) && m.cseq().1 == method
        })
    }

    /// Asserts that the `method` request `from_caller`'s side sent reached
    /// the other side on its own leg with the same body and the same values
    /// of `headers`, and that its 200-class `code` came back. Returns (sent,
    /// received).
    fn crossed(
        &self,
        from_caller: bool,
        method: &str,
        headers: &[&str],
        code: u16,
    ) -> (&Logged, &Logged) {
        let sent = self.request(from_caller, false, method);
        let got = self.request(!from_caller, true, method);
        assert_eq!(got.cseq().1, method, "CSeq method of the relayed {method}");
        assert_ne!(
            got.header("Call-ID"),
            sent.header("Call-ID"),
            "the relayed {method} must use the receiving leg's own Call-ID"
        );
        let max_forwards = |m: &Logged| -> u32 {
            m.header("Max-Forwards")
                .parse()
                .unwrap_or_else(|_| panic!("bad Max-Forwards in\n{}", m.text))
        };
        assert_eq!(
            max_forwards(got),
            max_forwards(sent) - 1,
            "Max-Forwards of the relayed {method}"
        );
        // Target refresh and subscription requests name a Contact; on the
        // receiving leg it is the proxy's own.
        if matches!(method, "UPDATE" | "NOTIFY" | "REFER") {
            let contact = got.header("Contact");
            assert!(
                contact.contains(&PROXY_IP.to_string()),
                "the relayed {method} must carry the proxy's Contact, not {contact:?}"
            );
        }
        assert_eq!(
            got.body(),
            sent.body(),
            "the {method} body changed on its way through the proxy\n{}",
            self.report
        );
        for h in headers {
            assert_eq!(
                got.headers(h),
                sent.headers(h),
                "{h} of the {method} changed on its way through the proxy\n{}",
                self.report
            );
        }
        let answer = self.response(from_caller, code, method);
        assert_eq!(
            answer.header("Call-ID"),
            sent.header("Call-ID"),
            "the {code} to the {method} came back on another Call-ID"
        );
        if matches!(method, "UPDATE" | "NOTIFY" | "REFER") {
            let contact = answer.header("Contact");
            assert!(
                contact.contains(&PROXY_IP.to_string()),
                "the relayed {code} to {method} must carry the proxy's Contact, not {contact:?}"
            );
        }
        assert_eq!(
            answer.cseq().0,
            sent.cseq().0,
            "CSeq of the {code} to the {method}"
        );
        (sent, got)
    }
}

// ---------------------------------------------------------------------------
// Running a pair through the proxy
// ---------------------------------------------------------------------------

/// Waits until the proxy reports no active call and no media port in use.
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

/// Runs `name` through a fresh proxy (`reversed`: from the PBX side),
/// asserts success on both sides, that the proxy counted one call that
/// ended with `end_reason` after a 200, and nothing is left; returns the logs.
fn through_proxy(name: &str, reversed: bool, end_reason: &str) -> Logs {
    let proxy = Proxy::start();
    let run = if reversed {
        proxy.call_reversed(pair(name))
    } else {
        proxy.call(pair(name))
    };
    let before = proxy.metrics();
    let out = run.run();
    out.assert_success();
    let after = settled(&proxy);
    let calls = |m: &BTreeMap<String, f64>| metric_sum(m, "callrec_calls_total");
    assert_eq!(
        calls(&after) - calls(&before),
        1.0,
        "the proxy counted a different number of calls\n{after:#?}"
    );
    let logs = Logs::of(&out);
    let caller_call_id = logs.request(true, false, "INVITE").header("Call-ID");
    let (status, body) = http_get(proxy.admin_addr(), "/api/calls/recent")
        .unwrap_or_else(|e| panic!("GET /api/calls/recent: {e}"));
    assert_eq!(status, 200, "GET /api/calls/recent: {body}");
    let recent: serde_json::Value = serde_json::from_str(&body).expect("recent calls JSON");
    let call = recent
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|c| c["caller_call_id"] == caller_call_id.as_str())
        })
        .unwrap_or_else(|| panic!("call {caller_call_id} not among the recent calls: {body}"));
    assert_eq!(call["status"], 200, "final status of the INVITE: {call}");
    assert_eq!(call["end_reason"], end_reason, "how the call ended: {call}");
    logs
}

/// Asserts that an SDP body names only the proxy (127.0.0.1) for media.
fn sdp_points_at_proxy(sdp: &str, what: &str) {
    assert!(
        sdp.contains("\r\nc=IN IP4 127.0.0.1\r\n"),
        "{what}: c= is not the proxy's media address:\n{sdp}"
    );
    for peer in [PBX_IP, TRUNK_IP] {
        assert!(
            !sdp.contains(&peer.to_string()),
            "{what}: the SDP still names a peer's address {peer}:\n{sdp}"
        );
    }
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

/// INFO, MESSAGE and NOTIFY from the caller, INFO and UPDATE (hold) from the
/// callee, each answered 200 and relayed back.
fn dialog(reversed: bool) {
    let logs = through_proxy("dialog", reversed, "caller hung up");

    let (sent, _) = logs.crossed(true, "INFO", &["Content-Type"], 200);
    assert_eq!(sent.body(), "Signal=5\r\nDuration=160\r\n");
    assert_eq!(sent.header("Content-Type"), "application/dtmf-relay");
    let (sent, _) = logs.crossed(true, "MESSAGE", &["Content-Type"], 200);
    assert!(sent.body().starts_with("callrec in-dialog MESSAGE 42"));
    logs.crossed(true, "NOTIFY", &["Event", "Subscription-State"], 200);

    let (sent, _) = logs.crossed(false, "INFO", &["Content-Type"], 200);
    assert_eq!(sent.body(), "Signal=9\r\nDuration=250\r\n");

    // UPDATE: the offer is rewritten (SDP through the proxy), so compare the
    // direction only; both the offer and the answer must name the proxy.
    let offer = logs.request(true, true, "UPDATE");
    assert_ne!(
        offer.header("Call-ID"),
        logs.request(false, false, "UPDATE").header("Call-ID")
    );
    assert!(
        offer.body().contains("a=sendonly"),
        "UPDATE offer: {}",
        offer.text
    );
    sdp_points_at_proxy(&offer.body(), "the UPDATE the caller received");
    assert!(offer.header("Contact").contains(&PROXY_IP.to_string()));
    let answer = logs.response(false, 200, "UPDATE");
    assert!(
        answer.body().contains("a=recvonly"),
        "UPDATE answer: {}",
        answer.text
    );
    sdp_points_at_proxy(&answer.body(), "the 200 to UPDATE the callee received");
    assert!(answer.header("Contact").contains(&PROXY_IP.to_string()));
}

#[test]
fn proxy_dialog_info_message_notify_update() {
    dialog(false);
}

#[test]
fn proxy_outgoing_dialog_info_message_notify_update() {
    dialog(true);
}

/// REFER from the callee, 202 from the caller, the NOTIFY with the sipfrag
/// back, and the callee (the transferor) hangs up.
fn refer(reversed: bool) {
    let logs = through_proxy("refer", reversed, "callee hung up");
    let (sent, _) = logs.crossed(false, "REFER", &["Refer-To", "Referred-By"], 202);
    assert_eq!(sent.header("Refer-To"), "<sip:300@example>");
    let (sent, _) = logs.crossed(
        true,
        "NOTIFY",
        &["Event", "Subscription-State", "Content-Type"],
        200,
    );
    assert_eq!(sent.body(), "SIP/2.0 200 OK\r\n");
    logs.request(true, true, "BYE");
}

#[test]
fn proxy_refer_from_callee() {
    refer(false);
}

#[test]
fn proxy_outgoing_refer_from_callee() {
    refer(true);
}

/// 100rel: the reliable 183 reaches the caller; the PRACK reaches the callee
/// with RAck naming the CSeq of the INVITE on the callee's own leg.
fn prack(reversed: bool) {
    let logs = through_proxy("prack", reversed, "caller hung up");
    let invite_sent = logs.request(true, false, "INVITE");
    let invite_got = logs.request(false, true, "INVITE");
    assert!(invite_got.header("Supported").contains("100rel"));
    let p183 = logs.response(true, 183, "INVITE");
    assert!(
        p183.header("Require").contains("100rel"),
        "183: {}",
        p183.text
    );
    assert_eq!(p183.header("RSeq"), "1");
    sdp_points_at_proxy(&p183.body(), "the 183 the caller received");

    let prack_sent = logs.request(true, false, "PRACK");
    let prack_got = logs.request(false, true, "PRACK");
    let rack = |m: &Logged| -> (String, u32, String) {
        let v = m.header("RAck");
        let p: Vec<&str> = v.split_whitespace().collect();
        assert_eq!(p.len(), 3, "RAck {v:?}");
        (
            p[0].to_string(),
            p[1].parse().expect("RAck CSeq"),
            p[2].to_string(),
        )
    };
    assert_eq!(
        rack(prack_sent),
        ("1".to_string(), invite_sent.cseq().0, "INVITE".to_string())
    );
    assert_eq!(
        rack(prack_got),
        ("1".to_string(), invite_got.cseq().0, "INVITE".to_string()),
        "the PRACK's RAck must name the INVITE of the callee's leg\n{}",
        logs.report
    );
    // The caller numbers its INVITE 101 on purpose: a copied RAck would be
    // caught only while the legs' numbers differ.
    assert_ne!(
        invite_sent.cseq().0,
        invite_got.cseq().0,
        "both legs numbered the INVITE alike, so this run cannot tell a mapped RAck from a copied one"
    );
    logs.response(true, 200, "PRACK");
    logs.response(true, 200, "INVITE");
}

#[test]
fn proxy_prack_100rel() {
    prack(false);
}

#[test]
fn proxy_outgoing_prack_100rel() {
    prack(true);
}

/// Compact headers, two Via values in one line: every response to the INVITE
/// carries both, in order; the callee's leg carries only the proxy's own Via.
fn compact(reversed: bool) {
    let logs = through_proxy("compact", reversed, "caller hung up");
    let invite = logs.request(true, false, "INVITE");
    assert!(
        invite.head().contains("\r\nv: ") && invite.head().contains("\r\ni: "),
        "the caller did not write compact headers:\n{}",
        invite.text
    );
    let vias = invite.headers("Via");
    assert_eq!(vias.len(), 2, "the caller's INVITE: {vias:?}");
    assert_eq!(vias[1], "SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKfake");
    for code in [100, 180, 200] {
        let r = logs.response(true, code, "INVITE");
        assert_eq!(
            r.headers("Via"),
            vias,
            "the {code} to the INVITE must carry the INVITE's Via values in order\n{}",
            r.text
        );
    }
    let got = logs.request(false, true, "INVITE");
    let got_vias = got.headers("Via");
    assert_eq!(got_vias.len(), 1, "the callee's INVITE: {got_vias:?}");
    assert!(got_vias[0].contains(&PROXY_IP.to_string()), "{got_vias:?}");
    assert!(
        !got.text.contains("192.0.2.99"),
        "upstream hop leaked:\n{}",
        got.text
    );
    sdp_points_at_proxy(&got.body(), "the INVITE the callee received");
    logs.response(true, 200, "BYE");
}

#[test]
fn proxy_compact_headers_and_two_vias() {
    compact(false);
}

#[test]
fn proxy_outgoing_compact_headers_and_two_vias() {
    compact(true);
}

/// UPDATE from the callee in the early dialog (after a reliable 183 and
/// PRACK), before the 200 to the INVITE.
fn early_update(reversed: bool) {
    let logs = through_proxy("early-update", reversed, "caller hung up");
    let p183 = logs.response(true, 183, "INVITE");
    let update = logs.request(true, true, "UPDATE");
    let tag = |v: String| -> String {
        v.split(';')
            .find_map(|p| p.trim().strip_prefix("tag=").map(str::to_string))
            .unwrap_or_else(|| panic!("no tag in {v:?}"))
    };
    assert_eq!(
        tag(update.header("From")),
        tag(p183.header("To")),
        "the UPDATE must belong to the early dialog the 183 created\n{}",
        logs.report
    );
    let pos = |m: &Logged| logs.caller.iter().position(|x| std::ptr::eq(x, m));
    let answer = logs.response(true, 200, "INVITE");
    assert!(
        pos(update) < pos(answer),
        "the UPDATE reached the caller only after the 200 to the INVITE\n{}",
        logs.report
    );
    assert!(update.body().contains("a=sendonly"), "{}", update.text);
    sdp_points_at_proxy(&update.body(), "the early UPDATE the caller received");
    assert!(update.header("Contact").contains(&PROXY_IP.to_string()));
    let update_answer = logs.response(false, 200, "UPDATE");
    assert!(
        update_answer.body().contains("a=recvonly"),
        "{}",
        update_answer.text
    );
    sdp_points_at_proxy(&update_answer.body(), "the 200 to the early UPDATE");
    logs.response(true, 200, "PRACK");
}

#[test]
fn proxy_early_update_from_callee() {
    early_update(false);
}

#[test]
fn proxy_outgoing_early_update_from_callee() {
    early_update(true);
}
