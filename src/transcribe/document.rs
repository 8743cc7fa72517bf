//! The transcript files of a set: `<base>_transcript.json` (segments with
//! start and end in ms from the start of the recording, the party, language,
//! model and engine settings) and `<base>_transcript.txt` (one time-stamped
//! line per segment with the party, in time order).

use serde::Serialize;

use super::channels::party_name;
use super::Segment;
use crate::vocab::Side;

/// A segment of one party.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartySegment {
    /// caller, callee or mixed.
    pub party: &'static str,
    /// Start in ms from the start of the recording.
    pub start_ms: u64,
    /// End in ms.
    pub end_ms: u64,
    /// The words.
    pub text: String,
}

/// What the transcript says about how it was made.
#[derive(Debug, Clone, Serialize)]
pub struct Made {
    /// The language forced on the engine (the profile's).
    pub language: String,
    /// The model (its folder's name).
    pub model: String,
    /// Engine settings (threads …).
    pub engine: serde_json::Value,
}

/// A whole transcript.
#[derive(Debug, Clone)]
pub struct Transcript {
    /// Base name of the set.
    pub base_name: String,
    /// How it was made.
    pub made: Made,
    /// The parties transcribed, in channel order.
    pub parties: Vec<Option<Side>>,
    /// Every segment of every party, in time order.
    pub segments: Vec<PartySegment>,
}

impl Transcript {
    /// Collects the segments of each party, sorted by start (then party).
    pub fn new(
        base_name: &str,
        made: Made,
        per_party: Vec<(Option<Side>, Vec<Segment>)>,
    ) -> Transcript {
        let parties = per_party.iter().map(|(p, _)| *p).collect();
        let mut segments: Vec<PartySegment> = per_party
            .into_iter()
            .flat_map(|(p, segs)| {
                segs.into_iter().map(move |s| PartySegment {
                    party: party_name(p),
                    start_ms: s.start_ms,
                    end_ms: s.end_ms,
                    text: s.text.trim().to_string(),
                })
            })
            .filter(|s| !s.text.is_empty())
            .collect();
        segments.sort_by(|a, b| (a.start_ms, a.party).cmp(&(b.start_ms, b.party)));
        Transcript {
            base_name: base_name.to_string(),
            made,
            parties,
            segments,
        }
    }

    /// The JSON file's content (the sealing adds the reference to the set).
    pub fn to_json(&self) -> serde_json::Value {
        let mixed = self.parties.iter().any(Option::is_none);
        serde_json::json!({
            "transcript_version": 1,
            "base_name": self.base_name,
            "language": self.made.language,
            "model": self.made.model,
            "engine": self.made.engine,
            "parties": self.parties.iter().map(|p| party_name(*p)).collect::<Vec<_>>(),
            "note": mixed.then_some("mono mix: both parties share one channel and were transcribed together"),
            "segments": self.segments,
        })
    }

    /// The readable file: `[mm:ss.mmm-mm:ss.mmm] party: text`, one line each.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "Transcript of {} (language {}, model {})\n",
            self.base_name, self.made.language, self.made.model
        );
        if self.parties.iter().any(Option::is_none) {
            out.push_str(
                "Mono mix: both parties share one channel and were transcribed together.\n",
            );
        }
        for s in &self.segments {
            out.push_str(&format!(
                "[{}-{}] {}: {}\n",
                clock(s.start_ms),
                clock(s.end_ms),
                s.party,
                s.text
            ));
        }
        out
    }

    /// All the words, for the search index.
    pub fn all_text(&self) -> String {
        self.segments
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `mm:ss.mmm` (minutes grow past 59 for long calls).
fn clock(ms: u64) -> String {
    format!("{:02}:{:02}.{:03}", ms / 60_000, ms / 1000 % 60, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(a: u64, b: u64, t: &str) -> Segment {
        Segment {
            start_ms: a,
            end_ms: b,
            text: t.into(),
        }
    }

    #[test]
    fn segments_of_both_parties_interleave_by_time() {
        let t = Transcript::new(
            "b",
            Made {
                language: "de".into(),
                model: "whisper-base".into(),
                engine: serde_json::json!({"threads": 1}),
            },
            vec![
                (
                    Some(Side::Caller),
                    vec![seg(0, 1500, " Guten Tag"), seg(5000, 6000, "Danke")],
                ),
                (
                    Some(Side::Callee),
                    vec![seg(2000, 4000, "Ich kaufe Aktien"), seg(7000, 7100, "  ")],
                ),
            ],
        );
        let text = t.to_text();
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            lines,
            vec![
                "[00:00.000-00:01.500] caller: Guten Tag",
                "[00:02.000-00:04.000] callee: Ich kaufe Aktien",
                "[00:05.000-00:06.000] caller: Danke",
            ]
        );
        let json = t.to_json();
        assert_eq!(json["segments"][1]["party"], "callee");
        assert_eq!(json["segments"][1]["start_ms"], 2000);
        assert_eq!(json["language"], "de");
        assert!(json["note"].is_null());
    }

    #[test]
    fn a_mono_mix_says_so() {
        let t = Transcript::new(
            "b",
            Made {
                language: "de".into(),
                model: "m".into(),
                engine: serde_json::Value::Null,
            },
            vec![(None, vec![seg(61_000, 62_500, "Hallo")])],
        );
        assert!(t.to_text().contains("Mono mix"));
        assert!(t.to_text().contains("[01:01.000-01:02.500] mixed: Hallo"));
        assert!(t.to_json()["note"].as_str().unwrap().contains("mono mix"));
    }
}
