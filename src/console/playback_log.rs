//! Which playbacks the access log already names. A player fetches one
//! recording in many range requests; the first request of a user's session
//! for a set and party writes the `playback` row and verifies the set afresh, and
//! the requests of the next minutes add no rows. Any audio request that no
//! recent row covers writes one, whatever range it asks for, so no byte of
//! a recording leaves the console without a row naming who took it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one `playback` row covers a session's further requests for the
/// same set and party.
const COVERS: Duration = Duration::from_secs(10 * 60);
/// Most notings kept; when full, the expired go, and if none has expired
/// all go (the next requests then write rows again: more rows, never fewer).
const MAX_KEPT: usize = 10_000;

/// Whose request: the user and her session (users signed in by a trusted
/// reverse proxy share one empty session id, so the user is part of it).
#[derive(Clone, Copy)]
pub(super) struct Viewer<'a> {
    pub user: &'a str,
    pub session: &'a str,
}

type Key = (String, String, String, String);

fn key(v: Viewer, set: &str, party: &str) -> Key {
    (v.user.into(), v.session.into(), set.into(), party.into())
}

/// (user, session id, set id, party) → when its row was written.
#[derive(Default)]
pub(super) struct PlaybackLog {
    written: Mutex<HashMap<Key, Instant>>,
}

impl PlaybackLog {
    /// Whether a row written for this session, set and party in the last
    /// minutes covers a request now.
    pub(super) fn covered(&self, v: Viewer, set: &str, party: &str) -> bool {
        self.covered_at(v, set, party, Instant::now())
    }

    fn covered_at(&self, v: Viewer, set: &str, party: &str, now: Instant) -> bool {
        self.written
            .lock()
            .expect("playback log poisoned")
            .get(&key(v, set, party))
            .is_some_and(|at| now.saturating_duration_since(*at) < COVERS)
    }

    /// Notes that a row was written for this session, set and party.
    pub(super) fn written(&self, v: Viewer, set: &str, party: &str) {
        self.written_at(v, set, party, Instant::now())
    }

    fn written_at(&self, v: Viewer, set: &str, party: &str, now: Instant) {
        let mut w = self.written.lock().expect("playback log poisoned");
        if w.len() >= MAX_KEPT {
            w.retain(|_, at| now.saturating_duration_since(*at) < COVERS);
            if w.len() >= MAX_KEPT {
                w.clear();
            }
        }
        w.insert(key(v, set, party), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v<'a>(user: &'a str, session: &'a str) -> Viewer<'a> {
        Viewer { user, session }
    }

    #[test]
    fn a_row_covers_its_own_user_session_set_and_party_for_a_while() {
        let log = PlaybackLog::default();
        let t0 = Instant::now();
        assert!(!log.covered_at(v("ann", "s1"), "set", "both", t0));
        log.written_at(v("ann", "s1"), "set", "both", t0);
        assert!(log.covered_at(v("ann", "s1"), "set", "both", t0 + Duration::from_secs(60)));
        // Another session, set or party needs its own row.
        assert!(!log.covered_at(v("ann", "s2"), "set", "both", t0));
        assert!(!log.covered_at(v("ann", "s1"), "other", "both", t0));
        assert!(!log.covered_at(v("ann", "s1"), "set", "caller", t0));
        // And so does the same one later.
        assert!(!log.covered_at(v("ann", "s1"), "set", "both", t0 + COVERS));
    }

    #[test]
    fn users_of_the_reverse_proxy_share_no_row() {
        // They all have the empty session id.
        let log = PlaybackLog::default();
        let t0 = Instant::now();
        log.written_at(v("ann", ""), "set", "both", t0);
        assert!(log.covered_at(v("ann", ""), "set", "both", t0));
        assert!(!log.covered_at(v("bob", ""), "set", "both", t0));
    }

    #[test]
    fn a_full_log_forgets_rather_than_covers() {
        let log = PlaybackLog::default();
        let t0 = Instant::now();
        for i in 0..MAX_KEPT {
            log.written_at(v("ann", &format!("s{i}")), "set", "both", t0);
        }
        log.written_at(v("ann", "new"), "set", "both", t0);
        assert!(log.covered_at(v("ann", "new"), "set", "both", t0));
        assert!(log.written.lock().unwrap().len() <= MAX_KEPT);
    }
}
