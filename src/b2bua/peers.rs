//! Who may speak for a call: a new request (no dialog yet) must come from a
//! trusted peer; a request inside a dialog, a CANCEL or an ACK only from that
//! leg's own peer, so that a stranger who learnt the Call-ID and tags can
//! neither end, redirect nor cancel a recorded call. Refusals are counted.

use std::sync::atomic::Ordering;

use tracing::{debug, warn};

use super::reply::response_to;
use super::Core;
use crate::sip::message::Message;
use crate::sip::trust::is_leg_peer;
use crate::sip::Flow;

/// Whether `msg` from `src`, addressed to the leg whose peer is at `leg_flow`
/// with remote target `leg_target`, may act on the call.
pub fn may_act(core: &Core, msg: &Message, src: Flow, leg_flow: Flow, leg_target: &str) -> bool {
    let method = msg.method();
    // A CANCEL and an ACK for a failure carry no To tag, yet belong to the leg.
    if msg.to_tag().is_some() || method == "CANCEL" || method == "ACK" {
        is_leg_peer(src.addr.ip(), leg_flow.addr, leg_target)
    } else {
        core.cfg.trust.is_trusted(src.addr.ip())
    }
}

/// Refuses a request from a peer that may not send it: 403, or nothing for
/// an ACK (which gets no response) and with `--untrusted drop`.
pub async fn refuse(core: &Core, msg: &Message, src: Flow, in_call: bool) {
    core.stats
        .untrusted_requests
        .fetch_add(1, Ordering::Relaxed);
    let method = msg.method();
    if in_call {
        // Someone knows this call's identifiers: worth the operator's eye.
        warn!(peer = %src.addr, "{method} for a running call from a stranger refused");
    } else {
        debug!(peer = %src.addr, "{method} from an untrusted peer refused");
    }
    if method == "ACK" || !core.cfg.trust.answers(src.addr.ip()) {
        return;
    }
    let r = response_to(core, msg, 403, "Forbidden");
    if let Err(e) = core.transport.send(src, r.to_bytes()).await {
        debug!(peer = %src.addr, "cannot send 403: {e}");
    }
}
