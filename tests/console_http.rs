//! The web console over plain HTTP, as an attacker and as each role would use
//! it: off until a user exists, users created by the CLI (password on standard
//! input), login with a CSRF field and HttpOnly/SameSite session cookies,
//! failed logins throttled per user and address, roles enforced, set ids that
//! try to leave the recordings folder refused, audio served with HTTP Range,
//! a tampered set shown as failing and not played, and an export that verifies
//! with openssl through the bundled verify.sh.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// One HTTP response: status, headers (lower-case names), body bytes.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The `name=value` of a Set-Cookie header for cookie `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .find(|(_, v)| v.starts_with(&format!("{name}=")))
            .map(|(_, v)| v.clone())
    }
}

/// One HTTP/1.1 request (Connection: close); the body is read to the end.
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if let Some(n) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(n);
    } else if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let n =
                usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
            rest = &rest[eol + 4 + n..];
        }
        body = out;
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// `callrec users ARGS --data-dir DATA` with `stdin` piped in.
fn users_cli(data: &Path, args: &[&str], stdin: &str) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_callrec"))
        .arg("users")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("CALLREC_DATA_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The value of hidden input `name` in an HTML page.
fn hidden(page: &str, name: &str) -> String {
    let at = page
        .find(&format!("name=\"{name}\""))
        .unwrap_or_else(|| panic!("no field {name} in:\n{page}"));
    let rest = &page[at..];
    let v = rest.find("value=\"").expect("value") + 7;
    rest[v..v + rest[v..].find('"').unwrap()].to_string()
}

/// Form-encodes pairs (only the characters the test uses need escaping).
fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let v: String = v
                .bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A logged-in browser: its session cookie and the page's CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

/// GET /login, POST /login; returns the response of the POST and, on success, the session.
fn login(admin: SocketAddr, user: &str, password: &str) -> (Resp, Option<Session>) {
    let page = http(admin, "GET", "/login", &[], "");
    assert_eq!(page.status, 200, "{}", page.text());
    let pre = page.cookie("callrec_login").expect("login cookie");
    let pre = pre.split(';').next().unwrap().to_string();
    let csrf = hidden(&page.text(), "csrf");
    let body = form(&[("username", user), ("password", password), ("csrf", &csrf)]);
    let r = http(
        admin,
        "POST",
        "/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &pre),
        ],
        &body,
    );
    let session = r.cookie("callrec_session").map(|c| {
        let cookie = c.split(';').next().unwrap().to_string();
        let home = http(admin, "GET", "/recordings", &[("Cookie", &cookie)], "");
        let csrf = hidden(&home.text(), "csrf");
        Session { cookie, csrf }
    });
    (r, session)
}

fn get(admin: SocketAddr, s: &Session, path: &str) -> Resp {
    http(admin, "GET", path, &[("Cookie", &s.cookie)], "")
}

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
    let whole = get(admin, &viewer, &format!("/recordings/{id}/audio"));
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, wav);
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
    let wav_path = find_file(&data.join("recordings"), &format!("{id}.wav")).unwrap();
    let mut bytes = std::fs::read(&wav_path).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x55;
    std::fs::write(&wav_path, bytes).unwrap();
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
