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
