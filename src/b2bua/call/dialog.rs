//! What a call does inside its dialog once it is set up, and with offers made
//! at any time: requests relayed from one leg to the other (re-INVITE, UPDATE,
//! PRACK, INFO …), their responses relayed back, SDP rewritten for the relay,
//! and ACKs, including the late-offer ACK that carries the SDP answer.

use std::time::Instant;

use tracing::{debug, info, warn};

use super::leg::set_body;
use super::offers::LaterOffer;
use super::phase::{Live, Phase};
use super::{record_failure, Call};
use crate::b2bua::headers::copy_end_to_end;
use crate::sip::header_value::uri_of;
use crate::sip::message::{Message, StartLine};
use crate::vocab::Side;

/// An ACK we owe `to` once the other side's ACK brings the SDP answer (late offer).
#[derive(Debug)]
pub(super) struct PendingAck {
    pub(super) to: Side,
    pub(super) cseq: u32,
}

impl Call {
    /// Rewrites an SDP body that `from` sent, for the other side.
    pub(super) fn rewrite_sdp(
        &mut self,
        from: Side,
        body: &[u8],
    ) -> Result<Vec<u8>, (u16, String)> {
        crate::media::sdp::check_stream_count(body, self.core.cfg.limits.max_media_streams)
            .map_err(|e| (488, format!("Not Acceptable Here ({e})")))?;
        // A recorded call offers the other side only codecs callrec can record.
        let body =
            &record_failure::recordable_only(self.plan.as_ref(), body, self.sdes_allowed(from))[..];
        let out = match self.phase.media_mut() {
            Some(m) => m.on_sdp(from, body).map_err(|e| match e {
                crate::media::MediaError::Sdp(e) => (488, format!("Not Acceptable Here ({e})")),
                crate::media::MediaError::Ports(e) => (503, format!("Service Unavailable ({e})")),
            }),
            None => Ok(body.to_vec()),
        };
        if let Phase::Live(Live {
            recording: Some(r),
            media: Some(m),
            ..
        }) = &self.phase
        {
            r.update_payload_maps(m);
        }
        out
    }

    /// True while an INVITE or UPDATE we relayed waits for its final response.
    pub(super) fn offer_in_progress(&self) -> bool {
        self.clients.iter().any(|c| {
            (c.method == "INVITE" || c.method == "UPDATE")
                && c.final_code.is_none()
                && c.relays != Some(self.initial)
                && c.relays.is_some()
        }) || self.pending_ack.is_some()
    }

    /// Re-creates a request from `side` on the other leg.
    pub(super) async fn relay_request(&mut self, side: Side, server_id: u64) {
        let Some((req, src)) = self.server(server_id).map(|t| (t.request.clone(), t.flow)) else {
            return;
        };
        let method = req.method();
        let to = side.other();
        let mut out = self.new_in_dialog_request(to, &method);
        out.set(
            "Max-Forwards",
            (req.max_forwards().saturating_sub(1)).to_string(),
        );
        copy_end_to_end(&req, &mut out, self.origin(side, src));
        if method == "PRACK" {
            if let Some(rack) = req.header("RAck") {
                // RAck names the INVITE's CSeq, which differs per leg.
                let parts: Vec<&str> = rack.split_whitespace().collect();
                if parts.len() == 3 {
                    out.push(
                        "RAck",
                        format!(
                            "{} {} {}",
                            parts[0],
                            self.legs[to.index()].invite_cseq,
                            parts[2]
                        ),
                    );
                }
            }
        }
        if method == "INVITE" && !req.has_sdp() {
            // The offer will come in the 2xx, from the other side.
            if let Some(m) = self.phase.media_mut() {
                m.expect_offer();
            }
        }
        if req.has_sdp()
            && (method == "INVITE" || method == "UPDATE")
            && self.vet_reoffer(side, &req.body) == LaterOffer::Refuse
        {
            self.respond_id(
                server_id,
                488,
                "Not Acceptable Here (call cannot be recorded)",
            )
            .await;
            return;
        }
        if req.has_sdp() {
            match self.rewrite_sdp(side, &req.body) {
                Ok(body) => set_body(&mut out, &req, body),
                Err((code, why)) => {
                    self.respond_id(server_id, code, &why).await;
                    return;
                }
            }
        } else if !req.body.is_empty() {
            set_body(&mut out, &req, req.body.clone());
        }
        debug!("relaying {method} from {} to {}", side.name(), to.name());
        self.send_new_request(to, out, Some(server_id)).await;
    }

    /// Relays a response from `side` (client txn `ix`) to server txn `server_id`.
    pub(super) async fn relay_response(
        &mut self,
        side: Side,
        ix: usize,
        server_id: u64,
        msg: Message,
    ) {
        let code = msg.code();
        let reason = match &msg.start {
            StartLine::Response { reason, .. } => reason.clone(),
            StartLine::Request { .. } => String::new(),
        };
        let method = self.clients[ix].method.clone();
        let cseq = self.clients[ix].cseq;
        let request_had_sdp = self.clients[ix].request.has_sdp();
        let Some(txn) = self.server(server_id) else {
            return;
        };
        if txn.final_code.is_some() {
            if method == "INVITE" && (200..300).contains(&code) {
                self.ack_2xx(side, cseq, None).await;
            }
            return;
        }
        let mut out = self.response_for(txn, code, &reason);
        copy_end_to_end(
            &msg,
            &mut out,
            self.origin(side, self.legs[side.index()].flow),
        );
        if (300..400).contains(&code) {
            for c in msg.header_all("Contact") {
                out.push("Contact", c.to_string());
            }
        }
        if (method == "INVITE" || method == "UPDATE") && (200..300).contains(&code) {
            if let Some(c) = msg.header("Contact") {
                self.legs[side.index()].target = uri_of(c).to_string();
            }
        }
        if msg.has_sdp() {
            match self.rewrite_sdp(side, &msg.body) {
                Ok(body) => {
                    // After an announcement the caller keeps the answer it already has.
                    let body = match self.phase.early_answer() {
                        Some(a) if server_id == self.initial => a.clone(),
                        _ => body,
                    };
                    set_body(&mut out, &msg, body)
                }
                Err((_, why)) => {
                    warn!("cannot anchor media of {code} from {}: {why}", side.name());
                    set_body(&mut out, &msg, msg.body.clone());
                }
            }
        } else if !msg.body.is_empty() {
            set_body(&mut out, &msg, msg.body.clone());
        }
        if method == "INVITE" && (200..300).contains(&code) {
            if request_had_sdp || !msg.has_sdp() {
                self.ack_2xx(side, cseq, None).await;
            } else {
                // Late offer: the answer comes in the other side's ACK.
                self.pending_ack = Some(PendingAck { to: side, cseq });
            }
        }
        self.respond_msg(server_id, out).await;
    }

    pub(super) async fn on_ack(&mut self, side: Side, msg: Message) {
        let now = Instant::now();
        let branch = msg.branch().unwrap_or_default();
        let cseq = msg.cseq().map(|c| c.0).unwrap_or(0);
        // ACK for a non-2xx final: same branch as the INVITE.
        if let Some(t) = self
            .servers
            .iter_mut()
            .find(|t| t.side == side && t.method == "INVITE" && t.branch == branch)
        {
            if t.final_code.is_some_and(|c| c >= 300) {
                t.on_ack(now);
                return;
            }
        }
        // ACK for a 2xx: matched by CSeq within the dialog.
        let mut initial_acked = false;
        for t in self.servers.iter_mut().filter(|t| {
            t.side == side
                && t.method == "INVITE"
                && t.request.cseq().map(|c| c.0) == Some(cseq)
                && t.final_code.is_some_and(|c| (200..300).contains(&c))
        }) {
            if !t.acked {
                t.on_ack(now);
                initial_acked |= t.id == self.initial;
            }
        }
        if let Phase::Live(l) = &mut self.phase {
            if initial_acked && !l.acked {
                l.acked = true;
                info!("call confirmed");
            }
        }
        let other = side.other();
        if let Some(p) = self.pending_ack.take() {
            if p.to == other {
                let body = if msg.has_sdp() {
                    match self.rewrite_sdp(side, &msg.body) {
                        Ok(b) => Some((
                            b,
                            msg.header("Content-Type")
                                .unwrap_or("application/sdp")
                                .to_string(),
                        )),
                        Err((_, why)) => {
                            warn!("SDP answer in ACK rejected: {why}");
                            None
                        }
                    }
                } else {
                    None
                };
                self.ack_2xx(other, p.cseq, body).await;
            } else {
                self.pending_ack = Some(p);
            }
        }
    }
}
