//! The phone links put on the members' phones through the PBX's REST API
//! (profile `provision_phone_keys = true`), against the fake STARFACE with
//! the spec's `/functionkeysets` shapes: one URL key appended after each
//! member's own keys (which never move), the phones asked to reload, nothing
//! done twice, a rotated link changed in place, and the key taken off the
//! phones of members who leave the group on the PBX or whose group is no
//! longer provisioned (also across a restart).

#[path = "starface_fake/mod.rs"]
mod starface_fake;

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::console::*;
use common::*;
use serde_json::{json, Value};
use starface_fake::{Pbx, LOGIN_ID, PASSWORD};

const ADMIN_PW: &str = "admin password 333";

fn config(dir: &Path, pbx: SocketAddr, group: &str) -> PathBuf {
    let path = dir.join(format!("callrec-{group}.toml"));
    std::fs::write(
        &path,
        format!(
            "[numbers]\ncountry_code = \"49\"\narea_code = \"30\"\ninternational_prefix = \"00\"\nnational_prefix = \"0\"\nexit_code = \"0\"\nmax_extension_len = 4\n\n\
             [directory]\nsource = \"http://{pbx}/rest\"\nlogin_id = \"{LOGIN_ID}\"\npassword = \"{PASSWORD}\"\nrefresh_secs = 1\n\n\
             [[profiles]]\nname = \"team\"\ngroup = \"{group}\"\nprovision_phone_keys = true\n"
        ),
    )
    .unwrap();
    path
}

fn start(data: &Path, config: &Path, phone: SocketAddr) -> Proxy {
    Proxy::builder()
        .data_dir(data)
        .arg("--config")
        .arg(config.to_str().unwrap())
        .arg("--phone-listen")
        .arg(&phone.to_string())
        .start()
}

fn url_keys(keys: &[Value]) -> Vec<&Value> {
    keys.iter()
        .filter(|k| k["functionKeyType"] == "PHONEGENERICURL")
        .collect()
}

fn own(login: &str, account: u64, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "accountId": account.to_string(),
                "functionKeyType": "QUICKDIAL",
                "id": format!("own-{login}-{i}"),
                "name": format!("Speed {i}"),
                "position": i,
                "directCallTargetnumber": format!("10{i}"),
            })
        })
        .collect()
}

/// The path (`/phone/…`) of a key's URL.
fn path_of(key: &Value, phone: SocketAddr) -> String {
    let url = key["genericURL"].as_str().unwrap();
    url.strip_prefix(&format!("http://{phone}"))
        .unwrap_or_else(|| panic!("{url} is not a link of {phone}"))
        .to_string()
}

/// The fake PBX on loopback, served by the returned runtime: users anna,
/// ben, clara and david (accounts 1–4), each with two keys of her own.
fn seeded_pbx() -> (tokio::runtime::Runtime, Arc<Pbx>, SocketAddr) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pbx = Arc::new(Pbx::default());
    for (login, id) in [("anna", 1), ("ben", 2), ("clara", 3), ("david", 4)] {
        pbx.keys.seed(login, id, 2);
    }
    let (addr, _server) = rt.block_on(starface_fake::serve(
        pbx.clone(),
        "127.0.0.1:0".parse().unwrap(),
    ));
    (rt, pbx, addr)
}

#[test]
fn keys_are_appended_kept_rotated_in_place_and_removed() {
    let (_rt, pbx, pbx_addr) = seeded_pbx();
    let dir = TestDir::new("phone-provision");
    let data = dir.join("data");
    let phone = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = start(&data, &config(dir.path(), pbx_addr, "Sales"), phone);

    // Sales (anna, ben, clara): each gets the key after her own two.
    let sales = [("anna", 1u64), ("ben", 2), ("clara", 3)];
    assert!(
        wait_until(Duration::from_secs(20), || sales.iter().all(|(l, _)| {
            // The reload is asked for after the key is written: wait for both.
            url_keys(&pbx.keys.keys_of(l)).len() == 1
                && pbx
                    .keys
                    .reloads
                    .lock()
                    .unwrap()
                    .contains(&(format!("fks-{l}"), format!("phone-of-{l}")))
        })),
        "keys not provisioned: {:?}\n{}",
        pbx.keys.sets.lock().unwrap(),
        proxy.log()
    );
    for (login, id) in sales {
        let keys = pbx.keys.keys_of(login);
        assert_eq!(keys.len(), 3, "{login}: {keys:?}");
        assert_eq!(keys[..2], own(login, id, 2)[..], "{login}'s own keys moved");
        let k = &keys[2];
        assert_eq!(k["name"], "Recording");
        assert_eq!(k["accountId"], id.to_string());
        assert_eq!(k["position"], 2);
        let path = path_of(k, phone);
        assert!(
            path.starts_with("/phone/") && path.ends_with("/recording/toggle"),
            "{path}"
        );
        assert!(pbx
            .keys
            .reloads
            .lock()
            .unwrap()
            .contains(&(format!("fks-{login}"), format!("phone-of-{login}"))));
    }
    assert_eq!(
        pbx.keys.keys_of("david"),
        own("david", 4, 2),
        "not in Sales"
    );
    assert!(
        pbx.keys.violations.lock().unwrap().is_empty(),
        "{:?}",
        pbx.keys.violations.lock().unwrap()
    );
    // The key on the phone works.
    let anna_key = pbx.keys.keys_of("anna")[2].clone();
    let r = http(phone, "GET", &path_of(&anna_key, phone), &[], "");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Recording OFF"), "{}", r.text());

    // Nothing is done twice: a few more refreshes change nothing.
    let changes = pbx.keys.changes.lock().unwrap().len();
    let reloads = pbx.keys.reloads.lock().unwrap().len();
    assert_eq!(changes, 3, "{:?}", pbx.keys.changes.lock().unwrap());
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(pbx.keys.changes.lock().unwrap().len(), changes);
    assert_eq!(pbx.keys.reloads.lock().unwrap().len(), reloads);

    // Anna adds a key of her own after ours; then an admin rotates her link.
    {
        let mut sets = pbx.keys.sets.lock().unwrap();
        let keys = &mut sets.get_mut("anna").unwrap()[0].keys;
        keys.push(json!({"accountId": "1", "functionKeyType": "DONOTDISTURB", "id": "own-anna-dnd", "name": "DND", "position": 3}));
    }
    let (code, out) = users_cli(
        &data,
        &["add", "adam", "--role", "admin"],
        &format!("{ADMIN_PW}\n"),
    );
    assert_eq!(code, 0, "{out}");
    let (_, adam) = login(proxy.admin_addr(), "adam", ADMIN_PW);
    let adam = adam.expect("admin login");
    let r = http(
        proxy.admin_addr(),
        "POST",
        "/operations/phone-keys/1/rotate",
        &[
            ("Cookie", &adam.cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &form(&[("csrf", &adam.csrf)]),
    );
    assert_eq!(r.status, 303);
    assert!(
        wait_until(Duration::from_secs(10), || pbx.keys.keys_of("anna")[2]
            ["genericURL"]
            != anna_key["genericURL"]),
        "the rotated link did not reach the phone: {:?}",
        pbx.keys.keys_of("anna")
    );
    let keys = pbx.keys.keys_of("anna");
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert_eq!(keys[..2], own("anna", 1, 2)[..]);
    assert_eq!(
        keys[2]["id"], anna_key["id"],
        "changed in place, not replaced"
    );
    assert_eq!(
        keys[3]["id"], "own-anna-dnd",
        "her own key stays where it was"
    );
    assert_eq!(
        http(phone, "GET", &path_of(&anna_key, phone), &[], "").status,
        404
    );
    assert_eq!(
        http(phone, "GET", &path_of(&keys[2], phone), &[], "").status,
        200
    );
    assert!(
        pbx.keys.reloads.lock().unwrap().len() > reloads,
        "phone not reloaded"
    );
    let clara_key = pbx.keys.keys_of("clara")[2].clone();

    // Anna leaves Sales on the PBX: at the next refresh her key goes; her own
    // keys stay, and so do the others' keys.
    let mut sales_group = pbx.fixture("group_100.json").unwrap();
    for u in sales_group["assignableUsers"].as_array_mut().unwrap() {
        if u["id"] == 1 {
            u["assigned"] = json!(false);
        }
    }
    pbx.fixtures
        .lock()
        .unwrap()
        .insert("group_100.json".into(), sales_group);
    assert!(
        wait_until(Duration::from_secs(10), || url_keys(
            &pbx.keys.keys_of("anna")
        )
        .is_empty()),
        "the key of a member who left is still on her phone: {:?}",
        pbx.keys.keys_of("anna")
    );
    let anna: Vec<_> = pbx
        .keys
        .keys_of("anna")
        .iter()
        .map(|k| k["id"].clone())
        .collect();
    assert_eq!(anna, ["own-anna-0", "own-anna-1", "own-anna-dnd"]);
    assert_eq!(url_keys(&pbx.keys.keys_of("ben")).len(), 1);
    assert_eq!(
        http(phone, "GET", &path_of(&keys[2], phone), &[], "").status,
        403,
        "in no group now"
    );
    pbx.fixtures.lock().unwrap().clear();
    assert!(
        wait_until(Duration::from_secs(10), || url_keys(
            &pbx.keys.keys_of("anna")
        )
        .len()
            == 1),
        "back in Sales, no key again"
    );
    let first_log = proxy.log();
    drop(proxy);

    // The profile now provisions Support (clara, david): anna and ben are no
    // longer members; their keys go, clara's stays as it is, david gets one.
    let proxy = start(&data, &config(dir.path(), pbx_addr, "Support"), phone);
    assert!(
        wait_until(Duration::from_secs(30), || {
            url_keys(&pbx.keys.keys_of("anna")).is_empty()
                && url_keys(&pbx.keys.keys_of("ben")).is_empty()
                && url_keys(&pbx.keys.keys_of("david")).len() == 1
        }),
        "former members' keys not removed: {:?}\n{}",
        pbx.keys.sets.lock().unwrap(),
        proxy.log()
    );
    assert_eq!(pbx.keys.keys_of("ben"), own("ben", 2, 2));
    let anna: Vec<_> = pbx
        .keys
        .keys_of("anna")
        .iter()
        .map(|k| k["id"].clone())
        .collect();
    assert_eq!(anna, ["own-anna-0", "own-anna-1", "own-anna-dnd"]);
    assert_eq!(pbx.keys.keys_of("clara")[2], clara_key);
    assert_eq!(pbx.keys.keys_of("david")[..2], own("david", 4, 2)[..]);
    assert!(pbx.keys.violations.lock().unwrap().is_empty());
    assert!(pbx.violations().is_empty(), "{:?}", pbx.violations());

    // Every change is logged; the links (credentials) are not.
    let log = format!("{first_log}{}", proxy.log());
    assert!(log.contains("phone key removed"), "{log}");
    assert!(log.contains("phone key appended"), "{log}");
    for k in [&anna_key, &keys[2], &clara_key] {
        let token = path_of(k, phone).split('/').nth(2).unwrap().to_string();
        assert!(!log.contains(&token), "token in the log:\n{log}");
    }
}

#[test]
fn a_key_placed_just_before_a_kill_is_removed_after_the_restart() {
    // callrec is killed after the PBX stored anna's key and before the phone
    // reload was answered. After the restart anna is in no provisioned group:
    // her key must still go, although callrec never saw the PBX confirm it.
    let (_rt, pbx, pbx_addr) = seeded_pbx();
    *pbx.keys.hold_reload_of.lock().unwrap() = Some("fks-anna".into());
    let dir = TestDir::new("phone-provision-kill");
    let data = dir.join("data");
    let phone = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut proxy = start(&data, &config(dir.path(), pbx_addr, "Sales"), phone);
    assert!(
        wait_until(Duration::from_secs(20), || url_keys(
            &pbx.keys.keys_of("anna")
        )
        .len()
            == 1),
        "anna's key not placed: {:?}\n{}",
        pbx.keys.sets.lock().unwrap(),
        proxy.log()
    );
    // callrec now waits for the reload of anna's phones: killed there.
    std::thread::sleep(Duration::from_millis(300));
    proxy.kill_hard();
    *pbx.keys.hold_reload_of.lock().unwrap() = None;

    let proxy = start(&data, &config(dir.path(), pbx_addr, "Support"), phone);
    assert!(
        wait_until(Duration::from_secs(30), || url_keys(
            &pbx.keys.keys_of("anna")
        )
        .is_empty()
            && url_keys(&pbx.keys.keys_of("david")).len() == 1),
        "the key placed before the kill is still on anna's phone: {:?}\n{}",
        pbx.keys.keys_of("anna"),
        proxy.log()
    );
    assert_eq!(
        pbx.keys.keys_of("anna"),
        own("anna", 1, 2),
        "anna's own keys changed"
    );
}
