//! Sealing of recording sets: instance identity (key, certificate, PKCS#12
//! keystore), shasum-format checksum files, SHA256withRSA signatures, the hash
//! chain between sets, and their verification.
//!
//! Layout of `data_dir` owned by this module:
//! - `instance-id`: the instance id (16 lowercase hex characters).
//! - `keystore.p12`: RSA-2048 key and self-signed certificate, PKCS#12 with the
//!   OpenSSL 3 defaults (AES-256-CBC, PBKDF2, HMAC-SHA256).
//! - `keystore.password`: only when no password was given; mode 0600.
//! - `cert.pem`: the certificate, rewritten on every start, so that sets below
//!   `data_dir` (the spool) verify without `--cert`.
//! - `chain-head.json`: the last sealed set of each profile's chain; its
//!   presence means sealed sets exist.
//! - `chain.lock`: held locked by the one [`Sealer`] of the instance.

mod addendum;
mod batch;
mod cert_import;
mod chain;
mod chain_check;
mod checksum;
#[cfg(test)]
mod crash_tests;
mod durable;
mod error;
mod identity;
mod legacy_chain;
mod resume;
mod sealer;
pub mod service;
pub mod timestamp;
mod tombstone;
mod verify;

pub use addendum::{addendum_base, addendum_names, seal_addendum, ADDENDUM_KEY};
pub use batch::SealRequest;
pub use cert_import::import_certificate;
pub use chain::{ChainHead, ChainLink, DEFAULT_PROFILE};
pub use chain_check::ChainNotes;
pub(crate) use durable::start_writeback;
pub use error::SealError;
pub use identity::{Identity, PasswordSource};
pub use resume::Resumed;
pub use sealer::{position_of, sealed_on_disk, SealedSet, Sealer};
pub use tombstone::{tombstone_base, write_tombstone, ChainPosition, Tombstone, TOMBSTONE_SUFFIX};
pub use verify::{verify_chain, verify_chain_report, verify_chain_report_of, verify_set, Problem};

/// The chain heads kept in `data_dir` (profile → last set sealed), for anchoring.
pub fn chain_heads(
    data_dir: &std::path::Path,
) -> Result<std::collections::BTreeMap<String, ChainHead>, SealError> {
    Ok(chain::read_heads(&data_dir.join(identity::CHAIN_HEAD_FILE))?.chains)
}

/// Suffix of a set's checksum file, appended to the base name.
pub const CHECKSUM_SUFFIX: &str = ".sha256";
/// Suffix of a set's signature file, appended to the checksum file's name.
pub const SIGNATURE_SUFFIX: &str = ".SHA256withRSA.sig";
/// File name under which the certificate is exported and looked up by verification.
pub const CERT_FILE_NAME: &str = "cert.pem";
