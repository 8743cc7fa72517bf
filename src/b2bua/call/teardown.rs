//! Ending a call: CANCEL, BYE, hang-ups of our own (shutdown, maximum
//! duration, missing ACK, RTP timeout), the transaction timers, and `finish`,
//! which releases the media, hands the recording over and counts the call.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{info, warn};

use super::phase::{Ended, Phase};
use super::Call;
use crate::b2bua::recording::CallFacts;
use crate::b2bua::CallSummary;
use crate::recorder::metadata::EndedBy;
use crate::sip::message::Message;
use crate::sip::transaction::TimerAction;
use crate::vocab::Side;

impl Call {
    pub(super) async fn on_cancel(&mut self, side: Side, cancel_id: u64, branch: &str) {
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
        if invite_id == self.initial {
            self.give_up(487, "cancelled by caller").await;
            return;
        }
        // Cancel what we sent on the other leg for this INVITE.
        if let Some(ix) = self
            .clients
            .iter()
            .position(|c| c.relays == Some(invite_id) && c.method == "INVITE")
        {
            self.send_cancel(ix).await;
        }
    }

    /// Ends a call before the answer, counted with `status`: the INVITE
    /// relayed to the callee is withdrawn, by a CANCEL now or, when the callee
    /// has sent no provisional response yet, once it does (RFC 3261 §9.1: no
    /// CANCEL before one).
    pub(super) async fn give_up(&mut self, status: u16, reason: &str) {
        let provisional = match &self.phase {
            Phase::Setup(s) => s.callee_provisional,
            Phase::Live(_) | Phase::Ended(_) => true,
        };
        let relayed = self
            .clients
            .iter()
            .position(|c| c.relays == Some(self.initial) && c.method == "INVITE");
        let mut cancel_owed = false;
        if let Some(ix) = relayed {
            if provisional {
                self.send_cancel(ix).await;
            } else {
                cancel_owed = true;
            }
        }
        self.finish_with(status, reason);
        if cancel_owed {
            self.phase = Phase::Ended(Ended { cancel_owed });
        }
    }

    pub(super) async fn send_cancel(&mut self, ix: usize) {
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

    pub(super) async fn on_bye(&mut self, side: Side, id: u64) {
        self.respond_id(id, 200, "OK").await;
        self.ended_by = match side {
            Side::Caller => EndedBy::Caller,
            Side::Callee => EndedBy::Callee,
        };
        if self.phase.is_setup() {
            // A BYE before the answer ends the attempt like a CANCEL would,
            // but the call's summary counts no final status for it.
            let reason = format!("BYE from {} before answer", side.name());
            if side == Side::Caller {
                self.respond_id(self.initial, 487, "Request Terminated")
                    .await;
                self.give_up(0, &reason).await;
            } else {
                self.finish(&reason);
            }
            return;
        }
        let other = side.other();
        let bye = self.new_in_dialog_request(other, "BYE");
        self.send_new_request(other, bye, None).await;
        info!("{} hung up", side.name());
        self.finish(&format!("{} hung up", side.name()));
    }

    /// Ends a confirmed call from our side (timeouts): BYE on both legs.
    pub(super) async fn hang_up_both(&mut self, reason: &str) {
        if self.phase.is_ended() {
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

    // ----- timers --------------------------------------------------------------

    pub(super) async fn on_timers(&mut self) {
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
                    self.finish_with(408, "callee did not answer");
                }
            }
        }
        if unacked_initial {
            self.hang_up_both("no ACK from caller").await;
        }
    }

    /// The proxy is stopping and the grace period is over: end the call now.
    pub(super) async fn shut_down(&mut self) {
        const REASON: &str = "proxy shutting down";
        match self.phase {
            Phase::Live(_) => self.hang_up_both(REASON).await,
            Phase::Setup(_) => {
                self.respond_id(self.initial, 503, "Service Unavailable")
                    .await;
                // Counted without a final status, as before the answer.
                self.give_up(0, REASON).await;
            }
            Phase::Ended(_) => {}
        }
    }

    /// `--max-call-duration` is over: the call ends whatever its state, so
    /// that no call (held, silent or never answered) keeps its ports for ever.
    pub(super) async fn on_max_duration(&mut self) {
        const REASON: &str = "max_duration";
        self.core
            .stats
            .calls_max_duration
            .fetch_add(1, Ordering::Relaxed);
        match self.phase {
            Phase::Live(_) => self.hang_up_both(REASON).await,
            Phase::Setup(_) => {
                self.respond_id(self.initial, 408, "Request Timeout").await;
                warn!("giving up: the call reached --max-call-duration before it was answered");
                self.give_up(408, REASON).await;
            }
            Phase::Ended(_) => {}
        }
    }

    pub(super) async fn check_media(&mut self) {
        if !self.phase.is_confirmed() {
            return;
        }
        let Some(m) = self.phase.media() else { return };
        if m.stream_count() == 0 || m.on_hold() {
            return;
        }
        if m.silent_for() > self.core.cfg.rtp_timeout {
            self.core.stats.rtp_timeouts.fetch_add(1, Ordering::Relaxed);
            self.hang_up_both("RTP timeout").await;
        }
    }

    /// Marks the dialog over with the status it has: the answer's once
    /// live, none (0) before. Idempotent.
    pub(super) fn finish(&mut self, reason: &str) {
        let status = match &self.phase {
            Phase::Live(l) => l.code,
            Phase::Setup(_) | Phase::Ended(_) => 0,
        };
        self.finish_with(status, reason);
    }

    /// Marks the dialog over, counted with `status`: media released,
    /// recording handed over, counters and summary updated. Idempotent.
    pub(super) fn finish_with(&mut self, status: u16, reason: &str) {
        let (media, recording, early_answer) =
            match std::mem::replace(&mut self.phase, Phase::Ended(Ended { cancel_owed: false })) {
                Phase::Setup(s) => (s.media, None, s.early_answer),
                Phase::Live(l) => (l.media, l.recording, l.early_answer),
                ended @ Phase::Ended(_) => {
                    self.phase = ended;
                    return;
                }
            };
        // The kernel's last counts and copies first (`--kernel-relay`).
        if let Some(m) = &media {
            m.finish_kernel_relay();
        }
        let foreign = [Side::Caller, Side::Callee]
            .map(|s| media.as_ref().map_or(0, |m| m.foreign_dropped(s)));
        let srtp_auth_failed =
            [Side::Caller, Side::Callee].map(|s| media.as_ref().map_or(0, |m| m.auth_failed(s)));
        let srtp_suites = media.as_ref().map(|m| m.suites()).unwrap_or_default();
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
        // The pair of an internal call is free again: a redial is a new call.
        if let Some(plan) = self.plan.as_mut() {
            plan.leg_claim = None;
        }
        if let (Some(rec), Some(settings)) = (recording, &self.core.recording) {
            let facts = CallFacts {
                caller_call_id: self.legs[0].call_id.clone(),
                callee_call_id: self.legs[1].call_id.clone(),
                caller: self.parties.caller.clone(),
                callee: self.parties.callee.clone(),
                dialled: self.parties.dialled.clone(),
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
                    .filter(|_| early_answer.is_some())
                    .map(|a| a.path().display().to_string()),
                channels: self.plan.as_ref().map(|p| p.channels).unwrap_or_default(),
                targets: self
                    .plan
                    .as_ref()
                    .map(|p| p.targets.clone())
                    .unwrap_or_default(),
                foreign_packets: foreign,
                srtp_auth_failed,
                srtp_suites,
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
            status,
            rtp_from_caller = a,
            rtp_from_callee = b,
            foreign_packets = foreign[0] + foreign[1],
            "call ended"
        );
        self.core.remember(CallSummary {
            caller_call_id: self.legs[0].call_id.clone(),
            callee_call_id: self.legs[1].call_id.clone(),
            direction: self.dir,
            status,
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
