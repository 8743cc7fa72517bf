//! The connection loop of callrec's HTTP listeners (the admin listener with
//! API and web console, the phones' recording keys). At most
//! `MAX_CONNECTIONS` connections per listener are served at once; a further client waits
//! in the kernel's accept queue and holds none of the process's file
//! descriptors, which SIP, media and the recordings need. A request's head
//! must arrive whole within `HEAD_TIMEOUT`, so a client that sends it a
//! byte at a time (or not at all) gives its place back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::serve::Listener;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

/// Connections served at once: a few browsers (six connections each) and
/// the API's clients.
pub const MAX_CONNECTIONS: usize = 128;
/// How long a client has to send a request's head (line and headers).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` for the life of the process; handlers see
/// the client's address as `ConnectInfo<SocketAddr>`.
pub async fn serve<L>(mut listener: L, app: Router)
where
    L: Listener<Addr = SocketAddr>,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A place first, then the connection: beyond the cap, clients wait
        // in the accept queue rather than in our descriptor table.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (io, peer) = listener.accept().await;
        let service = TowerToHyperService::new(app.clone().layer(Extension(ConnectInfo(peer))));
        tokio::spawn(async move {
            let _slot = slot;
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
