//! Folder targets through the spool: sets land byte-identical in the templated
//! folder (`$Y/$M` of the recording's start) and pass `shasum -c` there; a target
//! whose disk is full keeps the set in the spool, is retried, and gets it once
//! space is back.

mod storage_support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use callrec::db::Db;
use callrec::spool::Spool;
use callrec::storage::Secrets;
use storage_support::outage::{target_down_then_back, Outage};
use storage_support::{assert_delivered, fast_spool, make_sets, MadeSet};

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

/// A folder target whose disk is full: the first file's temporary name points
/// at /dev/full, so every write fails with ENOSPC. The target removes a failed
/// temporary file, so a keeper thread puts the link back (within 5 ms; retries
/// are at least 160 ms apart) until the disk is "freed".
struct FullDisk {
    dest: PathBuf,
    part: Option<PathBuf>,
    full: Arc<AtomicBool>,
    keeper: Option<std::thread::JoinHandle<()>>,
}

impl FullDisk {
    fn folder(&self) -> PathBuf {
        self.dest.join("2026-03")
    }
}

impl Outage for FullDisk {
    fn url(&self) -> String {
        format!("file://{}/$Y-$M", self.dest.display())
    }

    fn secrets(&self) -> Secrets {
        Secrets::new()
    }

    fn down(&mut self, made: &MadeSet) {
        let first = &made.contents[0].0;
        let folder = self.folder();
        std::fs::create_dir_all(&folder).unwrap();
        // A leftover of an earlier attempt under the name, so the file cannot
        // simply be hard-linked there and is written through `.part`, which
        // leads to a device that is always full.
        std::fs::write(folder.join(first), b"an earlier attempt").unwrap();
        let part = folder.join(format!(".{first}.part"));
        std::os::unix::fs::symlink("/dev/full", &part).unwrap();
        let (full, p) = (self.full.clone(), part.clone());
        self.keeper = Some(std::thread::spawn(move || {
            while full.load(Ordering::SeqCst) {
                if std::fs::symlink_metadata(&p).is_err() {
                    let _ = std::os::unix::fs::symlink("/dev/full", &p);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
        self.part = Some(part);
    }

    fn error_says(&self) -> Vec<String> {
        vec!["disk full".into(), self.url()]
    }

    fn up(&mut self) -> Option<Secrets> {
        self.full.store(false, Ordering::SeqCst);
        if let Some(k) = self.keeper.take() {
            k.join().unwrap();
        }
        if let Some(p) = self.part.take() {
            let _ = std::fs::remove_file(p);
        }
        None
    }

    fn read_back(&self, _made: &MadeSet, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.folder().join(name)).ok()
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        self.full.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_keeps_the_set_in_the_spool_until_space_is_back() {
    let work = tempfile::tempdir().unwrap();
    let mut disk = FullDisk {
        dest: work.path().join("archive"),
        part: None,
        full: Arc::new(AtomicBool::new(true)),
        keeper: None,
    };
    let run = target_down_then_back(work.path(), &mut disk).await;
    assert_delivered(&disk.folder(), &run.made);
    let rows = run.db.uploads().unwrap();
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
    // The sealed files' inodes, read before the spool takes them: its
    // worker starts at once and may have delivered and set the spooled
    // folder aside before this thread reads it.
    let spooled: Vec<(String, u64)> = m
        .contents
        .iter()
        .map(|(name, _)| {
            (
                name.clone(),
                std::fs::metadata(m.set.folder.join(name)).unwrap().ino(),
            )
        })
        .collect();
    spool.enqueue(&m.set, &urls).unwrap();
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
