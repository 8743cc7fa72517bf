//! The spans of a recording whose audio is missing (disk full, write errors,
//! recorder overload): kept in the recording's metadata as `gaps` so that a
//! recording that survives a failure is sealed with it instead of thrown away.
//! Times are milliseconds from the start of the recording, which is also the
//! position in the audio files (a missing span is silence there).

use serde::{Deserialize, Serialize};

use super::failure::FailureReason;

/// Spans of the same reason this close together are one gap.
const MERGE_MS: u64 = 100;

/// One missing span of a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// Start, ms from the start of the recording.
    pub from_ms: u64,
    /// End, ms from the start of the recording.
    pub to_ms: u64,
    /// Why the audio is missing.
    pub reason: FailureReason,
}

/// The gaps of one recording, and which reasons were already reported.
#[derive(Debug, Default)]
pub(crate) struct Gaps {
    list: Vec<Gap>,
    reported: u16,
}

impl Gaps {
    /// Adds a missing span (merged into the last gap of its reason when they
    /// touch); true the first time `reason` is seen, so that it is reported
    /// once per recording rather than per packet or write.
    pub(crate) fn add(&mut self, from_ms: u64, to_ms: u64, reason: FailureReason) -> bool {
        let to_ms = to_ms.max(from_ms);
        match self.list.iter_mut().rev().find(|g| g.reason == reason) {
            Some(g) if from_ms <= g.to_ms + MERGE_MS && to_ms + MERGE_MS >= g.from_ms => {
                g.from_ms = g.from_ms.min(from_ms);
                g.to_ms = g.to_ms.max(to_ms);
            }
            _ => self.list.push(Gap {
                from_ms,
                to_ms,
                reason,
            }),
        }
        let bit = 1u16 << reason.index();
        let first = self.reported & bit == 0;
        self.reported |= bit;
        first
    }

    /// The gaps in time order.
    pub(crate) fn into_sorted(mut self) -> Vec<Gap> {
        self.list.sort_by_key(|g| (g.from_ms, g.to_ms));
        self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FailureReason::{DiskFull, RecorderOverload};

    #[test]
    fn touching_spans_of_one_reason_merge_and_report_once() {
        let mut g = Gaps::default();
        assert!(g.add(2000, 4000, DiskFull));
        assert!(
            !g.add(4000, 6000, DiskFull),
            "second disk_full is not reported again"
        );
        assert!(!g.add(6050, 6100, DiskFull));
        assert!(
            g.add(5000, 5020, RecorderOverload),
            "another reason is reported"
        );
        assert!(
            !g.add(9000, 9500, DiskFull),
            "a later gap of a reported reason"
        );
        let list = g.into_sorted();
        assert_eq!(
            list,
            vec![
                Gap {
                    from_ms: 2000,
                    to_ms: 6100,
                    reason: DiskFull
                },
                Gap {
                    from_ms: 5000,
                    to_ms: 5020,
                    reason: RecorderOverload
                },
                Gap {
                    from_ms: 9000,
                    to_ms: 9500,
                    reason: DiskFull
                },
            ]
        );
    }

    #[test]
    fn the_same_span_from_two_files_is_one_gap_and_an_inverted_span_is_empty() {
        let mut g = Gaps::default();
        g.add(1000, 3000, DiskFull);
        g.add(1000, 3000, DiskFull);
        g.add(7000, 6000, RecorderOverload);
        let list = g.into_sorted();
        assert_eq!(list.len(), 2);
        assert_eq!((list[1].from_ms, list[1].to_ms), (7000, 7000));
    }

    #[test]
    fn gaps_serialise_with_the_reason_name() {
        let v = serde_json::to_value(Gap {
            from_ms: 1,
            to_ms: 2,
            reason: DiskFull,
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"from_ms": 1, "to_ms": 2, "reason": "disk_full"})
        );
    }
}
