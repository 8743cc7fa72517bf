//! How people reach the web console besides the password form, as an attacker
//! would try it: a login header of a trusted reverse proxy (sent from an
//! untrusted address, naming an unknown user, with odd values, and honestly
//! from the proxy with the role taken from the users table), and the admin
//! listener over HTTPS with the SIP certificate (checked against a test CA;
//! plain HTTP gets nothing; cookies are Secure). The new settings are given
//! as environment variables.

mod common;
mod tls_support;

use common::console::{form, hidden, users_cli, Resp};
use common::*;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

const ADMIN_PW: &str = "admin password 333";
const VIEWER_PW: &str = "viewer password 1";
/// The reverse proxy's address; every other loopback address is "the internet".
const PROXY_PEER: &str = "127.0.0.7";

/// Sends `head` (request line and headers, raw bytes, without the final blank
/// line) and `body` over `s`; reads the answer to the end.
fn exchange(mut s: impl Read + Write, head: &[u8], body: &str) -> std::io::Result<Resp> {
    let mut req = head.to_vec();
    req.extend_from_slice(
        format!(
            "Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    s.write_all(&req)?;
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify after the answer: keep what came.
    if let Err(e) = s.read_to_end(&mut raw) {
        if raw.is_empty() {
            return Err(e);
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {raw:?}")))?;
    let text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {text:?}")))?;
    let headers: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Resp {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// A TCP connection to `to` from local address `from` (any loopback address).
fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from, 0)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), sock.connect(to))
            .await
            .expect("connect timeout")
            .expect("connect")
    });
    let s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// `GET path` from `from` with the raw header lines `extra` (may hold any bytes).
fn get_from(from: &str, admin: SocketAddr, path: &str, extra: &[&[u8]]) -> Resp {
    request_from(from, admin, "GET", path, extra, "")
}

fn request_from(
    from: &str,
    admin: SocketAddr,
    method: &str,
    path: &str,
    extra: &[&[u8]],
    body: &str,
) -> Resp {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {admin}\r\n").into_bytes();
    for h in extra {
        head.extend_from_slice(h);
        head.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() {
        head.extend_from_slice(b"Content-Type: application/x-www-form-urlencoded\r\n");
    }
    exchange(connect_from(from.parse().unwrap(), admin), &head, body).expect("HTTP answer")
}

fn add_users(data: &std::path::Path) {
    for (name, role, pw) in [("adam", "admin", ADMIN_PW), ("vera", "viewer", VIEWER_PW)] {
        let (code, out) = users_cli(data, &["add", name, "--role", role], &format!("{pw}\n"));
        assert_eq!(code, 0, "{out}");
    }
}

#[test]
fn console_trusted_proxy_header_is_believed_only_from_the_proxy_and_only_for_known_users() {
    let proxy = Proxy::builder()
        .env("CALLREC_CONSOLE_TRUSTED_HEADER", "X-Remote-User")
        .env("CALLREC_CONSOLE_TRUSTED_PROXY", &format!("{PROXY_PEER}/32"))
        .start();
    let admin = proxy.admin_addr();
    let data = proxy.data_dir().to_path_buf();
    add_users(&data);

    // Attack 1: anyone else sends the header naming the admin. Ignored (no
    // session: back to the login form) and logged.
    for from in ["127.0.0.1", "127.0.0.6", "127.0.0.8"] {
        let r = get_from(from, admin, "/operations", &[b"X-Remote-User: adam"]);
        assert_eq!(r.status, 303, "header from {from} believed: {}", r.text());
        assert_eq!(r.header("location"), Some("/login"));
    }
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .log()
            .contains("from 127.0.0.1 ignored: not a trusted proxy")),
        "ignored header not logged:\n{}",
        proxy.log_tail(30)
    );

    // Attack 2: the proxy names someone who is no console user (or the right
    // name in another case): refused, not signed in as anyone, logged.
    for who in ["mallory", "ADAM", "adam "] {
        let line = format!("X-Remote-User: {who}");
        let r = get_from(PROXY_PEER, admin, "/recordings", &[line.as_bytes()]);
        let expect = if who == "adam " { 200 } else { 403 };
        assert_eq!(r.status, expect, "{who:?}: {}", r.text());
    }
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .log()
            .contains("named user \"mallory\", who is not a console user")),
        "unknown user not logged:\n{}",
        proxy.log_tail(30)
    );

    // Attack 3: odd values from the proxy: two headers, a list, path
    // characters, bytes that are not text, empty, overlong. Nobody is signed in.
    let long = format!("X-Remote-User: {}", "a".repeat(65));
    let odd: [&[&[u8]]; 7] = [
        &[b"X-Remote-User: vera", b"X-Remote-User: adam"],
        &[b"X-Remote-User: vera, adam"],
        &[b"X-Remote-User: ../adam"],
        &[b"X-Remote-User: ad\xffam"],
        &[b"X-Remote-User: "],
        &[b"X-Remote-User: adam\x00"],
        &[long.as_bytes()],
    ];
    for headers in odd {
        // A page every role may see: any user signed in would get it.
        let r = get_from(PROXY_PEER, admin, "/recordings", headers);
        assert!(
            r.status == 403 || r.status == 400,
            "odd value {:?} answered {}: {}",
            headers
                .iter()
                .map(|h| String::from_utf8_lossy(h))
                .collect::<Vec<_>>(),
            r.status,
            r.text()
        );
        assert!(!r.text().contains("Log out"), "signed in by an odd value");
    }

    // The honest case: the proxy signs vera in; her role comes from the table.
    let r = get_from(
        PROXY_PEER,
        admin,
        "/recordings?number=0301234",
        &[b"x-remote-user: vera"],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("vera (viewer)"), "{}", r.text());
    let r = get_from(PROXY_PEER, admin, "/operations", &[b"X-Remote-User: vera"]);
    assert_eq!(r.status, 403, "a viewer's role is not raised by the proxy");
    let ops = get_from(PROXY_PEER, admin, "/operations", &[b"X-Remote-User: adam"]);
    assert_eq!(ops.status, 200, "{}", ops.text());
    assert!(ops.text().contains("Upload queue"));

    // State changes still need the CSRF token of the page.
    let r = request_from(
        PROXY_PEER,
        admin,
        "POST",
        "/logout",
        &[b"X-Remote-User: adam"],
        "csrf=forged",
    );
    assert_eq!(r.status, 403, "a forged CSRF token must be refused");
    let csrf = hidden(&ops.text(), "csrf");
    let r = request_from(
        PROXY_PEER,
        admin,
        "POST",
        "/logout",
        &[b"X-Remote-User: adam"],
        &form(&[("csrf", &csrf)]),
    );
    assert_eq!(r.status, 303, "{}", r.text());

    // The proxy-signed-in search is in the access log under vera's name.
    let db = rusqlite::Connection::open(data.join("callrec.sqlite")).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM access_log WHERE actor = 'console:vera' AND action = 'search' AND subject = '0301234'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1, "the search is not in the access log");

    // The password form still works beside the header.
    let (r, s) = common::console::login(admin, "vera", VIEWER_PW);
    assert_eq!(r.status, 303);
    assert!(s.is_some());
}

/// A TLS connection to `admin` that trusts only the test CA and expects `name`.
fn tls_to(
    pki: &tls_support::Pki,
    admin: SocketAddr,
    name: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let tcp = TcpStream::connect_timeout(&admin, Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let conn = rustls::ClientConnection::new(
        pki.client_config(),
        rustls::pki_types::ServerName::try_from(name.to_string()).unwrap(),
    )
    .unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

fn https(
    pki: &tls_support::Pki,
    admin: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    exchange(tls_to(pki, admin, "localhost"), head.as_bytes(), body)
        .unwrap_or_else(|e| panic!("no HTTPS answer from the admin listener: {e}"))
}

#[test]
fn console_over_https_with_the_sip_certificate_and_secure_cookies() {
    let pki = tls_support::Pki::new();
    let leaf = pki.leaf("localhost", false);
    let (cert, key) = pki.write("admin", &leaf);
    let proxy = Proxy::builder()
        .env("CALLREC_TLS_CERT", cert.to_str().unwrap())
        .env("CALLREC_TLS_KEY", key.to_str().unwrap())
        .env("CALLREC_ADMIN_TLS", "true")
        .start();
    let admin = proxy.admin_addr();
    add_users(proxy.data_dir());

    // Plain HTTP gets no page: the listener speaks only TLS.
    let plain = exchange(
        TcpStream::connect_timeout(&admin, Duration::from_secs(5)).unwrap(),
        b"GET /login HTTP/1.1\r\nHost: x\r\n",
        "",
    );
    assert!(
        plain.is_err(),
        "plain HTTP answered: {}",
        plain.map(|r| r.status).unwrap_or(0)
    );

    // The certificate is the SIP one, verified against the test CA.
    let mut s = tls_to(&pki, admin, "localhost");
    let r = exchange(&mut s, b"GET /health HTTP/1.1\r\nHost: localhost\r\n", "")
        .expect("health over HTTPS");
    assert_eq!(r.status, 200);
    let shown = s.conn.peer_certificates().unwrap()[0].clone();
    assert!(shown == leaf.der, "another certificate was shown");

    // Login over HTTPS: every cookie is Secure (no flag needed for it).
    let page = https(&pki, admin, "GET", "/login", &[], "");
    assert_eq!(page.status, 200, "{}", page.text());
    let pre = page.cookie("callrec_login").expect("login cookie");
    assert!(pre.contains("Secure") && pre.contains("HttpOnly"), "{pre}");
    let csrf = hidden(&page.text(), "csrf");
    let pre = pre.split(';').next().unwrap().to_string();
    let body = form(&[
        ("username", "adam"),
        ("password", ADMIN_PW),
        ("csrf", &csrf),
    ]);
    let r = https(
        &pki,
        admin,
        "POST",
        "/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &pre),
        ],
        &body,
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let session = r.cookie("callrec_session").expect("session cookie");
    assert!(
        session.contains("; Secure") && session.contains("SameSite=Strict"),
        "{session}"
    );
    let cookie = session.split(';').next().unwrap();
    let ops = https(&pki, admin, "GET", "/operations", &[("Cookie", cookie)], "");
    assert_eq!(ops.status, 200, "{}", ops.text());
    assert!(ops.text().contains("Instance certificate"));

    // A client that stalls its handshake does not hold up the others.
    let _stalled = TcpStream::connect_timeout(&admin, Duration::from_secs(5)).unwrap();
    let r = https(&pki, admin, "GET", "/health", &[], "");
    assert_eq!(r.status, 200);
}

#[test]
fn admin_tls_without_a_certificate_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = callrec_cli(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--pbx",
        "127.0.0.1:5999",
        "--trunk",
        "127.0.0.1:5998",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-tls",
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("--admin-tls needs --tls-cert and --tls-key"),
        "{out}"
    );
}
