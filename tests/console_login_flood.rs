//! The console's login under a flood, as an attacker would send it: many
//! password logins at once, each with a matching CSRF cookie and field of
//! its own making (no page fetched first). Every password check holds its
//! memory-hard hash's working memory (about 19 MiB); the proxy runs a few
//! at a time and turns the rest away at once, so the flood cannot take the
//! memory the recordings need.

mod common;

use common::console::{form, users_cli};
use common::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

const FLOOD: usize = 48;

/// POST /login from loopback address `from` (each sender its own address,
/// as a flood from many machines: one address may hold only a few
/// connections); the status, or 0 when the connection was closed unanswered.
fn post_login(admin: SocketAddr, from: [u8; 4], user: &str, password: &str, token: &str) -> u16 {
    let body = form(&[("username", user), ("password", password), ("csrf", token)]);
    let mut s = tcp_from(from, admin);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /login HTTP/1.1\r\nHost: callrec\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nCookie: callrec_login={token}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_login_flood_runs_a_few_password_checks_at_a_time() {
    let proxy = Proxy::start();
    let admin = proxy.admin_addr();
    let (code, out) = users_cli(
        proxy.data_dir(),
        &["add", "adam", "--role", "admin"],
        "admin password 333\n",
    );
    assert_eq!(code, 0, "{out}");
    // One check first: what a single login costs is in the peak already.
    assert_eq!(
        post_login(admin, [127, 0, 0, 1], "nobody", "a wrong password", "warm"),
        401
    );
    std::thread::sleep(Duration::from_millis(200));
    let before = proxy.peak_rss_kib();

    let flood: Vec<_> = (0..FLOOD)
        .map(|i| {
            std::thread::spawn(move || {
                post_login(
                    admin,
                    [127, 0, 1, i as u8 + 1],
                    &format!("guess{i}"),
                    "a wrong password",
                    &format!("t{i}"),
                )
            })
        })
        .collect();
    let answers: Vec<u16> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    let grown_mib = proxy.peak_rss_kib().saturating_sub(before) / 1024;
    let busy = answers.iter().filter(|s| **s == 503).count();
    assert!(
        answers.iter().all(|s| *s == 401 || *s == 503),
        "answers: {answers:?}"
    );
    assert!(
        grown_mib < 160,
        "{FLOOD} logins at once grew the proxy's memory by {grown_mib} MiB ({busy} turned away)"
    );
    assert!(busy > 0, "no login was turned away: {answers:?}");
    assert!(
        proxy.log().contains("password checks"),
        "{}",
        proxy.log_tail(20)
    );
}
