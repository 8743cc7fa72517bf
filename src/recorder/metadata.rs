//! The per-recording metadata of the README ("Metadata") as a serde structure. The chain
//! reference ("previous") is added by the sealing module, not here; another
//! module writes the file from `Metadata::to_json_value`.

use chrono::{DateTime, FixedOffset, Local, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::{ChannelMode, Gap, MediaStats, RecordingOutput};
use crate::vocab::Direction;

/// Version of this JSON layout; bump on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// The metadata of one recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Layout version ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Unique id of this recording (the `<id>` part of the base name).
    pub recording_id: String,
    /// Base name shared by all files of the set (see README, "A sealed recording set").
    pub base_name: String,
    /// SIP Call-IDs of both legs.
    pub call_ids: CallIds,
    /// The calling party.
    pub caller: PartyInfo,
    /// The called party.
    pub callee: PartyInfo,
    /// The number that was dialled (request URI user part), as received.
    pub dialled_number: String,
    /// Incoming (trunk → PBX) or outgoing (PBX → trunk).
    pub direction: Direction,
    /// Name of the recording profile that took the call.
    pub profile: String,
    /// The rule of that profile that matched (e.g. "group 200", "user 31").
    pub matched_rule: String,
    /// Start, answer and end times.
    pub times: Times,
    /// Which side ended the call.
    pub ended_by: EndedBy,
    /// The announcement played to the caller, if any.
    pub announcement: Announcement,
    /// Channel layout, files and sample format.
    pub audio: AudioInfo,
    /// Codecs seen per party.
    pub codecs: PerParty<Vec<String>>,
    /// Media counters per party.
    pub media: PerParty<MediaStats>,
    /// Spans whose audio is missing (silence in the files): ms from `times.start`,
    /// which is also the position in the audio files, with the reason.
    #[serde(default)]
    pub gaps: Vec<Gap>,
    /// Id of the callrec instance that recorded the call (its sealing identity).
    pub instance_id: String,
    /// Name of that instance (see `--instance-name`); absent in sets sealed before names.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance_name: String,
    /// callrec version that wrote the recording.
    pub software_version: String,
}

/// Call-IDs of the two SIP legs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallIds {
    /// Call-ID of the leg towards the caller.
    pub caller_leg: String,
    /// Call-ID of the leg towards the callee.
    pub callee_leg: String,
}

/// A party's identity.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PartyInfo {
    /// Display name, when known.
    pub name: Option<String>,
    /// Number as normalised for matching.
    pub number: String,
    /// Callee only: who picked up, as the 2xx named them (an agent of a called
    /// group); absent when the answer named nobody usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
}

/// Who ended the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndedBy {
    /// The caller sent BYE/CANCEL.
    Caller,
    /// The callee sent BYE.
    Callee,
    /// callrec ended it (shutdown, timeout, error).
    Proxy,
}

/// Call times: RFC 3339 UTC with milliseconds, plus the instance's UTC offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Times {
    /// When the call was set up (its INVITE arrived); absent when not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<String>,
    /// When the recording (and its wall clock) started.
    pub start: String,
    /// When the call was answered; None if it never was.
    pub answer: Option<String>,
    /// When the call ended.
    pub end: String,
    /// The instance's local UTC offset at the start, e.g. "+01:00".
    pub utc_offset: String,
    /// end − start in milliseconds.
    pub duration_ms: u64,
    /// Length of the audio files in milliseconds (media time).
    pub media_duration_ms: u64,
}

impl Times {
    /// Builds the times from UTC instants and the local offset; `media_duration_ms` from the recording output.
    pub fn new(
        start: DateTime<Utc>,
        answer: Option<DateTime<Utc>>,
        end: DateTime<Utc>,
        offset: FixedOffset,
        media_duration_ms: u64,
    ) -> Times {
        Times {
            setup: None,
            start: rfc3339_ms(start),
            answer: answer.map(rfc3339_ms),
            end: rfc3339_ms(end),
            utc_offset: offset.to_string(),
            duration_ms: (end - start).num_milliseconds().max(0) as u64,
            media_duration_ms,
        }
    }

    /// The same times with the call's setup (its INVITE), when known.
    pub fn with_setup(mut self, setup: Option<DateTime<Utc>>) -> Times {
        self.setup = setup.map(rfc3339_ms);
        self
    }
}

/// Formats a UTC time as RFC 3339 with milliseconds ("2026-01-02T03:04:05.678Z").
pub fn rfc3339_ms(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The instance's local UTC offset at time `t`.
pub fn local_offset_at(t: DateTime<Utc>) -> FixedOffset {
    *t.with_timezone(&Local).offset()
}

/// The announcement played before recording started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Whether an announcement was played to the caller.
    pub played: bool,
    /// Its source file name, when one was played.
    pub file: Option<String>,
}

/// Audio file layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioInfo {
    /// caller, callee, stereo (left = caller, right = callee) or separate.
    pub channel_layout: ChannelMode,
    /// File names (no folder) of the audio files.
    pub files: Vec<String>,
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// Always 16 (signed PCM).
    pub bits_per_sample: u16,
    /// "wav", or "rf64" when the files grew past 4 GiB.
    pub container: String,
}

impl AudioInfo {
    /// Describes the files of a finished recording.
    pub fn from_output(out: &RecordingOutput) -> AudioInfo {
        AudioInfo {
            channel_layout: out.channels,
            files: out
                .files
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect(),
            sample_rate: out.sample_rate,
            bits_per_sample: 16,
            container: if out.rf64 { "rf64" } else { "wav" }.to_string(),
        }
    }
}

/// A value per party.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerParty<T> {
    /// The caller's value.
    pub caller: T,
    /// The callee's value.
    pub callee: T,
}

impl Metadata {
    /// The metadata as a JSON value (the sealing module adds "previous").
    pub fn to_json_value(&self) -> serde_json::Value {
        // Serialising plain structs with string keys cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Fills the audio, codec and media fields from a finished recording.
    pub fn set_recording_output(&mut self, out: &RecordingOutput) {
        self.audio = AudioInfo::from_output(out);
        self.codecs = PerParty {
            caller: out.caller.codecs.clone(),
            callee: out.callee.codecs.clone(),
        };
        self.media = PerParty {
            caller: out.caller.clone(),
            callee: out.callee.clone(),
        };
        self.times.media_duration_ms = out.duration.as_millis() as u64;
        self.gaps = out.gaps.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn sample() -> Metadata {
        let start = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
        let end = start + chrono::Duration::milliseconds(61_250);
        Metadata {
            schema_version: SCHEMA_VERSION,
            recording_id: "abc123".into(),
            base_name: "20260301_110000_in_4930_200_abc123".into(),
            call_ids: CallIds {
                caller_leg: "a@x".into(),
                callee_leg: "b@y".into(),
            },
            caller: PartyInfo {
                name: None,
                number: "+4930123".into(),
                answered_by: None,
            },
            callee: PartyInfo {
                name: Some("Sales".into()),
                number: "200".into(),
                answered_by: Some("201".into()),
            },
            dialled_number: "200".into(),
            direction: Direction::Incoming,
            profile: "sales".into(),
            matched_rule: "group 200".into(),
            times: Times::new(
                start,
                Some(start + chrono::Duration::seconds(2)),
                end,
                FixedOffset::east_opt(3600).unwrap(),
                0,
            )
            .with_setup(Some(start - chrono::Duration::seconds(5))),
            ended_by: EndedBy::Callee,
            announcement: Announcement {
                played: true,
                file: Some("in.wav".into()),
            },
            audio: AudioInfo {
                channel_layout: ChannelMode::Stereo,
                files: vec!["x.wav".into()],
                sample_rate: 8000,
                bits_per_sample: 16,
                container: "wav".into(),
            },
            codecs: PerParty {
                caller: vec!["PCMA/8000".into()],
                callee: vec![],
            },
            media: PerParty {
                caller: MediaStats::default(),
                callee: MediaStats::default(),
            },
            gaps: Vec::new(),
            instance_id: "inst-1".into(),
            instance_name: "rec-a".into(),
            software_version: "0.1.0".into(),
        }
    }

    #[test]
    fn json_has_every_field_and_round_trips() {
        let m = sample();
        let v = m.to_json_value();
        for key in [
            "schema_version",
            "recording_id",
            "call_ids",
            "caller",
            "callee",
            "dialled_number",
            "direction",
            "profile",
            "matched_rule",
            "times",
            "ended_by",
            "announcement",
            "audio",
            "codecs",
            "media",
            "gaps",
            "instance_id",
            "instance_name",
            "software_version",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert!(v.get("previous").is_none());
        assert_eq!(v["times"]["start"], "2026-03-01T10:00:00.000Z");
        assert_eq!(v["times"]["end"], "2026-03-01T10:01:01.250Z");
        assert_eq!(v["times"]["utc_offset"], "+01:00");
        assert_eq!(v["times"]["duration_ms"], 61250);
        assert_eq!(v["times"]["setup"], "2026-03-01T09:59:55.000Z");
        assert_eq!(v["callee"]["answered_by"], "201");
        assert!(v["caller"].get("answered_by").is_none());
        assert_eq!(v["direction"], "incoming");
        assert_eq!(v["audio"]["channel_layout"], "stereo");
        assert_eq!(v["media"]["caller"]["queue_dropped"], 0);
        let back: Metadata = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
    }
}
