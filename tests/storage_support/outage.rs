//! The "target down, then back" scenario every storage target goes through: a
//! sealed set is queued while the target is unusable (server stopped, disk
//! full, a wrong secret), every attempt fails with an error that names the
//! problem, the set stays in the spool and nothing counts as delivered on the
//! target; once the target is back (with a restart of the spool when the fix
//! is a new secret) the set arrives byte-identical and leaves the spool.

use std::path::{Path, PathBuf};
use std::time::Duration;

use callrec::db::Db;
use callrec::spool::Spool;
use callrec::storage::Secrets;

use super::{eventually, fast_spool, make_sets, MadeSet};

/// How the scenario drives one storage target.
pub trait Outage {
    /// The target URL the set is queued for.
    fn url(&self) -> String;
    /// The secrets the spool starts with while the target is down.
    fn secrets(&self) -> Secrets;
    /// Makes the target unusable; called with the set before it is queued.
    /// Nothing to do when `secrets` already makes it unusable.
    fn down(&mut self, _made: &MadeSet) {}
    /// Words every failed attempt's error must contain (the problem and where).
    fn error_says(&self) -> Vec<String>;
    /// Words no error may contain (a wrong secret must not be shown).
    fn error_hides(&self) -> Vec<String> {
        Vec::new()
    }
    /// Brings the target back. `Some(secrets)` when the fix is a new secret,
    /// which takes a restart of the spool; `None` when the running spool's
    /// retries must find it by themselves.
    fn up(&mut self) -> Option<Secrets>;
    /// The bytes of the set's file `name` as the target holds them, `None`
    /// when the target has no such file.
    fn read_back(&self, made: &MadeSet, name: &str) -> Option<Vec<u8>>;
}

/// What the scenario leaves for further checks by the caller.
pub struct OutageRun {
    pub db: Db,
    pub made: MadeSet,
    pub data: PathBuf,
}

/// Runs the scenario in `work` (a folder the caller owns) against `target`.
pub async fn target_down_then_back(work: &Path, target: &mut impl Outage) -> OutageRun {
    let made = make_sets(work, 1).remove(0);
    let base = made.set.base_name.clone();
    let url = target.url();
    let data = work.join("data");
    target.down(&made);
    let db = Db::open_in(&data).unwrap();
    let spool = Spool::start(fast_spool(&data), db.clone(), target.secrets(), None).unwrap();
    spool
        .enqueue(&made.set, std::slice::from_ref(&url))
        .unwrap();

    // Two failed attempts: the first error is no accident of timing, and the
    // spool keeps retrying.
    let failed_twice = eventually(Duration::from_secs(30), || {
        db.flush();
        db.attempts(&base).unwrap().iter().filter(|a| !a.ok).count() >= 2
    })
    .await;
    let attempts = db.attempts(&base).unwrap();
    assert!(
        failed_twice,
        "expected two failed attempts at {url}: {attempts:?}"
    );
    assert!(attempts.iter().all(|a| !a.ok), "{attempts:?}");
    let err = attempts[0].error.clone().unwrap_or_default();
    for word in target.error_says() {
        assert!(err.contains(&word), "the error names {word:?}: {err}");
    }
    for word in target.error_hides() {
        assert!(!err.contains(&word), "the error shows {word:?}: {err}");
    }
    assert_eq!(spool.pending().len(), 1, "the set stays in the spool");
    for (name, _) in &made.contents {
        assert!(
            data.join("spool").join(&base).join(name).exists(),
            "{name} is kept in the spool"
        );
        assert_ne!(
            target.read_back(&made, name).as_deref(),
            Some(&made.contents.iter().find(|c| &c.0 == name).unwrap().1[..]),
            "{name} counts as delivered while the target is down"
        );
    }

    let (db, spool) = match target.up() {
        None => (db, spool),
        Some(fixed) => {
            drop(spool);
            drop(db);
            let db = Db::open_in(&data).unwrap();
            let spool = Spool::start(fast_spool(&data), db.clone(), fixed, None).unwrap();
            (db, spool)
        }
    };
    assert!(
        spool.wait_empty(Duration::from_secs(60)).await,
        "not delivered after the target came back: pending {:?}, attempts {:?}",
        spool.pending(),
        db.attempts(&base)
    );
    for (name, bytes) in &made.contents {
        let got = target
            .read_back(&made, name)
            .unwrap_or_else(|| panic!("{name} missing on the target {url}"));
        assert!(
            got == *bytes,
            "{name} differs on the target ({} vs {} bytes)",
            got.len(),
            bytes.len()
        );
    }
    assert!(!data.join("spool").join(&base).exists(), "spool emptied");
    db.flush();
    OutageRun { db, made, data }
}
