//! Mails about recording failures: the first one at once, the ones that follow
//! within the interval as one digest when it ends (one allowance for all
//! recording failures, apart from the upload mails' per-target allowance).

use std::time::Instant;

use super::Notifier;
use crate::recorder::failure::{FailureReason, RecordingFailure};

/// Rate-limit state of recording-failure mails.
#[derive(Debug, Default)]
pub(super) struct Digest {
    last_sent: Option<Instant>,
    pending: Vec<RecordingFailure>,
    scheduled: bool,
}

impl Notifier {
    /// Mails a recording failure at once, or collects it for the digest.
    /// Needs a tokio runtime context (it spawns the sending task).
    pub fn recording_failed(&self, failure: RecordingFailure) {
        let interval = self.inner.config.interval;
        let mut d = self
            .inner
            .recordings
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if d.pending.is_empty() && d.last_sent.is_none_or(|t| t.elapsed() >= interval) {
            d.last_sent = Some(Instant::now());
            drop(d);
            let subject = format!(
                "callrec: recording failure {} (call {})",
                failure.reason, failure.call_id
            );
            self.send_in_background(subject, failures_body(&[failure]));
            return;
        }
        d.pending.push(failure);
        if d.scheduled {
            return;
        }
        d.scheduled = true;
        let wait = d
            .last_sent
            .map(|t| interval.saturating_sub(t.elapsed()))
            .unwrap_or_default();
        drop(d);
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let failures = {
                let mut d = me
                    .inner
                    .recordings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                d.scheduled = false;
                d.last_sent = Some(Instant::now());
                std::mem::take(&mut d.pending)
            };
            if !failures.is_empty() {
                let subject = format!("callrec: {} recording failures (digest)", failures.len());
                me.send_in_background(subject, failures_body(&failures));
            }
        });
    }
}

impl Notifier {
    /// Mails these failures now in one mail and waits for the server (for
    /// offline commands such as `callrec report`, which cannot wait for a digest).
    pub async fn send_recording_failures(
        &self,
        failures: &[RecordingFailure],
    ) -> Result<(), super::NotifyError> {
        let subject = match failures {
            [one] => format!(
                "callrec: recording failure {} (call {})",
                one.reason, one.call_id
            ),
            many => format!("callrec: {} recording failures", many.len()),
        };
        self.send(&subject, &failures_body(failures)).await
    }
}

/// What the operator should do about a reason.
fn advice(reason: FailureReason) -> &'static str {
    match reason {
        FailureReason::StartFailed => "The call went on unrecorded (or was refused, by the profile's on_record_failure). Check that <data-dir>/work exists and is writable.",
        FailureReason::DiskFull => "The disk of <data-dir>/work ran full; the missing span is a gap in the set's metadata and recording resumed when space came back. Free space.",
        FailureReason::WriteError => "Writing the recording failed; see the detail and check the disk's health.",
        FailureReason::UndecodableCodec => "The call used a codec callrec cannot record.",
        FailureReason::EncryptedMedia => "The media was encrypted with keys callrec does not hold.",
        FailureReason::AnnouncementNotPlayed => "The recording announcement could not be played.",
        FailureReason::RecoveredAfterCrash => "callrec stopped during the call; the partial recording was sealed at the next start.",
        FailureReason::UndecidedAfterCrash => "A recording's journal that a crash left in <data-dir>/work has no audio, and the protocol database could not be read to tell whether its set was delivered before the crash. The journal stays; make the database readable and restart callrec: the set is then either confirmed delivered or reported as recovered_after_crash.",
        FailureReason::RecorderOverload => "The recorder could not keep up and dropped audio; the span is a gap in the set's metadata. Check the machine's load and disk speed.",
        FailureReason::NotSealed => "The call was decided \"record\" but no sealed set exists for it. Look for its files in <data-dir>/work and in the log.",
        FailureReason::TranscriptionFailed => "The recording is sealed and uploaded; only its transcript is missing. Check --transcribe-model (a CTranslate2 Whisper folder with model.bin) and the log; queued sets are transcribed after a restart.",
    }
}

/// The text of a mail about one or more recording failures.
fn failures_body(failures: &[RecordingFailure]) -> String {
    let mut body = String::new();
    if failures.len() > 1 {
        body.push_str(&format!(
            "{} recording failures since the last mail about recordings.\n\n",
            failures.len()
        ));
    }
    for f in failures {
        let at = chrono::DateTime::from_timestamp_millis(f.at_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        body.push_str(&format!(
            "Reason: {}\nCall-ID: {}\nSet: {}\nTime: {at}\nDetail: {}\n{}\n\n",
            f.reason,
            f.call_id,
            f.set.as_deref().unwrap_or("(none)"),
            f.detail,
            advice(f.reason)
        ));
    }
    body.push_str(
        "`callrec report` lists the recorded calls without a sealed set and the failures.\n",
    );
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_names_call_set_reason_and_detail() {
        let f = RecordingFailure::now("c1@x", Some("set1"), FailureReason::DiskFull, "ENOSPC");
        let b = failures_body(&[f.clone(), f]);
        assert!(b.contains("2 recording failures"), "{b}");
        assert!(
            b.contains("c1@x")
                && b.contains("set1")
                && b.contains("disk_full")
                && b.contains("ENOSPC")
        );
    }
}
