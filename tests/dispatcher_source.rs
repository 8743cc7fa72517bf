//! Behind a dispatcher (a SIP load balancer such as Kamailio) every request
//! arrives from the dispatcher's address; the dispatcher names the original
//! sender in `X-Callrec-Source`. Played here by a raw UDP socket at a
//! `--dispatcher` address (the real Kamailio is in deploy_dispatcher.rs), the
//! tests show on the INVITE the PBX or trunk side receives and on the answers:
//! the named sender, not the dispatcher, decides the direction, whether the
//! call is taken, whose identity headers pass and whose rate limit bucket a
//! call counts against; the header never crosses to the other leg; and from
//! anyone who is not a dispatcher the header changes nothing.

mod common;

use common::raw::*;
use common::ua::Msg;
use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// The stand-in dispatcher's address (configured with `--dispatcher`).
const DISPATCHER: &str = "127.0.0.7";
/// An allow-listed peer outside the identity trust domain.
const LISTED: &str = "127.0.0.5";

const PAI: &str = "P-Asserted-Identity: \"Bank CEO\" <sip:+4930999@bank.example>\r\n";

fn peer_at(addr: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

fn start() -> Proxy {
    Proxy::builder()
        .arg("--dispatcher")
        .arg(DISPATCHER)
        .arg("--trusted-source")
        .arg(LISTED)
        .arg("--invite-rate-per-source")
        .arg("2")
        .start()
}

/// Sends an INVITE from `from` (a socket) whose X-Callrec-Source lines name `named`.
fn send(proxy: &Proxy, from: &UdpSocket, call_id: &str, caller: &str, named: &[String]) {
    let extra: String = named
        .iter()
        .map(|n| format!("X-Callrec-Source: {n};transport=udp\r\n"))
        .collect::<String>()
        + PAI;
    let req = invite(
        from.local_addr().unwrap(),
        proxy.sip_addr(),
        call_id,
        caller,
        "200",
        &extra,
    );
    from.send_to(req.as_bytes(), proxy.sip_addr()).unwrap();
}

/// The final answer `s` receives for `call_id` within 3 s (0: none).
fn final_code(s: &UdpSocket, call_id: &str) -> u16 {
    let end = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < end {
        for m in receive(s, Duration::from_millis(200)) {
            if m.header("Call-ID") == Some(call_id) && m.code() >= 200 {
                return m.code();
            }
        }
    }
    0
}

/// Nothing from `caller` reaches `at` within a second.
fn nothing_arrives(at: &UdpSocket, caller: &str) -> bool {
    !receive(at, Duration::from_secs(1))
        .iter()
        .any(|m: &Msg| m.0.starts_with("INVITE ") && m.0.contains(caller))
}

#[test]
fn the_source_a_dispatcher_names_decides_direction_identity_and_rate() {
    let proxy = start();
    let pbx = peer_at(proxy.pbx_addr());
    let trunk = peer_at(proxy.trunk_addr());
    let lb = sock(DISPATCHER);
    let pbx_phone = format!("{}:5999", PBX_IP);
    let carrier = format!("{}:5998", TRUNK_IP);

    // Named the PBX: an outgoing call, sent on to the trunk with the PBX's
    // identity; the dispatcher's header stays behind.
    send(
        &proxy,
        &lb,
        "lb-out",
        "pbxcaller",
        std::slice::from_ref(&pbx_phone),
    );
    let got = relayed_invite(&trunk, "pbxcaller");
    assert!(got.header("P-Asserted-Identity").is_some(), "{}", got.0);
    assert!(got.header("X-Callrec-Source").is_none(), "{}", got.0);

    // Named the trunk: incoming, to the PBX, the carrier's identity believed.
    send(
        &proxy,
        &lb,
        "lb-in",
        "carriercaller",
        std::slice::from_ref(&carrier),
    );
    let got = relayed_invite(&pbx, "carriercaller");
    assert!(got.header("P-Asserted-Identity").is_some(), "{}", got.0);
    assert!(got.header("X-Callrec-Source").is_none(), "{}", got.0);

    // Named an allow-listed peer outside the identity domain: its identity is dropped.
    send(
        &proxy,
        &lb,
        "lb-listed",
        "listedcaller",
        &[format!("{LISTED}:5060")],
    );
    let got = relayed_invite(&pbx, "listedcaller");
    assert!(got.header("P-Asserted-Identity").is_none(), "{}", got.0);

    // Named a stranger, or nobody, or twice: refused, nothing reaches the PBX.
    for (id, named) in [
        ("lb-stranger", vec![format!("{STRANGER}:5060")]),
        ("lb-unnamed", vec![]),
        (
            "lb-twice",
            vec![pbx_phone.clone(), format!("{STRANGER}:5060")],
        ),
    ] {
        send(&proxy, &lb, id, id, &named);
        assert_eq!(final_code(&lb, id), 403, "{id}: {named:?}");
        assert!(
            nothing_arrives(&pbx, id) && nothing_arrives(&trunk, id),
            "{id}"
        );
    }

    // Rate limits count per named sender: the listed peer's third call within
    // a second is refused, the carrier's call right after is taken.
    for id in ["lb-rate-1", "lb-rate-2", "lb-rate-3"] {
        send(&proxy, &lb, id, id, &[format!("{LISTED}:5060")]);
    }
    assert_eq!(
        final_code(&lb, "lb-rate-3"),
        503,
        "the listed peer's third call within a second"
    );
    send(&proxy, &lb, "lb-rate-4", "carrier2", &[carrier]);
    relayed_invite(&pbx, "carrier2");
}

#[test]
fn a_forged_source_header_from_anyone_else_changes_nothing() {
    let proxy = start();
    let pbx = peer_at(proxy.pbx_addr());
    let trunk = peer_at(proxy.trunk_addr());
    let pbx_phone = format!("{}:5999", PBX_IP);

    // The trunk claims to be the PBX: still incoming, sent to the PBX.
    let t = sock("127.0.0.3");
    send(
        &proxy,
        &t,
        "forge-trunk",
        "trunkforger",
        std::slice::from_ref(&pbx_phone),
    );
    let got = relayed_invite(&pbx, "trunkforger");
    assert!(got.header("X-Callrec-Source").is_none(), "{}", got.0);
    assert!(nothing_arrives(&trunk, "trunkforger"));

    // A stranger claims to be the PBX: refused.
    let s = sock(STRANGER);
    send(
        &proxy,
        &s,
        "forge-stranger",
        "strangerforger",
        std::slice::from_ref(&pbx_phone),
    );
    assert_eq!(final_code(&s, "forge-stranger"), 403);
    assert!(nothing_arrives(&trunk, "strangerforger") && nothing_arrives(&pbx, "strangerforger"));

    // An allow-listed peer claims to be the trunk: its identity still does not pass.
    let l = sock(LISTED);
    send(
        &proxy,
        &l,
        "forge-listed",
        "listedforger",
        &[format!("{}:5060", TRUNK_IP)],
    );
    let got = relayed_invite(&pbx, "listedforger");
    assert!(got.header("P-Asserted-Identity").is_none(), "{}", got.0);
}
