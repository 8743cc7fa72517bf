//! RFC 3161 time stamps of chain heads: the request sent to a time-stamping
//! authority (TSA), the reply kept as `chain-<profile>-<seq>.tsr`, and its
//! check against the TSA's certificate. DER is read and written with the
//! `der` crate; the token's CMS signature is checked by OpenSSL (PKCS7_verify,
//! which `openssl ts -verify` builds on too).

use der::asn1::{AnyRef, GeneralizedTime, ObjectIdentifier, OctetStringRef};
use der::{Decode, Encode, Reader, SliceReader, Tag};
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;

/// OID of SHA-256, the only imprint algorithm used.
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");

/// What is wrong with a time-stamp exchange or token.
#[derive(Debug, thiserror::Error)]
#[error("time stamp: {0}")]
pub struct TimestampError(pub String);

fn bad(what: impl std::fmt::Display) -> TimestampError {
    TimestampError(what.to_string())
}

/// The DER of a `TimeStampReq` (RFC 3161 §2.4.1) for a SHA-256 `imprint`,
/// with a nonce and a request for the TSA's certificate in the reply.
pub fn request(imprint: &[u8; 32], nonce: u64) -> Result<Vec<u8>, TimestampError> {
    let seq = |parts: &[Vec<u8>]| -> Result<Vec<u8>, TimestampError> {
        let body: Vec<u8> = parts.concat();
        AnyRef::new(Tag::Sequence, &body)
            .and_then(|a| a.to_der())
            .map_err(bad)
    };
    let algorithm = seq(&[
        SHA256.to_der().map_err(bad)?,
        AnyRef::NULL.to_der().map_err(bad)?,
    ])?;
    let digest = OctetStringRef::new(imprint)
        .and_then(|o| o.to_der())
        .map_err(bad)?;
    let message_imprint = seq(&[algorithm, digest])?;
    // The nonce as a positive INTEGER: a leading zero keeps the sign bit clear.
    let mut n = vec![0u8];
    n.extend_from_slice(&nonce.to_be_bytes());
    let nonce = AnyRef::new(Tag::Integer, trim_integer(&n))
        .and_then(|a| a.to_der())
        .map_err(bad)?;
    seq(&[
        1u8.to_der().map_err(bad)?,
        message_imprint,
        nonce,
        true.to_der().map_err(bad)?,
    ])
}

/// Minimal two's-complement form of a non-negative integer's bytes.
fn trim_integer(b: &[u8]) -> &[u8] {
    let mut i = 0;
    while i + 1 < b.len() && b[i] == 0 && b[i + 1] & 0x80 == 0 {
        i += 1;
    }
    &b[i..]
}

/// Reads a `TimeStampResp`: its status must be granted (0) or granted with
/// modifications (1); returns the token (the CMS `ContentInfo`'s DER).
pub fn token_of(response: &[u8]) -> Result<Vec<u8>, TimestampError> {
    let outer = AnyRef::from_der(response).map_err(|e| bad(format!("reply is not DER: {e}")))?;
    outer
        .sequence(|r: &mut SliceReader<'_>| {
            let status: AnyRef<'_> = r.decode()?;
            let code = status.sequence(|s: &mut SliceReader<'_>| {
                let code: u8 = s.decode()?;
                // statusString and failInfo may follow; they only explain.
                while !s.is_finished() {
                    let _: AnyRef<'_> = s.decode()?;
                }
                Ok::<_, der::Error>(code)
            })?;
            if code > 1 {
                return Ok(Err(bad(format!(
                    "the TSA refused the request (status {code})"
                ))));
            }
            let token: AnyRef<'_> = r.decode()?;
            Ok::<_, der::Error>(token.to_der().map_err(bad))
        })
        .map_err(|e| bad(format!("malformed reply: {e}")))?
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The time the TSA vouches for (RFC 3339, UTC).
    pub time: String,
    /// The SHA-256 imprint it covers, lowercase hex.
    pub imprint: String,
}

/// Checks a reply (`.tsr`) against the TSA's trust anchor `ca` (the TSA's
/// certificate or its CA): the CMS signature and chain, then reads the
/// imprint and time from the signed `TSTInfo`.
pub fn verify(response: &[u8], ca: &X509) -> Result<Stamp, TimestampError> {
    let token = token_of(response)?;
    let p7 = Pkcs7::from_der(&token).map_err(|e| bad(format!("token is not CMS: {e}")))?;
    let mut store = X509StoreBuilder::new().map_err(bad)?;
    store.add_cert(ca.clone()).map_err(bad)?;
    // The signer must be a time-stamping certificate (extended key usage
    // timeStamping), not any certificate the CA issued.
    store
        .set_purpose(openssl::x509::X509PurposeId::TIMESTAMP_SIGN)
        .map_err(bad)?;
    let store = store.build();
    let none = Stack::new().map_err(bad)?;
    let mut info = Vec::new();
    p7.verify(&none, &store, None, Some(&mut info), Pkcs7Flags::empty())
        .map_err(|e| {
            bad(format!(
                "the token's signature does not verify with the TSA certificate: {e}"
            ))
        })?;
    read_tst_info(&info)
}

/// Imprint and time from a `TSTInfo` (RFC 3161 §2.4.2).
fn read_tst_info(der_bytes: &[u8]) -> Result<Stamp, TimestampError> {
    let info = AnyRef::from_der(der_bytes).map_err(|e| bad(format!("TSTInfo: {e}")))?;
    info.sequence(|r: &mut SliceReader<'_>| {
        let _version: AnyRef<'_> = r.decode()?;
        let _policy: AnyRef<'_> = r.decode()?;
        let imprint: AnyRef<'_> = r.decode()?;
        let digest = imprint.sequence(|m: &mut SliceReader<'_>| {
            let _alg: AnyRef<'_> = m.decode()?;
            let d: &OctetStringRef = m.decode()?;
            Ok::<_, der::Error>(hex::encode(d.as_bytes()))
        })?;
        let _serial: AnyRef<'_> = r.decode()?;
        let time: GeneralizedTime = r.decode()?;
        while !r.is_finished() {
            let _: AnyRef<'_> = r.decode()?;
        }
        let secs = time.to_unix_duration().as_secs() as i64;
        let time = chrono::DateTime::from_timestamp(secs, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        Ok::<_, der::Error>(Stamp {
            time,
            imprint: digest,
        })
    })
    .map_err(|e| bad(format!("TSTInfo: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_the_rfc_3161_structure() {
        let req = request(&[0xab; 32], 0x80).unwrap();
        // SEQUENCE { INTEGER 1, SEQUENCE { SEQUENCE { OID sha256, NULL }, OCTET STRING (32) }, INTEGER 0x0080, BOOLEAN TRUE }
        let mut expected = vec![
            0x30, 0x3d, 0x02, 0x01, 0x01, 0x30, 0x31, 0x30, 0x0d, 0x06, 0x09,
        ];
        expected.extend_from_slice(&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01]);
        expected.extend_from_slice(&[0x05, 0x00, 0x04, 0x20]);
        expected.extend_from_slice(&[0xab; 32]);
        expected.extend_from_slice(&[0x02, 0x02, 0x00, 0x80, 0x01, 0x01, 0xff]);
        assert_eq!(req, expected);
        assert!(token_of(&req[..3]).is_err());
    }
}
