//! The router: the single owner of the Call-ID → call map. It parses what the
//! transport received, answers malformed requests with 400 and out-of-dialog
//! OPTIONS with 200, refuses new requests from untrusted peers, starts a `Call`
//! task for each new INVITE and hands every other message to the call that
//! owns its Call-ID. REGISTER traffic goes to the registration relay.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::admission::{self, Admission, Refusal};
use super::call::{Call, CallEvent, RouterMsg};
use super::register::Relay;
use super::reply::response_to;
use super::{Core, Direction};
use crate::sip::message::{Message, ParseError, StartLine};
use crate::sip::relayed::{source_of, Source, SOURCE_HEADER};
use crate::sip::transport::Inbound;
use crate::sip::{random_token, Flow};

/// SIP messages waiting for one call task. A call that falls this far behind
/// (or a peer flooding one dialog) loses messages like a full UDP socket
/// would; retransmissions recover them, and the router never waits.
const CALL_QUEUE: usize = 256;

struct Entry {
    serial: u64,
    tx: mpsc::Sender<CallEvent>,
}

/// Runs the router until the transport closes.
pub async fn run(core: Arc<Core>, mut inbound: mpsc::Receiver<Inbound>) {
    // Unbounded but small: a call sends one Gone in its life and at most one
    // Reroute per message the router gave it, and this loop drains these
    // (biased) before it reads more from the bounded inbound queue.
    let (back_tx, mut back_rx) = mpsc::unbounded_channel::<RouterMsg>();
    let mut admission = Admission::new(core.cfg.limits.clone());
    let mut calls: HashMap<String, Entry> = HashMap::new();
    let mut serial: u64 = 0;
    let relay = Relay::spawn(core.clone());
    loop {
        tokio::select! {
            biased;
            m = back_rx.recv() => match m {
                Some(RouterMsg::Gone { serial, call_ids }) => {
                    for id in call_ids {
                        if calls.get(&id).is_some_and(|e| e.serial == serial) {
                            calls.remove(&id);
                        }
                    }
                }
                Some(RouterMsg::Reroute { serial: s, msg, flow }) => {
                    // Judged like the first INVITE: by its sender, or the one a dispatcher names.
                    let origin = source_of(&core.cfg.trust, &msg, flow.addr).ip();
                    if let Some(origin) = origin.filter(|_| {
                        calls.get(msg.call_id().unwrap_or_default()).is_some_and(|e| e.serial == s)
                    }) {
                        if admit_new_invite(&core, &mut admission, &msg, flow, origin).await {
                            serial += 1;
                            start_call(&core, &mut calls, serial, msg, flow, origin, &back_tx);
                        }
                    }
                }
                None => return,
            },
            i = inbound.recv() => {
                let Some(i) = i else { return };
                core.stats.sip_received.fetch_add(1, Ordering::Relaxed);
                route(&core, &mut calls, &mut serial, i, &back_tx, &mut admission, &relay).await;
            }
        }
    }
}

async fn route(
    core: &Arc<Core>,
    calls: &mut HashMap<String, Entry>,
    serial: &mut u64,
    i: Inbound,
    back_tx: &mpsc::UnboundedSender<RouterMsg>,
    admission: &mut Admission,
    relay: &Relay,
) {
    if i.data.iter().all(|b| b.is_ascii_whitespace()) {
        return; // keep-alive
    }
    let parsed = Message::parse(&i.data).and_then(|m| {
        // RFC 3261 §18.3: on a stream a message without Content-Length cannot
        // be framed (the transport hands it over only to have it answered).
        if i.flow.proto.is_stream() && m.header("Content-Length").is_none() {
            return Err(ParseError::Missing("Content-Length"));
        }
        Ok(m)
    });
    let mut msg = match parsed {
        Ok(m) => m,
        Err(e) => {
            core.stats.sip_malformed.fetch_add(1, Ordering::Relaxed);
            warn!(peer = %i.flow.addr, "malformed SIP message: {e}");
            if core.cfg.trust.answers(i.flow.addr.ip()) {
                reject_malformed(core, &i, &e.to_string()).await;
            }
            return;
        }
    };
    if let Some(id) = msg.call_id() {
        if let Some(e) = calls.get(id) {
            match e.tx.try_send(CallEvent::Sip { msg, flow: i.flow }) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    core.stats
                        .sip_dropped_call_busy
                        .fetch_add(1, Ordering::Relaxed);
                    debug!(peer = %i.flow.addr, "call queue full: message dropped");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    calls.remove(msg_call_id(&i.data).as_str());
                }
            }
            return;
        }
    }
    if !msg.is_request() {
        if msg.cseq().is_some_and(|(_, m)| m == "REGISTER") {
            relay.offer(msg, i.flow);
            return;
        }
        debug!(peer = %i.flow.addr, "stray response {msg} dropped");
        return;
    }
    let method = msg.method();
    let has_tag = msg.to_tag().is_some();
    // What starts something is judged by its original sender, which a
    // dispatcher names; what belongs to a dialog or transaction, by the peer.
    let source = if has_tag || method == "ACK" || method == "CANCEL" {
        Source::Direct(i.flow.addr)
    } else {
        source_of(&core.cfg.trust, &msg, i.flow.addr)
    };
    // Only trusted peers may start anything; keep-alive OPTIONS are answered
    // to anyone unless untrusted peers are to learn nothing at all.
    let probe = method == "OPTIONS" && core.cfg.trust.answers(i.flow.addr.ip());
    let origin = source.ip().filter(|ip| core.cfg.trust.is_trusted(*ip));
    let Some(origin) = origin.or(probe.then(|| i.flow.addr.ip())) else {
        if source == Source::Unnamed {
            warn!(peer = %i.flow.addr, "{method} from a dispatcher without one readable {SOURCE_HEADER} header refused");
        } else if let Source::Relayed(from) = source {
            debug!(peer = %i.flow.addr, %from, "{method} relayed for an untrusted sender refused");
        }
        // A dispatcher always gets the 403: silence would make it take this
        // instance out of service.
        super::peers::refuse(core, &msg, i.flow, false).await;
        return;
    };
    match method.as_str() {
        "REGISTER" if origin == core.cfg.pbx.ip().to_canonical() => relay.offer(msg, i.flow),
        "INVITE" if !has_tag => {
            if !admit_new_invite(core, admission, &msg, i.flow, origin).await {
                return;
            }
            // The carrier calls the Contact the PBX registered through us.
            if let Some(target) = relay.target(msg.uri().unwrap_or_default()) {
                debug!(%target, "INVITE for a registered binding");
                if let StartLine::Request { uri, .. } = &mut msg.start {
                    *uri = target;
                }
            }
            *serial += 1;
            start_call(core, calls, *serial, msg, i.flow, origin, back_tx);
        }
        "ACK" => debug!(peer = %i.flow.addr, "ACK outside any call dropped"),
        "OPTIONS" if !has_tag => {
            // A load balancer's keepalive: while draining, tell it to send no new calls.
            if core.draining.load(Ordering::Relaxed) {
                respond_stateless(core, &msg, i.flow, 503, "Service Unavailable").await;
            } else {
                respond_stateless(core, &msg, i.flow, 200, "OK").await;
            }
        }
        "CANCEL" => {
            respond_stateless(core, &msg, i.flow, 481, "Call/Transaction Does Not Exist").await
        }
        _ if has_tag => {
            respond_stateless(core, &msg, i.flow, 481, "Call/Transaction Does Not Exist").await
        }
        _ => respond_stateless(core, &msg, i.flow, 405, "Method Not Allowed").await,
    }
}

/// The checks every INVITE that would start a call passes, whether it is new
/// or handed back by a finished call on the same Call-ID: refused (and
/// answered) when Max-Forwards is exhausted, while draining, or beyond the
/// call and rate limits (counted per original sender `origin`).
async fn admit_new_invite(
    core: &Arc<Core>,
    admission: &mut Admission,
    msg: &Message,
    flow: Flow,
    origin: IpAddr,
) -> bool {
    if msg.max_forwards() == 0 {
        respond_stateless(core, msg, flow, 483, "Too Many Hops").await;
        return false;
    }
    if let Err(r) = admission::admit(core, admission, origin) {
        refuse_new_call(core, msg, flow, r).await;
        return false;
    }
    true
}

fn msg_call_id(data: &[u8]) -> String {
    Message::parse_lenient(data)
        .ok()
        .and_then(|m| m.call_id().map(str::to_string))
        .unwrap_or_default()
}

fn start_call(
    core: &Arc<Core>,
    calls: &mut HashMap<String, Entry>,
    serial: u64,
    msg: Message,
    flow: Flow,
    origin: IpAddr,
    back_tx: &mpsc::UnboundedSender<RouterMsg>,
) {
    // The original sender decides the side: behind a dispatcher every call
    // arrives from the dispatcher's address.
    let dir = if origin == core.cfg.pbx.ip().to_canonical() {
        Direction::Outgoing
    } else {
        Direction::Incoming
    };
    let a_id = msg.call_id().unwrap_or_default().to_string();
    let b_id = format!("{}@callrec", random_token(24));
    let (tx, rx) = mpsc::channel(CALL_QUEUE);
    calls.insert(
        a_id.clone(),
        Entry {
            serial,
            tx: tx.clone(),
        },
    );
    calls.insert(b_id.clone(), Entry { serial, tx });
    info!(call = %a_id, direction = ?dir, from = %flow.addr, %origin, "new call");
    let call = Call::new(
        core.clone(),
        serial,
        dir,
        origin,
        a_id,
        b_id,
        back_tx.clone(),
    );
    tokio::spawn(call.run(msg, flow, rx));
}

/// Turns a new INVITE away with 503 and Retry-After.
async fn refuse_new_call(core: &Arc<Core>, req: &Message, flow: Flow, why: Refusal) {
    debug!(peer = %flow.addr, ?why, "new call refused");
    let mut r = response_to(core, req, 503, why.reason());
    r.push("Retry-After", why.retry_after().to_string());
    if let Err(e) = core.transport.send(flow, r.to_bytes()).await {
        debug!(peer = %flow.addr, "cannot send 503: {e}");
    }
}

async fn respond_stateless(core: &Arc<Core>, req: &Message, flow: Flow, code: u16, reason: &str) {
    let r = response_to(core, req, code, reason);
    if let Err(e) = core.transport.send(flow, r.to_bytes()).await {
        debug!(peer = %flow.addr, "cannot send {code}: {e}");
    }
}

/// Answers a request that failed to parse with 400 (505 for an unknown SIP
/// version) when enough of it can be read to address a response the sender
/// can match: a readable top Via and a CSeq (RFC 3261 §8.2.2, §17.1.3, §21.4.1;
/// RFC 4475 §3.1.2, §3.4.1). From, To and Call-ID are echoed when present.
/// Responses, ACKs and unreadable bytes get no answer.
async fn reject_malformed(core: &Arc<Core>, i: &Inbound, why: &str) {
    let Some(s) = Message::salvage_request(&i.data) else {
        return;
    };
    let m = &s.request;
    if m.method() == "ACK" || m.via(0).is_none() || m.header("CSeq").is_none() {
        return;
    }
    let r = match s.version.as_deref() {
        Some(v)
            if v.to_ascii_uppercase().starts_with("SIP/") && !v.eq_ignore_ascii_case("SIP/2.0") =>
        {
            response_to(core, m, 505, "Version Not Supported")
        }
        _ => {
            let reason = format!("Bad Request ({why})")
                .chars()
                .filter(|c| !c.is_control())
                .collect::<String>();
            response_to(core, m, 400, &reason)
        }
    };
    if let Err(e) = core.transport.send(i.flow, r.to_bytes()).await {
        debug!(peer = %i.flow.addr, "cannot send {}: {e}", r.code());
    }
}
