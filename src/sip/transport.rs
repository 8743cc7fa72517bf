//! SIP transports: one UDP socket and one TCP listener on the same address,
//! and optionally a TLS listener (and TLS connections to tls:// next hops).
//! Everything received is handed to the router as raw bytes with its flow;
//! everything sent goes out on the flow it names. Sending never waits on a
//! peer: UDP uses a non-blocking send, TCP bytes go into the connection's
//! bounded queue (connections live in `tcp`, opened on demand in the
//! background), so one slow or hostile peer cannot stall the router or a call.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

use super::message::MAX_MESSAGE;
use super::tcp::Table;
use super::tls::TlsContext;

/// The transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// Datagrams; the transaction layer retransmits.
    Udp,
    /// Stream; reliable, no retransmissions.
    Tcp,
    /// TCP with TLS (RFC 3261 §26): the only transport on which SDES keys
    /// may be sent, since the signalling carries them.
    Tls,
}

impl Proto {
    /// Token used in Via headers.
    pub fn via_token(self) -> &'static str {
        match self {
            Proto::Udp => "UDP",
            Proto::Tcp => "TCP",
            Proto::Tls => "TLS",
        }
    }

    /// Whether messages on it are framed by Content-Length in a byte stream
    /// (TCP and TLS) rather than datagrams.
    pub fn is_stream(self) -> bool {
        !matches!(self, Proto::Udp)
    }

    /// Whether the signalling on it is encrypted.
    pub fn is_secure(self) -> bool {
        matches!(self, Proto::Tls)
    }
}

/// A peer address plus the protocol to reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// Remote address.
    pub addr: SocketAddr,
    /// Protocol.
    pub proto: Proto,
}

/// Bytes received from a peer.
#[derive(Debug)]
pub struct Inbound {
    /// One datagram or one framed TCP message (or unframeable TCP bytes).
    pub data: Vec<u8>,
    /// Where it came from.
    pub flow: Flow,
}

/// Which source addresses are trusted peers (trunk, PBX, configured
/// sources): their TCP connections are exempt from the idle timeout and may
/// use the share of the connection table kept free for them.
pub use super::trust::Trust as TrustedPeers;

/// Bounds on TCP connections (see README, "Security").
#[derive(Debug, Clone)]
pub struct TcpLimits {
    /// Connections open at once, accepted and opened by us; strangers may
    /// fill only 7/8 of them so that trusted peers can always connect.
    pub max_connections: usize,
    /// Accepted connections per source address.
    pub max_per_source: usize,
    /// A message (headers and body) must be complete this long after its
    /// first byte; an untrusted peer's connection must deliver its first
    /// message within this long after it was accepted.
    pub header_timeout: Duration,
    /// No complete message for this long closes an untrusted connection.
    pub idle_timeout: Duration,
    /// A write that makes no progress for this long closes the connection.
    pub write_timeout: Duration,
    /// Messages queued per connection; a full queue means the peer does not
    /// read and the connection is closed.
    pub send_queue: usize,
    /// Bytes queued per connection, likewise.
    pub send_queue_bytes: usize,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: 1024,
            max_per_source: 32,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(10),
            send_queue: 256,
            send_queue_bytes: 256 * 1024,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Counters of the transport, exported on /metrics.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// TCP connections open now (TLS ones included).
    pub tcp_open: AtomicU64,
    /// TLS handshakes that failed (certificate refused, peer gave up, timeout).
    pub tls_handshake_failures: AtomicU64,
    /// Accepted connections closed at once because a limit was reached.
    pub tcp_refused: AtomicU64,
    /// Connections closed because the peer did not read (queue full or write stalled).
    pub tcp_closed_slow: AtomicU64,
    /// Connections closed because a message did not complete in time.
    pub tcp_header_timeouts: AtomicU64,
    /// Connections closed for lack of any complete message.
    pub tcp_idle_timeouts: AtomicU64,
    /// accept() failures (e.g. out of file descriptors).
    pub tcp_accept_errors: AtomicU64,
    /// UDP messages dropped because the socket's send buffer was full.
    pub udp_send_dropped: AtomicU64,
}

impl TransportStats {
    /// Appends the transport's series in Prometheus text format.
    pub fn write_prometheus(&self, out: &mut String) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let series = [
            ("callrec_tcp_connections_open", "gauge", "SIP TCP connections open (TLS included).", l(&self.tcp_open)),
            ("callrec_tls_handshake_failures_total", "counter", "SIP TLS handshakes that failed (certificate refused, timeout, peer gave up).", l(&self.tls_handshake_failures)),
            ("callrec_tcp_refused_total", "counter", "SIP TCP connections closed right after accept because a connection limit was reached.", l(&self.tcp_refused)),
            ("callrec_tcp_closed_slow_total", "counter", "SIP TCP connections closed because the peer did not read what was sent.", l(&self.tcp_closed_slow)),
            ("callrec_tcp_header_timeouts_total", "counter", "SIP TCP connections closed because a message did not complete within --tcp-header-timeout.", l(&self.tcp_header_timeouts)),
            ("callrec_tcp_idle_timeouts_total", "counter", "SIP TCP connections closed after --tcp-idle-timeout without a message.", l(&self.tcp_idle_timeouts)),
            ("callrec_tcp_accept_errors_total", "counter", "Failed accept() calls on the SIP TCP listener (e.g. out of file descriptors).", l(&self.tcp_accept_errors)),
            ("callrec_sip_udp_send_dropped_total", "counter", "SIP UDP messages dropped because the send buffer was full.", l(&self.udp_send_dropped)),
        ];
        for (name, kind, help, v) in series {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
    }
}

/// The bound SIP transports.
pub struct Transport {
    udp: Arc<UdpSocket>,
    local: SocketAddr,
    tcp: Arc<Table>,
    tls: Option<(Arc<Table>, Option<SocketAddr>)>,
    stats: Arc<TransportStats>,
}

impl Transport {
    /// Binds UDP and TCP on `addr` and starts receiving.
    pub async fn bind(
        addr: SocketAddr,
        limits: TcpLimits,
        trusted: TrustedPeers,
        stats: Arc<TransportStats>,
    ) -> io::Result<(Arc<Transport>, mpsc::Receiver<Inbound>)> {
        Self::bind_with_tls(addr, limits, trusted, stats, None).await
    }

    /// As `bind`, plus TLS: a listener when the context names an address,
    /// and TLS connections to next hops in any case. Its connections have
    /// their own table with the same limits as TCP.
    pub async fn bind_with_tls(
        addr: SocketAddr,
        limits: TcpLimits,
        trusted: TrustedPeers,
        stats: Arc<TransportStats>,
        tls: Option<Arc<TlsContext>>,
    ) -> io::Result<(Arc<Transport>, mpsc::Receiver<Inbound>)> {
        let udp =
            Arc::new(UdpSocket::bind(addr).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot bind SIP UDP {addr}: {e}"))
            })?);
        let local = udp.local_addr()?;
        let listener = TcpListener::bind(local)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot bind SIP TCP {local}: {e}")))?;
        // Shared by the UDP reader and every TCP reader; the router empties it
        // without waiting on any peer, so its bound only paces the readers.
        let (tx, rx) = mpsc::channel(4096);
        fd_headroom(limits.max_connections * if tls.is_some() { 2 } else { 1 });
        let mut tls_table = None;
        if let Some(ctx) = tls {
            let listener = match ctx.listen() {
                Some(a) => Some(TcpListener::bind(a).await.map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot bind SIP TLS {a}: {e}"))
                })?),
                None => None,
            };
            let bound = listener.as_ref().map(|l| l.local_addr()).transpose()?;
            let table = Table::new(
                limits.clone(),
                trusted.clone(),
                stats.clone(),
                tx.clone(),
                Some(ctx),
            );
            if let Some(l) = listener {
                tokio::spawn(table.clone().accept_loop(l));
            }
            tls_table = Some((table, bound));
        }
        let tcp = Table::new(limits, trusted, stats.clone(), tx.clone(), None);
        let t = Arc::new(Transport {
            udp: udp.clone(),
            local,
            tcp: tcp.clone(),
            tls: tls_table,
            stats,
        });
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_MESSAGE + 1];
            loop {
                match udp.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        let data = buf[..n].to_vec();
                        let flow = Flow {
                            addr: from,
                            proto: Proto::Udp,
                        };
                        if tx.send(Inbound { data, flow }).await.is_err() {
                            return;
                        }
                    }
                    // ICMP port unreachable shows up here on Linux; keep serving.
                    Err(e) => tracing::debug!("SIP UDP receive error: {e}"),
                }
            }
        });
        tokio::spawn(tcp.accept_loop(listener));
        Ok((t, rx))
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The bound TLS listener's address, if there is one.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(_, a)| *a)
    }

    /// The transport's counters.
    pub fn stats(&self) -> Arc<TransportStats> {
        self.stats.clone()
    }

    /// Sends bytes on a flow without waiting on the peer: a UDP datagram the
    /// kernel cannot take at once is dropped (the transaction layer
    /// retransmits); TCP bytes are queued on the flow's connection, which is
    /// opened in the background when none exists. A peer whose queue is full
    /// does not read and loses its connection. Async only for the callers'
    /// convenience: it never awaits.
    pub async fn send(self: &Arc<Self>, flow: Flow, bytes: Vec<u8>) -> io::Result<()> {
        match flow.proto {
            Proto::Udp => match self.udp.try_send_to(&bytes, flow.addr) {
                Ok(_) => Ok(()),
                Err(e) => {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        self.stats.udp_send_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e)
                }
            },
            Proto::Tcp => self.tcp.send(flow.addr, bytes),
            Proto::Tls => match &self.tls {
                Some((t, _)) => t.send(flow.addr, bytes),
                None => Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "SIP over TLS is not configured",
                )),
            },
        }
    }
}

/// Descriptors kept beyond the TCP limit for RTP sockets, recordings and the rest.
const FD_RESERVE: u64 = 256;

/// Raises the soft descriptor limit to the hard one when the TCP connection
/// limit would not fit under it (many systems start services at 1024), and
/// warns when even the hard limit is too low: accept() would then fail before
/// the connection limit is reached.
fn fd_headroom(max_connections: usize) {
    let want = max_connections as u64 + FD_RESERVE;
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 || r.rlim_cur >= want {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: r.rlim_max.min(1 << 20),
        rlim_max: r.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct we own.
    if raised.rlim_cur > r.rlim_cur && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0
    {
        tracing::info!(
            "raised the open-file limit from {} to {}",
            r.rlim_cur,
            raised.rlim_cur
        );
        r.rlim_cur = raised.rlim_cur;
    }
    if r.rlim_cur < want {
        tracing::warn!(
            "open-file limit {} is below --tcp-max-connections {max_connections} plus {FD_RESERVE}; raise it (e.g. LimitNOFILE) or lower the flag",
            r.rlim_cur
        );
    }
}
