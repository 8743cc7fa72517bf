//! Completeness: the calls decided "record" that were answered are reconciled
//! with the sets sealed for them (protocol database: `decisions`, `calls`,
//! `recordings`, `seals`). A call without a set that no failure was reported
//! for is reported as `not_sealed` (once: the failure row it leaves makes the
//! next run skip it). Run daily by the proxy and by `callrec report`.

use std::time::Duration;

use crate::db::{Db, DbError};
use crate::recorder::failure::{FailureReason, FailureReporter, RecordingFailure};

/// How long after its end a call must have its set (sealing takes seconds).
pub const SETTLE: Duration = Duration::from_secs(600);
/// How far back the daily run looks (runs overlap; reported calls are skipped).
pub const DAILY_WINDOW: Duration = Duration::from_secs(7 * 86_400);

/// Which calls to reconcile.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Calls decided from this time on (ms since the epoch).
    pub since_ms: i64,
    /// Now (ms since the epoch).
    pub now_ms: i64,
    /// Calls that ended less than this long ago are left for the next run.
    pub settle: Duration,
    /// A call without a recorded end counts once its decision is older than
    /// this (plus `settle`): it cannot still be running.
    pub max_call: Duration,
}

impl Params {
    /// The `window` up to now.
    pub fn last(window: Duration, settle: Duration, max_call: Duration) -> Params {
        let now_ms = crate::db::now_ms();
        Params {
            since_ms: now_ms - window.as_millis() as i64,
            now_ms,
            settle,
            max_call,
        }
    }
}

/// A recorded call without a sealed set.
#[derive(Debug, Clone)]
pub struct Missing {
    /// Call-ID of the caller's leg.
    pub call_id: String,
    /// When it was decided (ms since the epoch).
    pub decided_ms: i64,
    /// The profile that decided to record it.
    pub profile: Option<String>,
    /// Its final status and end reason, None when no end was recorded.
    pub end: Option<String>,
    /// Reasons already reported for it (before this run).
    pub reported: Vec<String>,
    /// The `not_sealed` failure this run reported for it.
    pub new_failure: Option<RecordingFailure>,
}

/// A failure row, as `callrec report` lists it.
#[derive(Debug, Clone)]
pub struct FailureRow {
    /// Call-ID of the caller's leg.
    pub call_id: String,
    /// Base name of the set, if any.
    pub base_name: Option<String>,
    /// Reason name.
    pub reason: String,
    /// What happened.
    pub detail: String,
    /// When (ms since the epoch).
    pub at_ms: i64,
}

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct Reconciliation {
    /// Answered calls decided "record" that were checked.
    pub checked: usize,
    /// Of those, the ones with a sealed set.
    pub sealed: usize,
    /// The ones without.
    pub missing: Vec<Missing>,
    /// Every failure reported in the window.
    pub failures: Vec<FailureRow>,
}

struct Candidate {
    call_id: String,
    decided_ms: i64,
    profile: Option<String>,
    end: Option<(String, i64)>,
    sealed: bool,
    reported: Vec<String>,
}

/// Reconciles the calls decided in `p`'s window; new differences are
/// reported through `reporter` (database row, mail, metric).
pub fn reconcile(
    db: &Db,
    reporter: &FailureReporter,
    p: &Params,
) -> Result<Reconciliation, DbError> {
    let window: [&dyn crate::db::ToValue; 2] = [&p.since_ms, &p.now_ms];
    let mut candidates = db.read(|c| {
        c.query(
            "SELECT d.call_id, MIN(d.at_ms), MAX(d.profile), \
               (SELECT e.detail FROM calls e WHERE e.call_id = d.call_id AND e.event = 'end' ORDER BY e.id DESC LIMIT 1), \
               (SELECT e.at_ms FROM calls e WHERE e.call_id = d.call_id AND e.event = 'end' ORDER BY e.id DESC LIMIT 1), \
               EXISTS (SELECT 1 FROM recordings r JOIN seals s ON s.base_name = r.base_name WHERE r.call_id = d.call_id) \
             FROM decisions d WHERE d.recorded = 1 AND d.at_ms BETWEEN ?1 AND ?2 \
             GROUP BY d.call_id ORDER BY MIN(d.at_ms)",
            &window,
        )?
        .iter()
        .map(|r| {
            let detail: Option<String> = r.get(3)?;
            let end_ms: Option<i64> = r.get(4)?;
            Ok(Candidate {
                call_id: r.get(0)?,
                decided_ms: r.get(1)?,
                profile: r.get(2)?,
                end: detail.zip(end_ms),
                sealed: r.get(5)?,
                reported: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>, crate::db::SqlError>>()
    })?;
    // The reasons already reported per call, collected here: the engines
    // spell a distinct string aggregate differently.
    let reported: Vec<(String, String)> = db.read(|c| {
        c.query(
            "SELECT DISTINCT f.call_id, f.reason FROM failures f JOIN decisions d ON d.call_id = f.call_id \
             WHERE d.recorded = 1 AND d.at_ms BETWEEN ?1 AND ?2 ORDER BY f.call_id, f.reason",
            &window,
        )?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect()
    })?;
    for c in &mut candidates {
        c.reported = reported
            .iter()
            .filter(|(id, _)| *id == c.call_id)
            .map(|(_, reason)| reason.clone())
            .collect();
    }
    let settle = p.settle.as_millis() as i64;
    let mut out = Reconciliation::default();
    for c in candidates {
        match &c.end {
            Some((_, end_ms)) if *end_ms > p.now_ms - settle => continue,
            // Not answered: no set expected.
            Some((detail, _)) if !detail.starts_with('2') => continue,
            None if c.decided_ms > p.now_ms - settle - p.max_call.as_millis() as i64 => continue,
            _ => {}
        }
        out.checked += 1;
        if c.sealed {
            out.sealed += 1;
            continue;
        }
        let reported = c.reported;
        let end = c.end.map(|(d, _)| d);
        let new_failure = reported.is_empty().then(|| {
            let f = RecordingFailure::now(
                &c.call_id,
                None,
                FailureReason::NotSealed,
                format!(
                    "decided \"record\" at {} (profile {}), {}, but no sealed set exists",
                    rfc3339(c.decided_ms),
                    c.profile.as_deref().unwrap_or("-"),
                    match &end {
                        Some(e) => format!("ended with {e}"),
                        None => "no end recorded (callrec stopped during the call?)".into(),
                    }
                ),
            );
            reporter.report(f.clone());
            f
        });
        out.missing.push(Missing {
            call_id: c.call_id,
            decided_ms: c.decided_ms,
            profile: c.profile,
            end,
            reported,
            new_failure,
        });
    }
    out.failures = db.read(|c| {
        c.query(
            "SELECT call_id, base_name, reason, detail, at_ms FROM failures \
             WHERE at_ms BETWEEN ?1 AND ?2 ORDER BY at_ms, id",
            &window,
        )?
        .iter()
        .map(|r| {
            Ok(FailureRow {
                call_id: r.get(0)?,
                base_name: r.get(1)?,
                reason: r.get(2)?,
                detail: r.get(3)?,
                at_ms: r.get(4)?,
            })
        })
        .collect()
    })?;
    Ok(out)
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(crate::recorder::metadata::rfc3339_ms)
        .unwrap_or_default()
}

impl Reconciliation {
    /// The report as text, one finding per line.
    pub fn text(&self, p: &Params) -> String {
        let mut t = format!(
            "calls decided \"record\" and answered from {} to {}: {} checked, {} with a sealed set, {} without\n",
            rfc3339(p.since_ms),
            rfc3339(p.now_ms),
            self.checked,
            self.sealed,
            self.missing.len()
        );
        for m in &self.missing {
            let status = match (&m.new_failure, m.reported.is_empty()) {
                (Some(_), _) => "reported now as not_sealed".to_string(),
                (None, true) => "not reported".to_string(),
                (None, false) => format!("reported earlier: {}", m.reported.join(",")),
            };
            t.push_str(&format!(
                "MISSING {}  decided {}  profile {}  {}  {status}\n",
                m.call_id,
                rfc3339(m.decided_ms),
                m.profile.as_deref().unwrap_or("-"),
                m.end
                    .as_deref()
                    .map_or("no end recorded".to_string(), |e| format!("ended {e}")),
            ));
        }
        t.push_str(&format!(
            "recording failures in that time: {}\n",
            self.failures.len()
        ));
        for f in &self.failures {
            t.push_str(&format!(
                "FAILURE {}  {}  {}  set {}  {}\n",
                rfc3339(f.at_ms),
                f.reason,
                f.call_id,
                f.base_name.as_deref().unwrap_or("-"),
                f.detail
            ));
        }
        t
    }

    /// The failures this run reported.
    pub fn new_failures(&self) -> Vec<RecordingFailure> {
        self.missing
            .iter()
            .filter_map(|m| m.new_failure.clone())
            .collect()
    }
}

/// Reconciles once a day, the first time `first` after the start (so that
/// recovery at start and the calls then in progress have settled).
pub async fn daily(db: Db, reporter: FailureReporter, max_call: Duration, first: Duration) {
    tokio::time::sleep(first).await;
    loop {
        let (db2, rep) = (db.clone(), reporter.clone());
        let res = tokio::task::spawn_blocking(move || {
            let p = Params::last(DAILY_WINDOW, SETTLE, max_call);
            reconcile(&db2, &rep, &p)
        })
        .await;
        match res {
            Ok(Ok(r)) if r.missing.is_empty() => {
                tracing::info!(
                    checked = r.checked,
                    "reconciliation: every recorded call has its sealed set"
                )
            }
            Ok(Ok(r)) => tracing::warn!(
                checked = r.checked,
                missing = r.missing.len(),
                "reconciliation: recorded calls without a sealed set (see `callrec report`)"
            ),
            Ok(Err(e)) => tracing::error!("reconciliation failed: {e}"),
            Err(e) => tracing::error!("reconciliation task failed: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(86_400)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Record;

    fn decision(db: &Db, call: &str, at_ms: i64) {
        db.send(Record::Decision {
            call_id: call.into(),
            at_ms,
            recorded: true,
            profile: Some("p".into()),
            reason: "r".into(),
        });
    }

    fn end(db: &Db, call: &str, at_ms: i64, status: u16) {
        db.send(Record::Call {
            call_id: call.into(),
            at_ms,
            event: "end".into(),
            direction: None,
            caller: None,
            callee: None,
            detail: Some(format!("{status} x")),
        });
    }

    #[test]
    fn answered_calls_without_a_set_are_reported_once() {
        for engine in crate::db::scratch::ENGINES {
            let dir = tempfile::tempdir().unwrap();
            reported_once(&crate::db::scratch::ScratchDb::new(engine, dir.path()).open());
        }
    }

    fn reported_once(db: &Db) {
        let db = db.clone();
        // sealed: has a recording and a seal; lost: answered, no set;
        // busy: not answered; failed: start_failed reported; running: no end yet.
        for (c, t) in [
            ("sealed", 1000),
            ("lost", 1100),
            ("busy", 1200),
            ("failed", 1300),
        ] {
            decision(&db, c, t);
        }
        decision(&db, "running", 9000);
        end(&db, "sealed", 2000, 200);
        end(&db, "lost", 2000, 200);
        end(&db, "busy", 2000, 486);
        end(&db, "failed", 2000, 200);
        db.send(Record::Recording {
            call_id: "sealed".into(),
            base_name: "b1".into(),
            profile: None,
            start_ms: 1000,
            end_ms: Some(2000),
            caller: None,
            callee: None,
            answered_by: None,
        });
        db.send(Record::Seal {
            base_name: "b1".into(),
            at_ms: 2001,
            checksum_sha256: "x".into(),
            files: 3,
            chain: None,
        });
        db.send(Record::Failure {
            call_id: "failed".into(),
            base_name: None,
            reason: "start_failed".into(),
            detail: "d".into(),
            at_ms: 1300,
        });
        db.flush();
        let p = Params {
            since_ms: 0,
            now_ms: 10_000,
            settle: Duration::from_millis(100),
            max_call: Duration::from_secs(3600),
        };
        let rep = FailureReporter::with_sinks(Some(db.clone()), None);
        let r = reconcile(&db, &rep, &p).unwrap();
        db.flush();
        assert_eq!((r.checked, r.sealed), (3, 1));
        let names: Vec<_> = r.missing.iter().map(|m| m.call_id.as_str()).collect();
        assert_eq!(names, ["lost", "failed"]);
        assert_eq!(r.new_failures().len(), 1);
        assert_eq!(r.new_failures()[0].call_id, "lost");
        assert_eq!(r.missing[1].reported, ["start_failed"]);
        let again = reconcile(&db, &rep, &p).unwrap();
        assert_eq!(again.missing.len(), 2, "still missing");
        assert!(again.new_failures().is_empty(), "reported only once");
        assert!(again.text(&p).contains("reported earlier: not_sealed"));
        assert_eq!(db.count("failures").unwrap(), 2);
    }
}
