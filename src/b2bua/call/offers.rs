//! Offers a call meets after its INVITE, and the SRTP policy of its media:
//! which leg gets plain RTP or SRTP and where SDES keys may travel, and the
//! record-failure checks for a late offer (INVITE without SDP, the offer in
//! the callee's 2xx) and for a re-INVITE or UPDATE that switches a recorded
//! call to media callrec cannot record (encryption it cannot terminate, no
//! recordable codec). Such an offer is handled like one in the INVITE: under
//! `continue` it is reported and the call goes on unrecorded; under `reject`
//! a late offer ends the call (488 to the caller, BYE to the callee) and a
//! re-offer is refused with 488 while the call goes on recorded as it was.

use std::sync::atomic::Ordering;

use tracing::warn;

use super::phase::Phase;
use super::Call;
use crate::media::recordable::{judge_terminating, Verdict};
use crate::media::sdes::SrtpPolicy;
use crate::recorder::failure::FailureReason;
use crate::sip::transport::Flow;
use crate::vocab::Direction;
use crate::vocab::Side;

/// What to do with an offer that came after the INVITE.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LaterOffer {
    /// Go on as usual.
    Proceed,
    /// Refuse it (488): the profile says reject.
    Refuse,
}

/// Whether SIP on `flow` is protected (TLS), so that SDES keys may be sent on it.
fn protected(flow: &Flow) -> bool {
    flow.proto.is_secure()
}

impl Call {
    /// The side whose leg is the PBX's.
    fn pbx_side(&self) -> Side {
        match self.dir {
            Direction::Incoming => Side::Callee,
            Direction::Outgoing => Side::Caller,
        }
    }

    /// Which leg gets SRTP and which may exchange SDES keys, from the flags
    /// and the transports of the two legs.
    pub(super) fn srtp_policy(&self, callee_flow: &Flow) -> SrtpPolicy {
        let cfg = &self.core.cfg.srtp;
        let pbx = self.pbx_side();
        let mut policy = SrtpPolicy::default();
        policy.media[pbx.index()] = cfg.pbx_media;
        policy.media[pbx.other().index()] = cfg.trunk_media;
        let flows = [&self.legs[0].flow, callee_flow];
        for side in [Side::Caller, Side::Callee] {
            policy.sdes_allowed[side.index()] =
                cfg.allow_sdes_over_udp || protected(flows[side.index()]);
        }
        policy
    }

    /// Whether SDES keys may be exchanged with `side`.
    pub(super) fn sdes_allowed(&self, side: Side) -> bool {
        self.core.cfg.srtp.allow_sdes_over_udp || protected(&self.legs[side.index()].flow)
    }

    /// Why `body`, an offer from `side`, cannot be recorded, if it cannot.
    fn unrecordable(&self, side: Side, body: &[u8]) -> Option<(FailureReason, String)> {
        match judge_terminating(body, self.sdes_allowed(side)) {
            Verdict::Recordable(_) => None,
            Verdict::Encrypted(why) => Some((
                FailureReason::EncryptedMedia,
                format!(
                    "the {}'s offer is encrypted ({why}) and callrec cannot terminate it",
                    side.name()
                ),
            )),
            Verdict::Undecodable(codecs) => Some((
                FailureReason::UndecodableCodec,
                format!(
                    "no codec the {}'s offer has can be recorded ({codecs})",
                    side.name()
                ),
            )),
        }
    }

    fn rejects(&self) -> bool {
        self.plan.as_ref().is_some_and(|p| p.on_failure.reject)
    }

    /// The callee's 2xx carries the offer (the INVITE had none). Under
    /// `continue` an unrecordable offer leaves the call connected but not
    /// recorded, its media passed untouched; under `reject` the caller must
    /// be refused (returns Refuse; the caller of this method ends the call).
    pub(super) fn vet_late_offer(&mut self, body: &[u8]) -> LaterOffer {
        if !self.plan.as_ref().is_some_and(|p| p.record) {
            return LaterOffer::Proceed;
        }
        let Some((reason, detail)) = self.unrecordable(Side::Callee, body) else {
            return LaterOffer::Proceed;
        };
        self.report_failure(reason, detail);
        if let Some(p) = self.plan.as_mut() {
            p.record = false;
            p.anchor = false;
        }
        // No stream was anchored yet (no SDP so far): the media goes untouched.
        if let Phase::Setup(s) = &mut self.phase {
            s.media = None;
        }
        if self.rejects() {
            self.core
                .stats
                .calls_refused_unrecordable
                .fetch_add(1, Ordering::Relaxed);
            warn!("refusing call: the late offer cannot be recorded and the profile says reject");
            return LaterOffer::Refuse;
        }
        LaterOffer::Proceed
    }

    /// Ends a call whose late offer cannot be recorded under `reject`: the
    /// callee's 2xx (client transaction `ix`) is ACKed and the callee hung
    /// up; the caller gets 488.
    pub(super) async fn refuse_late_offer(&mut self, ix: usize) {
        let cseq = self.clients[ix].cseq;
        self.ack_2xx(Side::Callee, cseq, None).await;
        let mut bye = self.new_in_dialog_request(Side::Callee, "BYE");
        bye.push("Reason", "SIP;cause=488;text=\"call cannot be recorded\"");
        self.send_new_request(Side::Callee, bye, None).await;
        self.respond_id(
            self.initial,
            488,
            "Not Acceptable Here (call cannot be recorded)",
        )
        .await;
        self.finish_with(488, "refused 488: the late offer cannot be recorded");
    }

    /// A re-INVITE or UPDATE from `side` offers `body` while the call is
    /// recorded. Under `continue` an unrecordable offer is reported and the
    /// recording stops taking media (never noise or silence sealed as the
    /// call); under `reject` the offer is refused and the call keeps the media
    /// it had.
    pub(super) fn vet_reoffer(&mut self, side: Side, body: &[u8]) -> LaterOffer {
        if let Some(m) = self.phase.media_mut() {
            m.expect_offer();
        }
        if !matches!(&self.phase, Phase::Live(l) if l.recording.is_some()) {
            return LaterOffer::Proceed;
        }
        let Some((reason, detail)) = self.unrecordable(side, body) else {
            return LaterOffer::Proceed;
        };
        self.report_failure(reason, detail);
        if self.rejects() {
            warn!(
                "refusing the {}'s new offer: it cannot be recorded and the profile says reject",
                side.name()
            );
            return LaterOffer::Refuse;
        }
        if let Some(m) = self.phase.media_mut() {
            m.set_tap(None);
        }
        LaterOffer::Proceed
    }
}
