//! SIP transports: one UDP socket and one TCP listener on the same address.
//! Everything received is handed to the router as raw bytes with its flow;
//! everything sent goes out on the flow it names (TCP connections are reused
//! in both directions and opened on demand).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use super::framer::{Frame, Framer};
use super::message::MAX_MESSAGE;

/// The transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// Datagrams; the transaction layer retransmits.
    Udp,
    /// Stream; reliable, no retransmissions.
    Tcp,
}

impl Proto {
    /// Token used in Via headers.
    pub fn via_token(self) -> &'static str {
        match self {
            Proto::Udp => "UDP",
            Proto::Tcp => "TCP",
        }
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

/// The bound SIP transports.
pub struct Transport {
    udp: Arc<UdpSocket>,
    local: SocketAddr,
    tcp: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
    inbound: mpsc::Sender<Inbound>,
}

impl Transport {
    /// Binds UDP and TCP on `addr` and starts receiving.
    pub async fn bind(addr: SocketAddr) -> io::Result<(Arc<Transport>, mpsc::Receiver<Inbound>)> {
        let udp =
            Arc::new(UdpSocket::bind(addr).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot bind SIP UDP {addr}: {e}"))
            })?);
        let local = udp.local_addr()?;
        let listener = TcpListener::bind(local)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot bind SIP TCP {local}: {e}")))?;
        let (tx, rx) = mpsc::channel(4096);
        let t = Arc::new(Transport {
            udp: udp.clone(),
            local,
            tcp: Mutex::new(HashMap::new()),
            inbound: tx.clone(),
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
        let weak = Arc::downgrade(&t);
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let Some(t) = weak.upgrade() else { return };
                t.adopt(stream, peer);
            }
        });
        Ok((t, rx))
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Registers a TCP connection: a reader that frames messages and a writer fed by a channel.
    fn adopt(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) -> mpsc::Sender<Vec<u8>> {
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(256);
        self.tcp
            .lock()
            .expect("tcp map poisoned")
            .insert(peer, wtx.clone());
        tokio::spawn(async move {
            while let Some(bytes) = wrx.recv().await {
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
        let inbound = self.inbound.clone();
        let pong = wtx.clone();
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut framer = Framer::new();
            let mut chunk = vec![0u8; 16 * 1024];
            let flow = Flow {
                addr: peer,
                proto: Proto::Tcp,
            };
            'conn: loop {
                let n = match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                framer.push(&chunk[..n]);
                loop {
                    match framer.next_frame() {
                        Ok(Some(Frame::Message(data))) => {
                            if inbound.send(Inbound { data, flow }).await.is_err() {
                                break 'conn;
                            }
                        }
                        // RFC 5626 §3.5.1: a CRLFCRLF ping is answered with one CRLF.
                        Ok(Some(Frame::Ping)) => {
                            let _ = pong.try_send(b"\r\n".to_vec());
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // The stream cannot be framed any more: hand what we
                            // have to the router (it may answer 400) and close.
                            tracing::warn!(%peer, "closing SIP TCP connection: {e}");
                            let data = framer.take_unframed();
                            let _ = inbound.send(Inbound { data, flow }).await;
                            // Keep the connection registered a moment so the
                            // router's 400 can still go out on it (the router
                            // answers within microseconds; 150 ms is ample).
                            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                            break 'conn;
                        }
                    }
                }
            }
            if let Some(t) = weak.upgrade() {
                t.tcp.lock().expect("tcp map poisoned").remove(&peer);
            }
        });
        wtx
    }

    /// Sends bytes on a flow; opens a TCP connection if none exists.
    pub async fn send(self: &Arc<Self>, flow: Flow, bytes: Vec<u8>) -> io::Result<()> {
        match flow.proto {
            Proto::Udp => {
                self.udp.send_to(&bytes, flow.addr).await?;
                Ok(())
            }
            Proto::Tcp => {
                let existing = self
                    .tcp
                    .lock()
                    .expect("tcp map poisoned")
                    .get(&flow.addr)
                    .cloned();
                let tx = match existing {
                    Some(tx) => tx,
                    None => {
                        let stream = tokio::time::timeout(
                            std::time::Duration::from_secs(5),
                            TcpStream::connect(flow.addr),
                        )
                        .await
                        .map_err(|_| {
                            io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out")
                        })??;
                        self.adopt(stream, flow.addr)
                    }
                };
                tx.send(bytes)
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "TCP connection closed"))
            }
        }
    }
}
