//! The recording key on every phone, as a phone, an attacker and an admin
//! would use it: the personal link from the operations view switches the
//! member's group membership (the state the recording decisions read), a
//! guessed link gets a bare 404 and guessing is throttled, the token never
//! appears in the log, a rotated link stops working at once, rotation needs
//! the admin role and the CSRF token and lands in the access log, and a member
//! who left the group cannot switch anything with her old link.

mod common;

use common::console::*;
use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const ADMIN_PW: &str = "admin password 333";
const VIEWER_PW: &str = "viewer password 1";

/// The directory fixture with `sales` as the Sales group's members.
fn directory(sales: &str) -> String {
    let base = std::fs::read_to_string(repo_dir().join("testdata/directory.toml")).unwrap();
    base.replace("members = [1, 2, 3]", &format!("members = [{sales}]"))
}

/// A proxy with a directory file re-read every second and the phone listener on.
fn start(dir: &Path, phone: SocketAddr) -> Proxy {
    let dir_file = dir.join("directory.toml");
    std::fs::write(&dir_file, directory("1, 2, 3")).unwrap();
    let config = dir.join("callrec.toml");
    std::fs::write(
        &config,
        format!(
            "[numbers]\ncountry_code = \"49\"\narea_code = \"30\"\ninternational_prefix = \"00\"\nnational_prefix = \"0\"\nexit_code = \"0\"\nmax_extension_len = 4\n\n\
             [directory]\nsource = {:?}\nrefresh_secs = 1\n\n[[profiles]]\nname = \"sales\"\ngroup = \"Sales\"\n",
            dir_file.display().to_string()
        ),
    )
    .unwrap();
    Proxy::builder()
        .arg("--config")
        .arg(config.to_str().unwrap())
        .arg("--phone-listen")
        .arg(&phone.to_string())
        .start()
}

fn admin_session(proxy: &Proxy) -> Session {
    let data = proxy.data_dir();
    let (code, out) = users_cli(
        data,
        &["add", "adam", "--role", "admin"],
        &format!("{ADMIN_PW}\n"),
    );
    assert_eq!(code, 0, "{out}");
    let (_, s) = login(proxy.admin_addr(), "adam", ADMIN_PW);
    s.expect("admin login")
}

/// The personal toggle links on the operations page, by member display name.
fn links(ops: &str, phone: SocketAddr) -> Vec<(String, String)> {
    let prefix = format!("http://{phone}/phone/");
    ops.split("<tr class=\"phone-key\"")
        .skip(1)
        .map(|row| {
            let name = row
                .split("<td>")
                .nth(1)
                .and_then(|s| s.split('<').next())
                .unwrap_or_default()
                .to_string();
            let at = row
                .find(&prefix)
                .unwrap_or_else(|| panic!("no link in row {row}"));
            let token = row[at + prefix.len()..]
                .split('/')
                .next()
                .unwrap()
                .to_string();
            (name, token)
        })
        .collect()
}

fn token_of(ops: &str, phone: SocketAddr, name: &str) -> String {
    links(ops, phone)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no phone link for {name} in:\n{ops}"))
        .1
}

/// The logged-out (group, member) pairs in the protocol database.
fn logged_out(data: &Path) -> Vec<(i64, i64)> {
    let c = rusqlite::Connection::open(data.join("callrec.sqlite")).unwrap();
    let mut st = c
        .prepare("SELECT group_id, user_id FROM logged_out_members")
        .unwrap();
    let pairs = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    pairs
}

fn membership(data: &Path) -> String {
    format!("{:?}", logged_out(data))
}

/// Whether member 1 (Anna) is logged out of Sales (group 100) in the stored state.
fn anna_logged_out(data: &Path) -> bool {
    logged_out(data).contains(&(100, 1))
}

fn phone_get(phone: SocketAddr, token: &str, action: &str) -> Resp {
    http(
        phone,
        "GET",
        &format!("/phone/{token}/recording/{action}"),
        &[],
        "",
    )
}

#[test]
fn phone_link_switches_membership_and_rotation_kills_the_old_link() {
    let dir = TestDir::new("phone-key");
    let phone = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = start(dir.path(), phone);
    let admin = proxy.admin_addr();
    let data = proxy.data_dir().to_path_buf();
    let adam = admin_session(&proxy);

    // The operations view shows every directory member's personal link.
    let ops = get(admin, &adam, "/operations");
    assert_eq!(ops.status, 200);
    let ops = ops.text();
    let all = links(&ops, phone);
    assert_eq!(all.len(), 6, "one link per directory member:\n{ops}");
    let anna = token_of(&ops, phone, "Anna Berg");
    // 128 bits at least, random: every member's token differs.
    assert!(
        anna.len() >= 32 && anna.chars().all(|c| c.is_ascii_hexdigit()),
        "{anna}"
    );
    let mut tokens: Vec<_> = all.iter().map(|(_, t)| t.clone()).collect();
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 6, "tokens must differ: {all:?}");
    // Stable: the link a phone was given does not change by looking at it.
    assert_eq!(
        token_of(&get(admin, &adam, "/operations").text(), phone, "Anna Berg"),
        anna
    );

    // The phone's key: a short text the display can show, and the state the
    // recording decisions read changes.
    let r = phone_get(phone, &anna, "logout");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert!(
        r.text().len() < 60 && r.text().contains("OFF"),
        "{}",
        r.text()
    );
    assert!(anna_logged_out(&data), "{}", membership(&data));
    let r = phone_get(phone, &anna, "login");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("ON"), "{}", r.text());
    assert!(!anna_logged_out(&data), "{}", membership(&data));
    let r = phone_get(phone, &anna, "toggle");
    assert!(r.text().contains("OFF"), "{}", r.text());
    assert!(anna_logged_out(&data));
    let r = phone_get(phone, &anna, "toggle");
    assert!(r.text().contains("ON"), "{}", r.text());
    assert!(!anna_logged_out(&data));
    // The console shows the same state.
    let ops = get(admin, &adam, "/operations").text();
    assert!(
        ops.contains("action=\"/operations/groups/100/members/1/logout\""),
        "{ops}"
    );

    // A guessed token: the same bare 404 as any unknown path, nothing changes.
    let guess = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let bad = phone_get(phone, guess, "logout");
    assert_eq!(bad.status, 404);
    let nothing = http(phone, "GET", "/nothing-here", &[], "");
    assert_eq!(nothing.status, 404);
    assert_eq!(
        bad.body, nothing.body,
        "a wrong link must not hint at anything"
    );
    assert!(!anna_logged_out(&data));
    // The admin API's bearer token or the console's session are no phone link.
    assert_eq!(phone_get(phone, TEST_ADMIN_TOKEN, "logout").status, 404);
    assert_eq!(phone_get(phone, &anna, "delete").status, 404);
    // The phone listener serves nothing of the admin listener.
    assert_eq!(http(phone, "GET", "/operations", &[], "").status, 404);
    assert_eq!(http(phone, "GET", "/metrics", &[], "").status, 404);

    // Rotation is a state change: admins only, with the session's CSRF token.
    let rotate = "/operations/phone-keys/1/rotate";
    let post = |s: &Session, body: &str| {
        http(
            admin,
            "POST",
            rotate,
            &[
                ("Cookie", &s.cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            body,
        )
    };
    assert!(ops.contains(&format!("action=\"{rotate}\"")), "{ops}");
    assert_eq!(post(&adam, "").status, 403, "no CSRF token");
    assert_eq!(post(&adam, "csrf=0123").status, 403, "wrong CSRF token");
    let (code, out) = users_cli(
        &data,
        &["add", "vera", "--role", "viewer"],
        &format!("{VIEWER_PW}\n"),
    );
    assert_eq!(code, 0, "{out}");
    let (_, vera) = login(admin, "vera", VIEWER_PW);
    let vera = vera.expect("viewer login");
    assert_eq!(
        post(&vera, &form(&[("csrf", &vera.csrf)])).status,
        403,
        "viewer"
    );
    assert_eq!(
        phone_get(phone, &anna, "logout").status,
        200,
        "refused rotations changed nothing"
    );
    assert_eq!(post(&adam, &form(&[("csrf", &adam.csrf)])).status, 303);
    // The old link stops working at once; the new one works.
    assert_eq!(phone_get(phone, &anna, "login").status, 404);
    assert!(anna_logged_out(&data));
    let ops = get(admin, &adam, "/operations").text();
    let fresh = token_of(&ops, phone, "Anna Berg");
    assert_ne!(fresh, anna);
    let ben = all.iter().find(|(n, _)| n == "Ben Conrad").unwrap();
    assert_eq!(
        token_of(&ops, phone, "Ben Conrad"),
        ben.1,
        "only Anna's link changed"
    );
    let r = phone_get(phone, &fresh, "login");
    assert_eq!(r.status, 200);
    assert!(!anna_logged_out(&data));

    // The rotation is in the access log, with the admin and the member, not the token.
    let (code, audit) = callrec_cli(&["audit", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 0, "{audit}");
    // So is every switch by the member's own link.
    assert!(
        audit.lines().any(|l| l.contains("phone:anna")
            && l.contains("configure")
            && l.contains("recording off")),
        "a switch by the phone link is not in the access log:\n{audit}"
    );
    assert!(
        audit
            .lines()
            .any(|l| l.contains("console:adam") && l.contains("phone-key") && l.contains("anna")),
        "no rotation in the access log:\n{audit}"
    );
    // The tokens are credentials: in no log line, in no access log entry.
    std::thread::sleep(Duration::from_millis(300));
    let log = proxy.log();
    assert!(
        log.contains("phone key"),
        "phone key actions are logged:\n{log}"
    );
    for t in [anna.as_str(), fresh.as_str(), guess] {
        assert!(!log.contains(t), "token {t} in the log:\n{log}");
        assert!(!audit.contains(t), "token {t} in the access log:\n{audit}");
        assert!(!log.contains(&t[..16]), "part of token {t} in the log");
    }
}

#[test]
fn a_member_who_left_cannot_switch_and_guessing_is_throttled() {
    let dir = TestDir::new("phone-key-left");
    let phone = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = start(dir.path(), phone);
    let admin = proxy.admin_addr();
    let data = proxy.data_dir().to_path_buf();
    let adam = admin_session(&proxy);
    let ops = get(admin, &adam, "/operations").text();
    let anna = token_of(&ops, phone, "Anna Berg");
    let ben = token_of(&ops, phone, "Ben Conrad");

    // Anna leaves Sales in the PBX; once the directory is re-read, her link
    // switches nothing (she is in no other group).
    std::fs::write(dir.join("directory.toml"), directory("2, 3")).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !get(
            admin,
            &adam,
            "/operations"
        )
        .text()
        .contains("/operations/groups/100/members/1/")),
        "the directory was not re-read"
    );
    let r = phone_get(phone, &anna, "logout");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(!membership(&data).contains("100"), "{}", membership(&data));
    // Ben is still a member.
    assert_eq!(phone_get(phone, &ben, "logout").status, 200);

    // Guessing: after a few wrong links from one address, that address is
    // refused for a while, even with a right link.
    let mut refused = false;
    for i in 0..30 {
        let guess = format!("{:064x}", 0xfeed_0000u64 + i);
        let r = phone_get(phone, &guess, "toggle");
        if r.status == 429 {
            refused = true;
            break;
        }
        assert_eq!(r.status, 404);
    }
    assert!(refused, "guessing links is not throttled");
    assert_eq!(phone_get(phone, &ben, "login").status, 429);
    assert!(
        membership(&data).contains("100"),
        "a throttled request must change nothing: {}",
        membership(&data)
    );
    assert!(proxy.log().contains("phone key"), "{}", proxy.log());
}
