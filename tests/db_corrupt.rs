//! A damaged protocol database at start, end to end: a recorded SIPp call
//! leaves a sealed set waiting in the spool (its only target cannot take it
//! yet), the proxy stops, and the database file is then truncated or
//! overwritten with garbage. `callrec run` must refuse to start with exit
//! status 2 and a message naming the file and the way out (`callrec db
//! check`, `callrec db recover`), so that systemd's RestartPreventExitStatus=2
//! stops a restart loop; `callrec db check` exits 1 with its findings;
//! `callrec db recover` keeps the damaged file beside a fresh one, rebuilds
//! the upload queue from the spool's entry markers, and the next `callrec run`
//! starts and delivers the waiting set.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DB_FILE: &str = "callrec.sqlite";

/// `callrec run` on `data` with fresh loopback ports, its log in `log`.
fn spawn_run(data: &Path, target: &str, log: &Path) -> std::process::Child {
    let rtp = free_ports(20);
    let log = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callrec"));
    cmd.args(["run", "--listen"])
        .arg(format!("{PROXY_IP}:{}", free_port()))
        .arg("--pbx")
        .arg(format!("{PBX_IP}:{}", free_port()))
        .arg("--trunk")
        .arg(format!("{TRUNK_IP}:{}", free_port()))
        .args(["--media-ip", "127.0.0.1", "--rtp-ports"])
        .arg(format!("{rtp}-{}", rtp + 19))
        .arg("--data-dir")
        .arg(data)
        .args(["--admin-listen", "off", "--target", target])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (k, _) in std::env::vars() {
        if k.starts_with("CALLREC_") {
            cmd.env_remove(k);
        }
    }
    cmd.spawn().expect("start callrec run")
}

/// Exit code of `child` within `wait`, or None (then it is killed).
fn exit_within(child: &mut std::process::Child, wait: Duration) -> Option<i32> {
    let end = Instant::now() + wait;
    while Instant::now() < end {
        if let Ok(Some(st)) = child.try_wait() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A stopped proxy whose spool holds one sealed set for `target`, which
/// refuses it (a plain file `blocked` sits where the target's folder goes).
struct Waiting {
    proxy: Proxy,
    dir: TestDir,
    target: String,
    base: String,
}

fn a_set_waiting_in_the_spool() -> Waiting {
    let dir = TestDir::new("db-corrupt");
    std::fs::write(dir.join("blocked"), b"not a folder").unwrap();
    let target = format!("file://{}/sets", dir.join("blocked").display());
    let mut proxy = Proxy::builder().arg("--target").arg(&target).start();
    proxy.call(pair("basic")).run().assert_success();
    let spool = proxy.data_dir().join("spool");
    let mut base = None;
    let queued = wait_until(Duration::from_secs(20), || {
        base = std::fs::read_dir(&spool).ok().and_then(|d| {
            d.filter_map(|e| e.ok())
                .find(|e| e.path().join("spool.json").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
        });
        base.is_some()
    });
    assert!(queued, "no set in the spool\n{}", proxy.log_tail(60));
    assert_eq!(
        proxy.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        proxy.log_tail(30)
    );
    // Fold the write-ahead log into the file (closing the last connection
    // removes it), so that damage to the file is damage to everything.
    let db = proxy.data_dir().join(DB_FILE);
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(conn);
    assert!(!proxy.data_dir().join(format!("{DB_FILE}-wal")).exists());
    Waiting {
        proxy,
        dir,
        target,
        base: base.unwrap(),
    }
}

/// The damaged file is refused, checked, recovered, and the set delivered.
fn refused_checked_recovered_delivered(w: Waiting) {
    let data = w.proxy.data_dir().to_path_buf();
    let data_s = data.to_str().unwrap().to_string();
    let db = data.join(DB_FILE);

    let mut run = spawn_run(&data, &w.target, &w.dir.join("run1.log"));
    let code = exit_within(&mut run, Duration::from_secs(20));
    let log = std::fs::read_to_string(w.dir.join("run1.log")).unwrap_or_default();
    assert_eq!(
        code,
        Some(2),
        "callrec run on a damaged database must stop with exit status 2 (None: still running)\n{log}"
    );
    for needed in [
        db.display().to_string(),
        "callrec db check".into(),
        "callrec db recover".into(),
    ] {
        assert!(
            log.contains(&needed),
            "start error names {needed:?}:\n{log}"
        );
    }

    let (code, out) = callrec_cli(&["db", "check", "--data-dir", &data_s]);
    assert_eq!(code, 1, "db check on a damaged file exits 1:\n{out}");
    assert!(out.contains(&db.display().to_string()), "{out}");

    // The target is repaired; the operator recovers the database.
    std::fs::remove_file(w.dir.join("blocked")).unwrap();
    let (code, out) = callrec_cli(&["db", "recover", "--data-dir", &data_s]);
    assert_eq!(code, 0, "db recover:\n{out}");
    let kept: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{DB_FILE}.corrupt-"))
        })
        .collect();
    assert_eq!(
        kept.len(),
        1,
        "the damaged file (and nothing else) is kept beside: {kept:?}\n{out}"
    );
    eprintln!("db recover:\n{out}");
    let (code, out) = callrec_cli(&["db", "check", "--data-dir", &data_s]);
    assert_eq!(code, 0, "the recovered database checks clean:\n{out}");
    let (code, out) = callrec_cli(&["uploads", "status", "--data-dir", &data_s]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&w.base) && out.contains("pending"),
        "the upload queue is rebuilt from the spool:\n{out}"
    );

    let mut run = spawn_run(&data, &w.target, &w.dir.join("run2.log"));
    let delivered = w
        .dir
        .join("blocked")
        .join("sets")
        .join(format!("{}.sha256", w.base));
    let ok = wait_until(Duration::from_secs(30), || {
        delivered.is_file() && !data.join("spool").join(&w.base).exists()
    });
    let still_running = exit_within(&mut run, Duration::from_millis(10)).is_none();
    let log = std::fs::read_to_string(w.dir.join("run2.log")).unwrap_or_default();
    assert!(
        ok,
        "after recovery the waiting set reaches the target ({})\n{log}",
        delivered.display()
    );
    assert!(still_running, "callrec run keeps running:\n{log}");
}

#[test]
fn a_truncated_database_stops_the_start_and_is_recovered() {
    let w = a_set_waiting_in_the_spool();
    let db = w.proxy.data_dir().join(DB_FILE);
    let len = std::fs::metadata(&db).unwrap().len();
    assert!(len > 8192, "database of {len} bytes");
    // Cut off the second half, as a full disk or a bad copy would.
    let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    refused_checked_recovered_delivered(w);
}

#[test]
fn a_garbage_database_stops_the_start_and_is_recovered() {
    let w = a_set_waiting_in_the_spool();
    let db = w.proxy.data_dir().join(DB_FILE);
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    let garbage: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&db, garbage).unwrap();
    refused_checked_recovered_delivered(w);
}

#[test]
fn recover_refuses_while_callrec_runs_on_the_database() {
    let proxy = Proxy::start();
    let data = proxy.data_dir().to_str().unwrap().to_string();
    let (code, out) = callrec_cli(&["db", "recover", "--data-dir", &data]);
    assert_eq!(
        code, 2,
        "recover under a running callrec must refuse:\n{out}"
    );
    assert!(out.contains("stop callrec"), "{out}");
    let names: Vec<String> = std::fs::read_dir(proxy.data_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert!(
        names.iter().all(|n| !n.contains(".corrupt-")) && names.iter().any(|n| n == DB_FILE),
        "the database stays in place: {names:?}"
    );
}
