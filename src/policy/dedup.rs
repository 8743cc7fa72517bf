//! Record an internal call once when both of its legs pass the proxy (SPEC R2.8):
//! the call flow asks `LegDedup` before recording; the second sighting of the same
//! (caller, callee) pair within the window is a duplicate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::decide::{Decision, Rule};
use super::directory::Directory;
use super::numbers::Number;

/// Remembers recently recorded (caller, callee) pairs for a time window.
#[derive(Debug)]
pub struct LegDedup {
    window: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    seen: HashMap<(String, String), Instant>,
    last_prune: Option<Instant>,
}

impl LegDedup {
    /// A dedup helper that treats sightings less than `window` apart as the same call.
    pub fn new(window: Duration) -> LegDedup {
        LegDedup {
            window,
            inner: Mutex::new(Inner {
                seen: HashMap::new(),
                last_prune: None,
            }),
        }
    }

    /// True for the first leg of a (caller, callee) pair within the window (record it);
    /// false for the other leg of a call already being recorded (do not record again).
    ///
    /// Numbers are compared by the party behind them (`Directory::party_key`), so an
    /// extension on one leg and the external number on the other are the same party.
    pub fn first_leg(
        &self,
        dir: &Directory,
        caller: &Number,
        callee: &Number,
        now: Instant,
    ) -> bool {
        let key = (dir.party_key(caller), dir.party_key(callee));
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let window = self.window;
        if inner
            .last_prune
            .is_none_or(|t| now.saturating_duration_since(t) >= window)
        {
            inner
                .seen
                .retain(|_, at| now.saturating_duration_since(*at) < window);
            inner.last_prune = Some(now);
        }
        match inner.seen.get(&key) {
            Some(at) if now.saturating_duration_since(*at) < window => false,
            _ => {
                inner.seen.insert(key, now);
                true
            }
        }
    }

    /// Turn a recorded internal call whose other leg is already recorded into a
    /// not-recorded decision with rule `DuplicateLeg`; other decisions pass unchanged.
    pub fn apply(&self, dir: &Directory, decision: Decision, now: Instant) -> Decision {
        if !decision.record
            || !decision.internal
            || self.first_leg(dir, &decision.caller, &decision.dialled, now)
        {
            return decision;
        }
        let reason = format!(
            "internal call from {} to {} is already recorded on its other leg (would have been: {})",
            decision.caller, decision.dialled, decision.reason
        );
        Decision {
            record: false,
            rule: Rule::DuplicateLeg,
            reason,
            announcement: None,
            ..decision
        }
    }

    /// Number of pairs currently remembered.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .len()
    }

    /// True when no pair is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
