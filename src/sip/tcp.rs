//! SIP over TCP and TLS: the table of open connections with its limits, the
//! accept loop, and per connection a reader (incremental framing, keep-alive
//! pongs, header and idle timeouts) and a writer (bounded queue, write
//! timeout). A TLS table wraps each socket in a TLS session first (the
//! handshake counts against the header timeout); the rest is the same code.
//! Nothing here lets one peer hold up another: a connection that cannot keep
//! up, stalls or idles is closed, and the table never grows past its limits.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::alias::alias_of;
use super::framer::{Frame, Framer};
use super::tls::{explain, TlsContext};
use super::transport::{Flow, Inbound, Proto, TcpLimits, TransportStats, TrustedPeers};
use queue::{Push, Queue};

/// How often a repeated warning (refusals, accept errors) is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// One live connection as senders see it.
#[derive(Clone)]
struct Conn {
    id: u64,
    tx: Queue,
    close: Arc<watch::Sender<bool>>,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<SocketAddr, Conn>,
    /// RFC 5923 aliases: a peer's sent-by address → its connection (address, id).
    aliases: HashMap<SocketAddr, (SocketAddr, u64)>,
    total: usize,
    per_source: HashMap<IpAddr, usize>,
    next_id: u64,
    last_refusal_warning: Option<Instant>,
}

impl Inner {
    /// Forgets `peer`'s connection if it is still the one numbered `id` (a
    /// newer connection from the same address stays).
    fn forget(&mut self, peer: SocketAddr, id: u64) {
        if self.conns.get(&peer).is_some_and(|c| c.id == id) {
            self.conns.remove(&peer);
        }
        self.aliases.retain(|_, to| *to != (peer, id));
    }

    /// The connection for `peer`: its own, else one that took `peer` as alias.
    fn lookup(&self, peer: SocketAddr) -> Option<(SocketAddr, Conn)> {
        if let Some(c) = self.conns.get(&peer) {
            return Some((peer, c.clone()));
        }
        let (at, id) = self.aliases.get(&peer)?;
        let c = self.conns.get(at).filter(|c| c.id == *id)?;
        Some((*at, c.clone()))
    }
}

/// All TCP (or all TLS) connections and their limits.
pub(super) struct Table {
    inner: Mutex<Inner>,
    limits: TcpLimits,
    trusted: TrustedPeers,
    stats: Arc<TransportStats>,
    inbound: mpsc::Sender<Inbound>,
    /// Set for the TLS table: every connection is wrapped in TLS.
    tls: Option<Arc<TlsContext>>,
}

/// A byte stream a connection can run on (a TCP socket or a TLS session).
trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for S {}

/// A connection's place in the table; freed when its last task ends.
struct Slot {
    table: Arc<Table>,
    peer: SocketAddr,
    id: u64,
    per_source: bool,
    close: Arc<watch::Sender<bool>>,
    /// Bytes in the send queue, shared with the connection's `Queue`.
    queued: Arc<AtomicUsize>,
}

impl Slot {
    /// Tells both tasks of the connection to stop.
    fn close(&self) {
        self.close.send_replace(true);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.table.lock();
        g.total -= 1;
        if self.per_source {
            let ip = self.peer.ip().to_canonical();
            if let Some(n) = g.per_source.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    g.per_source.remove(&ip);
                }
            }
        }
        g.forget(self.peer, self.id);
        // Counted up and down (not stored) because the TCP and the TLS table
        // share the gauge.
        self.table.stats.tcp_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A new connection's slot and the two ends of its send queue.
type Registered = (Arc<Slot>, Queue, mpsc::Receiver<Vec<u8>>);

/// Why a connection ended, for the counters and the log.
enum End {
    Closed,
    HeaderTimeout,
    IdleTimeout,
}

impl Table {
    pub(super) fn new(
        limits: TcpLimits,
        trusted: TrustedPeers,
        stats: Arc<TransportStats>,
        inbound: mpsc::Sender<Inbound>,
        tls: Option<Arc<TlsContext>>,
    ) -> Arc<Table> {
        Arc::new(Table {
            inner: Mutex::new(Inner::default()),
            limits,
            trusted,
            stats,
            inbound,
            tls,
        })
    }

    fn proto(&self) -> Proto {
        if self.tls.is_some() {
            Proto::Tls
        } else {
            Proto::Tcp
        }
    }

    fn name(&self) -> &'static str {
        if self.tls.is_some() {
            "TLS"
        } else {
            "TCP"
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("tcp table poisoned")
    }

    /// Takes a place in the table for a connection with `peer`, or None when
    /// a limit is reached. Accepted connections count per source; ours do not.
    fn register(self: &Arc<Self>, peer: SocketAddr, accepted: bool) -> Option<Registered> {
        let max = self.limits.max_connections;
        let trusted = self.trusted.is_trusted(peer.ip());
        // Strangers never get the last eighth, so a flood of them cannot lock
        // the trunk and the PBX out.
        let cap = if trusted || !accepted {
            max
        } else {
            max - max / 8
        };
        let ip = peer.ip().to_canonical();
        let mut g = self.lock();
        if g.total >= cap
            || (accepted
                && g.per_source.get(&ip).copied().unwrap_or(0) >= self.limits.max_per_source)
        {
            return None;
        }
        g.total += 1;
        if accepted {
            *g.per_source.entry(ip).or_default() += 1;
        }
        g.next_id += 1;
        let id = g.next_id;
        let (tx, rx) = mpsc::channel(self.limits.send_queue.max(1));
        let tx = Queue {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            max_bytes: self.limits.send_queue_bytes,
        };
        let close = Arc::new(watch::channel(false).0);
        let conn = Conn {
            id,
            tx: tx.clone(),
            close: close.clone(),
        };
        if let Some(old) = g.conns.insert(peer, conn) {
            // A new connection with the same address replaces a dying one.
            old.close.send_replace(true);
        }
        self.stats.tcp_open.fetch_add(1, Ordering::Relaxed);
        drop(g);
        let slot = Arc::new(Slot {
            table: self.clone(),
            peer,
            id,
            per_source: accepted,
            close,
            queued: tx.queued.clone(),
        });
        Some((slot, tx, rx))
    }

    /// Accepts connections until the process ends. accept() failures that
    /// concern the listener (out of descriptors or memory) back off from
    /// 100 ms to 1 s: retrying at once would spin a core while nothing frees up.
    pub(super) async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let mut backoff = Duration::ZERO;
        let mut last_warning: Option<Instant> = None;
        let mut unlogged = 0u64;
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    backoff = Duration::ZERO;
                    self.adopt(stream, peer);
                }
                // The failed connection is gone; the listener is fine.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    self.stats.tcp_accept_errors.fetch_add(1, Ordering::Relaxed);
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
                    unlogged += 1;
                    if last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        tracing::warn!(
                            "SIP TCP accept failed {unlogged} time(s): {e}; retrying in {backoff:?} (raise the descriptor limit or lower --tcp-max-connections)"
                        );
                        last_warning = Some(Instant::now());
                        unlogged = 0;
                    }
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// Serves an accepted connection, or closes it at once over a limit.
    fn adopt(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let Some((slot, tx, rx)) = self.register(peer, true) else {
            self.stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
            let mut g = self.lock();
            if g.last_refusal_warning
                .is_none_or(|t| t.elapsed() >= WARN_EVERY)
            {
                g.last_refusal_warning = Some(Instant::now());
                drop(g);
                tracing::warn!(%peer, "SIP {} connection refused: limit of {} connections in total or {} per source reached", self.name(), self.limits.max_connections, self.limits.max_per_source);
            }
            return;
        };
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return self.start(stream, peer, slot, tx, rx, true);
        };
        let Some(acceptor) = tls.acceptor() else {
            return;
        };
        // The handshake runs in the connection's own task, bounded by the
        // header timeout, so a peer that stalls it holds only its own slot.
        let table = self.clone();
        tokio::spawn(async move {
            let mut closed = slot.close.subscribe();
            let limit = table.limits.header_timeout;
            let shake = tokio::time::timeout(limit, acceptor.accept(stream));
            let res = tokio::select! {
                _ = closed.wait_for(|c| *c) => return,
                r = shake => r,
            };
            match res {
                Ok(Ok(s)) => {
                    let c = s.get_ref().1;
                    tracing::debug!(%peer, version = ?c.protocol_version(), suite = ?c.negotiated_cipher_suite().map(|c| c.suite()), "SIP TLS connection accepted");
                    table.start(s, peer, slot, tx, rx, true)
                }
                Ok(Err(e)) => table.handshake_failed(peer, None, &explain(&e)),
                Err(_) => {
                    table.handshake_failed(peer, None, &format!("no handshake within {limit:?}"))
                }
            }
        });
    }

    fn handshake_failed(&self, peer: SocketAddr, name: Option<&str>, why: &str) {
        self.stats
            .tls_handshake_failures
            .fetch_add(1, Ordering::Relaxed);
        match name {
            Some(n) => tracing::warn!(%peer, "SIP TLS connection to {n} refused: {why}"),
            None => tracing::warn!(%peer, "SIP TLS handshake from {peer} failed: {why}"),
        }
    }

    fn start<S: Stream>(
        self: &Arc<Self>,
        stream: S,
        peer: SocketAddr,
        slot: Arc<Slot>,
        tx: Queue,
        rx: mpsc::Receiver<Vec<u8>>,
        accepted: bool,
    ) {
        let (rd, wr) = tokio::io::split(stream);
        tokio::spawn(write_loop(self.clone(), wr, rx, slot.clone()));
        tokio::spawn(read_loop(self.clone(), rd, peer, slot, tx, accepted));
    }

    /// Queues bytes for `peer` without waiting (see `Transport::send`).
    pub(super) fn send(self: &Arc<Self>, peer: SocketAddr, bytes: Vec<u8>) -> io::Result<()> {
        let conn = self.lock().lookup(peer);
        if let Some((at, c)) = conn {
            match c.tx.push(bytes) {
                Push::Queued => return Ok(()),
                Push::Full => {
                    self.stats.tcp_closed_slow.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %at, "closing SIP {} connection: the peer does not read (send queue full)", self.name());
                    c.close.send_replace(true);
                    self.lock().forget(at, c.id);
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "peer does not read; TCP connection closed",
                    ));
                }
                Push::Closed(b) => {
                    self.lock().forget(at, c.id);
                    return self.open(peer, b);
                }
            }
        }
        self.open(peer, bytes)
    }

    /// Opens a connection to `peer` in the background with `bytes` queued.
    fn open(self: &Arc<Self>, peer: SocketAddr, bytes: Vec<u8>) -> io::Result<()> {
        // A response belongs on the connection its request came on; calling
        // back a client's ephemeral port would only produce failed connects.
        if bytes.starts_with(b"SIP/2.0 ") {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the request's TCP connection is closed",
            ));
        }
        let Some((slot, tx, rx)) = self.register(peer, false) else {
            return Err(io::Error::other("SIP TCP connection limit reached"));
        };
        // The queue is new and empty: this cannot fail.
        let _ = tx.push(bytes);
        let table = self.clone();
        let timeout = self.limits.connect_timeout;
        tokio::spawn(async move {
            let mut closed = slot.close.subscribe();
            let kind = table.name();
            let connect = tokio::time::timeout(timeout, TcpStream::connect(peer));
            let res = tokio::select! {
                _ = closed.wait_for(|c| *c) => return,
                r = connect => r,
            };
            let stream = match res {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    return tracing::warn!(%peer, "cannot open SIP {kind} connection: {e}")
                }
                Err(_) => {
                    return tracing::warn!(%peer, "cannot open SIP {kind} connection: no answer within {timeout:?}")
                }
            };
            let _ = stream.set_nodelay(true);
            let Some(tls) = &table.tls else {
                return table.start(stream, peer, slot, tx, rx, false);
            };
            // The next hop's certificate must chain to our roots and carry
            // the configured name (RFC 5922: subjectAltName only).
            let name = tls.server_name(peer);
            let shown = name.to_str().into_owned();
            let shake = tokio::time::timeout(timeout, tls.connector().connect(name, stream));
            let res = tokio::select! {
                _ = closed.wait_for(|c| *c) => return,
                r = shake => r,
            };
            match res {
                Ok(Ok(s)) => {
                    let c = s.get_ref().1;
                    tracing::info!(%peer, name = %shown, version = ?c.protocol_version(), suite = ?c.negotiated_cipher_suite().map(|c| c.suite()), "SIP TLS connection opened, certificate verified");
                    table.start(s, peer, slot, tx, rx, false)
                }
                Ok(Err(e)) => table.handshake_failed(peer, Some(&shown), &explain(&e)),
                Err(_) => table.handshake_failed(
                    peer,
                    Some(&shown),
                    &format!("no handshake within {timeout:?}"),
                ),
            }
        });
        Ok(())
    }
}

/// Writes queued messages; a write without progress for the write timeout
/// closes the connection.
async fn write_loop<S: Stream>(
    table: Arc<Table>,
    mut wr: WriteHalf<S>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    slot: Arc<Slot>,
) {
    let mut closed = slot.close.subscribe();
    let limit = table.limits.write_timeout;
    'conn: loop {
        let bytes = tokio::select! {
            biased;
            _ = closed.wait_for(|c| *c) => break,
            m = rx.recv() => match m {
                Some(b) => b,
                None => break,
            },
        };
        slot.queued.fetch_sub(bytes.len(), Ordering::Relaxed);
        let mut at = 0;
        while at < bytes.len() {
            let step = tokio::select! {
                biased;
                _ = closed.wait_for(|c| *c) => break 'conn,
                r = tokio::time::timeout(limit, wr.write(&bytes[at..])) => r,
            };
            match step {
                Ok(Ok(0)) | Ok(Err(_)) => break 'conn,
                Ok(Ok(n)) => at += n,
                Err(_) => {
                    table.stats.tcp_closed_slow.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %slot.peer, "closing SIP {} connection: the peer has not read for {limit:?}", table.name());
                    break 'conn;
                }
            }
        }
        // TLS keeps records it could not write yet; push them out now, under
        // the same timeout (a no-op for plain TCP).
        let flushed = tokio::select! {
            biased;
            _ = closed.wait_for(|c| *c) => break 'conn,
            r = tokio::time::timeout(limit, wr.flush()) => r,
        };
        if !matches!(flushed, Ok(Ok(()))) {
            break 'conn;
        }
    }
    if table.tls.is_some() {
        // close_notify, best effort: the peer may be gone already.
        let _ = tokio::time::timeout(Duration::from_millis(200), wr.shutdown()).await;
    }
    slot.close();
}

/// Frames messages and hands them to the router; answers keep-alive pings;
/// enforces the header and idle timeouts.
async fn read_loop<S: Stream>(
    table: Arc<Table>,
    mut rd: ReadHalf<S>,
    peer: SocketAddr,
    slot: Arc<Slot>,
    tx: Queue,
    accepted: bool,
) {
    let mut closed = slot.close.subscribe();
    let flow = Flow {
        addr: peer,
        proto: table.proto(),
    };
    let limits = &table.limits;
    let idle_applies = !table.trusted.is_trusted(peer.ip());
    let mut framer = Framer::default();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut last_message = Instant::now();
    // A stranger's connection owes us its first message at once; trusted
    // peers may open theirs ahead of need and keep it alive with pings.
    let mut message_since = (accepted && idle_applies).then(Instant::now);
    // Only a connection the peer opened can stand in for its address.
    let mut may_alias = accepted;
    let end = 'conn: loop {
        let deadline = match message_since {
            Some(t) => Some((t + limits.header_timeout, End::HeaderTimeout)),
            None if idle_applies => Some((last_message + limits.idle_timeout, End::IdleTimeout)),
            None => None,
        };
        let (at, why) =
            deadline.unwrap_or((Instant::now() + Duration::from_secs(3600), End::Closed));
        let read = tokio::select! {
            biased;
            _ = closed.wait_for(|c| *c) => break End::Closed,
            _ = tokio::time::sleep_until(at) => {
                if matches!(why, End::Closed) { continue } else { break why }
            }
            r = rd.read(&mut chunk) => r,
        };
        let n = match read {
            Ok(0) | Err(_) => break End::Closed,
            Ok(n) => n,
        };
        framer.push(&chunk[..n]);
        let mut pongs = 0usize;
        loop {
            match framer.next_frame() {
                Ok(Some(Frame::Ping)) => pongs += 1,
                Ok(Some(Frame::Message(data))) => {
                    last_message = Instant::now();
                    message_since = None;
                    if may_alias {
                        if let Some(a) = alias_of(&data, peer) {
                            table.lock().aliases.insert(a, (peer, slot.id));
                            may_alias = false;
                        }
                    }
                    if table.inbound.send(Inbound { data, flow }).await.is_err() {
                        break 'conn End::Closed;
                    }
                }
                Ok(None) => {
                    if !framer.is_idle() {
                        message_since.get_or_insert_with(Instant::now);
                    }
                    break;
                }
                Err(e) => {
                    // The stream cannot be framed any more: hand what we have
                    // to the router (it may answer 400) and close.
                    tracing::warn!(%peer, "closing SIP {} connection: {e}", table.name());
                    let data = framer.take_unframed();
                    let _ = table.inbound.send(Inbound { data, flow }).await;
                    // Keep the connection a moment so the router's 400 can
                    // still go out on it (it answers within microseconds).
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    break 'conn End::Closed;
                }
            }
        }
        // RFC 5626 §4.4.1: each double-CRLF ping is answered with one CRLF,
        // on this connection only.
        if pongs > 0 && !matches!(tx.push(b"\r\n".repeat(pongs)), Push::Queued) {
            table.stats.tcp_closed_slow.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "closing SIP {} connection: the peer does not read", table.name());
            break End::Closed;
        }
    };
    match end {
        End::HeaderTimeout => {
            table
                .stats
                .tcp_header_timeouts
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, "closing SIP {} connection: no complete message within {:?}", table.name(), limits.header_timeout);
        }
        End::IdleTimeout => {
            table
                .stats
                .tcp_idle_timeouts
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "closing idle SIP {} connection", table.name());
        }
        End::Closed => {}
    }
    slot.close();
}

mod queue;
#[cfg(test)]
mod tests;
