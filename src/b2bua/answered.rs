//! Who answered on the callee's side: from the 2xx to the callee leg's INVITE,
//! the party the PBX (or the trunk) names as the one that picked up. For a
//! call to a group this is the agent, where the callee number is only the
//! group. The config key `answered_by_header` picks the source (see README).

use serde::{Deserialize, Serialize};

use crate::sip::header_value::uri_of;
use crate::sip::message::Message;

/// Which header of the 2xx names the answering party (config key `answered_by_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnsweredByHeader {
    /// P-Asserted-Identity, then Remote-Party-ID, then the Contact user.
    #[default]
    Auto,
    /// P-Asserted-Identity only.
    PAssertedIdentity,
    /// Remote-Party-ID only.
    RemotePartyId,
    /// The user part of the Contact only.
    Contact,
}

/// Longest answering-party number kept; a longer value is not a number.
const MAX_LEN: usize = 64;

/// The user part of a `sip:`/`sips:` URI or the number of a `tel:` URI in a
/// header value, if it looks like a party number or user name: anything else
/// (empty, too long, odd characters) is dropped rather than written into the
/// metadata and the database.
fn party_of(value: &str) -> Option<String> {
    let uri = uri_of(value);
    let (scheme, rest) = uri.split_once(':')?;
    let user = match scheme.to_ascii_lowercase().as_str() {
        "sip" | "sips" => rest.split_once('@')?.0,
        "tel" => rest,
        _ => return None,
    };
    let user = user.split(';').next().unwrap_or(user);
    let ok = !user.is_empty()
        && user.len() <= MAX_LEN
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-._*#".contains(c));
    ok.then(|| user.to_string())
}

/// The first usable party in the values of header `name`.
fn from_header(msg: &Message, name: &str) -> Option<String> {
    msg.header_all(name).into_iter().find_map(party_of)
}

/// The answering party named by a 2xx as received. Identity headers
/// (P-Asserted-Identity, Remote-Party-ID) count only when `identity_trusted`
/// (the peer is in the identity trust domain): anyone else could put any
/// agent's number there. The Contact user is the answering device's own
/// address, taken from whichever peer answered.
pub fn answered_by(
    msg: &Message,
    choice: AnsweredByHeader,
    identity_trusted: bool,
) -> Option<String> {
    let pai = || {
        identity_trusted
            .then(|| from_header(msg, "P-Asserted-Identity"))
            .flatten()
    };
    let rpid = || {
        identity_trusted
            .then(|| from_header(msg, "Remote-Party-ID"))
            .flatten()
    };
    let contact = || from_header(msg, "Contact");
    match choice {
        AnsweredByHeader::Auto => pai().or_else(rpid).or_else(contact),
        AnsweredByHeader::PAssertedIdentity => pai(),
        AnsweredByHeader::RemotePartyId => rpid(),
        AnsweredByHeader::Contact => contact(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_with(headers: &[(&str, &str)]) -> Message {
        let mut text = String::from(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n\
             From: <sip:a@x>;tag=1\r\nTo: <sip:200@y>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n",
        );
        for (k, v) in headers {
            text.push_str(&format!("{k}: {v}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        Message::parse(text.as_bytes()).expect("test message parses")
    }

    #[test]
    fn order_is_pai_then_rpid_then_contact() {
        let all = ok_with(&[
            ("Contact", "<sip:207@10.0.0.2:5060>"),
            ("Remote-Party-ID", "\"B\" <sip:299@pbx>;party=called"),
            ("P-Asserted-Identity", "\"A\" <sip:201@pbx>"),
        ]);
        let auto = AnsweredByHeader::Auto;
        assert_eq!(answered_by(&all, auto, true).as_deref(), Some("201"));
        let no_pai = ok_with(&[
            ("Contact", "<sip:207@10.0.0.2>"),
            ("Remote-Party-ID", "<sip:299@pbx>;party=called"),
        ]);
        assert_eq!(answered_by(&no_pai, auto, true).as_deref(), Some("299"));
        let contact_only = ok_with(&[("Contact", "<sip:207@10.0.0.2>")]);
        assert_eq!(
            answered_by(&contact_only, auto, true).as_deref(),
            Some("207")
        );
        assert_eq!(answered_by(&ok_with(&[]), auto, true), None);
    }

    #[test]
    fn the_config_picks_one_source_only() {
        let all = ok_with(&[
            ("Contact", "<sip:207@10.0.0.2>"),
            ("Remote-Party-ID", "<sip:299@pbx>"),
            ("P-Asserted-Identity", "<sip:201@pbx>"),
        ]);
        let pick = |c| answered_by(&all, c, true);
        assert_eq!(pick(AnsweredByHeader::Contact).as_deref(), Some("207"));
        assert_eq!(
            pick(AnsweredByHeader::RemotePartyId).as_deref(),
            Some("299")
        );
        assert_eq!(
            pick(AnsweredByHeader::PAssertedIdentity).as_deref(),
            Some("201")
        );
        let contact_only = ok_with(&[("Contact", "<sip:207@10.0.0.2>")]);
        assert_eq!(
            answered_by(&contact_only, AnsweredByHeader::PAssertedIdentity, true),
            None
        );
    }

    #[test]
    fn identity_headers_of_an_untrusted_peer_are_ignored() {
        let forged = ok_with(&[
            ("Contact", "<sip:207@10.0.0.2>"),
            ("P-Asserted-Identity", "<sip:boss@pbx>"),
            ("Remote-Party-ID", "<sip:299@pbx>"),
        ]);
        assert_eq!(
            answered_by(&forged, AnsweredByHeader::Auto, false).as_deref(),
            Some("207")
        );
        assert_eq!(
            answered_by(&forged, AnsweredByHeader::PAssertedIdentity, false),
            None
        );
    }

    #[test]
    fn tel_uris_second_values_and_junk() {
        let tel = ok_with(&[("P-Asserted-Identity", "<tel:+493012345201;cpc=ordinary>")]);
        assert_eq!(
            answered_by(&tel, AnsweredByHeader::Auto, true).as_deref(),
            Some("+493012345201")
        );
        // An unusable first value does not hide a usable second one.
        let two = ok_with(&[(
            "P-Asserted-Identity",
            "<sip:20%0d%0a1@pbx>, <sip:201@pbx;user=phone>",
        )]);
        assert_eq!(
            answered_by(&two, AnsweredByHeader::Auto, true).as_deref(),
            Some("201")
        );
        let long = format!("<sip:{}@pbx>", "9".repeat(MAX_LEN + 1));
        let junk = ok_with(&[
            ("P-Asserted-Identity", long.as_str()),
            ("Contact", "<sip:10.0.0.2:5060>"),
        ]);
        assert_eq!(answered_by(&junk, AnsweredByHeader::Auto, true), None);
    }
}
