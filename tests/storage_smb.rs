//! SMB targets against a real Samba smbd that the test starts on 127.0.0.1 (a free
//! port, a private smb.conf, passdb, lock and state folders in a temp dir; the
//! share's Samba account is `root` in that private passdb only). Uploads are
//! compared byte for byte with the sealed files in the share's folder and checked
//! with `shasum -a 256 -c`; a wrong password, a missing share and a stopped server
//! give clear errors and keep the set in the spool. Deleting a set (retention)
//! through the share removes its files and leaves the other set. The web console
//! plays a set only the share holds and refuses one changed there.

mod common;
mod storage_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use callrec::db::Db;
use callrec::spool::Spool;
use callrec::storage::{Secrets, SmbTarget, Target, TargetError, TargetSecret, UploadSet};
use storage_support::outage::{target_down_then_back, Outage};
use storage_support::{
    assert_delivered, fast_spool, free_port, make_sets, require, Daemon, MadeSet,
};

const USER: &str = "root";
const PASSWORD: &str = "Smb-test-pass-1";
const SHARE: &str = "rec";

/// A running smbd with its share folder.
struct Smbd {
    daemon: Daemon,
    share_dir: PathBuf,
    port: u16,
}

impl Smbd {
    fn start(dir: &Path, port: u16) -> Smbd {
        let smbd = require("smbd", "samba");
        let smbpasswd = require("smbpasswd", "samba");
        let share_dir = dir.join("share");
        for sub in [
            "share", "private", "lock", "state", "cache", "pid", "ncalrpc",
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let d = dir.display();
        let conf = format!(
            "[global]\n\
             workgroup = TESTDOM\n\
             server role = standalone server\n\
             smb ports = {port}\n\
             interfaces = 127.0.0.1\n\
             bind interfaces only = yes\n\
             disable netbios = yes\n\
             private dir = {d}/private\n\
             lock directory = {d}/lock\n\
             state directory = {d}/state\n\
             cache directory = {d}/cache\n\
             pid directory = {d}/pid\n\
             ncalrpc dir = {d}/ncalrpc\n\
             log file = {d}/smbd.log\n\
             log level = 1\n\
             passdb backend = tdbsam:{d}/private/passdb.tdb\n\
             map to guest = never\n\
             server min protocol = SMB2_02\n\
             load printers = no\n\
             printing = bsd\n\
             printcap name = /dev/null\n\
             disable spoolss = yes\n\
             [{SHARE}]\n\
             path = {d}/share\n\
             read only = no\n\
             valid users = {USER}\n"
        );
        let conf_path = dir.join("smb.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut child = Command::new(&smbpasswd)
            .arg("-c")
            .arg(&conf_path)
            .args(["-a", "-s", USER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{PASSWORD}\n{PASSWORD}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "smbpasswd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cmd = Command::new(smbd);
        cmd.args(["--foreground", "--no-process-group", "--debug-stdout", "-s"])
            .arg(&conf_path);
        let daemon = Daemon::start("smbd", cmd, dir.join("smbd-stdout.log"), port);
        Smbd {
            daemon,
            share_dir,
            port,
        }
    }
}

fn secret(password: &str) -> TargetSecret {
    TargetSecret {
        password: Some(password.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_arrive_byte_identical_on_the_share() {
    let work = tempfile::tempdir().unwrap();
    let smbd = Smbd::start(&work.path().join("smbd"), free_port());
    let made = make_sets(work.path(), 2);
    let url = format!(
        "smb://TESTDOM;{USER}@127.0.0.1:{}/{SHARE}/calls/$Y/$M",
        smbd.port
    );
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
        "not delivered: {:?}; attempts {:?}; smbd: {}",
        spool.pending(),
        db.attempts(&made[0].set.base_name),
        smbd.daemon.log_text()
    );
    let folder = smbd.share_dir.join("calls/2026/03");
    for m in &made {
        assert_delivered(&folder, m);
    }
    // The share's own view, through smbclient.
    let smbclient = require("smbclient", "smbclient");
    let out = Command::new(smbclient)
        .arg(format!("//127.0.0.1/{SHARE}"))
        .args([
            "-p",
            &smbd.port.to_string(),
            "-U",
            &format!("{USER}%{PASSWORD}"),
            "-c",
            "ls calls/2026/03/*",
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "smbclient: {listing} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for m in &made {
        for (name, bytes) in &m.contents {
            let line = listing
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name.as_str()));
            let line = line.unwrap_or_else(|| panic!("{name} not listed by smbclient: {listing}"));
            assert!(
                line.contains(&format!(" {} ", bytes.len())),
                "size of {name}: {line}"
            );
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Retention: set 0 is deleted through the share, set 1 stays.
    SmbTarget::from_url(&url, secret(PASSWORD))
        .unwrap()
        .delete(&UploadSet::by_name(&made[0].set.base_name))
        .await
        .unwrap();
    for (name, _) in &made[0].contents {
        assert!(!folder.join(name).exists(), "{name} still on the share");
    }
    assert_delivered(&folder, &made[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_missing_share_are_clear_errors() {
    let work = tempfile::tempdir().unwrap();
    let smbd = Smbd::start(&work.path().join("smbd"), free_port());
    let made = make_sets(work.path(), 1);
    let set = UploadSet::from_sealed(&made[0].set);
    let url = format!("smb://{USER}@127.0.0.1:{}/{SHARE}/x", smbd.port);
    let err = SmbTarget::from_url(&url, secret("wrong-password"))
        .unwrap()
        .put(&set)
        .await
        .unwrap_err();
    assert!(matches!(err, TargetError::Auth { .. }), "{err}");
    assert!(
        err.to_string().contains("check user name, password"),
        "{err}"
    );
    let url = format!("smb://{USER}@127.0.0.1:{}/noshare/x", smbd.port);
    let err = SmbTarget::from_url(&url, secret(PASSWORD))
        .unwrap()
        .put(&set)
        .await
        .unwrap_err();
    assert!(matches!(err, TargetError::MissingShare { .. }), "{err}");
    assert!(!smbd.share_dir.join("x").exists());
}

/// An smbd that is stopped while the set is queued and started again on the
/// same port with the same share.
struct StoppedSmbd {
    dir: PathBuf,
    port: u16,
    smbd: Option<Smbd>,
}

impl Outage for StoppedSmbd {
    fn url(&self) -> String {
        format!("smb://{USER}@127.0.0.1:{}/{SHARE}/$Y", self.port)
    }

    fn secrets(&self) -> Secrets {
        let mut secrets = Secrets::new();
        secrets.insert(self.url(), secret(PASSWORD));
        secrets
    }

    fn down(&mut self, _made: &MadeSet) {
        if let Some(mut smbd) = self.smbd.take() {
            smbd.daemon.stop();
        }
    }

    fn error_says(&self) -> Vec<String> {
        vec!["unreachable".into()]
    }

    fn up(&mut self) -> Option<Secrets> {
        self.smbd = Some(Smbd::start(&self.dir, self.port));
        None
    }

    fn read_back(&self, _made: &MadeSet, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join("share").join("2026").join(name)).ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_keeps_the_set_until_it_is_back() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let dir = work.path().join("smbd");
    let smbd = Smbd::start(&dir, port);
    let mut target = StoppedSmbd {
        dir,
        port,
        smbd: Some(smbd),
    };
    let run = target_down_then_back(work.path(), &mut target).await;
    assert_delivered(&target.dir.join("share").join("2026"), &run.made);
}

/// The web console plays a set that only the share holds: fetched on demand,
/// verified, the share's WAV played whole and by range; after the WAV is changed
/// on the share a new start refuses to play it.
#[test]
fn console_plays_a_set_only_the_smb_share_holds() {
    use common::console::{
        assert_plays, assert_refuses, record_one_remote_set, signed_set_in, start_with_config,
        tamper,
    };
    let work = tempfile::tempdir().unwrap();
    let smbd = Smbd::start(&work.path().join("smbd"), free_port());
    let config = work.path().join("callrec.toml");
    std::fs::write(
        &config,
        format!(
            "[targets.offsite]\nurl = \"smb://{USER}@127.0.0.1:{}/{SHARE}/console\"\npassword = \"{PASSWORD}\"\n\n[[profiles]]\nname = \"default\"\nrecord_all = true\ntargets = [\"offsite\"]\n",
            smbd.port
        ),
    )
    .unwrap();
    let data = work.path().join("data");
    let folder = smbd.share_dir.join("console");
    let (proxy, id) = record_one_remote_set(&data, &config, || signed_set_in(&folder));
    let wav = folder.join(format!("{id}.wav"));
    assert_plays(&proxy, &data, &id, &std::fs::read(&wav).unwrap());

    drop(proxy);
    tamper(&wav);
    let proxy = start_with_config(&data, &config);
    assert_refuses(&proxy, &data, &id);
}
