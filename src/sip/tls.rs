//! SIP over TLS: the flags, the certificates (server, client, trusted CAs)
//! loaded from PEM files and reloaded on SIGHUP, and the rustls settings
//! (TLS 1.2 and 1.3 only). The streams themselves run through the TCP
//! connection table in `tcp`, which wraps each socket with the acceptor or
//! connector handed out here.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The TLS flags of `callrec run`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Address for SIP over TLS (e.g. 0.0.0.0:5061); off unless given. Needs --tls-cert and --tls-key.
    #[arg(long, env = "CALLREC_LISTEN_TLS")]
    pub listen_tls: Option<SocketAddr>,
    /// Certificate chain (PEM, leaf first) that callrec shows to TLS peers; reloaded on SIGHUP.
    #[arg(long, env = "CALLREC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert; reloaded on SIGHUP.
    #[arg(long, env = "CALLREC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that a tls:// trunk's or PBX's certificate must chain to; default: the system roots.
    #[arg(long, env = "CALLREC_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS towards tls:// next hops; reloaded on SIGHUP.
    #[arg(long, env = "CALLREC_TLS_CLIENT_CERT")]
    pub tls_client_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-client-cert.
    #[arg(long, env = "CALLREC_TLS_CLIENT_KEY")]
    pub tls_client_key: Option<PathBuf>,
}

/// TLS settings carried in the run configuration.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// The flags as given.
    pub files: TlsArgs,
    /// Names that next hops' certificates must carry, by address (the host
    /// of `--trunk tls://HOST:PORT`); other peers are checked by IP address.
    pub names: Vec<(SocketAddr, String)>,
}

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot read {what} {path}: {reason}")]
    File {
        /// Which flag's file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Flags that only work together.
    #[error("{0}")]
    Usage(&'static str),
    /// rustls refused the settings.
    #[error("TLS setup: {0}")]
    Rustls(String),
    /// The client verifier could not be built from the roots.
    #[error("TLS roots: {0}")]
    Roots(String),
}

impl From<rustls::Error> for TlsError {
    // Kept as text: the message already says everything, and a source
    // would print it twice in the start error.
    fn from(e: rustls::Error) -> TlsError {
        TlsError::Rustls(e.to_string())
    }
}

/// Turns rustls refusing a key into an error that names the key file.
fn unusable_key<'a>(
    what: &'static str,
    key: &'a Path,
) -> impl FnOnce(rustls::Error) -> TlsError + 'a {
    move |e| TlsError::File {
        what,
        path: key.to_path_buf(),
        reason: format!("not a usable key for the certificate ({e})"),
    }
}

/// The live TLS configuration; new connections take the current one, so a
/// reload never touches connections (and calls) already running.
pub struct TlsContext {
    settings: TlsSettings,
    server: RwLock<Option<Arc<ServerConfig>>>,
    client: RwLock<Arc<ClientConfig>>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let list = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if list.is_empty() {
        return Err(err("no CERTIFICATE block in it".into()));
    }
    Ok(list)
}

fn key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl TlsContext {
    /// Loads every file the settings name.
    pub fn load(settings: TlsSettings) -> Result<Arc<TlsContext>, TlsError> {
        let (server, client) = Self::build(&settings)?;
        Ok(Arc::new(TlsContext {
            settings,
            server: RwLock::new(server),
            client: RwLock::new(client),
        }))
    }

    fn build(s: &TlsSettings) -> Result<(Option<Arc<ServerConfig>>, Arc<ClientConfig>), TlsError> {
        let f = &s.files;
        let server = match (&f.tls_cert, &f.tls_key) {
            (Some(c), Some(k)) => {
                let cfg = ServerConfig::builder_with_provider(provider())
                    .with_protocol_versions(VERSIONS)?
                    .with_no_client_auth()
                    .with_single_cert(certs("--tls-cert", c)?, key("--tls-key", k)?)
                    .map_err(unusable_key("--tls-key", k))?;
                Some(Arc::new(cfg))
            }
            (None, None) if f.listen_tls.is_none() => None,
            (None, None) => {
                return Err(TlsError::Usage(
                    "--listen-tls needs --tls-cert and --tls-key",
                ))
            }
            _ => return Err(TlsError::Usage("--tls-cert and --tls-key go together")),
        };
        let mut roots = RootCertStore::empty();
        match &f.tls_ca {
            Some(ca) => {
                for c in certs("--tls-ca", ca)? {
                    roots.add(c).map_err(|e| TlsError::File {
                        what: "--tls-ca",
                        path: ca.clone(),
                        reason: e.to_string(),
                    })?;
                }
            }
            None => {
                // Unreadable entries of the system store are skipped; an
                // empty store only means every next hop will be refused.
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    tracing::warn!(
                        "no system root certificates found; give --tls-ca for tls:// next hops"
                    );
                }
            }
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)?
            .with_root_certificates(roots);
        let client = match (&f.tls_client_cert, &f.tls_client_key) {
            (Some(c), Some(k)) => builder
                .with_client_auth_cert(certs("--tls-client-cert", c)?, key("--tls-client-key", k)?)
                .map_err(unusable_key("--tls-client-key", k))?,
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError::Usage(
                    "--tls-client-cert and --tls-client-key go together",
                ))
            }
        };
        Ok((server, Arc::new(client)))
    }

    /// Reads the files again; on any error the old certificates stay in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (server, client) = Self::build(&self.settings)?;
        *self.server.write().expect("tls config poisoned") = server;
        *self.client.write().expect("tls config poisoned") = client;
        Ok(())
    }

    /// Where the TLS listener binds, if anywhere.
    pub fn listen(&self) -> Option<SocketAddr> {
        self.settings.files.listen_tls
    }

    pub(crate) fn acceptor(&self) -> Option<TlsAcceptor> {
        let s = self.server.read().expect("tls config poisoned");
        s.clone().map(TlsAcceptor::from)
    }

    pub(super) fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.client.read().expect("tls config poisoned").clone())
    }

    /// The name `peer`'s certificate must carry: the configured host name,
    /// else its IP address (matched against an iPAddress entry).
    pub(super) fn server_name(&self, peer: SocketAddr) -> ServerName<'static> {
        let canon = |a: IpAddr| a.to_canonical();
        self.settings
            .names
            .iter()
            .find(|(a, _)| canon(a.ip()) == canon(peer.ip()) && a.port() == peer.port())
            .and_then(|(_, n)| ServerName::try_from(n.clone()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(canon(peer.ip()).into()))
    }
}

/// Words for the log line of a failed handshake, so that an operator sees at
/// once which of the usual certificate faults it is.
pub(crate) fn explain(e: &std::io::Error) -> String {
    use rustls::{CertificateError as C, Error as E};
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    let why = match inner {
        Some(E::InvalidCertificate(c)) => match c {
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "the certificate is not valid for this name"
            }
            C::Expired | C::ExpiredContext { .. } => "the certificate has expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "the certificate is not valid yet",
            C::UnknownIssuer => "the certificate is not signed by a trusted CA (see --tls-ca)",
            C::Revoked => "the certificate is revoked",
            _ => "the certificate was refused",
        },
        Some(E::AlertReceived(_)) => "the peer refused the handshake",
        Some(_) => "TLS error",
        None => "connection failed",
    };
    format!("{why}: {e}")
}
