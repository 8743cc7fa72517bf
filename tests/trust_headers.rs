//! Which headers cross callrec and whose identity it believes, on the raw
//! INVITE the PBX (or trunk) side receives: caller-ID headers only from the
//! identity trust domain, auto-answer and ring-tone headers only from the PBX,
//! Replaces and private headers never; and nobody outside the identity trust
//! domain can claim an internal call's de-duplication pair to suppress its
//! recording.

mod common;

use common::raw::*;
use common::ua::Msg;
use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

const SPOOFED: &str = "P-Asserted-Identity: \"Bank CEO\" <sip:+4930999@bank.example>\r\n\
P-Preferred-Identity: <sip:+4930999@bank.example>\r\n\
Remote-Party-ID: <sip:+4930999@bank.example>;party=calling;screen=yes\r\n\
Privacy: none\r\n\
Diversion: <sip:+4930999@bank.example>;reason=unconditional\r\n\
Call-Info: <sip:127.0.0.9>;answer-after=0\r\n\
Alert-Info: <http://127.0.0.9/ring.wav>;info=alert-autoanswer\r\n\
Replaces: live-call@pbx;to-tag=a;from-tag=b\r\n\
X-Intercom: yes\r\n\
Supported: 100rel, timer\r\n\
Session-Expires: 1800\r\n\
Allow: INVITE, ACK, CANCEL, BYE\r\n";

fn has(m: &Msg, name: &str) -> bool {
    m.header(name).is_some()
}

/// A socket standing in for the PBX or the trunk, where relayed requests arrive.
fn peer_at(addr: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// Sends the spoofing INVITE from `ip` through the proxy and returns what
/// arrives at `next_hop`.
fn relay_spoofed(
    proxy: &Proxy,
    ip: &str,
    call_id: &str,
    caller: &str,
    callee: &str,
    next_hop: &UdpSocket,
) -> Msg {
    let sip = proxy.sip_addr();
    let s = sock(ip);
    let req = invite(
        s.local_addr().unwrap(),
        sip,
        call_id,
        caller,
        callee,
        SPOOFED,
    );
    s.send_to(req.as_bytes(), sip).unwrap();
    relayed_invite(next_hop, caller)
}

/// Asserts which headers of `SPOOFED` crossed from `from` and which did not.
fn assert_crossing(got: &Msg, from: &str, gone: &[&str], kept: &[&str]) {
    for name in gone {
        assert!(!has(got, name), "{name} from {from} crossed:\n{}", got.0);
    }
    for name in kept {
        assert!(has(got, name), "{name} from {from} was dropped:\n{}", got.0);
    }
}

#[test]
fn identity_and_auto_answer_headers_follow_the_policy() {
    let proxy = Proxy::builder()
        .arg("--trusted-source")
        .arg("127.0.0.5")
        .start();
    let pbx = peer_at(proxy.pbx_addr());
    let trunk = peer_at(proxy.trunk_addr());

    // From the trunk: the provider's identity passes, auto-answer and ring
    // tone instructions, Replaces and private headers do not.
    let got = relay_spoofed(&proxy, "127.0.0.3", "hdr-1", "trunkcaller", "200", &pbx);
    assert_crossing(
        &got,
        "the trunk",
        &["Call-Info", "Alert-Info", "Replaces", "X-Intercom"],
        &[
            "P-Asserted-Identity",
            "Privacy",
            "Diversion",
            "Supported",
            "Session-Expires",
            "Allow",
        ],
    );

    // From an allow-listed peer outside the identity trust domain: no identity either.
    let got = relay_spoofed(&proxy, "127.0.0.5", "hdr-2", "listed", "200", &pbx);
    assert_crossing(
        &got,
        "an allow-listed peer",
        &[
            "P-Asserted-Identity",
            "P-Preferred-Identity",
            "Remote-Party-ID",
            "Privacy",
            "Diversion",
            "Call-Info",
            "Alert-Info",
            "Replaces",
            "X-Intercom",
        ],
        &["Supported", "Session-Expires"],
    );

    // From the PBX: its own Alert-Info, Call-Info and identity reach the trunk.
    let got = relay_spoofed(
        &proxy,
        "127.0.0.2",
        "hdr-3",
        "pbxcaller",
        "004989123456",
        &trunk,
    );
    assert_crossing(
        &got,
        "the PBX",
        &["Replaces", "X-Intercom"],
        &[
            "Alert-Info",
            "Call-Info",
            "P-Asserted-Identity",
            "P-Preferred-Identity",
        ],
    );
}

#[test]
fn identity_trust_can_leave_out_the_trunk() {
    let proxy = Proxy::builder()
        .arg("--identity-trusted")
        .arg("pbx")
        .start();
    let pbx = peer_at(proxy.pbx_addr());
    let got = relay_spoofed(&proxy, "127.0.0.3", "hdr-4", "trunkcaller", "200", &pbx);
    assert_crossing(
        &got,
        "a trunk outside the identity trust domain",
        &[
            "P-Asserted-Identity",
            "Privacy",
            "Diversion",
            "Remote-Party-ID",
        ],
        &[],
    );
}

fn policy_config(dir: &TestDir) -> std::path::PathBuf {
    let path = dir.join("callrec.toml");
    let directory = repo_dir().join("testdata/directory.toml");
    std::fs::write(
        &path,
        format!(
            "[numbers]\ncountry_code = \"49\"\narea_code = \"30\"\nexit_code = \"0\"\nmax_extension_len = 4\n\n\
             [directory]\nsource = \"{}\"\n\n\
             [[profiles]]\nname = \"sales\"\ngroup = \"Sales\"\nusers = [\"eva\"]\nrecord_direct_calls = true\n",
            directory.display()
        ),
    )
    .unwrap();
    path
}

/// 206 → 201 is an internal call whose two legs may both pass the proxy; the
/// first one seen holds the pair. Neither a stranger nor an allow-listed peer
/// outside the identity trust domain may take it with forged numbers: the
/// real call from the PBX right after is recorded.
#[test]
fn outsiders_cannot_claim_the_internal_call_pair() {
    let dir = TestDir::new("trust-dedup");
    let cfg = policy_config(&dir);
    let proxy = Proxy::builder()
        .arg("--config")
        .arg(cfg.to_str().unwrap())
        .arg("--trusted-source")
        .arg("127.0.0.5")
        .start();
    // A PBX that lets the forged calls ring (and so hold any claim) while the real one goes out.
    let pbx = UdpSocket::bind(proxy.pbx_addr()).unwrap();
    pbx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let sip = proxy.sip_addr();
    for (ip, cid) in [(STRANGER, "claim-1"), ("127.0.0.5", "claim-2")] {
        let s = sock(ip);
        s.send_to(
            invite(
                s.local_addr().unwrap(),
                sip,
                cid,
                "206",
                "+493012345201",
                "",
            )
            .as_bytes(),
            sip,
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let out = proxy
        .call_reversed(pair("basic"))
        // Another port of the PBX's address: the silent socket holds --pbx.
        .caller_at(SocketAddr::from((PBX_IP, free_port())))
        .numbers("206", "201")
        .run();
    out.assert_success();
    let (code, body) = http_get(proxy.admin_addr(), "/api/calls/recent").unwrap();
    assert_eq!(code, 200);
    let recent: serde_json::Value = serde_json::from_str(&body).unwrap();
    let real = recent
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["direction"] == "outgoing")
        .cloned()
        .unwrap_or_else(|| panic!("no outgoing call among {body}"));
    assert_eq!(
        real["anchored"],
        true,
        "the real internal call was not recorded: {real}\n{}",
        proxy.log_tail(40)
    );
    drop(pbx);
}
