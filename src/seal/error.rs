//! The error type of the seal module: each variant says what failed and what to check.

use std::path::PathBuf;

/// What went wrong while loading the identity or sealing a set.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// A file of the identity, the chain or a set could not be read or written.
    #[error("{action} {path}: {source} (check that the path exists, its permissions and free disk space)")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A certificate to import does not fit the instance.
    #[error("cannot import the certificate: {0}; the keystore was not changed")]
    InvalidCertificate(String),
    /// The keystore password did not open the keystore.
    #[error("wrong password for keystore {path}: check --keystore-password-file / CALLREC_KEYSTORE_PASSWORD (or {path}'s sibling keystore.password when none was given); the keystore was not changed")]
    WrongPassword { path: PathBuf },
    /// The keystore exists but is not a usable PKCS#12 file.
    #[error("keystore {path} is unreadable: {detail}; restore it from backup (a new identity is not created while the data dir holds one)")]
    KeystoreUnreadable { path: PathBuf, detail: String },
    /// No password was given and none is stored beside an existing keystore.
    #[error("keystore {path} exists but no password was given and {password_file} is missing: pass --keystore-password-file or CALLREC_KEYSTORE_PASSWORD")]
    PasswordMissing {
        path: PathBuf,
        password_file: PathBuf,
    },
    /// The keystore is gone although this data dir has sealed sets or an instance id.
    #[error("keystore {path} is missing but {evidence} exists, so sets were sealed with an earlier identity; restore keystore.p12 (and its password) from backup, or, to start a new identity and a new chain deliberately, move {evidence} aside")]
    KeystoreMissing { path: PathBuf, evidence: PathBuf },
    /// The instance-id file disagrees with the keystore's certificate.
    #[error("instance id {file_id:?} in {path} does not match the keystore's certificate (\"callrec {cert_id}\"): restore the matching instance-id and keystore.p12 together")]
    InstanceMismatch {
        path: PathBuf,
        file_id: String,
        cert_id: String,
    },
    /// An OpenSSL operation (key, certificate, keystore, signature) failed.
    #[error("{action} failed: {source} (check the OpenSSL installation)")]
    Crypto {
        action: &'static str,
        #[source]
        source: openssl::error::ErrorStack,
    },
    /// Another Sealer (another process) already owns this data dir's chain.
    #[error("chain lock {path} is held by another process: only one callrec instance may use a data dir")]
    ChainLocked { path: PathBuf },
    /// The chain head file exists but cannot be understood.
    #[error("chain head {path} is corrupt: {detail}; restore it from backup (or check the last sealed set's .sha256 and write it by hand)")]
    ChainHeadCorrupt { path: PathBuf, detail: String },
    /// The caller passed something the seal cannot accept.
    #[error("cannot seal {base_name}: {detail}")]
    InvalidInput { base_name: String, detail: String },
    /// An earlier set of the same chain in the same group failed to be signed,
    /// and this set's metadata already names it as "previous".
    #[error("cannot seal {base_name}: the set before it in its chain ({previous}) could not be signed; the recording stays in its folder and is sealed again at the next start")]
    PreviousUnsigned { base_name: String, previous: String },
    /// The set was already sealed; sealing again would fork the chain.
    #[error("set {path} is already sealed (its signature exists); remove it deliberately before sealing again")]
    AlreadySealed { path: PathBuf },
}

impl SealError {
    /// Builds an [`SealError::Io`] for `path`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> SealError {
        let path = path.into();
        move |source| SealError::Io {
            action,
            path,
            source,
        }
    }

    /// Builds an [`SealError::Crypto`].
    pub(crate) fn crypto(
        action: &'static str,
    ) -> impl FnOnce(openssl::error::ErrorStack) -> SealError {
        move |source| SealError::Crypto { action, source }
    }
}
