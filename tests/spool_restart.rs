//! Restarts lose nothing: sets pending when the Spool (and the database
//! handle) are dropped are found again by a new Spool on the same data directory
//! and delivered; targets that already confirmed a set are not uploaded to again;
//! an interrupted entry leaves the sealer's files untouched. The queue is the
//! database's `uploads` table: after a restart a row removed
//! from it is not uploaded, a row added to it is, the stored next retry time is
//! kept, a set folder the database does not know is queued again from its entry
//! marker, and a pending row without its files becomes `lost`.

mod storage_support;

use std::time::Duration;

use callrec::db::{Db, UploadRow};
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

/// Opens the protocol database below `data` for direct edits, as an operator would.
fn sql(data: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(data.join(callrec::db::DB_FILE_NAME)).unwrap()
}

/// The row for `target` among `rows`, if any.
fn row<'a>(rows: &'a [UploadRow], target: &str) -> Option<&'a UploadRow> {
    rows.iter().find(|r| r.target == target)
}

/// Names of the files directly in `folder` (empty when it does not exist).
fn names_in(folder: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(folder)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_queue_is_read_from_the_database() {
    let work = tempfile::tempdir().unwrap();
    let made = make_sets(work.path(), 1);
    let m = &made[0];
    let data = work.path().join("data");
    let (a, b, c) = (
        work.path().join("a"),
        work.path().join("b"),
        work.path().join("c"),
    );
    let url = |p: &std::path::Path| format!("file://{}", p.display());
    let (a_url, b_url, c_url) = (url(&a), url(&b), url(&c));
    // A and B are blocked (a plain file where the folder goes), so the set stays queued.
    std::fs::write(&a, b"blocks").unwrap();
    std::fs::write(&b, b"blocks").unwrap();
    {
        let db = Db::open_in(&data).unwrap();
        let spool = Spool::start(fast_spool(&data), db.clone(), Secrets::new(), None).unwrap();
        spool
            .enqueue(&m.set, &[a_url.clone(), b_url.clone()])
            .unwrap();
        // Queued means committed: the rows are there without a flush.
        let rows = db.uploads_of(&m.set.base_name).unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        let failed_both = eventually(Duration::from_secs(20), || {
            let rows = db.uploads_of(&m.set.base_name).unwrap();
            rows.len() == 2 && rows.iter().all(|r| r.attempts >= 1)
        })
        .await;
        assert!(failed_both, "{:?}", db.uploads_of(&m.set.base_name));
        let rows = db.uploads_of(&m.set.base_name).unwrap();
        for r in &rows {
            assert_eq!(r.state.as_str(), "pending");
            assert!(r.last_error.as_deref().unwrap_or("").contains(&r.target));
            assert!(
                r.next_ms.is_some_and(|n| n >= r.queued_ms),
                "next retry time stored: {r:?}"
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // An operator edits the queue while callrec is down: B is taken out, C is added.
    let conn = sql(&data);
    let n = conn
        .execute(
            "DELETE FROM uploads WHERE base_name = ?1 AND target = ?2",
            [&m.set.base_name, &b_url],
        )
        .unwrap();
    assert_eq!(n, 1);
    conn.execute(
        "INSERT INTO uploads (base_name, target, queued_ms, state) VALUES (?1, ?2, 0, 'pending')",
        [&m.set.base_name, &c_url],
    )
    .unwrap();
    drop(conn);
    std::fs::remove_file(&a).unwrap();
    std::fs::remove_file(&b).unwrap();
    // The entry marker still names A and B: it is not the queue.
    let marker =
        std::fs::read_to_string(data.join("spool").join(&m.set.base_name).join("spool.json"))
            .unwrap();
    assert!(
        marker.contains(&b_url) && !marker.contains(&c_url),
        "{marker}"
    );

    let db = Db::open_in(&data).unwrap();
    let spool = Spool::start(fast_spool(&data), db.clone(), Secrets::new(), None).unwrap();
    assert!(
        spool.wait_empty(Duration::from_secs(20)).await,
        "pending after restart: {:?}",
        spool.pending()
    );
    assert_delivered(&a, m);
    assert_delivered(&c, m);
    assert!(
        names_in(&b).is_empty(),
        "B was taken out of the queue but got {:?}",
        names_in(&b)
    );
    assert!(!data.join("spool").join(&m.set.base_name).exists());
    let rows = db.uploads_of(&m.set.base_name).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(row(&rows, &a_url).unwrap().state.as_str(), "done");
    assert_eq!(row(&rows, &c_url).unwrap().state.as_str(), "done");
    assert!(row(&rows, &b_url).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_unknown_to_the_database_is_queued_from_its_marker_and_files_gone_mean_lost() {
    let work = tempfile::tempdir().unwrap();
    let made = make_sets(work.path(), 1);
    let m = &made[0];
    let data = work.path().join("data");
    let dest = work.path().join("out");
    let dest_url = format!("file://{}", dest.display());
    std::fs::write(&dest, b"blocks").unwrap();
    {
        let db = Db::open_in(&data).unwrap();
        let spool = Spool::start(fast_spool(&data), db.clone(), Secrets::new(), None).unwrap();
        spool
            .enqueue(&m.set, std::slice::from_ref(&dest_url))
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A crash between moving the files and committing the rows: the database has none.
    let conn = sql(&data);
    conn.execute(
        "DELETE FROM uploads WHERE base_name = ?1",
        [&m.set.base_name],
    )
    .unwrap();
    // And a pending row whose set was removed from the spool by hand.
    conn.execute(
        "INSERT INTO uploads (base_name, target, queued_ms, state) VALUES ('20260301_090000_in_1_2_gone', ?1, 0, 'pending')",
        [&dest_url],
    )
    .unwrap();
    drop(conn);
    std::fs::remove_file(&dest).unwrap();

    let db = Db::open_in(&data).unwrap();
    let spool = Spool::start(fast_spool(&data), db.clone(), Secrets::new(), None).unwrap();
    assert!(
        spool.wait_empty(Duration::from_secs(20)).await,
        "pending after restart: {:?}",
        spool.pending()
    );
    assert_delivered(&dest, m);
    db.flush();
    let rows = db.uploads_of(&m.set.base_name).unwrap();
    assert_eq!(rows.len(), 1, "rows re-created from the marker: {rows:?}");
    assert_eq!(
        (rows[0].target.as_str(), rows[0].state.as_str()),
        (dest_url.as_str(), "done")
    );
    let gone = db.uploads_of("20260301_090000_in_1_2_gone").unwrap();
    assert_eq!(gone[0].state.as_str(), "lost", "{gone:?}");
    assert!(gone[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("not in the spool"));
    assert!(db.count("errors").unwrap() >= 1);
    let status = callrec::spool::status_text(&db.uploads().unwrap());
    assert!(status.contains("0 of 2 uploads pending"), "{status}");
    assert!(status.contains("1 uploads lost"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_retry_time_and_attempts_survive_a_restart() {
    let work = tempfile::tempdir().unwrap();
    let made = make_sets(work.path(), 1);
    let m = &made[0];
    let data = work.path().join("data");
    let out = work.path().join("out");
    let url = format!("file://{}", out.display());
    std::fs::write(&out, b"blocks").unwrap();
    let mut slow = fast_spool(&data);
    slow.initial_backoff = Duration::from_secs(3600);
    slow.max_backoff = Duration::from_secs(3600);
    {
        let db = Db::open_in(&data).unwrap();
        let spool = Spool::start(slow.clone(), db.clone(), Secrets::new(), None).unwrap();
        spool.enqueue(&m.set, std::slice::from_ref(&url)).unwrap();
        assert!(
            eventually(Duration::from_secs(10), || {
                db.pending_uploads().unwrap().first().map(|r| r.attempts) == Some(1)
            })
            .await
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::remove_file(&out).unwrap();
    let db = Db::open_in(&data).unwrap();
    let before = db.pending_uploads().unwrap()[0].clone();
    assert!(
        before.next_ms.unwrap() > callrec::db::now_ms() + 2500 * 1000,
        "retry 48 to 60 min away (back-off with jitter): {before:?}"
    );
    let spool = Spool::start(slow, db.clone(), Secrets::new(), None).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        spool.pending().len(),
        1,
        "the stored retry time holds across the restart"
    );
    assert_eq!(db.pending_uploads().unwrap()[0].attempts, 1);
    callrec::spool::request_retry(spool.dir()).unwrap();
    assert!(spool.wait_empty(Duration::from_secs(10)).await);
    assert_delivered(&out, m);
    let rows = db.uploads().unwrap();
    assert_eq!((rows[0].state.as_str(), rows[0].attempts), ("done", 2));
}

/// The spool's hidden entries (staging, spare folders).
fn hidden_in(spool: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = names_in(spool)
        .into_iter()
        .filter(|n| n.starts_with('.') && spool.join(n).is_dir())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_folder_carries_the_next_set_and_a_restart_clears_it() {
    let work = tempfile::tempdir().unwrap();
    let made = make_sets(work.path(), 3);
    let data = work.path().join("data");
    let out = work.path().join("out");
    let url = format!("file://{}", out.display());
    let spool_dir = data.join("spool");
    {
        let db = Db::open_in(&data).unwrap();
        let spool = Spool::start(fast_spool(&data), db.clone(), Secrets::new(), None).unwrap();
        spool
            .enqueue(&made[0].set, std::slice::from_ref(&url))
            .unwrap();
        assert!(spool.wait_empty(Duration::from_secs(20)).await);
        let spares = hidden_in(&spool_dir);
        assert_eq!(spares.len(), 1, "the delivered folder is kept: {spares:?}");
        assert_eq!(
            names_in(&spool_dir.join(&spares[0])),
            vec!["spool.json"],
            "emptied but for its old marker"
        );
        for m in &made[1..] {
            spool.enqueue(&m.set, std::slice::from_ref(&url)).unwrap();
            assert!(spool.wait_empty(Duration::from_secs(20)).await);
        }
        assert_eq!(
            hidden_in(&spool_dir).len(),
            1,
            "one folder carried every set"
        );
        // Each set arrives whole and alone: no old set's file, no marker.
        let mut expected: Vec<String> = made
            .iter()
            .flat_map(|m| m.contents.iter().map(|(n, _)| n.clone()))
            .collect();
        expected.sort();
        let mut got = names_in(&out);
        got.sort();
        assert_eq!(got, expected);
        for m in &made {
            assert_delivered(&out, m);
        }
        let marker: serde_json::Value = serde_json::from_slice(
            &std::fs::read(spool_dir.join(&hidden_in(&spool_dir)[0]).join("spool.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(marker["base_name"], made[2].set.base_name.as_str());
    }
    let db = Db::open_in(&data).unwrap();
    let _spool = Spool::start(fast_spool(&data), db, Secrets::new(), None).unwrap();
    assert!(
        hidden_in(&spool_dir).is_empty(),
        "a restart clears the spare folders"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_naming_another_set_does_not_queue_the_folder() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let spool_dir = data.join("spool");
    let folder = spool_dir.join("20260301_101500_in_4930123_200_00a0");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("20260301_101501_in_4930123_200_00a1.wav"),
        b"audio",
    )
    .unwrap();
    let marker = serde_json::json!({
        "base_name": "20260301_101501_in_4930123_200_00a1",
        "checksum_sha256": "00",
        "files": ["20260301_101501_in_4930123_200_00a1.wav"],
        "targets": [format!("file://{}/out", work.path().display())],
        "queued_at": "2026-03-01T10:15:01.000Z"
    });
    std::fs::write(folder.join("spool.json"), marker.to_string()).unwrap();
    let db = Db::open_in(&data).unwrap();
    let queued = callrec::spool::rebuild_queue(&spool_dir, &db).unwrap();
    assert!(queued.is_empty(), "queued under the wrong name: {queued:?}");
    db.flush();
    assert!(db.pending_uploads().unwrap().is_empty());
    assert!(folder.is_dir(), "the folder is left for the operator");
}
