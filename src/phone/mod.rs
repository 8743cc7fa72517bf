//! The recording key on every phone: a personal link per directory member
//! (`GET /phone/<token>/recording/{login|logout|toggle}`) that switches the
//! member's group membership, served on its own listener because phones
//! cannot reach the loopback admin listener. The token is the credential
//! (no CSRF, no session), so it is random, rotatable and never logged. See
//! README "Recording key on the phone".

pub mod keys;
pub mod provision;
pub mod server;

use std::net::SocketAddr;

/// Where the phone links are served and how they are written; from `callrec run`'s flags.
#[derive(Debug, Clone, Default)]
pub struct PhoneSettings {
    /// The phone listener (off when `None`).
    pub listen: Option<SocketAddr>,
    /// The links' public start, e.g. `http://callrec.example.com:8090`, when
    /// phones reach the listener under another name or port.
    pub base_url: Option<String>,
}

impl PhoneSettings {
    /// The start of every link (`http://host:port`), when it can be known:
    /// a listener on the unspecified address has no address a phone could use.
    pub fn link_base(&self) -> Option<String> {
        if let Some(b) = &self.base_url {
            return Some(b.trim_end_matches('/').to_string());
        }
        self.listen
            .filter(|a| !a.ip().is_unspecified())
            .map(|a| format!("http://{a}"))
    }
}

/// A member's link for `action` below `base`.
pub fn link(base: &str, token: &str, action: &str) -> String {
    format!("{base}/phone/{token}/recording/{action}")
}
