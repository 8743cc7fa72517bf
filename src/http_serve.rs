//! The connection loop of callrec's HTTP listeners (the admin listener with
//! API and web console, the phones' recording keys). At most
//! `MAX_CONNECTIONS` connections per listener are served at once; a further client waits
//! in the kernel's accept queue and holds none of the process's file
//! descriptors, which SIP, media and the recordings need (with TLS the
//! handshake stage accepts on its own, bounded by its own limit, see
//! `admin_tls`). One client address (an IPv6 /64) holds at most
//! `PER_PEER` places, except a trusted reverse proxy's; a further
//! connection from it is closed at once. A request's head must arrive
//! whole within `HEAD_TIMEOUT` and its body within `BODY_TIMEOUT`, so a
//! client that sends either a byte at a time (or not at all) gives its
//! place back.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::serve::Listener;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// Connections served at once: a few browsers (six connections each) and
/// the API's clients.
pub const MAX_CONNECTIONS: usize = 128;
/// Places one client address may hold: a browser opens six.
pub const PER_PEER: usize = 16;
/// How long a client has to send a request's head (line and headers).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request's body (a form, at most 2 MB).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The block one client is known by: an IPv4 address alone (also when
/// written IPv4-mapped), an IPv6 address by its /64, the block one site or
/// household is given, so that a client cannot step through its own block.
pub fn client_block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = a.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
        v4 => v4,
    }
}

/// Places held per client address (IPv6 by /64).
#[derive(Clone, Default)]
struct Peers(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One place of a client address, given back when dropped.
struct PeerPlace {
    peers: Peers,
    key: IpAddr,
}

impl Peers {
    /// A place for `ip`, or None when it holds `PER_PEER` already.
    fn take(&self, ip: IpAddr) -> Option<PeerPlace> {
        let key = client_block(ip);
        let mut held = self.0.lock().expect("peers poisoned");
        let n = held.entry(key).or_default();
        if *n >= PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerPlace {
            peers: self.clone(),
            key,
        })
    }
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut held = self.peers.0.lock().expect("peers poisoned");
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// Serves `app` on `listener` for the life of the process; handlers see
/// the client's address as `ConnectInfo<SocketAddr>`. Clients in
/// `unlimited` (trusted reverse proxies) are not held to `PER_PEER`.
pub async fn serve<L>(mut listener: L, app: Router, unlimited: Vec<ipnet::IpNet>)
where
    L: Listener<Addr = SocketAddr>,
{
    let app = app.layer(RequestBodyTimeoutLayer::new(BODY_TIMEOUT));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let peers = Peers::default();
    loop {
        // A place first, then the connection: beyond the cap, clients wait
        // in the accept queue rather than in our descriptor table.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (io, peer) = listener.accept().await;
        let place = if unlimited.iter().any(|n| n.contains(&peer.ip())) {
            None
        } else {
            match peers.take(peer.ip()) {
                Some(p) => Some(p),
                None => {
                    tracing::debug!(%peer, "HTTP: {PER_PEER} connections from this address already; closed");
                    continue;
                }
            }
        };
        let service = TowerToHyperService::new(app.clone().layer(Extension(ConnectInfo(peer))));
        tokio::spawn(async move {
            let _slot = (slot, place);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(io), service);
            if let Err(e) = connection.await {
                tracing::debug!(%peer, "HTTP connection ended: {e}");
            }
        });
    }
}
