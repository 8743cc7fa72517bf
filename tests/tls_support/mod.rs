//! SIP over TLS for the tests: a test CA and certificates made with rcgen,
//! a blocking SIP peer on a rustls stream (client or server side), a trunk
//! that only speaks TLS, and a proxy started with such a trunk.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use callrec::sip::framer::{Frame, Framer};
use callrec::sip::Message;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A test CA and leaf certificates it signs, in a temporary folder.
pub struct Pki {
    pub dir: TestDir,
    pub ca: rcgen::Certificate,
    pub ca_key: KeyPair,
}

/// A leaf certificate: PEM for files, DER for rustls.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "callrec test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = p.self_signed(&ca_key).unwrap();
        let dir = TestDir::new("tls");
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `name` (a DNS name); expired when `expired`.
    pub fn leaf(&self, name: &str, expired: bool) -> Leaf {
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Writes a leaf as NAME.pem and NAME.key; returns both paths.
    pub fn write(&self, file: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        let (c, k) = (
            self.dir.join(&format!("{file}.pem")),
            self.dir.join(&format!("{file}.key")),
        );
        std::fs::write(&c, &leaf.cert_pem).unwrap();
        std::fs::write(&k, &leaf.key_pem).unwrap();
        (c, k)
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }
}

/// A server showing `leaf`; with `client_ca`, a client certificate signed by
/// it is required (mutual TLS).
pub fn server_config(leaf: &Leaf, client_ca: Option<&Pki>) -> Arc<rustls::ServerConfig> {
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        Some(pki) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(pki.ca.der().clone()).unwrap();
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            b.with_client_cert_verifier(v)
        }
        None => b.with_no_client_auth(),
    };
    Arc::new(b.with_single_cert(vec![leaf.der.clone()], key).unwrap())
}

/// One SIP peer on a TLS stream (client or server side), blocking.
pub struct SipTls<S: Read + Write> {
    pub stream: S,
    pub framer: Framer,
    pub local: SocketAddr,
}

impl<S: Read + Write> SipTls<S> {
    /// The next SIP message, keep-alives passed over; None after `wait`.
    pub fn recv(&mut self, wait: Duration) -> Option<Message> {
        let end = Instant::now() + wait;
        let mut buf = [0u8; 8192];
        loop {
            match self.framer.next_frame() {
                Ok(Some(Frame::Message(m))) => {
                    return Some(Message::parse(&m).expect("callrec sent a parseable message"))
                }
                Ok(Some(Frame::Ping)) => continue,
                Ok(None) => {}
                Err(e) => panic!("callrec's stream cannot be framed: {e}"),
            }
            if Instant::now() >= end {
                return None;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.framer.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    /// Whether a CRLF keep-alive ping arrives within `wait` (messages that
    /// come first are passed over).
    pub fn wait_ping(&mut self, wait: Duration) -> bool {
        let end = Instant::now() + wait;
        let mut buf = [0u8; 8192];
        loop {
            match self.framer.next_frame() {
                Ok(Some(Frame::Ping)) => return true,
                Ok(Some(Frame::Message(_))) => continue,
                Ok(None) => {}
                Err(e) => panic!("callrec's stream cannot be framed: {e}"),
            }
            if Instant::now() >= end {
                return false;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => self.framer.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return false,
            }
        }
    }

    /// The next request (answering nothing), or panics after `wait`.
    pub fn expect(&mut self, method: &str, wait: Duration) -> Message {
        loop {
            let m = self
                .recv(wait)
                .unwrap_or_else(|| panic!("no {method} over TLS within {wait:?}"));
            if m.is_request() && m.method() == method {
                return m;
            }
        }
    }

    pub fn send(&mut self, m: &Message) {
        self.stream.write_all(&m.to_bytes()).unwrap();
        self.stream.flush().unwrap();
    }

    /// A response to `req` copying the headers a response must copy.
    pub fn answer(&mut self, req: &Message, code: u16, sdp: Option<&str>) {
        let mut r = Message::response(code, if code == 200 { "OK" } else { "Ringing" });
        for v in req.header_all("Via") {
            r.push("Via", v);
        }
        for h in ["From", "Call-ID", "CSeq"] {
            r.push(h, req.header(h).unwrap());
        }
        let to = req.header("To").unwrap();
        r.push(
            "To",
            if to.contains("tag=") {
                to.to_string()
            } else {
                format!("{to};tag=trunk1")
            },
        );
        r.push(
            "Contact",
            format!("<sip:trunk@{};transport=tls>", self.local),
        );
        if let Some(b) = sdp {
            r.push("Content-Type", "application/sdp");
            r.body = b.as_bytes().to_vec();
        }
        r.set("Content-Length", r.body.len().to_string());
        self.send(&r);
    }
}

pub fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=t\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n"
    )
}

/// A trunk that only speaks TLS, on 127.0.0.1 (reached as "localhost").
pub struct TlsTrunk {
    pub addr: SocketAddr,
    pub listener: TcpListener,
}

impl TlsTrunk {
    pub fn new() -> TlsTrunk {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        TlsTrunk {
            addr: listener.local_addr().unwrap(),
            listener,
        }
    }

    /// Accepts one connection within `wait` and completes the handshake
    /// with `leaf`; Err holds the handshake error.
    pub fn accept(
        &self,
        leaf: &Leaf,
        wait: Duration,
    ) -> Result<SipTls<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>, String> {
        self.accept_with(server_config(leaf, None), wait)
    }

    pub fn accept_with(
        &self,
        config: Arc<rustls::ServerConfig>,
        wait: Duration,
    ) -> Result<SipTls<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>, String> {
        self.listener.set_nonblocking(true).unwrap();
        let end = Instant::now() + wait;
        let tcp = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < end => thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("no connection from callrec: {e}")),
            }
        };
        tcp.set_nonblocking(false).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            if Instant::now() > end {
                return Err("handshake did not complete".into());
            }
            match s.conn.complete_io(&mut s.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(SipTls {
            stream: s,
            framer: Framer::default(),
            local: self.addr,
        })
    }
}

pub fn connect_tls(
    pki: &Pki,
    to: SocketAddr,
    name: &str,
) -> SipTls<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let tcp = TcpStream::connect(to).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let local = tcp.local_addr().unwrap();
    let conn = rustls::ClientConnection::new(
        pki.client_config(),
        ServerName::try_from(name.to_string()).unwrap(),
    )
    .unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let end = Instant::now() + Duration::from_secs(5);
    while s.conn.is_handshaking() {
        assert!(Instant::now() < end, "no TLS handshake with callrec");
        match s.conn.complete_io(&mut s.sock) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("TLS handshake with callrec failed: {e}"),
        }
    }
    SipTls {
        stream: s,
        framer: Framer::default(),
        local,
    }
}

/// A proxy whose trunk is `tls://localhost:PORT`, verified against the test CA.
pub fn proxy_with_tls_trunk(pki: &Pki, trunk: &TlsTrunk, extra: &[&str]) -> Proxy {
    let mut b = Proxy::builder()
        .trunk(
            trunk.addr,
            &format!("tls://localhost:{}", trunk.addr.port()),
        )
        .arg("--tls-ca")
        .arg(pki.ca_path().to_str().unwrap());
    for a in extra {
        b = b.arg(a);
    }
    b.start()
}

/// An INVITE from the PBX (127.0.0.2) over UDP, sent once.
pub fn invite_from_pbx(proxy: &Proxy) -> UdpSocket {
    let sock = UdpSocket::bind((PBX_IP, 0)).unwrap();
    let me = sock.local_addr().unwrap();
    let body = sdp(free_port());
    let msg = format!(
        "INVITE sip:0301234@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-tls-{p}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:100@{me}>;tag=pbx1\r\nTo: <sip:0301234@{to}>\r\n\
         Call-ID: tls-{p}@pbx\r\nCSeq: 1 INVITE\r\nContact: <sip:100@{me}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len(),
        to = proxy.sip_addr(),
        p = me.port(),
    );
    sock.send_to(msg.as_bytes(), proxy.sip_addr()).unwrap();
    sock
}
