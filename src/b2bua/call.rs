//! One call: a task that owns both legs (caller leg A, where we are the UAS,
//! and callee leg B, where we are the UAC), every transaction on them, and the
//! call's anchored media. Requests from one leg are re-created on the other
//! with that leg's own Call-ID, tags, CSeq, Via and Contact; responses travel
//! back the same way. SDP is rewritten so that media flows through our relay.

mod record_failure;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, info_span, warn, Instrument};

use super::headers::{copy_end_to_end, Origin};
use super::plan::CallPlan;
use super::recording::{CallFacts, CallRecording, RecordingIntent};
use super::router::RouterMsg;
use super::{CallSummary, Core, Direction};
use crate::media::{Session, Side};
use crate::recorder::metadata::{EndedBy, PartyInfo};
use crate::recorder::signal::FailureSignal;
use crate::sip::message::{tag_of, uri_hostport, uri_of, uri_user, Message, StartLine};
use crate::sip::transaction::{ClientTxn, ResponseVerdict, ServerTxn, TimerAction};
use crate::sip::{new_branch, random_token, Flow};

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

/// Methods whose requests and 2xx carry a Contact (target refresh or dialog creation).
fn needs_contact(method: &str) -> bool {
    matches!(
        method,
        "INVITE" | "UPDATE" | "SUBSCRIBE" | "NOTIFY" | "REFER"
    )
}

/// Dialog state of one leg.
#[derive(Debug)]
struct Leg {
    call_id: String,
    local_tag: String,
    /// Our From (as UAC) / To (as UAS) header value, with our tag.
    local: String,
    /// The peer's header value, with its tag once known.
    remote: String,
    /// Request-URI for requests we send on this leg.
    target: String,
    /// Route set, in the order the Route headers are written.
    route: Vec<String>,
    /// Where we send this leg's requests.
    flow: Flow,
    /// Last CSeq we used.
    cseq: u32,
    /// CSeq of the INVITE that created the dialog on this leg.
    invite_cseq: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// INVITE sent to the callee, nothing back yet.
    Calling,
    /// A provisional response came back.
    Early,
    /// 200 sent to the caller, no ACK yet.
    Answered,
    /// Dialog established on both legs.
    Confirmed,
    /// Over; absorbing retransmissions until every transaction ended.
    Finished,
}

/// An ACK we owe `to` once the other side's ACK brings the SDP answer (late offer).
#[derive(Debug)]
struct PendingAck {
    to: Side,
    cseq: u32,
}

/// A call between the caller (leg A) and the callee (leg B).
pub struct Call {
    core: Arc<Core>,
    serial: u64,
    dir: Direction,
    legs: [Leg; 2],
    state: State,
    servers: Vec<ServerTxn>,
    clients: Vec<ClientTxn>,
    next_id: u64,
    media: Option<Session>,
    /// Server transaction id of the caller's initial INVITE.
    initial: u64,
    caller_offered: bool,
    provisional_from_callee: bool,
    cancel_pending: bool,
    pending_ack: Option<PendingAck>,
    /// ACKs sent for 2xx, by (leg, CSeq), resent when the 2xx is retransmitted.
    acks: HashMap<(usize, u32), Message>,
    final_status: u16,
    end_reason: Option<String>,
    back: mpsc::UnboundedSender<RouterMsg>,
    recording: Option<CallRecording>,
    ended_by: EndedBy,
    /// What the policy decided for this call.
    plan: Option<CallPlan>,
    /// The announcement being played; fires when it has finished.
    announcing: Option<oneshot::Receiver<()>>,
    /// The INVITE for the callee, held back while the announcement plays.
    held_invite: Option<Message>,
    /// The SDP answer the caller got with the announcement (reused in the 200).
    announce_sdp: Option<Vec<u8>>,
    /// Caller and callee as the caller's INVITE named them, and the dialled number.
    parties: (PartyInfo, PartyInfo, String),
    /// When the call is hung up whatever its state (`--max-call-duration`).
    hang_up_at: Instant,
    /// What to do once the "cannot be recorded" notice has been played.
    after_notice: Option<record_failure::AfterNotice>,
    /// The recording's way to report a failure while the call runs, and where the call hears it.
    rec_failed: (
        FailureSignal,
        mpsc::UnboundedReceiver<crate::recorder::signal::RecordingFailed>,
    ),
}

impl Call {
    /// Sets up a call; `run` then processes the caller's INVITE.
    pub fn new(
        core: Arc<Core>,
        serial: u64,
        dir: Direction,
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
        Call {
            legs: [empty(caller_call_id, hop), empty(callee_call_id, hop)],
            core,
            serial,
            dir,
            state: State::Calling,
            servers: Vec::new(),
            clients: Vec::new(),
            next_id: 1,
            media: None,
            initial: 0,
            caller_offered: false,
            provisional_from_callee: false,
            cancel_pending: false,
            pending_ack: None,
            acks: HashMap::new(),
            final_status: 0,
            end_reason: None,
            back,
            recording: None,
            ended_by: EndedBy::Proxy,
            plan: None,
            announcing: None,
            held_invite: None,
            announce_sdp: None,
            parties: (PartyInfo::default(), PartyInfo::default(), String::new()),
            hang_up_at,
            after_notice: None,
            rec_failed: FailureSignal::channel(),
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
                if self.state == State::Finished
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
                    Some(f) = self.rec_failed.1.recv(), if self.state != State::Answered => {
                        self.on_recording_failed(f).await;
                    }
                    _ = media_check.tick() => self.check_media().await,
                    _ = tokio::time::sleep_until(self.hang_up_at.into()), if self.state != State::Finished => {
                        self.on_max_duration().await;
                    }
                    Ok(()) = hang_up.changed() => {
                        if *hang_up.borrow() {
                            self.shut_down().await;
                        }
                    }
                    _ = async { self.announcing.as_mut().expect("guarded").await }, if self.announcing.is_some() => {
                        self.announcing = None;
                        self.on_announcement_done().await;
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

    /// Where a message from `src` on the `side` leg stands in the header policy.
    fn origin(&self, side: Side, src: Flow) -> Origin {
        Origin::new(&self.core.cfg.trust, self.dir, side, src.addr.ip())
    }

    fn side_of(&self, msg: &Message) -> Side {
        if msg.call_id() == Some(self.legs[0].call_id.as_str()) {
            Side::Caller
        } else {
            Side::Callee
        }
    }

    // ----- the initial INVITE ------------------------------------------------

    async fn on_initial_invite(&mut self, invite: Message, flow: Flow) {
        let id = self.id();
        self.initial = id;
        let now = Instant::now();
        let mut txn = ServerTxn::new(id, Side::Caller, invite.clone(), flow);
        // 100 Trying at once, before any work (RFC 3261 §17.2.1).
        let trying = self.response_for(&txn, 100, "Trying");
        let bytes = txn.respond(&trying, now);
        self.servers.push(txn);
        self.send(flow, bytes).await;

        // Leg A: we are the UAS.
        let a = &mut self.legs[0];
        a.flow = flow;
        a.remote = invite.header("From").unwrap_or_default().to_string();
        a.local = format!(
            "{};tag={}",
            invite.header("To").unwrap_or_default(),
            a.local_tag
        );
        a.target = invite
            .header("Contact")
            .map(|c| uri_of(c).to_string())
            .unwrap_or_else(|| uri_of(a.remote.as_str()).to_string());
        a.route = invite
            .header_all("Record-Route")
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (cseq, _) = invite.cseq().unwrap_or((1, "INVITE".into()));
        a.invite_cseq = cseq;

        let from = invite.header("From").unwrap_or_default();
        let to = invite.header("To").unwrap_or_default();
        let dialled = uri_user(invite.uri().unwrap_or_default())
            .or_else(|| uri_user(uri_of(to)))
            .unwrap_or_default()
            .to_string();
        self.parties = (
            PartyInfo {
                name: display_name(from),
                number: uri_user(uri_of(from)).unwrap_or_default().to_string(),
                answered_by: None,
            },
            PartyInfo {
                name: display_name(to),
                number: uri_user(uri_of(to)).unwrap_or(&dialled).to_string(),
                answered_by: None,
            },
            dialled,
        );

        let plan = match &self.core.planner {
            Some(p) => p.plan(
                &self.legs[0].call_id,
                self.dir,
                uri_of(from),
                invite.uri().unwrap_or_default(),
                // Only a caller whose identity we believe may hold or match an internal-call pair.
                self.core.cfg.trust.is_identity_trusted(flow.addr.ip()),
            ),
            None => CallPlan {
                record: self.core.recording.is_some(),
                anchor: true,
                announcement: None,
                channels: self
                    .core
                    .recording
                    .as_ref()
                    .map(|r| r.channels)
                    .unwrap_or_default(),
                profile: "default".into(),
                rule: "RecordAll".into(),
                reason: "no policy configured".into(),
                targets: Vec::new(),
                leg_claim: None,
                on_failure: Default::default(),
            },
        };
        let (plan, refusal) = self.vet_plan(plan, &invite).await;
        let counter = match (plan.record, self.dir) {
            (true, _) => &self.core.stats.decisions_recorded,
            (false, _) => &self.core.stats.decisions_not_recorded,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match self.dir {
            Direction::Incoming => &self.core.stats.calls_incoming,
            Direction::Outgoing => &self.core.stats.calls_outgoing,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.core.live.lock().expect("live calls poisoned").insert(
            self.serial,
            super::LiveCall {
                caller_call_id: self.legs[0].call_id.clone(),
                callee_call_id: self.legs[1].call_id.clone(),
                direction: self.dir,
                caller: self.parties.0.number.clone(),
                dialled: self.parties.2.clone(),
                recorded: plan.record,
                state: "ringing",
                started_ms: chrono::Utc::now().timestamp_millis(),
            },
        );
        if plan.anchor {
            self.media = Some(Session::new(
                self.core.ports.clone(),
                self.core.cfg.media_ip,
                None,
                self.core.learning(),
            ));
        }
        self.plan = Some(plan);
        if let Some(r) = refusal {
            self.refuse(r, &invite).await;
            return;
        }

        // Leg B: we are the UAC.
        let hop = self.core.next_hop(self.dir);
        let ruri = retarget(invite.uri().unwrap_or_default(), hop.addr);
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
        copy_end_to_end(&invite, &mut out, self.origin(Side::Caller, flow));
        if invite.has_sdp() {
            self.caller_offered = true;
            match self.rewrite_sdp(Side::Caller, &invite.body) {
                Ok(body) => set_body(&mut out, &invite, body),
                Err((code, why)) => {
                    warn!("rejecting call: {why}");
                    self.respond_id(id, code, &why).await;
                    self.finish(&format!("rejected: {why}"));
                    return;
                }
            }
        }
        if self.start_announcement(&invite, &mut out).await {
            self.held_invite = Some(out);
            return;
        }
        info!(
            direction = ?self.dir,
            from = %uri_of(invite.header("From").unwrap_or_default()),
            to = %invite.uri().unwrap_or_default(),
            callee_call_id = %self.legs[1].call_id,
            "offering call to {}", hop.addr
        );
        self.send_new_request(Side::Callee, out, Some(id)).await;
    }

    /// Rewrites an SDP body that `from` sent, for the other side.
    fn rewrite_sdp(&mut self, from: Side, body: &[u8]) -> Result<Vec<u8>, (u16, String)> {
        crate::media::sdp::check_stream_count(body, self.core.cfg.limits.max_media_streams)
            .map_err(|e| (488, format!("Not Acceptable Here ({e})")))?;
        // A recorded call offers the other side only codecs callrec can record.
        let body = &record_failure::recordable_only(self.plan.as_ref(), body)[..];
        let out = match self.media.as_mut() {
            Some(m) => m.on_sdp(from, body).map_err(|e| match e {
                crate::media::MediaError::Sdp(e) => (488, format!("Not Acceptable Here ({e})")),
                crate::media::MediaError::Ports(e) => (503, format!("Service Unavailable ({e})")),
            }),
            None => Ok(body.to_vec()),
        };
        if let (Some(r), Some(m)) = (&self.recording, &self.media) {
            r.update_payload_maps(m);
        }
        out
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
        if self.state == State::Finished {
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

    /// True while an INVITE or UPDATE we relayed waits for its final response.
    fn offer_in_progress(&self) -> bool {
        self.clients.iter().any(|c| {
            (c.method == "INVITE" || c.method == "UPDATE")
                && c.final_code.is_none()
                && c.relays != Some(self.initial)
                && c.relays.is_some()
        }) || self.pending_ack.is_some()
    }

    /// Re-creates a request from `side` on the other leg.
    async fn relay_request(&mut self, side: Side, server_id: u64) {
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

    /// A request on leg `to` inside its dialog, with a fresh CSeq.
    fn new_in_dialog_request(&mut self, to: Side, method: &str) -> Message {
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

    async fn send_new_request(&mut self, to: Side, msg: Message, relays: Option<u64>) {
        let flow = self.legs[to.index()].flow;
        let mut txn = ClientTxn::new(to, msg, flow, Instant::now());
        txn.relays = relays;
        let bytes = txn.bytes().to_vec();
        self.clients.push(txn);
        self.send(flow, bytes).await;
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

    /// Learns the callee's dialog state from a response to our INVITE.
    fn learn_callee_dialog(&mut self, msg: &Message) {
        let b = &mut self.legs[1];
        if let Some(to) = msg.header("To") {
            if tag_of(to).is_some() {
                b.remote = to.to_string();
            }
        }
        if let Some(c) = msg.header("Contact") {
            b.target = uri_of(c).to_string();
        }
        let rr: Vec<String> = msg
            .header_all("Record-Route")
            .iter()
            .rev()
            .map(|s| s.to_string())
            .collect();
        if !rr.is_empty() {
            b.route = rr;
        }
    }

    async fn on_initial_response(&mut self, ix: usize, msg: Message) {
        let code = msg.code();
        if code == 100 {
            return;
        }
        if code < 300 {
            self.learn_callee_dialog(&msg);
        }
        let caller_done = self
            .server(self.initial)
            .map(|t| t.final_code.is_some())
            .unwrap_or(true);
        if code < 200 {
            self.provisional_from_callee = true;
            if self.cancel_pending {
                self.cancel_pending = false;
                self.send_cancel(ix).await;
                return;
            }
            if caller_done || self.state == State::Finished {
                return;
            }
            self.state = State::Early;
            self.relay_response(Side::Callee, ix, self.initial, msg)
                .await;
            return;
        }
        if code < 300 {
            if caller_done || self.state == State::Finished {
                // Answered after the caller gave up: ACK and hang up at once.
                self.ack_2xx(Side::Callee, self.clients[ix].cseq, None)
                    .await;
                let bye = self.new_in_dialog_request(Side::Callee, "BYE");
                self.send_new_request(Side::Callee, bye, None).await;
                return;
            }
            self.state = State::Answered;
            self.final_status = code;
            self.core
                .stats
                .calls_answered
                .fetch_add(1, Ordering::Relaxed);
            // Read from the 200 as received: the header policy may strip
            // identity headers before the 200 goes on to the caller. Only the
            // PBX answers for an agent; on an outgoing call the trunk answers.
            let answered = (self.dir == Direction::Incoming)
                .then(|| {
                    super::answered::answered_by(
                        &msg,
                        self.core.cfg.policy.answered_by_header,
                        self.core
                            .cfg
                            .trust
                            .is_identity_trusted(self.legs[1].flow.addr.ip()),
                    )
                })
                .flatten();
            info!(answered_by = ?answered, "answered by callee ({code})");
            self.parties.1.answered_by = answered;
            let mut setup = None;
            if let Some(l) = self
                .core
                .live
                .lock()
                .expect("live calls poisoned")
                .get_mut(&self.serial)
            {
                l.state = "answered";
                // The call's start as the admin API shows it: when its INVITE was taken.
                setup = chrono::DateTime::from_timestamp_millis(l.started_ms);
            }
            // Fork the media before the 200 goes on: a callee that sends RTP
            // together with its 200 must not lose its first packets.
            self.start_recording().await;
            if let Some(rec) = self.recording.as_mut() {
                rec.set_setup(setup);
            }
            self.relay_response(Side::Callee, ix, self.initial, msg)
                .await;
            return;
        }
        self.final_status = code;
        if !caller_done {
            self.relay_response(Side::Callee, ix, self.initial, msg)
                .await;
        }
        let reason = format!("callee answered {code}");
        self.finish(&reason);
    }

    /// Relays a response from `side` (client txn `ix`) to server txn `server_id`.
    async fn relay_response(&mut self, side: Side, ix: usize, server_id: u64, msg: Message) {
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
                    let body = match (&self.announce_sdp, server_id == self.initial) {
                        (Some(a), true) => a.clone(),
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

    /// Sends (and remembers) the ACK for a 2xx to the INVITE with `cseq` on leg `to`.
    async fn ack_2xx(&mut self, to: Side, cseq: u32, body: Option<(Vec<u8>, String)>) {
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

    // ----- ACK, CANCEL, BYE --------------------------------------------------------

    async fn on_ack(&mut self, side: Side, msg: Message) {
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
        if initial_acked && self.state == State::Answered {
            self.state = State::Confirmed;
            info!("call confirmed");
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

    async fn on_cancel(&mut self, side: Side, cancel_id: u64, branch: &str) {
        let invite = self
            .servers
            .iter()
            .find(|t| t.side == side && t.method == "INVITE" && t.branch == branch)
            .map(|t| (t.id, t.final_code));
        let Some((invite_id, final_code)) = invite else {
            self.respond_id(cancel_id, 481, "Call/Transaction Does Not Exist")
                .await;
            return;
        };
        self.respond_id(cancel_id, 200, "OK").await;
        if final_code.is_some() {
            return;
        }
        self.respond_id(invite_id, 487, "Request Terminated").await;
        // Cancel what we sent on the other leg for this INVITE.
        if let Some(ix) = self
            .clients
            .iter()
            .position(|c| c.relays == Some(invite_id) && c.method == "INVITE")
        {
            if invite_id == self.initial && !self.provisional_from_callee {
                // RFC 3261 §9.1: no CANCEL before a provisional response.
                self.cancel_pending = true;
            } else {
                self.send_cancel(ix).await;
            }
        }
        if invite_id == self.initial {
            self.final_status = 487;
            self.finish("cancelled by caller");
        }
    }

    /// Withdraws the INVITE relayed to the callee for the caller's initial
    /// INVITE: CANCEL now, or once a provisional response arrives (RFC 3261 §9.1:
    /// no CANCEL before one).
    async fn cancel_callee_invite(&mut self) {
        let Some(ix) = self
            .clients
            .iter()
            .position(|c| c.relays == Some(self.initial) && c.method == "INVITE")
        else {
            return;
        };
        if self.provisional_from_callee {
            self.send_cancel(ix).await;
        } else {
            self.cancel_pending = true;
        }
    }

    async fn send_cancel(&mut self, ix: usize) {
        let inv = &self.clients[ix].request;
        let mut c = Message::request("CANCEL", inv.uri().unwrap_or_default());
        if let Some(v) = inv.headers.iter().find(|h| h.name == "Via") {
            c.push("Via", v.value.clone());
        }
        for r in inv.header_all("Route") {
            c.push("Route", r.to_string());
        }
        c.push("Max-Forwards", "70");
        for name in ["From", "To", "Call-ID"] {
            c.push(name, inv.header(name).unwrap_or_default().to_string());
        }
        c.push("CSeq", format!("{} CANCEL", self.clients[ix].cseq));
        let side = self.clients[ix].side;
        self.send_new_request(side, c, None).await;
    }

    async fn on_bye(&mut self, side: Side, id: u64) {
        self.respond_id(id, 200, "OK").await;
        self.ended_by = match side {
            Side::Caller => EndedBy::Caller,
            Side::Callee => EndedBy::Callee,
        };
        if matches!(self.state, State::Calling | State::Early) {
            // A BYE before the answer ends the attempt like a CANCEL would.
            if side == Side::Caller {
                self.respond_id(self.initial, 487, "Request Terminated")
                    .await;
                self.cancel_callee_invite().await;
            }
            self.finish(&format!("BYE from {} before answer", side.name()));
            return;
        }
        let other = side.other();
        let bye = self.new_in_dialog_request(other, "BYE");
        self.send_new_request(other, bye, None).await;
        info!("{} hung up", side.name());
        self.finish(&format!("{} hung up", side.name()));
    }

    /// Ends a confirmed call from our side (timeouts): BYE on both legs.
    async fn hang_up_both(&mut self, reason: &str) {
        if self.state == State::Finished {
            return;
        }
        for side in [Side::Caller, Side::Callee] {
            let mut bye = self.new_in_dialog_request(side, "BYE");
            bye.push("Reason", format!("SIP;cause=408;text=\"{reason}\""));
            self.send_new_request(side, bye, None).await;
        }
        warn!("hanging up: {reason}");
        self.finish(reason);
    }

    // ----- timers ----------------------------------------------------------------

    async fn on_timers(&mut self) {
        let now = Instant::now();
        let mut sends = Vec::new();
        let mut unacked_initial = false;
        for t in self.servers.iter_mut() {
            match t.poll(now) {
                Some(TimerAction::Retransmit(b, f)) => sends.push((f, b)),
                Some(TimerAction::TimedOut) => {
                    unacked_initial |= t.id == self.initial
                        && t.final_code.is_some_and(|c| (200..300).contains(&c));
                }
                None => {}
            }
        }
        let mut timed_out = Vec::new();
        for (ix, t) in self.clients.iter_mut().enumerate() {
            match t.poll(now) {
                Some(TimerAction::Retransmit(b, f)) => sends.push((f, b)),
                Some(TimerAction::TimedOut) => timed_out.push(ix),
                None => {}
            }
        }
        for (f, b) in sends {
            self.send(f, b).await;
        }
        for ix in timed_out {
            let (relays, method) = (self.clients[ix].relays, self.clients[ix].method.clone());
            warn!("{method} on {} leg timed out", self.clients[ix].side.name());
            if let Some(server_id) = relays {
                self.respond_id(server_id, 408, "Request Timeout").await;
                if server_id == self.initial {
                    self.final_status = 408;
                    self.finish("callee did not answer");
                }
            }
        }
        if unacked_initial {
            self.hang_up_both("no ACK from caller").await;
        }
    }

    /// The proxy is stopping and the grace period is over: end the call now.
    async fn shut_down(&mut self) {
        match self.state {
            State::Answered | State::Confirmed => self.hang_up_both("proxy shutting down").await,
            State::Calling | State::Early => {
                self.respond_id(self.initial, 503, "Service Unavailable")
                    .await;
                self.cancel_callee_invite().await;
                self.finish("proxy shutting down");
            }
            State::Finished => {}
        }
    }

    /// `--max-call-duration` is over: the call ends whatever its state, so
    /// that no call (held, silent or never answered) keeps its ports for ever.
    async fn on_max_duration(&mut self) {
        const REASON: &str = "max_duration";
        self.core
            .stats
            .calls_max_duration
            .fetch_add(1, Ordering::Relaxed);
        match self.state {
            State::Answered | State::Confirmed => self.hang_up_both(REASON).await,
            State::Calling | State::Early => {
                self.respond_id(self.initial, 408, "Request Timeout").await;
                self.final_status = 408;
                self.cancel_callee_invite().await;
                warn!("giving up: the call reached --max-call-duration before it was answered");
                self.finish(REASON);
            }
            State::Finished => {}
        }
    }

    async fn check_media(&mut self) {
        if self.state != State::Confirmed {
            return;
        }
        let Some(m) = &self.media else { return };
        if m.stream_count() == 0 || m.on_hold() {
            return;
        }
        let silent = crate::media::relay::now_ms().saturating_sub(m.last_rx_ms());
        if silent > self.core.cfg.rtp_timeout.as_millis() as u64 {
            self.core.stats.rtp_timeouts.fetch_add(1, Ordering::Relaxed);
            self.hang_up_both("RTP timeout").await;
        }
    }

    // ----- responses we send -------------------------------------------------------

    fn server(&self, id: u64) -> Option<&ServerTxn> {
        self.servers.iter().find(|t| t.id == id)
    }

    /// A response to a server transaction with the leg's dialog identifiers.
    fn response_for(&self, txn: &ServerTxn, code: u16, reason: &str) -> Message {
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

    async fn respond_id(&mut self, id: u64, code: u16, reason: &str) {
        let Some(txn) = self.server(id) else { return };
        let r = self.response_for(txn, code, reason);
        self.respond_msg(id, r).await;
    }

    async fn respond_msg(&mut self, id: u64, r: Message) {
        let now = Instant::now();
        let Some(txn) = self.servers.iter_mut().find(|t| t.id == id) else {
            return;
        };
        let flow = txn.flow;
        let bytes = txn.respond(&r, now);
        self.send(flow, bytes).await;
    }

    /// Marks the dialog over: media released, counters and summary updated. Idempotent.
    fn finish(&mut self, reason: &str) {
        if self.state == State::Finished {
            return;
        }
        self.state = State::Finished;
        self.end_reason = Some(reason.to_string());
        let media = self.media.take();
        let foreign = [Side::Caller, Side::Callee]
            .map(|s| media.as_ref().map_or(0, |m| m.foreign_dropped(s)));
        let (a, b, rtcp, anchored) = match &media {
            Some(m) => (
                m.rtp_packets(Side::Caller),
                m.rtp_packets(Side::Callee),
                m.rtcp_packets(Side::Caller) + m.rtcp_packets(Side::Callee),
                m.anchored(),
            ),
            None => (0, 0, 0, false),
        };
        drop(media);
        self.held_invite = None;
        self.announcing = None;
        // The pair of an internal call is free again: a redial is a new call.
        if let Some(plan) = self.plan.as_mut() {
            plan.leg_claim = None;
        }
        if let (Some(rec), Some(settings)) = (self.recording.take(), &self.core.recording) {
            let facts = CallFacts {
                caller_call_id: self.legs[0].call_id.clone(),
                callee_call_id: self.legs[1].call_id.clone(),
                caller: self.parties.0.clone(),
                callee: self.parties.1.clone(),
                dialled: self.parties.2.clone(),
                direction: self.dir,
                profile: self
                    .plan
                    .as_ref()
                    .map(|p| p.profile.clone())
                    .unwrap_or_default(),
                rule: self
                    .plan
                    .as_ref()
                    .map(|p| p.rule.clone())
                    .unwrap_or_default(),
                ended_by: self.ended_by,
                announcement: self
                    .plan
                    .as_ref()
                    .and_then(|p| p.announcement.as_ref())
                    .filter(|_| self.announce_sdp.is_some())
                    .map(|a| a.path().display().to_string()),
                channels: self.plan.as_ref().map(|p| p.channels).unwrap_or_default(),
                targets: self
                    .plan
                    .as_ref()
                    .map(|p| p.targets.clone())
                    .unwrap_or_default(),
                foreign_packets: foreign,
            };
            rec.finish(settings.clone(), facts, self.core.clone());
        }
        self.core
            .live
            .lock()
            .expect("live calls poisoned")
            .remove(&self.serial);
        self.core.stats.calls_active.fetch_sub(1, Ordering::Relaxed);
        info!(
            reason,
            status = self.final_status,
            rtp_from_caller = a,
            rtp_from_callee = b,
            foreign_packets = foreign[0] + foreign[1],
            "call ended"
        );
        self.core.remember(CallSummary {
            caller_call_id: self.legs[0].call_id.clone(),
            callee_call_id: self.legs[1].call_id.clone(),
            direction: self.dir,
            status: self.final_status,
            end_reason: reason.to_string(),
            anchored,
            rtp_from_caller: a,
            rtp_from_callee: b,
            rtcp_packets: rtcp,
            foreign_packets_caller_side: foreign[0],
            foreign_packets_callee_side: foreign[1],
        });
    }
}

impl Call {
    /// Plays the plan's announcement to the caller as early media (183 with
    /// our own SDP answer) if there is one and the caller offers G.711; the
    /// callee's INVITE is restricted to the same codec and held back. Returns
    /// whether it started.
    async fn start_announcement(&mut self, invite: &Message, out: &mut Message) -> bool {
        use crate::media::announce::choose_codec;
        use crate::media::sdp::{restrict_audio_formats, Sdp};
        let Some(ann) = self.plan.as_ref().and_then(|p| p.announcement.clone()) else {
            return false;
        };
        let offer = match Sdp::parse(&invite.body) {
            Ok(o) if invite.has_sdp() => o,
            _ => {
                warn!("announcement skipped: the caller's INVITE has no SDP offer");
                return false;
            }
        };
        let Some((_, pt)) = choose_codec(&offer) else {
            warn!("announcement skipped: the caller offers neither PCMA nor PCMU");
            return false;
        };
        if self.media.as_ref().and_then(|m| m.caller_port(0)).is_none() {
            return false;
        }
        let te: Vec<u8> = offer
            .media
            .iter()
            .find(|m| m.kind == "audio")
            .map(|m| {
                m.rtpmaps
                    .iter()
                    .filter(|(_, n)| n.to_ascii_lowercase().starts_with("telephone-event/8000"))
                    .map(|(p, _)| *p)
                    .collect()
            })
            .unwrap_or_default();
        let mut keep = vec![pt];
        keep.extend(te);
        out.body = restrict_audio_formats(&out.body, &keep);
        self.play_early(&ann, &offer).await
    }

    /// The announcement has ended: now the call is offered to the callee.
    async fn on_announcement_done(&mut self) {
        if self.on_notice_done().await {
            return;
        }
        let Some(out) = self.held_invite.take() else {
            return;
        };
        if self.state == State::Finished {
            return;
        }
        info!(
            "announcement finished; offering call to {}",
            self.legs[1].flow.addr
        );
        self.send_new_request(Side::Callee, out, Some(self.initial))
            .await;
    }

    /// Starts the recording at the answer and forks the media into it.
    async fn start_recording(&mut self) {
        let (Some(settings), Some(plan)) = (&self.core.recording, &self.plan) else {
            return;
        };
        if !plan.record || self.media.is_none() {
            return;
        }
        let mut settings = settings.clone();
        settings.channels = plan.channels;
        let intent = RecordingIntent {
            caller_call_id: self.legs[0].call_id.clone(),
            callee_call_id: self.legs[1].call_id.clone(),
            caller: self.parties.0.clone(),
            callee: self.parties.1.clone(),
            dialled: self.parties.2.clone(),
            direction: self.dir,
            profile: plan.profile.clone(),
            rule: plan.rule.clone(),
            targets: plan.targets.clone(),
            announcement: plan
                .announcement
                .as_ref()
                .filter(|_| self.announce_sdp.is_some())
                .map(|a| a.path().display().to_string()),
        };
        // Creating the files touches the disk: off the runtime's workers, so a
        // slow or hung data folder cannot stall other calls' signalling.
        let span = tracing::Span::current();
        let started = tokio::task::spawn_blocking(move || {
            let _g = span.enter();
            CallRecording::start(&settings, &intent)
        })
        .await;
        match started {
            Ok(Ok(rec)) => {
                let Some(media) = self.media.as_mut() else {
                    return;
                };
                let rec = rec.with_signal(self.rec_failed.0.clone());
                rec.watch_failures(&self.core, &self.legs[0].call_id);
                media.set_tap(Some(rec.tap()));
                rec.update_payload_maps(media);
                self.recording = Some(rec);
            }
            Ok(Err(e)) => self.recording_did_not_start(format!("cannot start recording: {e}")),
            Err(e) => self.recording_did_not_start(format!(
                "cannot start recording: the file task failed: {e}"
            )),
        }
    }
}

/// The display name of a From/To value, without quotes.
fn display_name(value: &str) -> Option<String> {
    let lt = value.find('<')?;
    let name = value[..lt].trim().trim_matches('"').trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// The ACK for a non-2xx final response (RFC 3261 §17.1.1.3).
fn ack_for_failure(invite: &Message, resp: &Message) -> Message {
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

fn set_body(out: &mut Message, original: &Message, body: Vec<u8>) {
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

/// The caller's Request-URI with its host replaced by the next hop.
fn retarget(uri: &str, hop: std::net::SocketAddr) -> String {
    let (scheme, rest) = uri.split_once(':').unwrap_or(("sip", uri));
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
    let hp = super::host_port(hop);
    match user {
        Some(u) => format!("{scheme}:{u}@{hp}{params}"),
        None => format!("{scheme}:{hp}{params}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retarget_keeps_user_and_params() {
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
    fn strip_tag_keeps_other_params() {
        assert_eq!(strip_tag("<sip:a@b>;tag=1;x=y"), "<sip:a@b>;x=y");
        assert_eq!(strip_tag("\"A\" <sip:a@b>;tag=1"), "\"A\" <sip:a@b>");
    }
}
