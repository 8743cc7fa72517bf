//! Certificate rollover: a CA-signed certificate for the instance's key
//! replaces the self-signed one in the keystore, with its CA chain. The key
//! stays, so sets signed before verify with either certificate.

use std::path::Path;

use openssl::pkcs12::Pkcs12;
use openssl::stack::Stack;
use openssl::x509::X509;

use super::durable::replace_atomically;
use super::identity::{common_name, existing_password, KEYSTORE_FILE};
use super::{Identity, PasswordSource, SealError, CERT_FILE_NAME};

/// Imports `pem` (the CA-signed certificate first, then its CA certificates)
/// into the keystore of `data_dir`; returns the identity as it is now.
///
/// Refused when the certificate is for another key or names another instance:
/// the chain of sets would otherwise be signed by a key nobody can match.
pub fn import_certificate(
    data_dir: &Path,
    password: PasswordSource,
    pem: &[u8],
) -> Result<Identity, SealError> {
    let keystore = data_dir.join(KEYSTORE_FILE);
    if !keystore.is_file() {
        return Err(SealError::InvalidCertificate(format!(
            "no keystore {}: run `callrec cert --csr` first and have that request signed",
            keystore.display()
        )));
    }
    let identity = Identity::load_or_create(data_dir, password.clone())?;
    let certs = X509::stack_from_pem(pem)
        .map_err(|e| SealError::InvalidCertificate(format!("not PEM certificates: {e}")))?;
    let Some((leaf, chain)) = certs.split_first() else {
        return Err(SealError::InvalidCertificate(
            "no certificate in the file".into(),
        ));
    };
    let (key, _, _) = identity.parts();
    let public = leaf
        .public_key()
        .map_err(|e| SealError::InvalidCertificate(format!("no public key: {e}")))?;
    if !public.public_eq(key) {
        return Err(SealError::InvalidCertificate(
            "the certificate is for another key than this instance's (sign the request from `callrec cert --csr`)".into(),
        ));
    }
    let want = format!("callrec {}", identity.instance_id());
    if common_name(leaf).as_deref() != Some(want.as_str()) {
        return Err(SealError::InvalidCertificate(format!(
            "the certificate's subject CN is {:?}, not {want:?}: keep the subject of the request",
            common_name(leaf).unwrap_or_default()
        )));
    }
    let mut ca = Stack::new().map_err(SealError::crypto("build CA list"))?;
    for c in chain {
        ca.push(c.clone())
            .map_err(SealError::crypto("build CA list"))?;
    }
    let pass = existing_password(data_dir, &keystore, &password)?;
    let p12 = Pkcs12::builder()
        .name(&want)
        .pkey(key)
        .cert(leaf)
        .ca(ca)
        .build2(&pass)
        .map_err(SealError::crypto("build PKCS#12 keystore"))?;
    let der = p12
        .to_der()
        .map_err(SealError::crypto("encode PKCS#12 keystore"))?;
    // The old keystore stays beside the new one until the next import.
    let _ = std::fs::copy(
        &keystore,
        data_dir.join(format!("{KEYSTORE_FILE}.before-import")),
    );
    replace_atomically(&keystore, &der, 0o600)?;
    let imported = Identity::load_or_create(data_dir, password)?;
    replace_atomically(
        &data_dir.join(CERT_FILE_NAME),
        imported.chain_pem().concat().as_bytes(),
        0o644,
    )?;
    tracing::info!(fingerprint_sha256 = %imported.fingerprint_sha256(), "CA-signed certificate imported");
    Ok(imported)
}
