//! A plain HTTP/1.1 client for the admin port and a Prometheus text parser
//! (`metrics`, `metric`, `metric_sum`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The admin token every test proxy is started with (env CALLREC_ADMIN_TOKEN).
pub const TEST_ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A plain HTTP/1.1 GET with the test admin token: (status, body). Handles
/// Content-Length, chunked and close-delimited bodies.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, Some(TEST_ADMIN_TOKEN))
}

/// One HTTP/1.1 request with an optional bearer token; returns status and body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // a server that resets after sending its whole answer
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of HTTP headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no HTTP status"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("bad chunk"))?;
            let size_text = String::from_utf8_lossy(&rest[..eol]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size {
                return Err(bad("short chunk"));
            }
            out.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or(&[]);
        }
        body = out;
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.truncate(len);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Prometheus text format → map from `name{labels}` (exactly as written, or
/// just `name` without labels) to value; comment and blank lines carry no value.
pub fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The series ends at the closing brace when there are labels (label
        // values may contain spaces), else at the first space.
        let (series, rest) = match (line.find('{'), line.rfind('}')) {
            (Some(o), Some(c)) if o < c && line[..o].find(' ').is_none() => line.split_at(c + 1),
            _ => match line.split_once(char::is_whitespace) {
                Some((s, r)) => (s, r),
                None => continue,
            },
        };
        let value = rest.split_whitespace().next().and_then(|v| match v {
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            "NaN" => Some(f64::NAN),
            v => v.parse().ok(),
        });
        if let Some(v) = value {
            m.insert(series.trim().to_string(), v);
        }
    }
    m
}

/// `GET http://ADDR/metrics`, parsed; panics on a transport error or non-200.
pub fn metrics(admin: SocketAddr) -> BTreeMap<String, f64> {
    let (status, body) =
        http_get(admin, "/metrics").unwrap_or_else(|e| panic!("GET http://{admin}/metrics: {e}"));
    assert_eq!(status, 200, "GET http://{admin}/metrics → {status}\n{body}");
    parse_prometheus(&body)
}

/// Sum of every series of metric `name` (all label sets; the bare name too).
pub fn metric_sum(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| *k == name || (k.starts_with(name) && k[name.len()..].starts_with('{')))
        .map(|(_, v)| *v)
        .sum()
}

/// The value of one series, e.g. `metric(&m, "callrec_calls_active")` or
/// `metric(&m, r#"callrec_rtp_packets_total{direction="in"}"#)`.
pub fn metric(m: &BTreeMap<String, f64>, series: &str) -> Option<f64> {
    m.get(series).copied()
}
