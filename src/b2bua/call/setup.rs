//! Setting a call up: the caller's INVITE (the leg learnt from it, the
//! parties, the policy's plan, the INVITE built for the callee and its SDP
//! offer rewritten for the relay), the callee's responses up to the answer,
//! the announcement played before the callee is offered the call, and the
//! start of the recording at the answer.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::leg::set_body;
use super::offers::LaterOffer;
use super::phase::{AfterPrelude, Live, Phase, Prelude};
use super::{Call, Parties};
use crate::b2bua::plan::CallPlan;
use crate::b2bua::recording::{CallRecording, RecordingIntent};
use crate::media::Session;
use crate::recorder::metadata::PartyInfo;
use crate::sip::header_value::{uri_of, uri_user};
use crate::sip::message::Message;
use crate::sip::transaction::ServerTxn;
use crate::sip::Flow;
use crate::vocab::Direction;
use crate::vocab::Side;

impl Parties {
    /// Caller, callee and dialled number as the caller's INVITE names them.
    fn named_in(invite: &Message) -> Parties {
        let from = invite.header("From").unwrap_or_default();
        let to = invite.header("To").unwrap_or_default();
        let dialled = uri_user(invite.uri().unwrap_or_default())
            .or_else(|| uri_user(uri_of(to)))
            .unwrap_or_default()
            .to_string();
        Parties {
            caller: PartyInfo {
                name: display_name(from),
                number: uri_user(uri_of(from)).unwrap_or_default().to_string(),
                answered_by: None,
            },
            callee: PartyInfo {
                name: display_name(to),
                number: uri_user(uri_of(to)).unwrap_or(&dialled).to_string(),
                answered_by: None,
            },
            dialled,
        }
    }
}

impl Call {
    /// The caller's INVITE: 100 Trying, leg A learnt, the plan made, and the
    /// INVITE for the callee sent (or held back behind an announcement).
    pub(super) async fn on_initial_invite(&mut self, invite: Message, flow: Flow) {
        let id = self.id();
        self.initial = id;
        let mut txn = ServerTxn::new(id, Side::Caller, invite.clone(), flow);
        // 100 Trying at once, before any work (RFC 3261 §17.2.1).
        let trying = self.response_for(&txn, 100, "Trying");
        let bytes = txn.respond(&trying, Instant::now());
        self.servers.push(txn);
        self.send(flow, bytes).await;

        self.legs[0].learn_as_uas(&invite, flow);
        self.parties = Parties::named_in(&invite);
        let plan = self.plan_for(&invite, flow);
        let (plan, refusal) = self.vet_plan(plan, &invite).await;
        self.count(&plan);
        if plan.anchor {
            let session = self.new_session();
            if let Phase::Setup(s) = &mut self.phase {
                s.media = Some(session);
            }
        }
        self.plan = Some(plan);
        if let Some(r) = refusal {
            self.refuse(r, &invite).await;
            return;
        }

        let hop = self.core.next_hop(self.dir);
        let mut out = self.invite_for_callee(&invite, flow, hop);
        if invite.has_sdp() {
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
        if let Some(done) = self.start_announcement(&invite, &mut out).await {
            if let Phase::Setup(s) = &mut self.phase {
                s.prelude = Some(Prelude {
                    done,
                    then: AfterPrelude::Offer(out),
                });
            }
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

    /// What the policy decides for the caller's INVITE (record everything
    /// when no policy is configured).
    fn plan_for(&self, invite: &Message, flow: Flow) -> CallPlan {
        let Some(planner) = &self.core.planner else {
            return CallPlan {
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
            };
        };
        planner.plan(
            &self.legs[0].call_id,
            self.dir,
            uri_of(invite.header("From").unwrap_or_default()),
            invite.uri().unwrap_or_default(),
            // Only a caller whose identity we believe may hold or match an internal-call pair.
            self.origin(Side::Caller, flow).identity_trusted,
        )
    }

    /// Counts the new call and its decision, and lists it for the admin API.
    fn count(&self, plan: &CallPlan) {
        let stats = &self.core.stats;
        match plan.record {
            true => &stats.decisions_recorded,
            false => &stats.decisions_not_recorded,
        }
        .fetch_add(1, Ordering::Relaxed);
        match self.dir {
            Direction::Incoming => &stats.calls_incoming,
            Direction::Outgoing => &stats.calls_outgoing,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.core.live.lock().expect("live calls poisoned").insert(
            self.serial,
            crate::b2bua::LiveCall {
                caller_call_id: self.legs[0].call_id.clone(),
                callee_call_id: self.legs[1].call_id.clone(),
                direction: self.dir,
                caller: self.parties.caller.number.clone(),
                dialled: self.parties.dialled.clone(),
                recorded: plan.record,
                state: "ringing",
                started_ms: chrono::Utc::now().timestamp_millis(),
            },
        );
    }

    /// Media anchored at our relay for this call.
    pub(super) fn new_session(&self) -> Session {
        let mut s = Session::new(
            self.core.ports.clone(),
            self.core.cfg.media_ip,
            None,
            self.core.learning(),
        );
        s.set_srtp_policy(self.srtp_policy(&self.core.next_hop(self.dir)));
        s
    }

    /// A response from the callee to the INVITE relayed for the caller's.
    pub(super) async fn on_initial_response(&mut self, ix: usize, msg: Message) {
        let code = msg.code();
        if code == 100 {
            return;
        }
        if code < 300 {
            self.legs[1].learn_from_response(&msg);
        }
        let caller_done = self
            .server(self.initial)
            .map(|t| t.final_code.is_some())
            .unwrap_or(true);
        if code < 200 {
            match &mut self.phase {
                Phase::Setup(s) => s.callee_provisional = true,
                Phase::Ended(e) if e.cancel_owed => {
                    e.cancel_owed = false;
                    self.send_cancel(ix).await;
                    return;
                }
                Phase::Live(_) | Phase::Ended(_) => {}
            }
            if caller_done || self.phase.is_ended() {
                return;
            }
            self.relay_response(Side::Callee, ix, self.initial, msg)
                .await;
            return;
        }
        if code >= 300 {
            if !caller_done {
                self.relay_response(Side::Callee, ix, self.initial, msg)
                    .await;
            }
            self.finish_with(code, &format!("callee answered {code}"));
            return;
        }
        if caller_done || self.phase.is_ended() {
            // Answered after the caller gave up: ACK and hang up at once.
            self.ack_2xx(Side::Callee, self.clients[ix].cseq, None)
                .await;
            let bye = self.new_in_dialog_request(Side::Callee, "BYE");
            self.send_new_request(Side::Callee, bye, None).await;
            return;
        }
        self.on_answer(ix, msg).await;
    }

    /// The callee answered: the call goes live, its recording starts, and
    /// the answer goes on to the caller.
    async fn on_answer(&mut self, ix: usize, msg: Message) {
        let code = msg.code();
        // A late offer (the INVITE had none) is checked like an INVITE's.
        if !self.clients[ix].request.has_sdp()
            && msg.has_sdp()
            && self.vet_late_offer(&msg.body) == LaterOffer::Refuse
        {
            self.refuse_late_offer(ix).await;
            return;
        }
        let Phase::Setup(setup) = &mut self.phase else {
            return;
        };
        self.phase = Phase::Live(Live {
            media: setup.media.take(),
            code,
            acked: false,
            recording: None,
            early_answer: setup.early_answer.take(),
            notice: None,
        });
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
        self.parties.callee.answered_by = answered;
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
        if let Some(mut rec) = self.start_recording().await {
            rec.set_setup(setup);
            if let Phase::Live(l) = &mut self.phase {
                l.recording = Some(rec);
            }
        }
        self.relay_response(Side::Callee, ix, self.initial, msg)
            .await;
    }

    /// Plays the plan's announcement to the caller as early media (183 with
    /// our own SDP answer) if there is one and the caller offers G.711; the
    /// callee's INVITE is restricted to the same codec and held back. Returns
    /// what fires at its end, when it started.
    async fn start_announcement(
        &mut self,
        invite: &Message,
        out: &mut Message,
    ) -> Option<oneshot::Receiver<()>> {
        use crate::media::announce::choose_codec;
        use crate::media::sdp::{restrict_audio_formats, Sdp};
        let ann = self.plan.as_ref().and_then(|p| p.announcement.clone())?;
        let offer = match Sdp::parse(&invite.body) {
            Ok(o) if invite.has_sdp() => o,
            _ => {
                warn!("announcement skipped: the caller's INVITE has no SDP offer");
                return None;
            }
        };
        let Some((_, pt)) = choose_codec(&offer) else {
            warn!("announcement skipped: the caller offers neither PCMA nor PCMU");
            return None;
        };
        self.phase.media().and_then(|m| m.caller_port(0))?;
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

    /// The audio played to the caller has ended: the call goes on as
    /// decided when it started.
    pub(super) async fn on_playback_done(&mut self) {
        let then = match &mut self.phase {
            Phase::Setup(s) => s.prelude.take().map(|p| p.then),
            Phase::Live(l) => {
                if let Some((_, reason)) = l.notice.take() {
                    self.hang_up_caller(&reason).await;
                }
                return;
            }
            Phase::Ended(_) => None,
        };
        match then {
            Some(AfterPrelude::Offer(invite)) => self.offer_held(invite).await,
            Some(AfterPrelude::Refuse(r)) => self.refuse_now(r).await,
            None => {}
        }
    }

    /// The announcement has ended: now the call is offered to the callee.
    async fn offer_held(&mut self, out: Message) {
        info!(
            "announcement finished; offering call to {}",
            self.legs[1].flow.addr
        );
        self.send_new_request(Side::Callee, out, Some(self.initial))
            .await;
    }

    /// Starts the recording at the answer and forks the media into it.
    async fn start_recording(&mut self) -> Option<CallRecording> {
        let (Some(settings), Some(plan)) = (&self.core.recording, &self.plan) else {
            return None;
        };
        if !plan.record || self.phase.media().is_none() {
            return None;
        }
        let mut settings = settings.clone();
        settings.channels = plan.channels;
        let intent = RecordingIntent {
            caller_call_id: self.legs[0].call_id.clone(),
            callee_call_id: self.legs[1].call_id.clone(),
            caller: self.parties.caller.clone(),
            callee: self.parties.callee.clone(),
            dialled: self.parties.dialled.clone(),
            direction: self.dir,
            profile: plan.profile.clone(),
            rule: plan.rule.clone(),
            targets: plan.targets.clone(),
            announcement: plan
                .announcement
                .as_ref()
                .filter(|_| self.phase.early_answer().is_some())
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
                let media = self.phase.media_mut()?;
                let rec = rec.with_signal(self.failure_signal.clone());
                rec.watch_failures(&self.core, &self.legs[0].call_id);
                media.set_tap(Some(rec.tap()));
                rec.update_payload_maps(media);
                Some(rec)
            }
            Ok(Err(e)) => {
                self.recording_did_not_start(format!("cannot start recording: {e}"));
                None
            }
            Err(e) => {
                self.recording_did_not_start(format!(
                    "cannot start recording: the file task failed: {e}"
                ));
                None
            }
        }
    }
}

/// The display name of a From/To value, without quotes.
fn display_name(value: &str) -> Option<String> {
    let lt = value.find('<')?;
    let name = value[..lt].trim().trim_matches('"').trim();
    (!name.is_empty()).then(|| name.to_string())
}
