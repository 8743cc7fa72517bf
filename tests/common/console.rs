//! Helpers for the web console tests: a raw HTTP/1.1 client that shows
//! headers and bytes exactly, the login dance (CSRF field and cookie), and
//! `callrec users` with the password on standard input.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// One HTTP response: status, headers (lower-case names), body bytes.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The `name=value` of a Set-Cookie header for cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .find(|(_, v)| v.starts_with(&format!("{name}=")))
            .map(|(_, v)| v.clone())
    }
}

/// One HTTP/1.1 request (Connection: close); the body is read to the end.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
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
pub fn users_cli(data: &Path, args: &[&str], stdin: &str) -> (i32, String) {
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
pub fn hidden(page: &str, name: &str) -> String {
    let at = page
        .find(&format!("name=\"{name}\""))
        .unwrap_or_else(|| panic!("no field {name} in:\n{page}"));
    let rest = &page[at..];
    let v = rest.find("value=\"").expect("value") + 7;
    rest[v..v + rest[v..].find('"').unwrap()].to_string()
}

/// Form-encodes pairs (only the characters the test uses need escaping).
pub fn form(pairs: &[(&str, &str)]) -> String {
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
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

/// GET /login, POST /login; returns the response of the POST and, on success, the session.
pub fn login(admin: SocketAddr, user: &str, password: &str) -> (Resp, Option<Session>) {
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

pub fn get(admin: SocketAddr, s: &Session, path: &str) -> Resp {
    http(admin, "GET", path, &[("Cookie", &s.cookie)], "")
}

/// Starts callrec on `data` with `config` (one profile recording every call into a
/// remote target), records one call and waits until `delivered()` names the set on
/// the target and no WAV of it is left below `data`: the set is then only there.
pub fn record_one_remote_set(
    data: &Path,
    config: &Path,
    mut delivered: impl FnMut() -> Option<String>,
) -> (super::Proxy, String) {
    let proxy = start_with_config(data, config);
    proxy
        .call(super::pair("basic"))
        .numbers("03012345678", "200")
        .run()
        .assert_success();
    let mut id = None;
    let only_remote = super::wait_until(Duration::from_secs(60), || {
        id = id.take().or_else(&mut delivered);
        id.as_ref()
            .is_some_and(|id| !wav_names(data).iter().any(|n| n.starts_with(id.as_str())))
    });
    assert!(
        only_remote,
        "set {id:?} not delivered to the target only (local WAVs {:?}): {}",
        wav_names(data),
        proxy.log_tail(30)
    );
    (proxy, id.unwrap())
}

/// callrec on `data` with `config` (again, e.g. after changing the target's copy:
/// a new start forgets the sets the console fetched).
pub fn start_with_config(data: &Path, config: &Path) -> super::Proxy {
    super::Proxy::builder()
        .data_dir(data)
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start()
}

/// Logs in viewer `vera`, creating her in `data` on first use.
pub fn viewer(proxy: &super::Proxy, data: &Path) -> Session {
    let admin = proxy.admin_addr();
    let (_, list) = users_cli(data, &["list"], "");
    if !list.contains("vera") {
        let (code, out) = users_cli(
            data,
            &["add", "vera", "--role", "viewer"],
            "viewer password 1\n",
        );
        assert_eq!(code, 0, "{out}");
    }
    login(admin, "vera", "viewer password 1").1.expect("login")
}

/// The console shows set `id` as verified and serves `wav` (its WAV as the
/// target holds it) whole and by range.
pub fn assert_plays(proxy: &super::Proxy, data: &Path, id: &str, wav: &[u8]) {
    let admin = proxy.admin_addr();
    let s = viewer(proxy, data);
    // The database writer may record the set a moment after the upload.
    let mut page = get(admin, &s, &format!("/recordings/{id}"));
    super::wait_until(Duration::from_secs(10), || {
        page = get(admin, &s, &format!("/recordings/{id}"));
        page.status != 404
    });
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(
        page.text().contains("verified:") && !page.text().contains("FAILED"),
        "{}\n{}",
        page.text(),
        proxy.log_tail(20)
    );
    let audio = get(admin, &s, &format!("/recordings/{id}/audio"));
    assert_eq!(audio.status, 200, "{}", audio.text());
    assert!(audio.body == wav, "the target's audio, byte for byte");
    let part = http(
        admin,
        "GET",
        &format!("/recordings/{id}/audio"),
        &[("Cookie", &s.cookie), ("Range", "bytes=100-1099")],
        "",
    );
    assert_eq!(part.status, 206);
    assert!(
        part.body == wav[100..1100],
        "the range of the target's audio"
    );
}

/// The console shows set `id` as failing verification (a file of it altered) and
/// refuses its audio.
pub fn assert_refuses(proxy: &super::Proxy, data: &Path, id: &str) {
    let admin = proxy.admin_addr();
    let s = viewer(proxy, data);
    let page = get(admin, &s, &format!("/recordings/{id}"));
    // Fetched anew and found changed, not merely unavailable.
    assert!(
        page.text().contains("FAILED") && page.text().contains("the file was altered"),
        "{}",
        page.text()
    );
    let audio = get(admin, &s, &format!("/recordings/{id}/audio"));
    assert_eq!(audio.status, 409, "a changed set is not played");
}

/// Names of the WAV files anywhere below `root`.
pub fn wav_names(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "wav") {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// The id of a set whose signature file is in `folder` on disk (a served folder).
pub fn signed_set_in(folder: &Path) -> Option<String> {
    std::fs::read_dir(folder).ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.strip_suffix(".sha256.SHA256withRSA.sig")
            .map(str::to_string)
    })
}

/// Flips a byte near the end of `file` (a WAV on a target's disk).
pub fn tamper(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let n = bytes.len();
    bytes[n - 7] ^= 0x5a;
    std::fs::write(file, bytes).unwrap();
}
