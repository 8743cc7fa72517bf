//! WebDAV targets against a real server on loopback: `rclone serve webdav` (Debian
//! package rclone) with basic-auth user and password, serving a temporary folder.
//! Uploads are checked on disk in the served folder, byte for byte and with
//! `shasum -a 256 -c`; a wrong password is a clear error, and a stopped server keeps
//! the set in the spool until it is back.
//! Deleting a set (retention) removes its files and nothing else from the folder.
//! The web console plays a set only the server holds and refuses one changed there.

mod common;
mod storage_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use callrec::db::Db;
use callrec::spool::Spool;
use callrec::storage::{ObjectTarget, Secrets, Target, TargetSecret, UploadSet};
use storage_support::outage::{target_down_then_back, Outage};
use storage_support::{
    assert_delivered, fast_spool, free_port, make_sets, require, Daemon, MadeSet,
};

const USER: &str = "rec";
const PASSWORD: &str = "Dav-test-pass-1";

/// `rclone serve webdav` on 127.0.0.1:`port`, serving `root`.
fn start_rclone(work: &Path, root: &Path, port: u16) -> Daemon {
    let rclone = require("rclone", "rclone");
    std::fs::create_dir_all(root).unwrap();
    let mut cmd = Command::new(rclone);
    cmd.args(["serve", "webdav"])
        .arg(root)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--user", USER, "--pass", PASSWORD])
        .arg("--config")
        .arg(work.join("rclone.conf"));
    Daemon::start(
        "rclone serve webdav",
        cmd,
        work.join(format!("rclone-{port}.log")),
        port,
    )
}

fn secret(password: &str) -> TargetSecret {
    TargetSecret {
        password: Some(password.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_delivers_byte_identical_sets_into_templated_folders_on_rclone() {
    let work = tempfile::tempdir().unwrap();
    let served = work.path().join("served");
    let port = free_port();
    let dav = start_rclone(work.path(), &served, port);
    let made = make_sets(work.path(), 2);
    let url = format!("webdav://{USER}@127.0.0.1:{port}/calls/$Y/$M-$D");
    let mut secrets = Secrets::new();
    secrets.insert(url.clone(), secret(PASSWORD));
    let data = work.path().join("data");
    let db = Db::open_in(&data).unwrap();
    let spool = Spool::start(fast_spool(&data), db.clone(), secrets, None).unwrap();
    for m in &made {
        spool.enqueue(&m.set, std::slice::from_ref(&url)).unwrap();
    }
    assert!(
        spool.wait_empty(Duration::from_secs(60)).await,
        "not delivered: {:?}; attempts {:?}; rclone: {}",
        spool.pending(),
        db.attempts(&made[0].set.base_name),
        dav.log_text()
    );
    let folder = served.join("calls/2026/03-01");
    for m in &made {
        assert_delivered(&folder, m);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_replaces_leftovers_and_keeps_identical_files() {
    let work = tempfile::tempdir().unwrap();
    let served = work.path().join("served");
    let port = free_port();
    let _dav = start_rclone(work.path(), &served, port);
    let made = make_sets(work.path(), 1);
    let m = &made[0];
    // Copies of the files: the sealed originals stay where make_sets put them.
    let set = UploadSet::from_sealed(&m.set);
    let folder = served.join("r");
    std::fs::create_dir_all(&folder).unwrap();
    // A truncated WAV from an interrupted attempt, and a complete JSON.
    let wav = m
        .contents
        .iter()
        .find(|(n, _)| n.ends_with(".wav"))
        .unwrap();
    let json = m
        .contents
        .iter()
        .find(|(n, _)| n.ends_with(".json"))
        .unwrap();
    std::fs::write(folder.join(&wav.0), &wav.1[..wav.1.len() / 2]).unwrap();
    std::fs::write(folder.join(&json.0), &json.1).unwrap();
    // A checksum file of the right size with other bytes (say, another instance's).
    let sums = m
        .contents
        .iter()
        .find(|(n, _)| n.ends_with(".sha256"))
        .unwrap();
    let mut wrong = sums.1.clone();
    wrong[0] ^= 0x01;
    std::fs::write(folder.join(&sums.0), &wrong).unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(folder.join(&json.0))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let target = ObjectTarget::from_url(
        &format!("webdav://{USER}@127.0.0.1:{port}/r"),
        secret(PASSWORD),
    )
    .unwrap();
    target.put(&set).await.unwrap();
    assert_delivered(&folder, m);
    let mtime = std::fs::metadata(folder.join(&json.0))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(mtime, old, "a complete file is not sent again");

    // Retention: the set is deleted from the server; other files in the folder stay.
    std::fs::write(folder.join("keep.txt"), b"not part of the set").unwrap();
    target
        .delete(&UploadSet::by_name(&m.set.base_name))
        .await
        .unwrap();
    for (name, _) in &m.contents {
        assert!(!folder.join(name).exists(), "{name} still on the server");
    }
    assert!(folder.join("keep.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_wrong_password_is_a_clear_error_without_the_secret() {
    let work = tempfile::tempdir().unwrap();
    let served = work.path().join("served");
    let port = free_port();
    let made = make_sets(work.path(), 1);
    let m = &made[0];
    let url = format!("webdav://{USER}@127.0.0.1:{port}/in/$Y");
    let _dav = start_rclone(work.path(), &served, port);
    let set = UploadSet::from_sealed(&m.set);
    let err = ObjectTarget::from_url(&url, secret("not-the-password"))
        .unwrap()
        .put(&set)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("login refused") && err.contains("password"),
        "clear error: {err}"
    );
    assert!(
        !err.contains("not-the-password"),
        "no secret in errors: {err}"
    );
    assert!(!served.join("in/2026").join(&m.contents[0].0).exists());
}

/// A WebDAV server that is not running while the set is queued and is started
/// later on the port of the URL.
struct StoppedDav {
    work: PathBuf,
    port: u16,
    dav: Option<Daemon>,
}

impl StoppedDav {
    fn served(&self) -> PathBuf {
        self.work.join("served")
    }
}

impl Outage for StoppedDav {
    fn url(&self) -> String {
        format!("webdav://{USER}@127.0.0.1:{}/in/$Y", self.port)
    }

    fn secrets(&self) -> Secrets {
        let mut secrets = Secrets::new();
        secrets.insert(self.url(), secret(PASSWORD));
        secrets
    }

    fn down(&mut self, _made: &MadeSet) {
        self.dav = None;
    }

    fn error_says(&self) -> Vec<String> {
        vec!["unreachable".into()]
    }

    fn up(&mut self) -> Option<Secrets> {
        self.dav = Some(start_rclone(&self.work, &self.served(), self.port));
        None
    }

    fn read_back(&self, _made: &MadeSet, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.served().join("in/2026").join(name)).ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_stopped_server_keeps_the_set_until_it_is_back() {
    let work = tempfile::tempdir().unwrap();
    let mut target = StoppedDav {
        work: work.path().to_path_buf(),
        port: free_port(),
        dav: None,
    };
    let run = target_down_then_back(work.path(), &mut target).await;
    assert_delivered(&target.served().join("in/2026"), &run.made);
}

/// The web console plays a set that only the WebDAV server holds: fetched on
/// demand, verified, the served WAV played whole and by range; after the WAV is
/// changed on the server a new start refuses to play it.
#[test]
fn console_plays_a_set_only_the_webdav_server_holds() {
    use common::console::{
        assert_plays, assert_refuses, record_one_remote_set, signed_set_in, start_with_config,
        tamper,
    };
    let work = tempfile::tempdir().unwrap();
    let served = work.path().join("served");
    let port = free_port();
    let _dav = start_rclone(work.path(), &served, port);
    let config = work.path().join("callrec.toml");
    std::fs::write(
        &config,
        format!(
            "[targets.offsite]\nurl = \"webdav://{USER}@127.0.0.1:{port}/console\"\npassword = \"{PASSWORD}\"\n\n[[profiles]]\nname = \"default\"\nrecord_all = true\ntargets = [\"offsite\"]\n"
        ),
    )
    .unwrap();
    let data = work.path().join("data");
    let folder = served.join("console");
    let (proxy, id) = record_one_remote_set(&data, &config, || signed_set_in(&folder));
    let wav = folder.join(format!("{id}.wav"));
    assert_plays(&proxy, &data, &id, &std::fs::read(&wav).unwrap());

    drop(proxy);
    tamper(&wav);
    let proxy = start_with_config(&data, &config);
    assert_refuses(&proxy, &data, &id);
}
