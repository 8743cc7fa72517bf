//! Reading inside header values: the URI of a name-addr and its user and
//! host parts, the `tag` parameter, and Via. Lenient where peers differ
//! (quoted display names, missing angle brackets); `None` where a value is
//! unusable, never a guess.

/// The `tag` parameter of a From or To value.
pub fn tag_of(value: &str) -> Option<String> {
    param_of(header_params(value), "tag")
}

/// The parameter part of a name-addr or addr-spec header value (after the URI).
fn header_params(value: &str) -> &str {
    match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value.split_once(';').map(|(_, p)| p).unwrap_or(""),
    }
}

fn param_of(params: &str, name: &str) -> Option<String> {
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The URI inside a name-addr (`"Bob" <sip:bob@x>;tag=1` → `sip:bob@x`) or an addr-spec.
pub fn uri_of(value: &str) -> &str {
    if let (Some(a), Some(b)) = (value.find('<'), value.rfind('>')) {
        if a < b {
            return &value[a + 1..b];
        }
    }
    value.split(';').next().unwrap_or(value).trim()
}

/// The user part of a SIP URI (`sip:+4930123@host` → `+4930123`).
pub fn uri_user(uri: &str) -> Option<&str> {
    let rest = uri.split_once(':')?.1;
    let (user, _) = rest.split_once('@')?;
    Some(user.split(';').next().unwrap_or(user))
}

/// Host and port of a SIP URI (`sip:bob@h:5070;transport=tcp` → `("h", Some(5070))`).
pub fn uri_hostport(uri: &str) -> Option<(String, Option<u16>)> {
    let rest = uri.split_once(':')?.1;
    let rest = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    let hp = rest.split([';', '?']).next()?;
    split_hostport(hp)
}

fn split_hostport(hp: &str) -> Option<(String, Option<u16>)> {
    if let Some(v6) = hp.strip_prefix('[') {
        let (h, rest) = v6.split_once(']')?;
        let port = rest.strip_prefix(':').and_then(|p| p.parse().ok());
        return Some((h.to_string(), port));
    }
    match hp.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), Some(p.parse().ok()?))),
        None => Some((hp.to_string(), None)),
    }
}

/// A parsed Via value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport token (`UDP`, `TCP`, …).
    pub transport: String,
    /// sent-by host.
    pub host: String,
    /// sent-by port.
    pub port: Option<u16>,
    /// branch parameter.
    pub branch: Option<String>,
}

impl Via {
    /// Parses `SIP/2.0/UDP host:port;branch=…`.
    pub fn parse(value: &str) -> Option<Via> {
        let (proto, rest) = value.trim().split_once(char::is_whitespace)?;
        let mut p = proto.split('/');
        let (Some(name), Some(_ver), Some(transport)) = (p.next(), p.next(), p.next()) else {
            return None;
        };
        if !name.eq_ignore_ascii_case("SIP") {
            return None;
        }
        let rest = rest.trim();
        let (sent_by, params) = rest.split_once(';').unwrap_or((rest, ""));
        let (host, port) = split_hostport(sent_by.trim())?;
        if host.is_empty() {
            return None;
        }
        Some(Via {
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            branch: param_of(params, "branch"),
        })
    }
}
