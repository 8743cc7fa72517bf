//! A call's recording: started when the call is answered, fed by the relay's
//! tap, and on the call's end finished off the call's task (the recorder
//! drains and closes its files on a blocking thread), described by the
//! metadata, and handed to the sealing service. Failures (cannot start, disk
//! full, overload, files not finished) are reported to `Core.failures`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Local, Utc};
use tracing::{error, info};

use crate::media::relay::Tap;
use crate::media::Session;
use crate::recorder::failure::{FailureReason, RecordingFailure};
use crate::recorder::journal::{Journal, JournalError, JOURNAL_VERSION};
use crate::recorder::metadata::{
    local_offset_at, Announcement, AudioInfo, CallIds, EndedBy, Metadata, PartyInfo, PerParty,
    Times, SCHEMA_VERSION,
};
use crate::recorder::{Fork, PayloadMap, Recorder, RecordingSpec};
use crate::seal::service::{SealJob, SealSender};
use crate::vocab::Side;
use crate::vocab::{ChannelMode, Direction};

/// How recordings are made on this instance.
#[derive(Clone)]
pub struct RecordingSettings {
    /// Folder the audio files are written to and sealed in (the spool).
    pub dir: PathBuf,
    /// Channel layout.
    pub channels: ChannelMode,
    /// This instance's id (from the sealing identity).
    pub instance_id: String,
    /// This instance's name (see crate::instance).
    pub instance_name: String,
    /// Where finished recordings go to be sealed.
    pub seal: SealSender,
    /// The protocol database.
    pub db: Option<crate::db::Db>,
    /// Spare files of `dir` for each call's journal and disk reserve.
    pub spares: Arc<crate::recorder::spare::Spares>,
}

/// What the call knows about itself when its recording starts; kept in the
/// recording's journal so that a crash does not lose it.
#[derive(Debug, Clone)]
pub struct RecordingIntent {
    /// Call-ID of the caller's leg.
    pub caller_call_id: String,
    /// Call-ID of the callee's leg.
    pub callee_call_id: String,
    /// Caller's display name and number.
    pub caller: PartyInfo,
    /// Callee's display name and number.
    pub callee: PartyInfo,
    /// Number the caller dialled.
    pub dialled: String,
    /// Direction.
    pub direction: Direction,
    /// Profile that decided to record.
    pub profile: String,
    /// Rule of that profile that matched.
    pub rule: String,
    /// Storage targets of the profile.
    pub targets: Vec<String>,
    /// The announcement played to the caller, if any.
    pub announcement: Option<String>,
}

/// What the call knows about itself when its recording ends.
#[derive(Debug, Clone)]
pub struct CallFacts {
    /// Call-ID of the caller's leg.
    pub caller_call_id: String,
    /// Call-ID of the callee's leg.
    pub callee_call_id: String,
    /// Caller's display name and number.
    pub caller: PartyInfo,
    /// Callee's display name and number.
    pub callee: PartyInfo,
    /// Number the caller dialled (Request-URI user).
    pub dialled: String,
    /// Direction.
    pub direction: Direction,
    /// Profile that decided to record.
    pub profile: String,
    /// Rule of that profile that matched.
    pub rule: String,
    /// Who ended the call.
    pub ended_by: EndedBy,
    /// The announcement played to the caller, if any.
    pub announcement: Option<String>,
    /// Channel layout.
    pub channels: ChannelMode,
    /// Storage targets of the profile.
    pub targets: Vec<String>,
    /// Packets from strangers dropped at the ports facing the caller and the callee.
    pub foreign_packets: [u64; 2],
    /// SRTP packets from the caller and the callee that failed authentication.
    pub srtp_auth_failed: [u64; 2],
    /// The SRTP suite on the caller's and the callee's leg (None: plain RTP).
    pub srtp_suites: [Option<&'static str>; 2],
}

struct ForkTap(Fork);

impl Tap for ForkTap {
    fn offer(&self, from: Side, packet: Bytes, arrival: Instant) {
        self.0.offer(from, packet, arrival);
    }
}

/// The journal of a recording that starts at `start`.
fn journal_of(
    settings: &RecordingSettings,
    intent: &RecordingIntent,
    spec: &RecordingSpec,
    start: DateTime<Utc>,
) -> Journal {
    Journal {
        version: JOURNAL_VERSION,
        base_name: spec.base_name.clone(),
        call_ids: CallIds {
            caller_leg: intent.caller_call_id.clone(),
            callee_leg: intent.callee_call_id.clone(),
        },
        caller: intent.caller.clone(),
        callee: intent.callee.clone(),
        dialled_number: intent.dialled.clone(),
        direction: intent.direction,
        profile: intent.profile.clone(),
        matched_rule: intent.rule.clone(),
        channels: spec.channels,
        files: spec
            .file_paths()
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect(),
        start_ms: start.timestamp_millis(),
        announcement: intent.announcement.clone(),
        targets: intent.targets.clone(),
        instance_id: settings.instance_id.clone(),
        instance_name: settings.instance_name.clone(),
    }
}

/// A running recording of one call.
pub struct CallRecording {
    recorder: Recorder,
    base_name: String,
    start: DateTime<Utc>,
    /// Tells the call when the recording fails while it runs.
    signal: crate::recorder::signal::FailureSignal,
    /// When the call's INVITE arrived (`times.setup`).
    setup: Option<DateTime<Utc>>,
}

/// Keeps what is safe in a file name: digits, letters and `+`.
fn name_part(s: &str) -> String {
    let p: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '+')
        .take(32)
        .collect();
    if p.is_empty() {
        "anonymous".into()
    } else {
        p
    }
}

impl CallRecording {
    /// Starts recording now (the answer), naming the set as the README's
    /// "A sealed recording set" says; the journal is written (fsynced) before the audio
    /// files are created, so a crash never leaves audio nobody can describe.
    pub fn start(
        settings: &RecordingSettings,
        intent: &RecordingIntent,
    ) -> Result<CallRecording, crate::recorder::RecorderError> {
        let start = Utc::now();
        let local = start.with_timezone(&Local);
        let dir = intent.direction;
        let base_name = format!(
            "{}_{dir}_{}_{}_{}",
            local.format("%Y%m%d_%H%M%S"),
            name_part(&intent.caller.number),
            name_part(&intent.callee.number),
            crate::sip::random_token(8)
        );
        // A look first: creating a folder that exists takes its parent's lock.
        if !settings.dir.is_dir() {
            std::fs::create_dir_all(&settings.dir).map_err(|e| {
                crate::recorder::RecorderError::Create {
                    path: settings.dir.clone(),
                    source: e,
                }
            })?;
        }
        let mut spec = RecordingSpec::new(&settings.dir, &base_name, settings.channels);
        spec.spares = Some(settings.spares.clone());
        let journal = journal_of(settings, intent, &spec, start);
        journal.write_using(&settings.spares).map_err(|e| match e {
            JournalError::Io { path, source } => {
                crate::recorder::RecorderError::Create { path, source }
            }
            JournalError::Corrupt { detail, .. } => {
                crate::recorder::RecorderError::InvalidSpec(detail)
            }
        })?;
        let recorder = match Recorder::start(spec) {
            Ok(r) => r,
            Err(e) => {
                // Nothing was recorded: no set to recover at the next start.
                Journal::discard(&settings.dir, &base_name, &settings.spares);
                return Err(e);
            }
        };
        info!(set = %base_name, "recording started");
        Ok(CallRecording {
            recorder,
            base_name,
            start,
            signal: Default::default(),
            setup: None,
        })
    }

    /// Reports this recording's failures for the call (from its span).
    pub fn watch_failures(&self, core: &super::Core, call_id: &str) {
        self.recorder
            .watch_failures(core.failures.clone(), call_id, self.signal.clone());
    }

    /// Connects the recording to its call: whoever sees the recording fail
    /// while the call runs raises this signal (see [`Self::failure_signal`]).
    pub fn with_signal(mut self, signal: crate::recorder::signal::FailureSignal) -> CallRecording {
        self.signal = signal;
        self
    }

    /// The set's base name.
    pub fn base_name(&self) -> &str {
        &self.base_name
    }

    /// Notes when the call was set up (its INVITE), for the metadata.
    pub fn set_setup(&mut self, setup: Option<DateTime<Utc>>) {
        self.setup = setup;
    }

    /// The tap to give the media session.
    pub fn tap(&self) -> Arc<dyn Tap> {
        Arc::new(ForkTap(self.recorder.fork()))
    }

    /// Tells the recorder which codecs each party sends: a party sends with the
    /// payload numbers the *other* party's SDP declared (RFC 3264 §5.1).
    pub fn update_payload_maps(&self, media: &Session) {
        for party in [Side::Caller, Side::Callee] {
            let receiver = party.other();
            if let Some(text) = media
                .last_sdp_text(receiver)
                .or_else(|| media.last_sdp_text(receiver.other()))
            {
                self.recorder
                    .set_payload_map(party, PayloadMap::from_sdp(text));
            }
        }
    }

    /// Finishes the files, writes the metadata and queues the set for sealing,
    /// off the call's task.
    pub fn finish(self, settings: RecordingSettings, facts: CallFacts, stats: Arc<super::Core>) {
        let end = Utc::now();
        let end_instant = Instant::now();
        let span = tracing::Span::current();
        stats
            .stats
            .recordings_pending
            .fetch_add(1, Ordering::SeqCst);
        tokio::task::spawn_blocking(move || {
            let _g = span.enter();
            // Counted down however this ends, so a shutdown never waits forever.
            struct Pending(Arc<super::Core>);
            impl Drop for Pending {
                fn drop(&mut self) {
                    self.0
                        .stats
                        .recordings_pending
                        .fetch_sub(1, Ordering::SeqCst);
                }
            }
            let _pending = Pending(stats.clone());
            let out = match self.recorder.finish_at(end_instant) {
                Ok(o) => o,
                Err(e) => {
                    stats.failures.report(RecordingFailure::now(
                        &facts.caller_call_id,
                        Some(&self.base_name),
                        FailureReason::WriteError,
                        format!("the recording's files could not be finished: {e}; they stay unsealed in {}", settings.dir.display()),
                    ));
                    return;
                }
            };
            let mut meta = Metadata {
                schema_version: SCHEMA_VERSION,
                recording_id: self.base_name.clone(),
                base_name: self.base_name.clone(),
                call_ids: CallIds {
                    caller_leg: facts.caller_call_id,
                    callee_leg: facts.callee_call_id,
                },
                caller: facts.caller,
                callee: facts.callee,
                dialled_number: facts.dialled,
                direction: facts.direction,
                profile: facts.profile,
                matched_rule: facts.rule,
                times: Times::new(
                    self.start,
                    Some(self.start),
                    end,
                    local_offset_at(self.start),
                    0,
                )
                .with_setup(self.setup),
                ended_by: facts.ended_by,
                announcement: Announcement {
                    played: facts.announcement.is_some(),
                    file: facts.announcement.clone(),
                },
                audio: AudioInfo::from_output(&out),
                codecs: PerParty {
                    caller: Vec::new(),
                    callee: Vec::new(),
                },
                media: PerParty {
                    caller: out.caller.clone(),
                    callee: out.callee.clone(),
                },
                gaps: Vec::new(),
                instance_id: settings.instance_id.clone(),
                instance_name: settings.instance_name.clone(),
                software_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            meta.set_recording_output(&out);
            // The relay dropped these before the recorder; the call counted them.
            meta.media.caller.foreign_packets = facts.foreign_packets[0];
            meta.media.callee.foreign_packets = facts.foreign_packets[1];
            meta.media.caller.srtp_auth_failed = facts.srtp_auth_failed[0];
            meta.media.callee.srtp_auth_failed = facts.srtp_auth_failed[1];
            meta.media.caller.srtp = facts.srtp_suites[0].map(str::to_string);
            meta.media.callee.srtp = facts.srtp_suites[1].map(str::to_string);
            stats.stats.recorder_queue_dropped.fetch_add(
                out.caller.queue_dropped + out.callee.queue_dropped,
                Ordering::Relaxed,
            );
            let job = SealJob {
                folder: settings.dir.clone(),
                base_name: self.base_name.clone(),
                metadata: meta.to_json_value(),
                files: out.files.clone(),
                targets: facts.targets.clone(),
            };
            if let Some(db) = &settings.db {
                db.send(crate::db::Record::Recording {
                    call_id: meta.call_ids.caller_leg.clone(),
                    base_name: self.base_name.clone(),
                    profile: Some(meta.profile.clone()),
                    start_ms: self.start.timestamp_millis(),
                    end_ms: Some(end.timestamp_millis()),
                    caller: Some(meta.caller.number.clone()),
                    callee: Some(meta.callee.number.clone()),
                    answered_by: meta.callee.answered_by.clone(),
                });
            }
            stats
                .stats
                .recordings_finished
                .fetch_add(1, Ordering::Relaxed);
            if settings.seal.send(job).is_err() {
                error!(set = %self.base_name, "sealing service is gone; the set stays unsealed in {}", settings.dir.display());
            }
        });
    }
}
