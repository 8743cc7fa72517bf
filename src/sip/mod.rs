//! SIP plumbing: message parsing and building, UDP/TCP transport on one port
//! (and TLS on its own),
//! RFC 3261 transaction state machines and the set of trusted peers.

mod alias;
pub mod framer;
pub mod header_value;
pub mod message;
pub mod relayed;
mod tcp;
pub mod tls;
pub mod transaction;
pub mod transport;
pub mod trust;

pub use message::Message;
pub use transport::{Flow, Proto, Transport};

/// A random token for tags, branches and Call-IDs.
pub fn random_token(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// A new Via branch with the RFC 3261 magic cookie.
pub fn new_branch() -> String {
    format!("z9hG4bK{}", random_token(16))
}
