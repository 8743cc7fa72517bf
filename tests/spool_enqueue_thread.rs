//! The sealer hands sets to the spool on a plain thread (no tokio runtime
//! there). A set for a target whose upload worker is not running yet must still
//! be queued and delivered: the spool starts that worker on its own runtime,
//! whichever thread enqueues. A group of sets is taken in together.

mod storage_support;

use std::time::Duration;

use callrec::db::Db;
use callrec::spool::Spool;
use callrec::storage::Secrets;
use storage_support::{assert_delivered, eventually, fast_spool, make_sets};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_enqueued_from_a_plain_thread_for_a_new_target_is_delivered() {
    let work = tempfile::tempdir().unwrap();
    let made = make_sets(work.path(), 1).remove(0);
    let data = work.path().join("data");
    let dest = work.path().join("dest");
    let url = format!("file://{}", dest.display());
    let db = Db::open_in(&data).unwrap();
    // No add_targets: the target's worker does not exist before the set comes.
    let spool = Spool::start(fast_spool(&data), db.clone(), Secrets::new(), None).unwrap();

    let (s, set, targets) = (spool.clone(), made.set.clone(), vec![url.clone()]);
    let enqueued = std::thread::spawn(move || s.enqueue(&set, &targets).map(|_| ()))
        .join()
        .map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        });
    assert!(
        matches!(enqueued, Ok(Ok(()))),
        "enqueue from a plain thread: {enqueued:?}"
    );

    let delivered = eventually(Duration::from_secs(20), || spool.pending().is_empty()).await;
    assert!(delivered, "still pending: {:?}", spool.pending());
    assert_delivered(&dest, &made);
    db.flush();
    let rows = db.uploads_of(&made.set.base_name).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].state, callrec::db::UploadState::Done);
}

/// The sealer hands the spool a whole group: every good set of it is queued
/// and delivered, and a set the spool must refuse (no target; already in the
/// spool) gets its own error and keeps its files, without costing the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_queued_together_and_a_refused_set_costs_only_itself() {
    let work = tempfile::tempdir().unwrap();
    let made = make_sets(work.path(), 3);
    let data = work.path().join("data");
    let dest = work.path().join("dest");
    let url = format!("file://{}", dest.display());
    let db = Db::open_in(&data).unwrap();
    let spool = Spool::start(fast_spool(&data), db.clone(), Secrets::new(), None).unwrap();

    let one = [url.clone()];
    let none: [String; 0] = [];
    let group = [
        (&made[0].set, &one[..]),
        (&made[1].set, &none[..]),
        (&made[2].set, &one[..]),
        (&made[0].set, &one[..]), // handed over twice
    ];
    let results = spool.enqueue_group(&group);
    assert_eq!(results.len(), 4);
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    let refused = |r: &Result<std::path::PathBuf, callrec::spool::SpoolError>| {
        r.as_ref().err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert!(refused(&results[1]).contains("target"), "{results:?}");
    assert!(refused(&results[3]).contains("already"), "{results:?}");
    // The refused set without a target keeps its files where they were.
    assert!(made[1].set.files.iter().all(|f| f.exists()));

    let delivered = eventually(Duration::from_secs(20), || spool.pending().is_empty()).await;
    assert!(delivered, "still pending: {:?}", spool.pending());
    for i in [0, 2] {
        assert_delivered(&dest, &made[i]);
    }
    db.flush();
    for i in [0, 2] {
        let rows = db.uploads_of(&made[i].set.base_name).unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].state, callrec::db::UploadState::Done);
    }
    assert!(db.uploads_of(&made[1].set.base_name).unwrap().is_empty());
}
