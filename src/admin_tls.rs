//! HTTPS for the admin listener (API and web console) with the certificate
//! that SIP over TLS uses (`--tls-cert`, `--tls-key`, reloaded on SIGHUP).
//! Handshakes run in their own tasks with a time limit and a cap on how many
//! run at once, so a client that connects and says nothing cannot hold up
//! the others; finished streams go to the admin listener's connection loop
//! (`http_serve`) as from any listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;

use crate::sip::tls::TlsContext;

/// How long a client has for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes at once; further connections are closed at once.
const MAX_HANDSHAKES: usize = 64;

/// A listener that yields TLS streams whose handshake has completed.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` and shakes hands with the current certificate of `ctx`.
    pub fn new(tcp: TcpListener, ctx: Arc<TlsContext>) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            while !tx.is_closed() {
                let (sock, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "admin HTTPS: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(acceptor) = ctx.acceptor() else {
                    tracing::error!("admin HTTPS: no server certificate loaded; connection closed");
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "admin HTTPS: too many handshakes at once; connection closed");
                    continue;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(%peer, "admin HTTPS: handshake failed: {}", crate::sip::tls::explain(&e))
                        }
                        Err(_) => {
                            tracing::info!(%peer, "admin HTTPS: no handshake within {} s; connection closed", HANDSHAKE_TIMEOUT.as_secs())
                        }
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task only ends when this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
