//! Record an internal call once when both of its legs pass the proxy:
//! the call flow asks `LegDedup` before recording. The first leg of a (caller,
//! callee) pair takes a `LegClaim`; a second sighting while that claim is held
//! and younger than the window is the other leg of the same call. The claim is
//! dropped when the first leg's call ends, so a redial right after a short call
//! is a new call and is recorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::decide::{Decision, Rule};
use super::directory::Directory;
use super::numbers::Number;

type PairKey = (String, String);

/// Remembers the (caller, callee) pairs of internal calls being recorded.
#[derive(Debug)]
pub struct LegDedup {
    window: Duration,
    inner: Arc<Mutex<Inner>>,
    next_token: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Pair → (when its first leg was seen, the claim's token).
    held: HashMap<PairKey, (Instant, u64)>,
}

/// Held by the call that recorded the first leg of a pair; dropping it (the call
/// ended) frees the pair.
#[derive(Debug)]
pub struct LegClaim {
    inner: Weak<Mutex<Inner>>,
    key: PairKey,
    token: u64,
}

impl Drop for LegClaim {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
            // Only our own entry: a later claim of the same pair is not ours to free.
            if inner
                .held
                .get(&self.key)
                .is_some_and(|(_, t)| *t == self.token)
            {
                inner.held.remove(&self.key);
            }
        }
    }
}

impl LegDedup {
    /// A de-duplicator for which a second leg must arrive within `window` of the first.
    pub fn new(window: Duration) -> LegDedup {
        LegDedup {
            window,
            inner: Arc::default(),
            next_token: AtomicU64::new(1),
        }
    }

    /// For the first leg of a (caller, callee) pair: a claim to keep for the call's
    /// lifetime (record it). None for the other leg of a call whose first leg holds
    /// the pair (do not record again).
    ///
    /// Numbers are compared by the party behind them (`Directory::party_key`), so an
    /// extension on one leg and the external number on the other are the same party.
    pub fn claim(
        &self,
        dir: &Directory,
        caller: &Number,
        callee: &Number,
        now: Instant,
    ) -> Option<LegClaim> {
        let key = (dir.party_key(caller), dir.party_key(callee));
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, _)) = inner.held.get(&key) {
            if now.saturating_duration_since(*at) < self.window {
                return None;
            }
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        inner.held.insert(key.clone(), (now, token));
        Some(LegClaim {
            inner: Arc::downgrade(&self.inner),
            key,
            token,
        })
    }

    /// Turns a recorded internal call whose other leg is already recorded into a
    /// not-recorded decision with rule `DuplicateLeg`; other decisions pass
    /// unchanged. The claim of a first leg comes back with it.
    pub fn apply(
        &self,
        dir: &Directory,
        decision: Decision,
        now: Instant,
    ) -> (Decision, Option<LegClaim>) {
        if !decision.record || !decision.internal {
            return (decision, None);
        }
        if let Some(claim) = self.claim(dir, &decision.caller, &decision.dialled, now) {
            return (decision, Some(claim));
        }
        let reason = format!(
            "internal call from {} to {} is already recorded on its other leg (would have been: {})",
            decision.caller, decision.dialled, decision.reason
        );
        let decision = Decision {
            record: false,
            rule: Rule::DuplicateLeg,
            reason,
            announcement: None,
            ..decision
        };
        (decision, None)
    }

    /// Number of pairs currently held.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .held
            .len()
    }

    /// True when no pair is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
