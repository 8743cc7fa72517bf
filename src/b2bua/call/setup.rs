//! Setting a call up: the caller's INVITE (the leg learnt from it, the
//! parties, the policy's plan, the INVITE built for the callee), the callee's
//! responses up to the answer, the announcement played before the callee is
//! offered the call, and the start of the recording at the answer.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{info, warn};

use super::leg::{retarget, set_body, strip_tag};
use super::{Call, State};
use crate::b2bua::headers::copy_end_to_end;
use crate::b2bua::plan::CallPlan;
use crate::b2bua::recording::{CallRecording, RecordingIntent};
use crate::b2bua::Direction;
use crate::media::{Session, Side};
use crate::recorder::metadata::PartyInfo;
use crate::sip::message::{tag_of, uri_of, uri_user, Message};
use crate::sip::transaction::ServerTxn;
use crate::sip::{new_branch, Flow};

impl Call {
    /// The caller's INVITE: 100 Trying, leg A learnt, the plan made, and the
    /// INVITE for the callee sent (or held back behind an announcement).
    pub(super) async fn on_initial_invite(&mut self, invite: Message, flow: Flow) {
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
            crate::b2bua::LiveCall {
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

    /// Learns the callee's dialog state from a response to our INVITE.
    pub(super) fn learn_callee_dialog(&mut self, msg: &Message) {
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

    pub(super) async fn on_initial_response(&mut self, ix: usize, msg: Message) {
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
                    crate::b2bua::answered::answered_by(
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

    /// Plays the plan's announcement to the caller as early media (183 with
    /// our own SDP answer) if there is one and the caller offers G.711; the
    /// callee's INVITE is restricted to the same codec and held back. Returns
    /// whether it started.
    pub(super) async fn start_announcement(&mut self, invite: &Message, out: &mut Message) -> bool {
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
    pub(super) async fn on_announcement_done(&mut self) {
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
    pub(super) async fn start_recording(&mut self) {
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
pub(super) fn display_name(value: &str) -> Option<String> {
    let lt = value.find('<')?;
    let name = value[..lt].trim().trim_matches('"').trim();
    (!name.is_empty()).then(|| name.to_string())
}
