//! What a call does when its recording cannot be made: the checks at the
//! INVITE (encrypted media, no recordable codec, announcement not playable,
//! recording folder not writable), the profile's `on_record_failure` policy
//! (continue unrecorded, or refuse with 488/480 — never 503, on which
//! carriers fail over to a route that may bypass callrec), the optional
//! notice played before a refusal, and the reaction to a recording that
//! fails while the call runs. The README's "When a recording fails" section
//! describes the behaviour for operators.

use std::sync::atomic::Ordering;

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::phase::{AfterPrelude, Phase, Prelude};
use super::Call;
use crate::b2bua::plan::CallPlan;
use crate::media::announce::{choose_codec, Announcement, G711};
use crate::media::recordable::{judge, judge_terminating, Verdict};
use crate::media::sdp::{answer_for_announcement, Sdp};
use crate::recorder::failure::{FailureReason, RecordingFailure};
use crate::recorder::signal::RecordingFailed;
use crate::sip::message::Message;
use crate::vocab::Side;

/// A call refused because it cannot be recorded.
#[derive(Debug)]
pub(super) struct Refusal {
    code: u16,
    text: &'static str,
}

/// The response code for a call that cannot be recorded for `reason`:
/// 488 when the offer itself is the problem (the caller may retry with other
/// media), 480 otherwise.
fn refusal_for(reason: FailureReason) -> Refusal {
    match reason {
        FailureReason::UndecodableCodec | FailureReason::EncryptedMedia => Refusal {
            code: 488,
            text: "Not Acceptable Here (call cannot be recorded)",
        },
        _ => Refusal {
            code: 480,
            text: "Temporarily Unavailable (call cannot be recorded)",
        },
    }
}

/// True when `invite` carries an offer with G.711 the announcement can be played in.
fn announcement_playable(invite: &Message) -> bool {
    invite.has_sdp()
        && Sdp::parse(&invite.body)
            .ok()
            .and_then(|o| choose_codec(&o))
            .is_some()
}

/// Creates the recording folder and a file in it, as starting a recording
/// would, so that a call that must be recorded is refused before the callee
/// rings rather than after the answer.
fn probe_folder(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".probe-{}", crate::sip::random_token(8)));
    std::fs::File::create(&probe)?;
    std::fs::remove_file(&probe)
}

/// The offer `body` with only recordable audio formats, when the call is
/// recorded and something recordable is left; else `body` unchanged.
/// `sdes_allowed`: SRTP with SDES keys is terminated on this leg.
pub(super) fn recordable_only(plan: Option<&CallPlan>, body: &[u8], sdes_allowed: bool) -> Vec<u8> {
    match (
        plan.is_some_and(|p| p.record),
        judge_terminating(body, sdes_allowed),
    ) {
        (true, Verdict::Recordable(b)) => b,
        _ => body.to_vec(),
    }
}

impl Call {
    pub(super) fn report_failure(&self, reason: FailureReason, detail: String) {
        self.core.failures.report(RecordingFailure::now(
            &self.legs[0].call_id,
            None,
            reason,
            detail,
        ));
    }

    /// Checks at the INVITE whether the planned recording can be made. A call
    /// that cannot be recorded goes on unrecorded and unanchored (its media
    /// passes untouched: anchoring media we cannot record only adds a hop and,
    /// for SRTP, would break it), or under `reject` gets a refusal.
    pub(super) async fn vet_plan(
        &mut self,
        mut plan: CallPlan,
        invite: &Message,
    ) -> (CallPlan, Option<Refusal>) {
        if !plan.record {
            return (plan, None);
        }
        let mut failure = None;
        if invite.has_sdp() {
            match judge_terminating(&invite.body, self.sdes_allowed(Side::Caller)) {
                Verdict::Recordable(_) => {}
                Verdict::Encrypted(why) => {
                    failure = Some((
                        FailureReason::EncryptedMedia,
                        format!(
                        "the caller's media is encrypted ({why}) and callrec cannot terminate it"
                    ),
                    ))
                }
                Verdict::Undecodable(codecs) => {
                    failure = Some((
                        FailureReason::UndecodableCodec,
                        format!("no codec the caller offers can be recorded ({codecs})"),
                    ))
                }
            }
        }
        if failure.is_none() && plan.announcement.is_some() && !announcement_playable(invite) {
            // Recording without the notice the profile requires may be unlawful:
            // the call is connected but not recorded, unless the profile says otherwise.
            let keep = plan.on_failure.record_without_announcement;
            self.report_failure(
                FailureReason::AnnouncementNotPlayed,
                format!(
                    "the caller offers no G.711 (or no SDP) for the announcement; the call is {}",
                    if keep {
                        "recorded anyway (record_without_announcement)"
                    } else {
                        "connected without recording"
                    }
                ),
            );
            plan.announcement = None;
            plan.record = keep;
            plan.anchor = keep;
            return (plan, None);
        }
        if failure.is_none() && plan.on_failure.reject {
            if let Some(settings) = &self.core.recording {
                let dir = settings.dir.clone();
                let probed = tokio::task::spawn_blocking(move || probe_folder(&dir)).await;
                if let Some(e) = match probed {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(e.to_string()),
                } {
                    failure = Some((
                        FailureReason::StartFailed,
                        format!(
                            "cannot write to the recording folder {}: {e}",
                            settings.dir.display()
                        ),
                    ));
                }
            }
        }
        let Some((reason, detail)) = failure else {
            return (plan, None);
        };
        self.report_failure(reason, detail);
        plan.announcement = None;
        plan.record = false;
        if plan.on_failure.reject {
            self.core
                .stats
                .calls_refused_unrecordable
                .fetch_add(1, Ordering::Relaxed);
            // The notice needs anchored media; nothing else of the call does.
            plan.anchor = plan.on_failure.notice.is_some();
            return (plan, Some(refusal_for(reason)));
        }
        plan.anchor = false;
        (plan, None)
    }

    /// Refuses the caller's INVITE, after the profile's notice when there is
    /// one and the caller offers plain G.711 to hear it in.
    pub(super) async fn refuse(&mut self, r: Refusal, invite: &Message) {
        warn!(
            code = r.code,
            "refusing call: it cannot be recorded and the profile says reject"
        );
        let notice = self.plan.as_ref().and_then(|p| p.on_failure.notice.clone());
        if let Some(n) = notice {
            if matches!(judge(&invite.body), Verdict::Recordable(_)) {
                if let Ok(offer) = Sdp::parse(&invite.body) {
                    if self.phase.media().is_none() {
                        let session = self.new_session();
                        if let Phase::Setup(s) = &mut self.phase {
                            s.media = Some(session);
                        }
                    }
                    let bound = self.rewrite_sdp(Side::Caller, &invite.body).is_ok();
                    let done = match bound {
                        true => self.play_early(&n, &offer).await,
                        false => None,
                    };
                    if let (Some(done), Phase::Setup(s)) = (done, &mut self.phase) {
                        s.prelude = Some(Prelude {
                            done,
                            then: AfterPrelude::Refuse(r),
                        });
                        return;
                    }
                }
            }
        }
        self.refuse_now(r).await;
    }

    /// Sends the refusal to the caller's INVITE and ends the call.
    pub(super) async fn refuse_now(&mut self, r: Refusal) {
        self.respond_id(self.initial, r.code, r.text).await;
        self.finish_with(r.code, &format!("refused {}: cannot be recorded", r.code));
    }

    /// Plays `ann` to the caller as early media (183 with our own SDP answer to
    /// `offer`). Returns, when it started, what fires at its end.
    pub(super) async fn play_early(
        &mut self,
        ann: &Announcement,
        offer: &Sdp,
    ) -> Option<oneshot::Receiver<()>> {
        let (codec, pt) = choose_codec(offer)?;
        let port = self.phase.media().and_then(|m| m.caller_port(0))?;
        let name = match codec {
            G711::Alaw => "PCMA",
            G711::Ulaw => "PCMU",
        };
        let answer = answer_for_announcement(offer, self.core.cfg.media_ip, port, pt, name);
        // An SRTP caller gets the key its leg's packets are encrypted with.
        let answer = match self.phase.media() {
            Some(m) => m.secure_answer(answer),
            None => answer,
        };
        let txn = self.server(self.initial)?;
        let mut progress = self.response_for(txn, 183, "Session Progress");
        progress.push("Content-Type", "application/sdp");
        progress.body = answer.clone();
        self.respond_msg(self.initial, progress).await;
        let Phase::Setup(setup) = &mut self.phase else {
            return None;
        };
        setup.early_answer = Some(answer);
        let done = setup
            .media
            .as_ref()?
            .play_to_caller(ann.rtp_packets(codec, pt));
        info!(
            file = %ann.path().display(),
            seconds = ann.duration().as_secs_f64(),
            "playing announcement to the caller"
        );
        Some(done)
    }

    /// The "recording failed" notice has ended: the caller, alone since the
    /// callee was hung up before it, is hung up too.
    pub(super) async fn hang_up_caller(&mut self, reason: &str) {
        let mut bye = self.new_in_dialog_request(Side::Caller, "BYE");
        bye.push("Reason", format!("SIP;cause=480;text=\"{reason}\""));
        self.send_new_request(Side::Caller, bye, None).await;
        warn!("hanging up: {reason}");
        self.finish(reason);
    }

    /// The recording could not start at the answer: reported, and under
    /// `reject` the call is ended once the answer has gone to the caller.
    pub(super) fn recording_did_not_start(&self, detail: String) {
        self.report_failure(FailureReason::StartFailed, detail.clone());
        self.failure_signal
            .raise(FailureReason::StartFailed, detail);
    }

    /// The recording failed while the call runs (or could not start at the
    /// answer). Under `continue` the call goes on; under `reject` it is
    /// ended: the callee is hung up, the caller hears the notice if there is
    /// one, then is hung up too. The recording itself is finished (with its
    /// gap) as the call ends.
    pub(super) async fn on_recording_failed(&mut self, f: RecordingFailed) {
        let reject = self.plan.as_ref().is_some_and(|p| p.on_failure.reject);
        if !reject || !self.phase.is_live() {
            info!(reason = %f.reason, "recording failed ({}); the call goes on", f.detail);
            return;
        }
        if self.phase.is_playing() {
            return;
        }
        self.core
            .stats
            .calls_refused_unrecordable
            .fetch_add(1, Ordering::Relaxed);
        let reason = format!("recording failed: {}", f.reason);
        warn!(
            "ending the call: its recording failed ({}) and the profile says reject",
            f.detail
        );
        let notice = self.plan.as_ref().and_then(|p| p.on_failure.notice.clone());
        let heard_in = self
            .phase
            .media()
            .and_then(|m| m.last_sdp(Side::Caller))
            .and_then(choose_codec);
        if let (Some(n), Some((codec, pt))) = (notice, heard_in) {
            // The callee goes first, so that the caller hears the notice alone.
            let mut bye = self.new_in_dialog_request(Side::Callee, "BYE");
            bye.push("Reason", format!("SIP;cause=480;text=\"{reason}\""));
            self.send_new_request(Side::Callee, bye, None).await;
            if let Phase::Live(l) = &mut self.phase {
                if let Some(media) = l.media.as_ref() {
                    let done = media.play_to_caller(n.rtp_packets(codec, pt));
                    l.notice = Some((done, reason));
                    return;
                }
            }
        }
        self.hang_up_both(&reason).await;
    }
}
