//! Login delegated to a trusted reverse proxy: the proxy authenticates the
//! user (single sign-on, client certificates …) and names her in a configured
//! header. The header is believed only from the configured proxy addresses;
//! from anyone else it is ignored and logged, since any browser can send it.
//! The named user must exist in the console's users table, which gives her
//! role. Odd values (several headers, bytes that are not a user name) are
//! refused rather than guessed at.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::request::Parts;

use super::{auth, blocking, users, Console, Me, Refusal};

/// Most proxy-signed-in users whose CSRF token is kept; beyond this the map is
/// emptied (their open forms then need a reload).
const MAX_TOKENS: usize = 10_000;

/// The CSRF token of each user signed in by the proxy (there is no session
/// cookie for them: the proxy signs every request, so the token lives here
/// for the life of the process), and when the header was last reported from
/// an untrusted peer.
#[derive(Default)]
pub struct ProxyTokens {
    tokens: Mutex<HashMap<String, String>>,
    last_warning: Mutex<Option<Instant>>,
}

/// Shortest time between two warnings about the header from an untrusted peer.
const WARN_EVERY: Duration = Duration::from_secs(1);

impl ProxyTokens {
    /// Whether a warning about an untrusted peer may be logged now.
    fn may_warn(&self) -> bool {
        let mut last = self.last_warning.lock().expect("proxy warning poisoned");
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }

    fn token(&self, user: &str) -> String {
        let mut m = self.tokens.lock().expect("proxy tokens poisoned");
        if m.len() >= MAX_TOKENS && !m.contains_key(user) {
            m.clear();
        }
        m.entry(user.to_string())
            .or_insert_with(auth::random_token)
            .clone()
    }
}

/// Whether `peer` is one of the configured proxies.
pub(super) fn trusted(nets: &[ipnet::IpNet], peer: IpAddr) -> bool {
    let peer = peer.to_canonical();
    nets.iter().any(|n| n.contains(&peer))
}

/// Writes a refused proxy sign-in to the log and the protocol database's errors.
fn refused(c: &Console, message: String) {
    tracing::warn!("{message}");
    c.db.send(crate::db::Record::Error {
        at_ms: crate::db::now_ms(),
        component: "console".into(),
        message,
    });
}

/// The user the trusted proxy names in this request: `None` when no trusted
/// header is configured, none was sent, or it came from an untrusted peer
/// (then the request goes on as if it had not been sent).
pub(super) async fn from_header(parts: &Parts, c: &Arc<Console>) -> Result<Option<Me>, Refusal> {
    let Some(header) = &c.settings.trusted_header else {
        return Ok(None);
    };
    let values: Vec<_> = parts.headers.get_all(header).iter().collect();
    if values.is_empty() {
        return Ok(None);
    }
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip());
    let Some(peer) = peer.filter(|p| trusted(&c.settings.trusted_proxies, *p)) else {
        // Anyone can send this, so it is only logged, and at most once a
        // second: a flood of such requests cannot fill the log or the database.
        if c.proxy_tokens.may_warn() {
            let from = peer.map_or_else(|| "an unknown address".to_string(), |p| p.to_string());
            tracing::warn!("console: header {header} from {from} ignored: not a trusted proxy (--console-trusted-proxy)");
        }
        return Ok(None);
    };
    // One value of a usable user name; anything else is a proxy
    // misconfiguration or an attempt to confuse us, so nobody is signed in.
    let name = match values.as_slice() {
        [one] => one.to_str().ok().map(str::trim).map(str::to_string),
        _ => None,
    };
    let Some(name) = name.filter(|n| users::valid_name(n)) else {
        let shown: Vec<String> = values
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .escape_debug()
                    .to_string()
            })
            .collect();
        refused(
            c,
            format!("console: header {header} from proxy {peer} refused: {} value(s) {shown:?}, not one user name", values.len()),
        );
        return Err(Refusal::ProxyUser);
    };
    let (db, n) = (c.db.clone(), name.clone());
    let user = blocking(move || users::find(&db, &n))
        .await?
        .map_err(|e| Refusal::Internal(e.to_string()))?;
    let Some(user) = user else {
        refused(
            c,
            format!(
                "console: proxy {peer} named user {name:?}, who is not a console user; refused"
            ),
        );
        return Err(Refusal::ProxyUser);
    };
    tracing::debug!(user = %user.name, role = %user.role, %peer, "console: user signed in by the trusted proxy");
    Ok(Some(Me {
        csrf: c.proxy_tokens.token(&user.name),
        name: user.name,
        role: user.role,
        session: String::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_peers_are_trusted() {
        let nets = vec![
            crate::sip::trust::parse_net("127.0.0.8/30").unwrap(),
            crate::sip::trust::parse_net("::1").unwrap(),
        ];
        for ok in ["127.0.0.9", "127.0.0.11", "::1", "::ffff:127.0.0.8"] {
            assert!(trusted(&nets, ok.parse().unwrap()), "{ok}");
        }
        for no in ["127.0.0.1", "127.0.0.12", "::2"] {
            assert!(!trusted(&nets, no.parse().unwrap()), "{no}");
        }
    }

    #[test]
    fn a_user_keeps_her_token_and_warnings_are_spaced() {
        let t = ProxyTokens::default();
        assert_eq!(t.token("ann"), t.token("ann"));
        assert_ne!(t.token("ann"), t.token("bob"));
        assert!(t.may_warn());
        assert!(!t.may_warn(), "a second warning within a second");
    }
}
