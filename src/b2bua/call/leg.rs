//! The dialog of each leg of a call and the SIP messages built from it:
//! in-dialog requests, ACKs, CANCELs and our responses, each with that leg's
//! Call-ID, tags, CSeq, Route set, Via and Contact.

use std::time::Instant;

use super::Call;
use crate::b2bua::headers::copy_end_to_end;
use crate::sip::header_value::{tag_of, uri_hostport, uri_of};
use crate::sip::message::Message;
use crate::sip::transaction::{ClientTxn, ServerTxn};
use crate::sip::{new_branch, Flow, Proto};
use crate::vocab::Side;

/// Methods whose requests and 2xx carry a Contact (target refresh or dialog creation).
pub(super) fn needs_contact(method: &str) -> bool {
    matches!(
        method,
        "INVITE" | "UPDATE" | "SUBSCRIBE" | "NOTIFY" | "REFER"
    )
}

/// Dialog state of one leg.
#[derive(Debug)]
pub(super) struct Leg {
    pub(super) call_id: String,
    pub(super) local_tag: String,
    /// Our From (as UAC) / To (as UAS) header value, with our tag.
    pub(super) local: String,
    /// The peer's header value, with its tag once known.
    pub(super) remote: String,
    /// Request-URI for requests we send on this leg.
    pub(super) target: String,
    /// Route set, in the order the Route headers are written.
    pub(super) route: Vec<String>,
    /// Where we send this leg's requests.
    pub(super) flow: Flow,
    /// Last CSeq we used.
    pub(super) cseq: u32,
    /// CSeq of the INVITE that created the dialog on this leg.
    pub(super) invite_cseq: u32,
}

impl Leg {
    /// Leg A, where we are the UAS: learnt from the caller's INVITE that
    /// came in over `flow`. Our tag goes into its To; the route set is its
    /// Record-Route in order.
    pub(super) fn learn_as_uas(&mut self, invite: &Message, flow: Flow) {
        self.flow = flow;
        self.remote = invite.header("From").unwrap_or_default().to_string();
        self.local = format!(
            "{};tag={}",
            invite.header("To").unwrap_or_default(),
            self.local_tag
        );
        self.target = invite
            .header("Contact")
            .map(|c| uri_of(c).to_string())
            .unwrap_or_else(|| uri_of(self.remote.as_str()).to_string());
        self.route = invite
            .header_all("Record-Route")
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (cseq, _) = invite.cseq().unwrap_or((1, "INVITE".into()));
        self.invite_cseq = cseq;
    }

    /// Leg B, where we are the UAC: learns the callee's tag, Contact and
    /// route set (its Record-Route reversed) from a response to our INVITE.
    pub(super) fn learn_from_response(&mut self, msg: &Message) {
        if let Some(to) = msg.header("To") {
            if tag_of(to).is_some() {
                self.remote = to.to_string();
            }
        }
        if let Some(c) = msg.header("Contact") {
            self.target = uri_of(c).to_string();
        }
        let rr: Vec<String> = msg
            .header_all("Record-Route")
            .iter()
            .rev()
            .map(|s| s.to_string())
            .collect();
        if !rr.is_empty() {
            self.route = rr;
        }
    }
}

impl Call {
    /// The INVITE for the callee, without a body: leg B set up towards
    /// `hop` (From as the caller's without its tag, with ours; To as the
    /// caller's), our Via and Contact, and the end-to-end headers of the
    /// caller's INVITE (from `flow`) as the header policy lets them through.
    pub(super) fn invite_for_callee(&mut self, invite: &Message, flow: Flow, hop: Flow) -> Message {
        let ruri = retarget(invite.uri().unwrap_or_default(), hop);
        let b = &mut self.legs[1];
        b.flow = hop;
        b.target = ruri.clone();
        b.local = format!(
            "{};tag={}",
            strip_tag(invite.header("From").unwrap_or_default()),
            b.local_tag
        );
        b.remote = invite.header("To").unwrap_or_default().to_string();
        b.cseq = 1;
        b.invite_cseq = 1;

        let mut out = Message::request("INVITE", &ruri);
        out.push("Via", self.core.via(hop.proto, &new_branch()));
        out.push(
            "Max-Forwards",
            invite.max_forwards().saturating_sub(1).to_string(),
        );
        out.push("From", self.legs[1].local.clone());
        out.push("To", self.legs[1].remote.clone());
        out.push("Call-ID", self.legs[1].call_id.clone());
        out.push("CSeq", "1 INVITE");
        out.push("Contact", self.core.contact(hop.proto));
        out.push("User-Agent", concat!("callrec/", env!("CARGO_PKG_VERSION")));
        copy_end_to_end(invite, &mut out, self.origin(Side::Caller, flow));
        out
    }

    /// A request on leg `to` inside its dialog, with a fresh CSeq.
    pub(super) fn new_in_dialog_request(&mut self, to: Side, method: &str) -> Message {
        let via = self
            .core
            .via(self.legs[to.index()].flow.proto, &new_branch());
        let contact = self.core.contact(self.legs[to.index()].flow.proto);
        let leg = &mut self.legs[to.index()];
        leg.cseq += 1;
        let mut m = Message::request(method, &leg.target);
        m.push("Via", via);
        for r in &leg.route {
            m.push("Route", r.clone());
        }
        m.push("Max-Forwards", "70");
        m.push("From", leg.local.clone());
        m.push("To", leg.remote.clone());
        m.push("Call-ID", leg.call_id.clone());
        m.push("CSeq", format!("{} {method}", leg.cseq));
        if method == "INVITE" {
            leg.invite_cseq = leg.cseq;
        }
        if needs_contact(method) {
            m.push("Contact", contact);
        }
        m.push("User-Agent", concat!("callrec/", env!("CARGO_PKG_VERSION")));
        m
    }

    pub(super) async fn send_new_request(&mut self, to: Side, msg: Message, relays: Option<u64>) {
        let flow = self.legs[to.index()].flow;
        let mut txn = ClientTxn::new(to, msg, flow, Instant::now());
        txn.relays = relays;
        let bytes = txn.bytes().to_vec();
        self.clients.push(txn);
        self.send(flow, bytes).await;
    }

    /// Sends (and remembers) the ACK for a 2xx to the INVITE with `cseq` on leg `to`.
    pub(super) async fn ack_2xx(&mut self, to: Side, cseq: u32, body: Option<(Vec<u8>, String)>) {
        let leg = &self.legs[to.index()];
        let mut ack = Message::request("ACK", &leg.target);
        ack.push("Via", self.core.via(leg.flow.proto, &new_branch()));
        for r in &leg.route {
            ack.push("Route", r.clone());
        }
        ack.push("Max-Forwards", "70");
        ack.push("From", leg.local.clone());
        ack.push("To", leg.remote.clone());
        ack.push("Call-ID", leg.call_id.clone());
        ack.push("CSeq", format!("{cseq} ACK"));
        if let Some((b, ct)) = body {
            ack.push("Content-Type", ct);
            ack.body = b;
        }
        let flow = leg.flow;
        let bytes = ack.to_bytes();
        self.acks.insert((to.index(), cseq), ack);
        self.send(flow, bytes).await;
    }

    pub(super) fn server(&self, id: u64) -> Option<&ServerTxn> {
        self.servers.iter().find(|t| t.id == id)
    }

    /// A response to a server transaction with the leg's dialog identifiers.
    pub(super) fn response_for(&self, txn: &ServerTxn, code: u16, reason: &str) -> Message {
        let req = &txn.request;
        let leg = &self.legs[txn.side.index()];
        let mut r = Message::response(code, reason);
        for h in req.headers.iter().filter(|h| h.name == "Via") {
            r.push("Via", h.value.clone());
        }
        r.push("From", req.header("From").unwrap_or_default().to_string());
        let to = req.header("To").unwrap_or_default();
        if tag_of(to).is_none() && code > 100 {
            r.push("To", format!("{to};tag={}", leg.local_tag));
        } else {
            r.push("To", to.to_string());
        }
        r.push("Call-ID", req.call_id().unwrap_or_default().to_string());
        r.push("CSeq", req.header("CSeq").unwrap_or_default().to_string());
        if code > 100 && code < 300 && txn.method == "INVITE" {
            // A UAS copies the Record-Route set into dialog-creating responses
            // (RFC 3261 §12.1.1), so proxies in front of us stay on the path.
            for rr in req.headers.iter().filter(|h| h.name == "Record-Route") {
                r.push("Record-Route", rr.value.clone());
            }
        }
        if code > 100 && code < 300 && needs_contact(&txn.method) {
            r.push("Contact", self.core.contact(txn.flow.proto));
        }
        r.push("Server", concat!("callrec/", env!("CARGO_PKG_VERSION")));
        r
    }

    pub(super) async fn respond_id(&mut self, id: u64, code: u16, reason: &str) {
        let Some(txn) = self.server(id) else { return };
        let r = self.response_for(txn, code, reason);
        self.respond_msg(id, r).await;
    }

    pub(super) async fn respond_msg(&mut self, id: u64, r: Message) {
        let now = Instant::now();
        let Some(txn) = self.servers.iter_mut().find(|t| t.id == id) else {
            return;
        };
        let flow = txn.flow;
        let bytes = txn.respond(&r, now);
        self.send(flow, bytes).await;
    }
}

/// The ACK for a non-2xx final response (RFC 3261 §17.1.1.3).
pub(super) fn ack_for_failure(invite: &Message, resp: &Message) -> Message {
    let mut ack = Message::request("ACK", invite.uri().unwrap_or_default());
    if let Some(v) = invite.headers.iter().find(|h| h.name == "Via") {
        ack.push("Via", v.value.clone());
    }
    for r in invite.header_all("Route") {
        ack.push("Route", r.to_string());
    }
    ack.push("Max-Forwards", "70");
    ack.push(
        "From",
        invite.header("From").unwrap_or_default().to_string(),
    );
    ack.push("To", resp.header("To").unwrap_or_default().to_string());
    ack.push("Call-ID", invite.call_id().unwrap_or_default().to_string());
    let n = invite.cseq().map(|c| c.0).unwrap_or(1);
    ack.push("CSeq", format!("{n} ACK"));
    ack
}

pub(super) fn set_body(out: &mut Message, original: &Message, body: Vec<u8>) {
    out.set(
        "Content-Type",
        original
            .header("Content-Type")
            .unwrap_or("application/sdp")
            .to_string(),
    );
    out.body = body;
}

/// Removes the tag parameter from a From/To value.
fn strip_tag(value: &str) -> String {
    let split_at = value.rfind('>').map(|i| i + 1).unwrap_or(0);
    let (addr, params) = value.split_at(split_at);
    let kept: Vec<&str> = params
        .split(';')
        .filter(|p| !p.trim().to_ascii_lowercase().starts_with("tag="))
        .collect();
    format!("{addr}{}", kept.join(";"))
}

/// The caller's Request-URI with its host replaced by the next hop and its
/// transport made the next hop's: the caller's `transport=` parameter
/// described the caller's leg, and `sips:` (TLS on every hop) stays only
/// when the next hop is TLS too.
fn retarget(uri: &str, hop: Flow) -> String {
    let (scheme, rest) = uri.split_once(':').unwrap_or(("sip", uri));
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "sips" if hop.proto == Proto::Tls => "sips",
        "sips" | "sip" => "sip",
        _ => scheme,
    };
    let user = rest.rsplit_once('@').map(|(u, _)| u);
    let params = match uri_hostport(uri) {
        Some(_) => {
            let after_host = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
            after_host
                .find([';', '?'])
                .map(|i| &after_host[i..])
                .unwrap_or("")
        }
        None => "",
    };
    let (params, headers) = params.split_at(params.find('?').unwrap_or(params.len()));
    let mut kept: String = params
        .split(';')
        .filter(|p| !p.is_empty() && !p.trim().to_ascii_lowercase().starts_with("transport="))
        .map(|p| format!(";{p}"))
        .collect();
    match hop.proto {
        Proto::Tcp => kept.insert_str(0, ";transport=tcp"),
        Proto::Tls if scheme == "sip" => kept.insert_str(0, ";transport=tls"),
        _ => {}
    }
    let hp = crate::b2bua::host_port(hop.addr);
    match user {
        Some(u) => format!("{scheme}:{u}@{hp}{kept}{headers}"),
        None => format!("{scheme}:{hp}{kept}{headers}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retarget_keeps_user_and_params() {
        let retarget = |u: &str, a| {
            retarget(
                u,
                Flow {
                    addr: a,
                    proto: Proto::Udp,
                },
            )
        };
        let hop = "127.0.0.2:5070".parse().unwrap();
        assert_eq!(
            retarget("sip:+4930123@callrec.example;user=phone", hop),
            "sip:+4930123@127.0.0.2:5070;user=phone"
        );
        assert_eq!(
            retarget("sip:100@1.2.3.4:5060", hop),
            "sip:100@127.0.0.2:5070"
        );
    }

    #[test]
    fn retarget_says_the_next_hop_s_transport() {
        let udp = Flow {
            addr: "127.0.0.2:5060".parse().unwrap(),
            proto: Proto::Udp,
        };
        let tls = Flow {
            addr: "127.0.0.3:5061".parse().unwrap(),
            proto: Proto::Tls,
        };
        // A sips: call from a TLS trunk goes on to a PBX on UDP as sip:.
        assert_eq!(
            retarget(
                "sips:0301234@callrec.example:5061;transport=tls;user=phone",
                udp
            ),
            "sip:0301234@127.0.0.2:5060;user=phone"
        );
        // A PBX on UDP calling a TLS trunk: the URI says TLS.
        assert_eq!(
            retarget("sip:049111@callrec.example;transport=udp", tls),
            "sip:049111@127.0.0.3:5061;transport=tls"
        );
        // sips: stays sips: towards a TLS hop, which it already implies.
        assert_eq!(
            retarget("sips:049111@callrec.example", tls),
            "sips:049111@127.0.0.3:5061"
        );
    }

    #[test]
    fn strip_tag_keeps_other_params() {
        assert_eq!(strip_tag("<sip:a@b>;tag=1;x=y"), "<sip:a@b>;x=y");
        assert_eq!(strip_tag("\"A\" <sip:a@b>;tag=1"), "\"A\" <sip:a@b>");
    }
}
