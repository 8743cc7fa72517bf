//! Folder targets through the spool: sets land byte-identical in the templated
//! folder (`$Y/$M` of the recording's start) and pass `shasum -c` there; a target
//! whose disk is full keeps the set in the spool, is retried, and gets it once
//! space is back.

mod storage_support;

use std::time::Duration;

use callrec::db::Db;
use callrec::spool::Spool;
use callrec::storage::Secrets;
use storage_support::{assert_delivered, eventually, fast_spool, make_sets};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_land_in_the_templated_folder() {
    let work = tempfile::tempdir().unwrap();
    let made = make_sets(work.path(), 2);
    let dest = work.path().join("archive");
    let url = format!("file://{}/calls/$Y/$M/day-$D", dest.display());
    let data = work.path().join("data");
    let db = Db::open_in(&data).unwrap();
    let spool = Spool::start(fast_spool(&data), db.clone(), Secrets::new(), None).unwrap();
    for m in &made {
        let at = spool.enqueue(&m.set, std::slice::from_ref(&url)).unwrap();
        assert_eq!(at, data.join("spool").join(&m.set.base_name));
        // The set left the sealer's folder.
        assert!(
            !m.set.files[0].exists(),
            "original files are moved into the spool"
        );
    }
    assert!(
        spool.wait_empty(Duration::from_secs(20)).await,
        "spool not emptied: {:?}",
        spool.pending()
    );
    let folder = dest.join("calls/2026/03/day-01");
    for m in &made {
        assert_delivered(&folder, m);
    }
    // No temporary names left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    assert!(!data.join("spool").join(&made[0].set.base_name).exists());
    db.flush();
    let rows = db.uploads().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.state.as_str() == "done" && r.attempts == 1 && r.target == url),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_keeps_the_set_in_the_spool_until_space_is_back() {
    let work = tempfile::tempdir().unwrap();
    let made = make_sets(work.path(), 1);
    let m = &made[0];
    let dest = work.path().join("archive");
    let url = format!("file://{}/$Y-$M", dest.display());
    let folder = dest.join("2026-03");
    std::fs::create_dir_all(&folder).unwrap();
    // The first file's temporary name points at /dev/full: every write fails with ENOSPC.
    // The target removes a failed temporary file, so a helper puts the link back
    // (within 5 ms; retries are at least 160 ms apart) until the disk is "freed".
    let first = m.contents[0].0.clone();
    let part = folder.join(format!(".{first}.part"));
    std::os::unix::fs::symlink("/dev/full", &part).unwrap();
    let full = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let keeper = {
        let (full, part) = (full.clone(), part.clone());
        std::thread::spawn(move || {
            while full.load(std::sync::atomic::Ordering::SeqCst) {
                if std::fs::symlink_metadata(&part).is_err() {
                    let _ = std::os::unix::fs::symlink("/dev/full", &part);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let data = work.path().join("data");
    let db = Db::open_in(&data).unwrap();
    let spool = Spool::start(fast_spool(&data), db.clone(), Secrets::new(), None).unwrap();
    spool.enqueue(&m.set, std::slice::from_ref(&url)).unwrap();

    let failed_twice = eventually(Duration::from_secs(20), || {
        db.flush();
        db.attempts(&m.set.base_name)
            .unwrap()
            .iter()
            .filter(|a| !a.ok)
            .count()
            >= 2
    })
    .await;
    assert!(
        failed_twice,
        "expected at least two failed attempts: {:?}, pending {:?}, target folder {:?}",
        db.attempts(&m.set.base_name),
        spool.pending(),
        std::fs::read_dir(&folder)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect::<Vec<_>>()
    );
    let attempts = db.attempts(&m.set.base_name).unwrap();
    let err = attempts[0].error.clone().unwrap();
    assert!(
        err.contains("disk full") && err.contains(&url),
        "error names the problem and target: {err}"
    );
    assert_eq!(spool.pending().len(), 1, "the set stays in the spool");
    assert!(data
        .join("spool")
        .join(&m.set.base_name)
        .join(&first)
        .exists());
    assert!(!folder.join(&first).exists(), "nothing counts as delivered");

    // Space is back: the next retry delivers.
    full.store(false, std::sync::atomic::Ordering::SeqCst);
    keeper.join().unwrap();
    let _ = std::fs::remove_file(&part);
    assert!(
        spool.wait_empty(Duration::from_secs(20)).await,
        "not delivered after the disk was freed"
    );
    assert_delivered(&folder, m);
    db.flush();
    let rows = db.uploads().unwrap();
    assert_eq!(rows[0].state.as_str(), "done");
    assert!(rows[0].attempts >= 3);
    assert!(rows[0].last_error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_already_in_the_spool_folder_stays_in_place() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    // The sealer wrote the set straight into spool/<base>.
    let sets_dir = work.path().join("sets");
    let made = make_sets(work.path(), 1);
    let m = &made[0];
    let spool_set = data.join("spool").join(&m.set.base_name);
    std::fs::create_dir_all(data.join("spool")).unwrap();
    std::fs::rename(sets_dir.join(&m.set.base_name), &spool_set).unwrap();
    let mut set = m.set.clone();
    set.folder = spool_set.clone();
    set.files = set
        .files
        .iter()
        .map(|f| spool_set.join(f.file_name().unwrap()))
        .collect();

    let dest = work.path().join("archive");
    let url = format!("file://{}", dest.display());
    // The target is blocked at first, so the set is certainly still spooled below.
    std::fs::write(&dest, b"blocks the folder").unwrap();
    let db = Db::open_in(&data).unwrap();
    let spool = Spool::start(fast_spool(&data), db.clone(), Secrets::new(), None).unwrap();
    spool.enqueue(&set, std::slice::from_ref(&url)).unwrap();
    assert!(spool_set.join(callrec::spool::MANIFEST).exists());
    let again = spool.enqueue(&set, std::slice::from_ref(&url));
    assert!(
        matches!(
            again,
            Err(callrec::spool::SpoolError::AlreadySpooled { .. })
        ),
        "{again:?}"
    );
    std::fs::remove_file(&dest).unwrap();
    spool.retry_now();
    assert!(spool.wait_empty(Duration::from_secs(20)).await);
    assert_delivered(&dest, m);
    assert!(!spool_set.exists());
}

/// A folder on the spool's filesystem gets the sealed files as hard links (the
/// audio is stored once, nothing is copied); a folder on another filesystem
/// (here the tmpfs /dev/shm) gets independent, verified copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_filesystem_links_and_another_filesystem_copies() {
    use std::os::unix::fs::MetadataExt;
    let work = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir_in("/dev/shm").expect("/dev/shm (a tmpfs) is needed");
    assert_ne!(
        std::fs::metadata(work.path()).unwrap().dev(),
        std::fs::metadata(shm.path()).unwrap().dev(),
        "this test needs /dev/shm on another filesystem than the temporary folder"
    );
    let made = make_sets(work.path(), 1);
    let m = &made[0];
    let near = work.path().join("archive");
    let far = shm.path().join("archive");
    let urls = [
        format!("file://{}", near.display()),
        format!("file://{}", far.display()),
    ];
    let data = work.path().join("data");
    let db = Db::open_in(&data).unwrap();
    let spool = Spool::start(fast_spool(&data), db.clone(), Secrets::new(), None).unwrap();
    let at = spool.enqueue(&m.set, &urls).unwrap();
    let spooled: Vec<(String, u64)> = m
        .contents
        .iter()
        .map(|(name, _)| {
            (
                name.clone(),
                std::fs::metadata(at.join(name)).unwrap().ino(),
            )
        })
        .collect();
    assert!(
        spool.wait_empty(Duration::from_secs(20)).await,
        "spool not emptied: {:?}",
        spool.pending()
    );
    assert_delivered(&near, m);
    assert_delivered(&far, m);
    for (name, ino) in &spooled {
        assert_eq!(
            std::fs::metadata(near.join(name)).unwrap().ino(),
            *ino,
            "{name} on the spool's filesystem is not the sealed file itself"
        );
        assert_eq!(std::fs::metadata(far.join(name)).unwrap().nlink(), 1);
    }
    for folder in [&near, &far] {
        let leftovers: Vec<_> = std::fs::read_dir(folder)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}
