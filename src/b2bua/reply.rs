//! Responses the proxy answers itself, without a call (400, 403, 503, 200 to
//! OPTIONS): they copy what RFC 3261 says a response must echo from its
//! request, and add a To tag when the request had none.

use super::Core;
use crate::sip::message::Message;
use crate::sip::random_token;

/// Builds a response that copies the request's Via, From, To, Call-ID and CSeq.
pub fn response_to(core: &Core, req: &Message, code: u16, reason: &str) -> Message {
    let mut r = Message::response(code, reason);
    for h in req.headers.iter().filter(|h| h.name == "Via") {
        r.push("Via", h.value.clone());
    }
    for name in ["From", "To", "Call-ID", "CSeq"] {
        if let Some(v) = req.header(name) {
            r.push(name, v.to_string());
        }
    }
    if code > 100 && req.to_tag().is_none() {
        if let Some(to) = r.headers.iter_mut().find(|h| h.name == "To") {
            to.value = format!("{};tag={}", to.value, random_token(10));
        }
    }
    r.push("Server", concat!("callrec/", env!("CARGO_PKG_VERSION")));
    if code == 200 || code == 405 {
        r.push(
            "Allow",
            "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, PRACK, INFO, NOTIFY, REFER, MESSAGE",
        );
    }
    if code == 200 && req.method() == "OPTIONS" {
        r.push("Accept", "application/sdp");
        r.push("Supported", "100rel, timer");
        r.push("Contact", core.contact(crate::sip::Proto::Udp));
    }
    r
}
