//! The instance identity: instance id, RSA-2048 key and self-signed certificate,
//! kept in a password-protected PKCS#12 keystore in the data dir.

use std::path::{Path, PathBuf};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::sign::Signer;
use openssl::x509::extension::{KeyUsage, SubjectKeyIdentifier};
use openssl::x509::{X509Name, X509NameBuilder, X509Req, X509};
use rand::RngCore;

use super::durable::replace_atomically;
use super::{SealError, CERT_FILE_NAME};

/// File holding the instance id.
const INSTANCE_ID_FILE: &str = "instance-id";
/// File holding the keystore.
pub(super) const KEYSTORE_FILE: &str = "keystore.p12";
/// File holding a generated keystore password.
const PASSWORD_FILE: &str = "keystore.password";
/// File whose presence proves that sets were sealed in this data dir.
pub(crate) const CHAIN_HEAD_FILE: &str = "chain-head.json";
/// Product name in the certificate subject.
const PRODUCT: &str = "callrec";
/// Validity of the certificate: 100 years.
const VALIDITY_DAYS: u32 = 36525;

/// Where the keystore password comes from.
#[derive(Debug, Clone)]
pub enum PasswordSource {
    /// Read from this file (trailing newline removed).
    File(PathBuf),
    /// Given directly (e.g. from an environment variable).
    Value(String),
    /// None given: use `data_dir/keystore.password`, generating it (mode 0600, WARN) on first start.
    None,
}

/// Instance id, RSA-2048 key and self-signed X.509 certificate of this instance.
///
/// Cloning shares the key (reference-counted by OpenSSL): the sealer and the
/// retention task that signs tombstones hold the same identity.
#[derive(Clone)]
pub struct Identity {
    instance_id: String,
    key: PKey<Private>,
    cert: X509,
    /// The CA certificates above `cert` (empty while it is self-signed).
    chain: Vec<X509>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads the identity from data_dir, or creates it on first start.
    ///
    /// Refuses to create a new identity when `instance-id` or `chain-head.json`
    /// exist without a keystore. Writes `data_dir/cert.pem` on every start and
    /// logs the certificate and its fingerprint at INFO.
    pub fn load_or_create(
        data_dir: &Path,
        password: PasswordSource,
    ) -> Result<Identity, SealError> {
        std::fs::create_dir_all(data_dir).map_err(SealError::io("create data dir", data_dir))?;
        let keystore = data_dir.join(KEYSTORE_FILE);
        let identity = match std::fs::read(&keystore) {
            Ok(der) => Self::load(data_dir, &keystore, &der, &password)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                for name in [CHAIN_HEAD_FILE, INSTANCE_ID_FILE] {
                    let evidence = data_dir.join(name);
                    if evidence.exists() {
                        return Err(SealError::KeystoreMissing {
                            path: keystore,
                            evidence,
                        });
                    }
                }
                Self::create(data_dir, &keystore, &password)?
            }
            Err(e) => {
                return Err(SealError::KeystoreUnreadable {
                    path: keystore,
                    detail: e.to_string(),
                })
            }
        };
        let pem = identity.certificate_pem();
        replace_atomically(&data_dir.join(CERT_FILE_NAME), pem.as_bytes(), 0o644)?;
        tracing::info!(
            instance_id = %identity.instance_id,
            fingerprint_sha256 = %identity.fingerprint_sha256(),
            "instance certificate:\n{pem}"
        );
        Ok(identity)
    }

    /// Opens an existing keystore and checks it against `instance-id`.
    pub(super) fn load(
        data_dir: &Path,
        keystore: &Path,
        der: &[u8],
        password: &PasswordSource,
    ) -> Result<Identity, SealError> {
        let pass = existing_password(data_dir, keystore, password)?;
        let unreadable = |detail: String| SealError::KeystoreUnreadable {
            path: keystore.to_path_buf(),
            detail,
        };
        let p12 = Pkcs12::from_der(der).map_err(|e| unreadable(format!("not PKCS#12 ({e})")))?;
        let parsed = p12.parse2(&pass).map_err(|e| {
            let text = e.to_string();
            if text.contains("mac verify failure") || text.contains("mac_verify") {
                SealError::WrongPassword {
                    path: keystore.to_path_buf(),
                }
            } else {
                unreadable(text)
            }
        })?;
        let chain: Vec<X509> = parsed
            .ca
            .map(|s| s.into_iter().collect())
            .unwrap_or_default();
        let (Some(key), Some(cert)) = (parsed.pkey, parsed.cert) else {
            return Err(unreadable(
                "it lacks the private key or the certificate".into(),
            ));
        };
        let cn = common_name(&cert).unwrap_or_default();
        let cert_id = cn
            .strip_prefix(&format!("{PRODUCT} "))
            .map(str::to_string)
            .ok_or_else(|| {
                unreadable(format!(
                    "certificate subject CN {cn:?} is not \"{PRODUCT} <instance-id>\""
                ))
            })?;
        let id_file = data_dir.join(INSTANCE_ID_FILE);
        match std::fs::read_to_string(&id_file) {
            Ok(s) if s.trim() == cert_id => {}
            Ok(s) => {
                return Err(SealError::InstanceMismatch {
                    path: id_file,
                    file_id: s.trim().to_string(),
                    cert_id,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %id_file.display(), "instance-id missing; restored from the keystore's certificate");
                replace_atomically(&id_file, format!("{cert_id}\n").as_bytes(), 0o644)?;
            }
            Err(e) => return Err(SealError::io("read", &id_file)(e)),
        }
        Ok(Identity {
            instance_id: cert_id,
            key,
            cert,
            chain,
        })
    }

    /// Creates id, key, certificate, keystore (and a password file when none was given).
    fn create(
        data_dir: &Path,
        keystore: &Path,
        password: &PasswordSource,
    ) -> Result<Identity, SealError> {
        let pass = match password {
            PasswordSource::File(p) => read_password_file(p)?,
            PasswordSource::Value(v) => v.clone(),
            PasswordSource::None => {
                let file = data_dir.join(PASSWORD_FILE);
                // Left over from a first start that stopped before writing the keystore.
                if file.exists() {
                    read_password_file(&file)?
                } else {
                    let mut raw = [0u8; 24];
                    rand::thread_rng().fill_bytes(&mut raw);
                    let generated = hex::encode(raw);
                    replace_atomically(&file, format!("{generated}\n").as_bytes(), 0o600)?;
                    tracing::warn!(
                        path = %file.display(),
                        "no keystore password given: generated one and stored it beside the keystore (mode 0600); back it up together with keystore.p12, or pass --keystore-password-file"
                    );
                    generated
                }
            }
        };
        let mut raw = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut raw);
        let instance_id = hex::encode(raw);
        let key = PKey::from_rsa(
            Rsa::generate(2048).map_err(SealError::crypto("generate RSA-2048 key"))?,
        )
        .map_err(SealError::crypto("wrap RSA key"))?;
        let cert = self_signed(&instance_id, &key)
            .map_err(SealError::crypto("build self-signed certificate"))?;
        let p12 = Pkcs12::builder()
            .name(&format!("{PRODUCT} {instance_id}"))
            .pkey(&key)
            .cert(&cert)
            .build2(&pass)
            .map_err(SealError::crypto("build PKCS#12 keystore"))?;
        let der = p12
            .to_der()
            .map_err(SealError::crypto("encode PKCS#12 keystore"))?;
        replace_atomically(keystore, &der, 0o600)?;
        replace_atomically(
            &data_dir.join(INSTANCE_ID_FILE),
            format!("{instance_id}\n").as_bytes(),
            0o644,
        )?;
        tracing::info!(%instance_id, path = %keystore.display(), "created instance identity");
        Ok(Identity {
            instance_id,
            key,
            cert,
            chain: Vec::new(),
        })
    }

    /// The instance's key, certificate and CA chain, for the keystore rewrite of a certificate import.
    pub(super) fn parts(&self) -> (&PKey<Private>, &X509, &[X509]) {
        (&self.key, &self.cert, &self.chain)
    }

    /// The certificate followed by its CA chain, PEM (what sets carry).
    pub fn chain_pem(&self) -> Vec<String> {
        std::iter::once(&self.cert)
            .chain(&self.chain)
            .filter_map(|c| c.to_pem().ok())
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .collect()
    }

    /// The instance id (16 lowercase hex characters).
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The certificate as PEM.
    pub fn certificate_pem(&self) -> String {
        let pem = self
            .cert
            .to_pem()
            .expect("a parsed certificate encodes as PEM");
        String::from_utf8(pem).expect("PEM is ASCII")
    }

    /// SHA-256 fingerprint of the certificate, upper-case hex pairs joined by colons (as openssl prints it).
    pub fn fingerprint_sha256(&self) -> String {
        let digest = self
            .cert
            .digest(MessageDigest::sha256())
            .expect("OpenSSL provides SHA-256");
        digest
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// A PKCS#10 certificate signing request (PEM) for the same subject and key, for a CA.
    pub fn csr_pem(&self) -> Result<String, SealError> {
        let build = || -> Result<Vec<u8>, openssl::error::ErrorStack> {
            let mut req = X509Req::builder()?;
            req.set_version(0)?;
            req.set_subject_name(self.cert.subject_name())?;
            req.set_pubkey(&self.key)?;
            req.sign(&self.key, MessageDigest::sha256())?;
            req.build().to_pem()
        };
        let pem = build().map_err(SealError::crypto("build certificate signing request"))?;
        Ok(String::from_utf8_lossy(&pem).into_owned())
    }

    /// Signs `data` with SHA256withRSA (PKCS#1 v1.5).
    pub(crate) fn sign(&self, data: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut signer = Signer::new(MessageDigest::sha256(), &self.key)
            .map_err(SealError::crypto("prepare signature"))?;
        signer
            .update(data)
            .map_err(SealError::crypto("sign checksum file"))?;
        signer
            .sign_to_vec()
            .map_err(SealError::crypto("sign checksum file"))
    }
}

/// Reads a password file, dropping one trailing newline (and CR).
/// The password of an existing keystore, from where `password` says.
pub(super) fn existing_password(
    data_dir: &Path,
    keystore: &Path,
    password: &PasswordSource,
) -> Result<String, SealError> {
    Ok(match password {
        PasswordSource::File(p) => read_password_file(p)?,
        PasswordSource::Value(v) => v.clone(),
        PasswordSource::None => {
            let file = data_dir.join(PASSWORD_FILE);
            if !file.exists() {
                return Err(SealError::PasswordMissing {
                    path: keystore.to_path_buf(),
                    password_file: file,
                });
            }
            read_password_file(&file)?
        }
    })
}

fn read_password_file(path: &Path) -> Result<String, SealError> {
    let text = std::fs::read_to_string(path)
        .map_err(SealError::io("read keystore password file", path))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
}

/// The subject's common name of a certificate.
pub(crate) fn common_name(cert: &X509) -> Option<String> {
    cert.subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
}

/// Builds the self-signed certificate "callrec <instance-id>", valid 100 years, signed with SHA-256.
fn self_signed(instance_id: &str, key: &PKey<Private>) -> Result<X509, openssl::error::ErrorStack> {
    let mut name: X509NameBuilder = X509Name::builder()?;
    name.append_entry_by_nid(Nid::COMMONNAME, &format!("{PRODUCT} {instance_id}"))?;
    let name = name.build();
    let mut serial_bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut serial_bytes);
    serial_bytes[0] &= 0x7f; // positive
    let serial_bn = BigNum::from_slice(&serial_bytes)?;
    let serial = Asn1Integer::from_bn(&serial_bn)?;
    let mut b = X509::builder()?;
    b.set_version(2)?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(key)?;
    let not_before = Asn1Time::days_from_now(0)?;
    let not_after = Asn1Time::days_from_now(VALIDITY_DAYS)?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .non_repudiation()
            .build()?,
    )?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    b.sign(key, MessageDigest::sha256())?;
    Ok(b.build())
}
