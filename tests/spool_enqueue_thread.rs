//! The sealer hands sets to the spool on a plain thread (no tokio runtime
//! there). A set for a target whose upload worker is not running yet must still
//! be queued and delivered: the spool starts that worker on its own runtime,
//! whichever thread enqueues.

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
