//! The web console over plain HTTP, as an attacker and as each role would use
//! it: off until a user exists, users created by the CLI (password on standard
//! input), login with a CSRF field and HttpOnly/SameSite session cookies,
//! failed logins throttled per user and address, roles enforced, set ids that
//! try to leave the recordings folder refused, audio served with HTTP Range,
//! a tampered set shown as failing and not played, and an export that verifies
//! with openssl through the bundled verify.sh.

mod common;

use common::console::*;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const VIEWER_PW: &str = "viewer password 1";
const AUDITOR_PW: &str = "auditor password 2";
const ADMIN_PW: &str = "admin password 333";

#[test]
fn console_login_roles_range_and_tamper() {
    let proxy = Proxy::start();
    proxy
        .call(pair("basic"))
        .numbers("03012345678", "200")
        .run()
        .assert_success();
    let admin = proxy.admin_addr();
    let data = proxy.data_dir().to_path_buf();
    let sets = std::fs::read_dir(data.join("recordings")).unwrap();
    assert!(sets.count() > 0, "no set delivered");

    // Off until a user exists: nothing to attack.
    assert_eq!(http(admin, "GET", "/login", &[], "").status, 404);

    // Users from the CLI; the password comes from standard input.
    let (code, out) = users_cli(&data, &["add", "vera", "--role", "viewer"], "too short\n");
    assert_eq!(code, 2, "a short password must be refused: {out}");
    assert!(out.contains("12"), "{out}");
    for (name, role, pw) in [
        ("vera", "viewer", VIEWER_PW),
        ("audrey", "auditor", AUDITOR_PW),
        ("adam", "admin", ADMIN_PW),
    ] {
        let (code, out) = users_cli(&data, &["add", name, "--role", role], &format!("{pw}\n"));
        assert_eq!(code, 0, "{out}");
    }
    let (code, out) = users_cli(
        &data,
        &["add", "vera", "--role", "admin"],
        "another password 1\n",
    );
    assert_ne!(
        code, 0,
        "adding an existing user must not change her role: {out}"
    );
    // The hash in the database is argon2, never the password.
    let db = rusqlite::Connection::open(data.join("callrec.sqlite")).unwrap();
    let hash: String = db
        .query_row(
            "SELECT hash FROM console_users WHERE name = 'vera'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(VIEWER_PW));

    // The login form works only with its CSRF field and cookie.
    let page = http(admin, "GET", "/login", &[], "");
    assert_eq!(page.status, 200);
    let text = page.text();
    assert!(
        text.contains("<label") && text.contains("name=\"username\""),
        "{text}"
    );
    let pre = page.cookie("callrec_login").unwrap();
    assert!(
        pre.contains("HttpOnly") && pre.contains("SameSite=Strict"),
        "{pre}"
    );
    let no_csrf = http(
        admin,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &form(&[("username", "vera"), ("password", VIEWER_PW)]),
    );
    assert_eq!(
        no_csrf.status, 403,
        "a login without CSRF token must be refused"
    );
    assert!(no_csrf.cookie("callrec_session").is_none());

    // Wrong password: refused and logged.
    let (r, s) = login(admin, "vera", "wrong password 12");
    assert_eq!(r.status, 401);
    assert!(s.is_none());
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .log()
            .contains("console login failed")),
        "failed login not logged"
    );

    // Throttle: after repeated failures even the right password is refused for a while.
    for _ in 0..5 {
        let (r, _) = login(admin, "audrey", "guess guess guess");
        assert!(r.status == 401 || r.status == 429, "{}", r.status);
    }
    let (r, s) = login(admin, "audrey", AUDITOR_PW);
    assert_eq!(r.status, 429, "guessing must be throttled per user");
    assert!(s.is_none());

    // A viewer: search in another spelling, listen, but no export or operations.
    let (r, viewer) = login(admin, "vera", VIEWER_PW);
    assert_eq!(r.status, 303, "{}", r.text());
    let c = r.cookie("callrec_session").unwrap();
    assert!(
        c.contains("HttpOnly") && c.contains("SameSite=Strict"),
        "{c}"
    );
    let viewer = viewer.unwrap();
    let anon = http(admin, "GET", "/recordings?number=03012345678", &[], "");
    assert_eq!(anon.status, 303, "no session: back to the login page");
    assert_eq!(anon.header("location"), Some("/login"));
    let list = get(admin, &viewer, "/recordings?number=%2B49%2030%2012345678");
    assert_eq!(list.status, 200);
    let list = list.text();
    let id = list
        .split("href=\"/recordings/")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no set in the result list:\n{list}"))
        .to_string();
    let incoming = get(
        admin,
        &viewer,
        "/recordings?number=03012345678&direction=incoming",
    );
    assert!(
        incoming
            .text()
            .contains(&format!("href=\"/recordings/{id}\"")),
        "{}",
        incoming.text()
    );
    let outgoing = get(
        admin,
        &viewer,
        "/recordings?number=03012345678&direction=outgoing",
    );
    assert!(
        outgoing.text().contains("0 recording(s)"),
        "{}",
        outgoing.text()
    );
    let elsewhen = get(
        admin,
        &viewer,
        "/recordings?number=03012345678&from=2000-01-01&to=2000-12-31",
    );
    assert!(
        elsewhen.text().contains("0 recording(s)"),
        "{}",
        elsewhen.text()
    );
    let page = get(admin, &viewer, &format!("/recordings/{id}"));
    assert_eq!(page.status, 200);
    assert!(page.text().contains("verified"), "{}", page.text());
    assert!(page.text().contains("<audio"), "{}", page.text());

    let wav = std::fs::read(data.join("recordings").join(format!("{id}.wav")))
        .or_else(|_| {
            let found = find_file(&data.join("recordings"), &format!("{id}.wav")).unwrap();
            std::fs::read(found)
        })
        .unwrap();
    let part = http(
        admin,
        "GET",
        &format!("/recordings/{id}/audio"),
        &[("Cookie", &viewer.cookie), ("Range", "bytes=100-199")],
        "",
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.header("accept-ranges"), Some("bytes"));
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 100-199/{}", wav.len()).as_str())
    );
    assert_eq!(part.body, wav[100..200]);
    // A range longer than the file is served as the whole file: a download
    // in one request that no player made. A session's first audio request,
    // whatever its range (here 100-199), writes the playback row; its
    // further requests within minutes add none.
    let all = http(
        admin,
        "GET",
        &format!("/recordings/{id}/audio"),
        &[("Cookie", &viewer.cookie), ("Range", "bytes=0-99999999999")],
        "",
    );
    assert_eq!(all.status, 206);
    assert!(
        all.body == wav,
        "the long range did not bring the whole file"
    );
    let playbacks = || {
        let (code, audit) = callrec_cli(&["audit", "--data-dir", data.to_str().unwrap()]);
        assert_eq!(code, 0, "{audit}");
        audit
            .lines()
            .filter(|l| l.contains("console:vera") && l.contains("playback") && l.contains(&id))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let rows = playbacks();
    assert_eq!(
        rows.len(),
        1,
        "audio fetched by range must leave exactly one row: {rows:?}"
    );
    assert!(rows[0].contains("bytes=100-199"), "{rows:?}");
    let whole = get(admin, &viewer, &format!("/recordings/{id}/audio"));
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, wav);
    assert_eq!(playbacks().len(), 1, "the same session's playback, one row");
    assert_eq!(
        get(admin, &viewer, &format!("/recordings/{id}/export")).status,
        403
    );
    assert_eq!(get(admin, &viewer, "/operations").status, 403);
    assert_eq!(get(admin, &viewer, "/access-log").status, 403);
    // Set ids that try to walk out of the recordings folder find nothing.
    for bad in ["..%2F..%2Fcert", "%2e%2e", "..", "x%00y"] {
        let r = get(admin, &viewer, &format!("/recordings/{bad}/audio"));
        assert!(r.status == 404 || r.status == 400, "{bad}: {}", r.status);
    }

    // Logout is a state change: refused without the CSRF field.
    let r = http(
        admin,
        "POST",
        "/logout",
        &[
            ("Cookie", &viewer.cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        "",
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        get(admin, &viewer, "/recordings").status,
        200,
        "still logged in"
    );
    let r = http(
        admin,
        "POST",
        "/logout",
        &[
            ("Cookie", &viewer.cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &form(&[("csrf", &viewer.csrf)]),
    );
    assert_eq!(r.status, 303);
    assert_eq!(
        get(admin, &viewer, "/recordings").status,
        303,
        "session ended"
    );

    // An admin sees the operations view with the instance certificate.
    let (_, adam) = login(admin, "adam", ADMIN_PW);
    let adam = adam.expect("admin login");
    let ops = get(admin, &adam, "/operations");
    assert_eq!(ops.status, 200);
    let ops = ops.text();
    assert!(
        ops.contains("BEGIN CERTIFICATE") && ops.contains("SHA-256"),
        "{ops}"
    );
    assert!(ops.contains("Upload queue"), "{ops}");

    // An export (admin may too): a zip that verifies with openssl via verify.sh.
    let zip = get(admin, &adam, &format!("/recordings/{id}/export"));
    assert_eq!(zip.status, 200);
    assert_eq!(zip.header("content-type"), Some("application/zip"));
    let dir = TestDir::new("console-export");
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip.body)).unwrap();
    archive.extract(dir.path()).unwrap();
    assert!(dir.join("cert.pem").exists() && dir.join("verify.sh").exists());
    let v = Command::new("sh")
        .arg(dir.join("verify.sh"))
        .arg("--cert")
        .arg(dir.join("cert.pem"))
        .arg(dir.join(&format!("{id}.sha256")))
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "export does not verify: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );

    // A tampered set is shown as failing and not played.
    // The file keeps its size and modification time, so nothing but its
    // content tells: a playback that starts must still not get it.
    let wav_path = find_file(&data.join("recordings"), &format!("{id}.wav")).unwrap();
    let reference = dir.join("reference-time");
    std::fs::write(&reference, b"").unwrap();
    let touch = |args: &[&std::path::Path]| {
        assert!(Command::new("touch")
            .arg("-r")
            .args(args)
            .status()
            .unwrap()
            .success());
    };
    touch(&[&wav_path, &reference]);
    let mut bytes = std::fs::read(&wav_path).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x55;
    std::fs::write(&wav_path, bytes).unwrap();
    touch(&[&reference, &wav_path]);
    assert_eq!(
        get(admin, &adam, &format!("/recordings/{id}/audio")).status,
        409
    );
    let page = get(admin, &adam, &format!("/recordings/{id}"));
    assert!(page.text().contains("FAILED"), "{}", page.text());
    assert!(
        !page.text().contains("<audio"),
        "a failing set must not be offered for playing"
    );
    assert_eq!(
        get(admin, &adam, &format!("/recordings/{id}/audio")).status,
        409
    );
    assert_eq!(
        get(admin, &adam, &format!("/recordings/{id}/export")).status,
        409
    );

    // Every search, playback and export is in the access log, with the user.
    let (code, audit) = callrec_cli(&["audit", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 0, "{audit}");
    for (who, what, subject) in [
        ("console:vera", "search", "+49 30 12345678"),
        ("console:vera", "playback", id.as_str()),
        ("console:adam", "export", id.as_str()),
    ] {
        assert!(
            audit
                .lines()
                .any(|l| l.contains(who) && l.contains(what) && l.contains(subject)),
            "no {who} {what} {subject} in the access log:\n{audit}"
        );
    }

    // A removed user's session ends at once.
    let (code, out) = users_cli(&data, &["remove", "adam"], "");
    assert_eq!(code, 0, "{out}");
    assert_eq!(get(admin, &adam, "/recordings").status, 303);
}

fn find_file(root: &Path, name: &str) -> Option<std::path::PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == name) {
                return Some(p);
            }
        }
    }
    None
}

/// Sessions end after `--console-idle-timeout` and when the password changes;
/// the admins' group membership buttons need the session's CSRF token.
#[test]
fn console_sessions_expire_and_membership_needs_csrf() {
    let proxy = Proxy::builder()
        .arg("--console-idle-timeout")
        .arg("2")
        .arg("--directory")
        .arg(repo_dir().join("testdata/directory.toml").to_str().unwrap())
        .start();
    let admin = proxy.admin_addr();
    let data = proxy.data_dir().to_path_buf();
    let (code, out) = users_cli(
        &data,
        &["add", "adam", "--role", "admin"],
        &format!("{ADMIN_PW}\n"),
    );
    assert_eq!(code, 0, "{out}");

    // Idle for longer than the timeout: logged out.
    let (_, s) = login(admin, "adam", ADMIN_PW);
    let s = s.expect("login");
    assert_eq!(get(admin, &s, "/recordings").status, 200);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        get(admin, &s, "/recordings").status,
        303,
        "idle session must end"
    );

    // The operations view lists the directory's groups with a button per member.
    let (_, s) = login(admin, "adam", ADMIN_PW);
    let s = s.expect("login");
    let ops = get(admin, &s, "/operations").text();
    assert!(ops.contains("Sales") && ops.contains("Anna Berg"), "{ops}");
    let path = "/operations/groups/100/members/1/logout";
    assert!(ops.contains(&format!("action=\"{path}\"")), "{ops}");
    let post = |body: &str| {
        http(
            admin,
            "POST",
            path,
            &[
                ("Cookie", &s.cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            body,
        )
    };
    // The logged-out (group, member) pairs as the protocol database holds them.
    let membership = || {
        let c = rusqlite::Connection::open(data.join("callrec.sqlite")).unwrap();
        let mut st = c
            .prepare("SELECT group_id, user_id FROM logged_out_members")
            .unwrap();
        let pairs: Vec<(i64, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        format!("{pairs:?}")
    };
    assert_eq!(post("").status, 403, "no CSRF token");
    assert_eq!(post("csrf=0123").status, 403, "wrong CSRF token");
    assert!(!membership().contains("100"), "{}", membership());
    assert_eq!(post(&form(&[("csrf", &s.csrf)])).status, 303);
    assert!(
        membership().contains("100"),
        "logout not stored: {}",
        membership()
    );
    // Who switched a member's recording off is in the access log.
    let (code, audit) = callrec_cli(&["audit", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 0, "{audit}");
    assert!(
        audit.lines().any(|l| l.contains("console:adam")
            && l.contains("configure")
            && l.contains("recording off")
            && l.contains("Sales")),
        "the switch is not in the access log:\n{audit}"
    );

    // A new password ends the sessions started with the old one.
    let (code, out) = users_cli(&data, &["passwd", "adam"], "a brand new password\n");
    assert_eq!(code, 0, "{out}");
    assert_eq!(get(admin, &s, "/recordings").status, 303);
    let (r, _) = login(admin, "adam", ADMIN_PW);
    assert_eq!(r.status, 401);
    let (r, _) = login(admin, "adam", "a brand new password");
    assert_eq!(r.status, 303);
}
