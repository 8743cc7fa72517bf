//! Restarts lose nothing (R6.6): sets pending when the Spool (and the database
//! handle) are dropped are found again by a new Spool on the same data directory
//! and delivered; targets that already confirmed a set are not uploaded to again;
//! an interrupted entry leaves the sealer's files untouched.

mod storage_support;

use std::time::Duration;

use callrec::db::Db;
use callrec::spool::Spool;
use callrec::storage::Secrets;
use storage_support::{assert_delivered, eventually, fast_spool, make_sets};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_sets_are_delivered_after_a_restart() {
    let work = tempfile::tempdir().unwrap();
    let made = make_sets(work.path(), 3);
    let data = work.path().join("data");
    let good = work.path().join("good");
    let bad = work.path().join("bad");
    let good_url = format!("file://{}/$Y", good.display());
    let bad_url = format!("file://{}/$Y", bad.display());
    // The "bad" target cannot create its folder: a plain file sits where `$Y` goes.
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("2026"), b"not a folder").unwrap();
    let targets = vec![good_url.clone(), bad_url.clone()];

    {
        let db = Db::open_in(&data).unwrap();
        let spool = Spool::start(fast_spool(&data), db.clone(), Secrets::new(), None).unwrap();
        for m in &made {
            spool.enqueue(&m.set, &targets).unwrap();
        }
        let good_done = eventually(Duration::from_secs(20), || {
            spool
                .pending()
                .iter()
                .all(|p| p.waiting_for == vec![bad_url.clone()])
        })
        .await;
        assert!(
            good_done,
            "good target should confirm every set: {:?}",
            spool.pending()
        );
        let bad_failed = eventually(Duration::from_secs(20), || {
            db.flush();
            made.iter().all(|m| {
                db.attempts(&m.set.base_name)
                    .unwrap()
                    .iter()
                    .any(|a| a.target == bad_url && !a.ok)
            })
        })
        .await;
        assert!(bad_failed, "bad target should have failed for every set");
        assert_eq!(spool.pending().len(), 3);
        // "Crash": drop the spool and the database handle with work pending.
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for m in &made {
        assert!(
            data.join("spool").join(&m.set.base_name).is_dir(),
            "set kept in the spool"
        );
    }

    // The target is repaired; the process starts again.
    std::fs::remove_file(bad.join("2026")).unwrap();
    let db = Db::open_in(&data).unwrap();
    assert_eq!(
        db.pending_uploads().unwrap().len(),
        3,
        "the database knows what is pending"
    );
    let spool = Spool::start(fast_spool(&data), db.clone(), Secrets::new(), None).unwrap();
    assert!(
        spool.wait_empty(Duration::from_secs(20)).await,
        "pending after restart: {:?}",
        spool.pending()
    );
    for m in &made {
        assert_delivered(&good.join("2026"), m);
        assert_delivered(&bad.join("2026"), m);
    }
    db.flush();
    assert!(db.pending_uploads().unwrap().is_empty());
    for m in &made {
        let attempts = db.attempts(&m.set.base_name).unwrap();
        let good_attempts = attempts.iter().filter(|a| a.target == good_url).count();
        assert_eq!(
            good_attempts, 1,
            "a confirmed target is not uploaded to again: {attempts:?}"
        );
        assert!(attempts.iter().any(|a| a.target == bad_url && a.ok));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_entry_keeps_the_originals() {
    let work = tempfile::tempdir().unwrap();
    let made = make_sets(work.path(), 1);
    let m = &made[0];
    let data = work.path().join("data");
    // A crash while entering: half a staging folder, no manifest.
    let staging = data
        .join("spool")
        .join(format!(".incoming-{}", m.set.base_name));
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::hard_link(
        &m.set.files[0],
        staging.join(m.set.files[0].file_name().unwrap()),
    )
    .unwrap();

    let db = Db::open_in(&data).unwrap();
    let spool = Spool::start(fast_spool(&data), db.clone(), Secrets::new(), None).unwrap();
    assert!(!staging.exists(), "the interrupted entry is cleared");
    assert!(spool.pending().is_empty());
    for f in &m.set.files {
        assert!(f.exists(), "{} must survive", f.display());
    }
    // The set can then enter normally.
    let dest = work.path().join("out");
    let url = format!("file://{}", dest.display());
    spool.enqueue(&m.set, std::slice::from_ref(&url)).unwrap();
    assert!(spool.wait_empty(Duration::from_secs(20)).await);
    assert_delivered(&dest, m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_retry_skips_the_back_off_and_status_lists_the_queue() {
    let work = tempfile::tempdir().unwrap();
    let made = make_sets(work.path(), 1);
    let m = &made[0];
    let data = work.path().join("data");
    let out = work.path().join("out");
    std::fs::write(&out, b"blocks the folder").unwrap();
    let url = format!("file://{}", out.display());
    let mut config = fast_spool(&data);
    config.initial_backoff = Duration::from_secs(3600);
    config.max_backoff = Duration::from_secs(3600);
    let db = Db::open_in(&data).unwrap();
    let spool = Spool::start(config, db.clone(), Secrets::new(), None).unwrap();
    spool.add_targets(std::slice::from_ref(&url));
    spool.enqueue(&m.set, std::slice::from_ref(&url)).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            db.flush();
            !db.attempts(&m.set.base_name).unwrap().is_empty()
        })
        .await
    );
    let status = callrec::spool::status_text(&db.uploads().unwrap());
    assert!(
        status.contains("pending") && status.contains(&m.set.base_name) && status.contains(&url),
        "{status}"
    );
    assert!(status.contains("1 of 1 uploads pending"), "{status}");
    // Repaired, but the next retry is an hour away: `callrec uploads retry` asks for it now.
    std::fs::remove_file(&out).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        spool.pending().len(),
        1,
        "back-off holds without a retry request"
    );
    callrec::spool::request_retry(spool.dir()).unwrap();
    assert!(
        spool.wait_empty(Duration::from_secs(10)).await,
        "retry request not acted on"
    );
    assert_delivered(&out, m);
    db.flush();
    let status = callrec::spool::status_text(&db.uploads().unwrap());
    assert!(status.contains("0 of 1 uploads pending"), "{status}");
}
