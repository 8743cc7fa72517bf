//! Where a call stands. Each phase holds exactly the data that exists in it,
//! so that a state the call cannot be in cannot be written down: there is no
//! recording before the answer, no pending CANCEL while the call is live, no
//! held-back INVITE once the callee has answered.

use tokio::sync::oneshot;

use super::record_failure::Refusal;
use crate::b2bua::recording::CallRecording;
use crate::media::Session;
use crate::sip::message::Message;

/// The phase of a call, from the caller's INVITE to the last retransmission.
pub(super) enum Phase {
    /// The caller's INVITE waits for its final response.
    Setup(Setup),
    /// The callee answered and its 2xx went on to the caller.
    Live(Live),
    /// The dialog is over; retransmissions are absorbed until every transaction has ended.
    Ended(Ended),
}

/// Before the answer.
pub(super) struct Setup {
    /// The anchored media; None while the call's media passes untouched.
    pub(super) media: Option<Session>,
    /// The callee sent a provisional response, so a CANCEL may go to it.
    pub(super) callee_provisional: bool,
    /// What the caller hears from us before the callee rings or the call is refused.
    pub(super) prelude: Option<Prelude>,
    /// The SDP answer the caller got from us with that early media.
    pub(super) early_answer: Option<Vec<u8>>,
}

/// Audio we play to the caller before the answer, and what follows it.
pub(super) struct Prelude {
    /// Fires when the audio has been played.
    pub(super) done: oneshot::Receiver<()>,
    /// What happens then.
    pub(super) then: AfterPrelude,
}

/// What follows the audio played before the answer.
pub(super) enum AfterPrelude {
    /// The announcement: the call is offered to the callee with this INVITE.
    Offer(Message),
    /// The "cannot be recorded" notice: the caller's INVITE is refused.
    Refuse(Refusal),
}

/// After the answer.
pub(super) struct Live {
    /// The anchored media; None while the call's media passes untouched.
    pub(super) media: Option<Session>,
    /// The status code of the callee's answer.
    pub(super) code: u16,
    /// The caller has ACKed the answer.
    pub(super) acked: bool,
    /// The call's recording, when it has one.
    pub(super) recording: Option<CallRecording>,
    /// The SDP answer the caller got from us with the announcement.
    pub(super) early_answer: Option<Vec<u8>>,
    /// The "recording failed" notice playing to the caller alone (the
    /// callee is gone); when it ends the caller is hung up with this reason.
    pub(super) notice: Option<(oneshot::Receiver<()>, String)>,
}

/// After the end.
pub(super) struct Ended {
    /// The caller gave up before the callee sent a provisional response: the
    /// CANCEL goes out with the first one (no CANCEL before one).
    pub(super) cancel_owed: bool,
}

impl Phase {
    /// The start: nothing sent to the callee yet.
    pub(super) fn new() -> Phase {
        Phase::Setup(Setup {
            media: None,
            callee_provisional: false,
            prelude: None,
            early_answer: None,
        })
    }

    /// The anchored media, while the call has any.
    pub(super) fn media(&self) -> Option<&Session> {
        match self {
            Phase::Setup(s) => s.media.as_ref(),
            Phase::Live(l) => l.media.as_ref(),
            Phase::Ended(_) => None,
        }
    }

    /// The anchored media, mutable.
    pub(super) fn media_mut(&mut self) -> Option<&mut Session> {
        match self {
            Phase::Setup(s) => s.media.as_mut(),
            Phase::Live(l) => l.media.as_mut(),
            Phase::Ended(_) => None,
        }
    }

    /// The SDP answer the caller got from us with early media, if it did.
    pub(super) fn early_answer(&self) -> Option<&Vec<u8>> {
        match self {
            Phase::Setup(s) => s.early_answer.as_ref(),
            Phase::Live(l) => l.early_answer.as_ref(),
            Phase::Ended(_) => None,
        }
    }

    /// The audio playing to the caller whose end the call waits for.
    pub(super) fn playing(&mut self) -> Option<&mut oneshot::Receiver<()>> {
        match self {
            Phase::Setup(s) => s.prelude.as_mut().map(|p| &mut p.done),
            Phase::Live(l) => l.notice.as_mut().map(|n| &mut n.0),
            Phase::Ended(_) => None,
        }
    }

    /// Whether audio plays to the caller whose end the call waits for.
    pub(super) fn is_playing(&self) -> bool {
        match self {
            Phase::Setup(s) => s.prelude.is_some(),
            Phase::Live(l) => l.notice.is_some(),
            Phase::Ended(_) => false,
        }
    }

    /// Before the answer.
    pub(super) fn is_setup(&self) -> bool {
        matches!(self, Phase::Setup(_))
    }

    /// Answered, whether ACKed or not.
    pub(super) fn is_live(&self) -> bool {
        matches!(self, Phase::Live(_))
    }

    /// Answered and the answer ACKed.
    pub(super) fn is_confirmed(&self) -> bool {
        matches!(self, Phase::Live(l) if l.acked)
    }

    /// Answered, the answer not ACKed yet.
    pub(super) fn awaits_ack(&self) -> bool {
        matches!(self, Phase::Live(l) if !l.acked)
    }

    /// Over.
    pub(super) fn is_ended(&self) -> bool {
        matches!(self, Phase::Ended(_))
    }
}
