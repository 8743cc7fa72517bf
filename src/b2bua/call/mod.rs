//! One call: a task that owns both legs (caller leg A, where we are the UAS,
//! and callee leg B, where we are the UAC), every transaction on them, and the
//! call's anchored media. Requests from one leg are re-created on the other
//! with that leg's own Call-ID, tags, CSeq, Via and Contact; responses travel
//! back the same way. SDP is rewritten so that media flows through our relay.
//!
//! This file holds the task itself: its state, the event loop and the
//! dispatch of SIP messages. The rest lives beside it: `phase` (where the
//! call stands: setup, live or ended, each with its own data), `leg` (each leg's
//! dialog and the messages built from it), `setup` (the caller's INVITE up to
//! the answer, the announcement, the start of the recording), `dialog`
//! (in-dialog requests and responses relayed between the legs, re-INVITEs and
//! ACKs included), `teardown` (CANCEL, BYE, timers and the end of the call)
//! and `record_failure` (what happens when the recording cannot be made).

mod dialog;
mod leg;
mod offers;
mod phase;
mod record_failure;
mod setup;
mod teardown;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, info_span, warn, Instrument};

use super::headers::Origin;
use super::plan::CallPlan;
use super::{Core, Direction};
use crate::recorder::metadata::{EndedBy, PartyInfo};
use crate::recorder::signal::{FailureSignal, RecordingFailed};
use crate::sip::header_value::{tag_of, uri_of};
use crate::sip::message::Message;
use crate::sip::transaction::{ClientTxn, ResponseVerdict, ServerTxn};
use crate::sip::{random_token, Flow};
use crate::vocab::Side;
use dialog::PendingAck;
use leg::{ack_for_failure, Leg};
use phase::Phase;

/// What a call tells the router (which owns the Call-ID map).
#[derive(Debug)]
pub enum RouterMsg {
    /// The call with this serial has ended; forget its Call-IDs.
    Gone {
        /// Serial of the call.
        serial: u64,
        /// Its Call-IDs.
        call_ids: Vec<String>,
    },
    /// A finished call received a new INVITE for its Call-ID (e.g. after a
    /// 401): start a fresh call for it.
    Reroute {
        /// Serial of the call that gives it back.
        serial: u64,
        /// The request.
        msg: Message,
        /// Where it came from.
        flow: Flow,
    },
}

/// Something that happened to the call.
#[derive(Debug)]
pub enum CallEvent {
    /// A SIP message for one of the call's Call-IDs.
    Sip {
        /// The message.
        msg: Message,
        /// Where it came from.
        flow: Flow,
    },
}

/// Caller and callee as the caller's INVITE named them, and the dialled number.
#[derive(Debug, Default)]
struct Parties {
    caller: PartyInfo,
    callee: PartyInfo,
    dialled: String,
}

/// A call between the caller (leg A) and the callee (leg B).
pub struct Call {
    core: Arc<Core>,
    serial: u64,
    dir: Direction,
    /// The caller's own address, also when a dispatcher relayed the INVITE.
    caller_origin: IpAddr,
    legs: [Leg; 2],
    /// Where the call stands, with the data only that phase has.
    phase: Phase,
    servers: Vec<ServerTxn>,
    clients: Vec<ClientTxn>,
    next_id: u64,
    /// Server transaction id of the caller's initial INVITE.
    initial: u64,
    /// A late offer's ACK, owed until the other side's ACK brings the answer.
    pending_ack: Option<PendingAck>,
    /// ACKs sent for 2xx, by (leg, CSeq), resent when the 2xx is retransmitted.
    acks: HashMap<(usize, u32), Message>,
    back: mpsc::UnboundedSender<RouterMsg>,
    ended_by: EndedBy,
    /// What the policy decided for this call; None only until the caller's INVITE is read.
    plan: Option<CallPlan>,
    parties: Parties,
    /// When the call is hung up whatever its state (`--max-call-duration`).
    hang_up_at: Instant,
    /// The recording's way to report a failure while the call runs.
    failure_signal: FailureSignal,
    /// Where the call hears those failures.
    failures: mpsc::UnboundedReceiver<RecordingFailed>,
}

impl Call {
    /// Sets up a call; `run` then processes the caller's INVITE.
    pub fn new(
        core: Arc<Core>,
        serial: u64,
        dir: Direction,
        caller_origin: IpAddr,
        caller_call_id: String,
        callee_call_id: String,
        back: mpsc::UnboundedSender<RouterMsg>,
    ) -> Call {
        let hop = core.next_hop(dir);
        // Counted here, while the router creates the call, so that its
        // admission check sees every call it has let in.
        core.stats.calls_active.fetch_add(1, Ordering::Relaxed);
        let hang_up_at = Instant::now() + core.cfg.limits.max_call_duration;
        let empty = |call_id: String, flow: Flow| Leg {
            call_id,
            local_tag: random_token(12),
            local: String::new(),
            remote: String::new(),
            target: String::new(),
            route: Vec::new(),
            flow,
            cseq: 0,
            invite_cseq: 0,
        };
        let (failure_signal, failures) = FailureSignal::channel();
        Call {
            legs: [empty(caller_call_id, hop), empty(callee_call_id, hop)],
            core,
            serial,
            dir,
            caller_origin: caller_origin.to_canonical(),
            phase: Phase::new(),
            servers: Vec::new(),
            clients: Vec::new(),
            next_id: 1,
            initial: 0,
            pending_ack: None,
            acks: HashMap::new(),
            back,
            ended_by: EndedBy::Proxy,
            plan: None,
            parties: Parties::default(),
            hang_up_at,
            failure_signal,
            failures,
        }
    }

    /// Runs the call until its dialog is over and every transaction has ended.
    pub async fn run(mut self, invite: Message, flow: Flow, mut rx: mpsc::Receiver<CallEvent>) {
        let span = info_span!("call", id = %self.legs[0].call_id);
        async move {
            let stats = &self.core.stats;
            stats.call_tasks.fetch_add(1, Ordering::Relaxed);
            stats.calls_total.fetch_add(1, Ordering::Relaxed);
            self.on_initial_invite(invite, flow).await;
            let mut media_check = tokio::time::interval(Duration::from_secs(1));
            let mut hang_up = self.core.hang_up_all.subscribe();
            loop {
                self.servers.retain(|t| !t.is_terminated());
                self.clients.retain(|t| !t.is_terminated());
                if self.phase.is_ended()
                    && self.servers.is_empty()
                    && self.clients.is_empty()
                {
                    break;
                }
                let deadline = self.next_deadline();
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(CallEvent::Sip { msg, flow }) => self.on_sip(msg, flow).await,
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline.into()) => self.on_timers().await,
                    // Held while the 200 awaits its ACK: a BYE must not overtake the ACK.
                    Some(f) = self.failures.recv(), if !self.phase.awaits_ack() => {
                        self.on_recording_failed(f).await;
                    }
                    _ = media_check.tick() => self.check_media().await,
                    _ = tokio::time::sleep_until(self.hang_up_at.into()), if !self.phase.is_ended() => {
                        self.on_max_duration().await;
                    }
                    Ok(()) = hang_up.changed() => {
                        if *hang_up.borrow() {
                            self.shut_down().await;
                        }
                    }
                    _ = async { self.phase.playing().expect("guarded").await }, if self.phase.is_playing() => {
                        self.on_playback_done().await;
                    }
                }
            }
            self.finish("task ended");
            self.core.stats.call_tasks.fetch_sub(1, Ordering::Relaxed);
            let _ = self.back.send(RouterMsg::Gone {
                serial: self.serial,
                call_ids: self.legs.iter().map(|l| l.call_id.clone()).collect(),
            });
            debug!("call task done");
        }
        .instrument(span)
        .await
    }

    fn next_deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let s = self.servers.iter().filter_map(|t| t.next_deadline());
        let c = self.clients.iter().map(|t| t.next_deadline());
        s.chain(c).min().unwrap_or(far)
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    async fn send(&self, flow: Flow, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        if let Err(e) = self.core.transport.send(flow, bytes).await {
            warn!(peer = %flow.addr, "cannot send SIP message: {e}; check that the peer is reachable");
        }
    }

    /// Where a message from `src` on the `side` leg stands in the header
    /// policy. On the caller's leg a dispatcher speaks for the caller whose
    /// address it named in the INVITE.
    fn origin(&self, side: Side, src: Flow) -> Origin {
        let ip = if side == Side::Caller && self.core.cfg.trust.is_dispatcher(src.addr.ip()) {
            self.caller_origin
        } else {
            src.addr.ip()
        };
        Origin::new(&self.core.cfg.trust, self.dir, side, ip)
    }

    fn side_of(&self, msg: &Message) -> Side {
        if msg.call_id() == Some(self.legs[0].call_id.as_str()) {
            Side::Caller
        } else {
            Side::Callee
        }
    }

    // ----- dispatch --------------------------------------------------------------

    async fn on_sip(&mut self, msg: Message, flow: Flow) {
        let side = self.side_of(&msg);
        if msg.is_request() {
            self.on_request(side, msg, flow).await;
        } else {
            self.on_response(side, msg).await;
        }
    }

    async fn on_request(&mut self, side: Side, msg: Message, flow: Flow) {
        let leg = &self.legs[side.index()];
        if !super::peers::may_act(&self.core, &msg, flow, leg.flow, &leg.target) {
            super::peers::refuse(&self.core, &msg, flow, true).await;
            return;
        }
        let method = msg.method();
        if method == "ACK" {
            self.on_ack(side, msg).await;
            return;
        }
        let branch = msg.branch().unwrap_or_default();
        if let Some(t) = self
            .servers
            .iter()
            .find(|t| t.side == side && t.branch == branch && t.method == method)
        {
            // A retransmission: repeat the last response, if any.
            if let Some(bytes) = t.last_response() {
                let (f, b) = (t.flow, bytes.to_vec());
                self.send(f, b).await;
            }
            return;
        }
        let id = self.id();
        self.servers
            .push(ServerTxn::new(id, side, msg.clone(), flow));
        if method == "INVITE" {
            // 100 Trying for every INVITE, at once.
            self.respond_id(id, 100, "Trying").await;
        }
        if method == "CANCEL" {
            self.on_cancel(side, id, &branch).await;
            return;
        }
        if self.phase.is_ended() {
            if method == "INVITE" && side == Side::Caller && msg.to_tag().is_none() {
                // A new attempt on the same Call-ID (e.g. with credentials after 401).
                self.servers.retain(|t| t.id != id);
                let _ = self.back.send(RouterMsg::Reroute {
                    serial: self.serial,
                    msg,
                    flow,
                });
                return;
            }
            self.respond_id(id, 481, "Call/Transaction Does Not Exist")
                .await;
            return;
        }
        if msg.to_tag().is_none() {
            // Same Call-ID, no tag, new branch: a second initial request (a fork or a loop).
            self.respond_id(id, 482, "Loop Detected").await;
            return;
        }
        if !self.tags_match(side, &msg) {
            // Same Call-ID but not this dialog: never let it touch the call.
            warn!(peer = %flow.addr, "{method} with foreign dialog tags refused");
            self.respond_id(id, 481, "Call/Transaction Does Not Exist")
                .await;
            return;
        }
        if msg.max_forwards() == 0 {
            self.respond_id(id, 483, "Too Many Hops").await;
            return;
        }
        if method == "BYE" {
            self.on_bye(side, id).await;
            return;
        }
        if (method == "INVITE" || method == "UPDATE") && msg.has_sdp() && self.offer_in_progress() {
            self.respond_id(id, 491, "Request Pending").await;
            return;
        }
        if method == "INVITE" || method == "UPDATE" {
            // Target refresh (RFC 3261 §12.2.2).
            if let Some(c) = msg.header("Contact") {
                self.legs[side.index()].target = uri_of(c).to_string();
            }
        }
        self.relay_request(side, id).await;
    }

    /// Whether an in-dialog request from `side` carries that leg's dialog tags:
    /// our tag in To, the peer's tag in From (RFC 3261 §12.2.2).
    fn tags_match(&self, side: Side, msg: &Message) -> bool {
        let leg = &self.legs[side.index()];
        let ours = msg.to_tag().is_some_and(|t| t == leg.local_tag);
        let theirs = match tag_of(&leg.remote) {
            Some(t) => msg.from_tag().is_some_and(|f| f == t),
            None => true,
        };
        ours && theirs
    }

    // ----- responses -------------------------------------------------------------

    async fn on_response(&mut self, side: Side, msg: Message) {
        let branch = msg.branch().unwrap_or_default();
        let method = msg.method();
        let code = msg.code();
        let now = Instant::now();
        let Some(ix) = self
            .clients
            .iter()
            .position(|t| t.side == side && t.branch == branch && t.method == method)
        else {
            debug!("stray response {msg} on {} leg", side.name());
            return;
        };
        let verdict = self.clients[ix].on_response(code, now);
        if method == "INVITE" && code >= 300 {
            // The transaction layer ACKs non-2xx finals, retransmissions included.
            let ack = ack_for_failure(&self.clients[ix].request, &msg);
            let flow = self.clients[ix].flow;
            self.send(flow, ack.to_bytes()).await;
        }
        if verdict == ResponseVerdict::Retransmission {
            return;
        }
        if method == "INVITE" && (200..300).contains(&code) {
            let cseq = self.clients[ix].cseq;
            if let Some(ack) = self.acks.get(&(side.index(), cseq)) {
                // Retransmitted 2xx: our ACK was lost.
                let bytes = ack.to_bytes();
                let flow = self.legs[side.index()].flow;
                self.send(flow, bytes).await;
                return;
            }
            if self
                .pending_ack
                .as_ref()
                .is_some_and(|p| p.to == side && p.cseq == cseq)
            {
                return;
            }
        }
        let relays = self.clients[ix].relays;
        if method == "INVITE" && relays == Some(self.initial) && side == Side::Callee {
            self.on_initial_response(ix, msg).await;
            return;
        }
        match relays {
            Some(server_id) => self.relay_response(side, ix, server_id, msg).await,
            None => debug!("{method} answered {code} on {} leg", side.name()),
        }
    }
}
