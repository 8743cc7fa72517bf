//! Which headers cross callrec from one leg to the other. Everything not in
//! `END_TO_END` is dropped: hop and dialog headers (Via, Route, Contact, tags …)
//! are rebuilt per leg, and unknown or private headers (X-…) never pass, so a
//! peer cannot smuggle instructions to the far side. The table is the policy
//! documented in the README's Security section.

use std::net::IpAddr;

use super::Direction;
use crate::sip::message::Message;
use crate::sip::trust::Trust;
use crate::vocab::Side;

/// Who may send a header that is passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Any peer that may talk to callrec: protocol negotiation and content.
    Always,
    /// Only a peer of the identity trust domain (`--identity-trusted`, by
    /// default the trunk and the PBX, RFC 3325): caller-ID and redirection.
    Identity,
    /// Only the PBX's leg: headers that make the far phone act (ring tone,
    /// auto-answer) are believed from our own PBX, never from the trunk side.
    Pbx,
}

/// The headers passed end to end, with who may send them and why.
pub const END_TO_END: &[(&str, Pass, &str)] = &[
    ("Accept", Pass::Always, "bodies the sender understands"),
    (
        "Accept-Encoding",
        Pass::Always,
        "bodies the sender understands",
    ),
    (
        "Accept-Language",
        Pass::Always,
        "bodies the sender understands",
    ),
    ("Allow", Pass::Always, "methods the sender supports"),
    (
        "Allow-Events",
        Pass::Always,
        "event packages (transfer NOTIFY)",
    ),
    ("Supported", Pass::Always, "extensions (100rel, timer)"),
    ("Require", Pass::Always, "extensions (100rel, timer)"),
    ("Unsupported", Pass::Always, "in 420 responses"),
    ("Session-Expires", Pass::Always, "session timer (RFC 4028)"),
    ("Min-SE", Pass::Always, "session timer (RFC 4028)"),
    (
        "RSeq",
        Pass::Always,
        "reliable provisional responses (RFC 3262)",
    ),
    ("Event", Pass::Always, "NOTIFY of a transfer"),
    ("Subscription-State", Pass::Always, "NOTIFY of a transfer"),
    ("Refer-To", Pass::Always, "call transfer (REFER)"),
    ("Referred-By", Pass::Always, "call transfer (REFER)"),
    (
        "Reason",
        Pass::Always,
        "why a call was cancelled or ended (Q.850 cause)",
    ),
    ("Retry-After", Pass::Always, "in 486/503 responses"),
    ("Warning", Pass::Always, "diagnostics in error responses"),
    ("Expires", Pass::Always, "how long an INVITE may ring"),
    ("Min-Expires", Pass::Always, "in 423 responses"),
    (
        "Content-Disposition",
        Pass::Always,
        "describes a relayed body",
    ),
    ("Content-Encoding", Pass::Always, "describes a relayed body"),
    ("Content-Language", Pass::Always, "describes a relayed body"),
    ("MIME-Version", Pass::Always, "describes a relayed body"),
    ("Recv-Info", Pass::Always, "INFO packages (RFC 6086)"),
    ("Info-Package", Pass::Always, "INFO packages (RFC 6086)"),
    (
        "Session-ID",
        Pass::Always,
        "end-to-end session identifier (RFC 7989)",
    ),
    (
        "WWW-Authenticate",
        Pass::Always,
        "digest authentication between PBX and trunk",
    ),
    (
        "Proxy-Authenticate",
        Pass::Always,
        "digest authentication between PBX and trunk",
    ),
    (
        "Authorization",
        Pass::Always,
        "digest authentication between PBX and trunk",
    ),
    (
        "Proxy-Authorization",
        Pass::Always,
        "digest authentication between PBX and trunk",
    ),
    (
        "Authentication-Info",
        Pass::Always,
        "digest authentication between PBX and trunk",
    ),
    (
        "P-Asserted-Identity",
        Pass::Identity,
        "the network-asserted caller (RFC 3325)",
    ),
    (
        "P-Preferred-Identity",
        Pass::Identity,
        "the identity the PBX asks the trunk to assert",
    ),
    (
        "Remote-Party-ID",
        Pass::Identity,
        "legacy form of P-Asserted-Identity",
    ),
    (
        "Privacy",
        Pass::Identity,
        "whether the asserted identity may be shown (RFC 3323)",
    ),
    (
        "Diversion",
        Pass::Identity,
        "who forwarded the call (RFC 5806)",
    ),
    (
        "History-Info",
        Pass::Identity,
        "who forwarded the call (RFC 7044)",
    ),
    (
        "Identity",
        Pass::Identity,
        "STIR/SHAKEN signature over the caller's number",
    ),
    (
        "P-Early-Media",
        Pass::Identity,
        "early-media authorisation (RFC 5009)",
    ),
    (
        "Alert-Info",
        Pass::Pbx,
        "ring tone or auto-answer (intercom) of the far phone",
    ),
    (
        "Call-Info",
        Pass::Pbx,
        "answer-after (auto-answer), caller picture",
    ),
];

/// Where a message being relayed comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// Its sender belongs to the identity trust domain.
    pub identity_trusted: bool,
    /// It arrived on the PBX's leg.
    pub pbx_leg: bool,
}

impl Origin {
    /// A message from `src` on the `side` leg of a call in direction `dir`.
    pub fn new(trust: &Trust, dir: Direction, side: Side, src: IpAddr) -> Origin {
        Origin {
            identity_trusted: trust.is_identity_trusted(src),
            // The PBX is the callee of incoming calls and the caller of outgoing ones.
            pbx_leg: (dir == Direction::Incoming) == (side == Side::Callee),
        }
    }
}

/// Whether `name` from `origin` crosses to the other leg.
pub fn passes(name: &str, origin: Origin) -> bool {
    END_TO_END
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        .is_some_and(|(_, pass, _)| match pass {
            Pass::Always => true,
            Pass::Identity => origin.identity_trusted,
            Pass::Pbx => origin.pbx_leg,
        })
}

/// Copies the headers of `from` that the policy passes for `origin` into `to`.
pub fn copy_end_to_end(from: &Message, to: &mut Message, origin: Origin) {
    for h in &from.headers {
        if passes(&h.name, origin) {
            to.headers.push(h.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRUNK: Origin = Origin {
        identity_trusted: true,
        pbx_leg: false,
    };
    const ALLOWED_ONLY: Origin = Origin {
        identity_trusted: false,
        pbx_leg: false,
    };
    const PBX: Origin = Origin {
        identity_trusted: true,
        pbx_leg: true,
    };

    #[test]
    fn hop_dialog_and_private_headers_never_pass() {
        for h in [
            "Via",
            "Route",
            "Record-Route",
            "Contact",
            "From",
            "To",
            "Call-ID",
            "CSeq",
            "Max-Forwards",
            "Content-Length",
            "Content-Type",
            "RAck",
            "Replaces",
            "Join",
            "Target-Dialog",
            "X-Auto-Answer",
            "User-Agent",
            "Server",
            "Priority",
        ] {
            assert!(!passes(h, PBX), "{h}");
        }
    }

    #[test]
    fn identity_needs_trust_and_auto_answer_needs_the_pbx() {
        assert!(passes("p-asserted-identity", TRUNK));
        assert!(!passes("P-Asserted-Identity", ALLOWED_ONLY));
        assert!(!passes("Privacy", ALLOWED_ONLY));
        assert!(!passes("Call-Info", TRUNK));
        assert!(!passes("Alert-Info", TRUNK));
        assert!(passes("Alert-Info", PBX));
        assert!(passes("Supported", ALLOWED_ONLY));
    }
}
