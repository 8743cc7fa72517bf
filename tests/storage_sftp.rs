//! SFTP targets against a real OpenSSH sshd that the test starts on 127.0.0.1 (a free
//! port, a temporary host key and sshd_config, `internal-sftp`). The account is a
//! local test user `callrec-sftp` (created once, password set, home
//! /var/tmp/callrec-sftp-home); every test writes below its own folder there.
//! Uploads are compared byte for byte with the sealed files and checked with
//! `shasum -a 256 -c` in the server's folder. Retention deletes an expired set on
//! the server (after a refused login left it alone) and documents the deletion.

mod common;
mod storage_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use callrec::db::Db;
use callrec::notify::{MailConfig, Notifier};
use callrec::spool::Spool;
use callrec::storage::{Secrets, SftpTarget, Target, TargetError, TargetSecret, UploadSet};
use storage_support::outage::{target_down_then_back, Outage};
use storage_support::{
    assert_delivered, eventually, fast_spool, free_port, make_sets, require, run, Daemon, MadeSet,
    MailSink,
};

const USER: &str = "callrec-sftp";
const PASSWORD: &str = "Sftp-test-pass-1";
const HOME: &str = "/var/tmp/callrec-sftp-home";

/// Creates the test user once per process (idempotent across runs).
fn test_user() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        std::fs::create_dir_all(HOME).unwrap();
        let exists = Command::new("id")
            .arg(USER)
            .output()
            .unwrap()
            .status
            .success();
        if !exists {
            run(Command::new(require("useradd", "passwd"))
                .args(["-M", "-d", HOME, "-s", "/bin/sh", USER]));
        }
        let mut child = Command::new(require("chpasswd", "passwd"))
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{USER}:{PASSWORD}\n").as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "chpasswd failed");
        run(Command::new("chown").args([&format!("{USER}:{USER}"), HOME]));
    });
}

/// A running sshd with its host key.
struct Sshd {
    daemon: Daemon,
    dir: PathBuf,
    port: u16,
}

impl Sshd {
    fn start(dir: &Path, port: u16) -> Sshd {
        let sshd = require("sshd", "openssh-server");
        let keygen = require("ssh-keygen", "openssh-client");
        test_user();
        std::fs::create_dir_all("/run/sshd").unwrap();
        std::fs::create_dir_all(dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let hostkey = dir.join("hostkey");
        if !hostkey.exists() {
            run(Command::new(&keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&hostkey));
            run(Command::new(&keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join("client_key")));
            std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
            std::fs::set_permissions(
                dir.join("authorized_keys"),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
        }
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile none\nUsePAM no\n\
             PasswordAuthentication yes\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             AuthorizedKeysFile {ak}\nStrictModes no\nPermitRootLogin no\nAllowUsers {USER}\n\
             Subsystem sftp internal-sftp\nLogLevel VERBOSE\n",
            hk = hostkey.display(),
            ak = dir.join("authorized_keys").display(),
        );
        let conf = dir.join("sshd_config");
        std::fs::write(&conf, config).unwrap();
        let mut cmd = Command::new(sshd);
        cmd.arg("-D").arg("-e").arg("-f").arg(&conf);
        let daemon = Daemon::start("sshd", cmd, dir.join(format!("sshd-{port}.log")), port);
        Sshd {
            daemon,
            dir: dir.to_path_buf(),
            port,
        }
    }

    fn known_hosts(&self) -> PathBuf {
        let pubkey = std::fs::read_to_string(self.dir.join("hostkey.pub")).unwrap();
        let mut parts = pubkey.split_whitespace();
        let line = format!(
            "[127.0.0.1]:{} {} {}\n",
            self.port,
            parts.next().unwrap(),
            parts.next().unwrap()
        );
        let path = self.dir.join("known_hosts");
        std::fs::write(&path, line).unwrap();
        path
    }

    fn fingerprint(&self) -> String {
        let out = run(Command::new(require("ssh-keygen", "openssh-client"))
            .args(["-l", "-E", "sha256", "-f"])
            .arg(self.dir.join("hostkey.pub")));
        out.split_whitespace().nth(1).unwrap().to_string()
    }
}

/// A folder below the test user's home, unique to this test run.
fn unique_folder(tag: &str) -> String {
    format!("t-{tag}-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        % 1_000_000_007
}

fn password_secret(known_hosts: PathBuf, password: &str) -> TargetSecret {
    TargetSecret {
        password: Some(password.into()),
        known_hosts: Some(known_hosts),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_login_uploads_byte_identical_sets_into_the_templated_folder() {
    let work = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&work.path().join("sshd"), free_port());
    let made = make_sets(work.path(), 2);
    let folder = unique_folder("pw");
    let url = format!("sftp://{USER}@127.0.0.1:{}/{folder}/calls/$Y-$M", sshd.port);
    let mut secrets = Secrets::new();
    secrets.insert(url.clone(), password_secret(sshd.known_hosts(), PASSWORD));
    let data = work.path().join("data");
    let db = Db::open_in(&data).unwrap();
    let spool = Spool::start(fast_spool(&data), db.clone(), secrets, None).unwrap();
    for m in &made {
        spool.enqueue(&m.set, std::slice::from_ref(&url)).unwrap();
    }
    assert!(
        spool.wait_empty(Duration::from_secs(60)).await,
        "not delivered: {:?}; attempts {:?}; sshd: {}",
        spool.pending(),
        db.attempts(&made[0].set.base_name),
        sshd.daemon.log_text()
    );
    let server_folder = Path::new(HOME).join(&folder).join("calls/2026-03");
    for m in &made {
        assert_delivered(&server_folder, m);
    }
    // Written by the SFTP user, not by this (root) process.
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(server_folder.join(&made[0].contents[0].0))
        .unwrap()
        .uid();
    assert_ne!(uid, 0, "file must have been written through sshd as {USER}");
    let _ = std::fs::remove_dir_all(Path::new(HOME).join(&folder));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_login_with_a_pinned_fingerprint() {
    let work = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&work.path().join("sshd"), free_port());
    let made = make_sets(work.path(), 1);
    let folder = unique_folder("key");
    let url = format!("sftp://{USER}@127.0.0.1:{}/{folder}/$Y/$M/$D", sshd.port);
    let target = SftpTarget::from_url(
        &url,
        TargetSecret {
            key_file: Some(sshd.dir.join("client_key")),
            host_key_sha256: Some(sshd.fingerprint()),
            ..Default::default()
        },
    )
    .unwrap();
    let set = UploadSet::from_sealed(&made[0].set);
    target
        .put(&set)
        .await
        .unwrap_or_else(|e| panic!("{e}; sshd: {}", sshd.daemon.log_text()));
    assert_delivered(&Path::new(HOME).join(&folder).join("2026/03/01"), &made[0]);
    // Uploading again replaces the files (retries after a partial upload are safe).
    target.put(&set).await.unwrap();
    assert_delivered(&Path::new(HOME).join(&folder).join("2026/03/01"), &made[0]);
    let _ = std::fs::remove_dir_all(Path::new(HOME).join(&folder));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_changed_host_keys_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&work.path().join("sshd"), free_port());
    let made = make_sets(work.path(), 1);
    let set = UploadSet::from_sealed(&made[0].set);
    let url = format!("sftp://{USER}@127.0.0.1:{}/x", sshd.port);
    // A pin that does not match.
    let wrong_pin = TargetSecret {
        password: Some(PASSWORD.into()),
        host_key_sha256: Some("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
        ..Default::default()
    };
    let err = SftpTarget::from_url(&url, wrong_pin)
        .unwrap()
        .put(&set)
        .await
        .unwrap_err();
    assert!(matches!(err, TargetError::HostKey { .. }), "{err}");
    assert!(
        err.to_string().contains(&sshd.fingerprint()),
        "names the offered key: {err}"
    );
    // An empty known_hosts: the key is unknown.
    let empty = work.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let err = SftpTarget::from_url(&url, password_secret(empty, PASSWORD))
        .unwrap()
        .put(&set)
        .await
        .unwrap_err();
    assert!(matches!(err, TargetError::HostKey { .. }), "{err}");
    // A known_hosts entry with another key for this host:port: changed key.
    let other = work.path().join("other_known_hosts");
    let client_pub = std::fs::read_to_string(sshd.dir.join("client_key.pub")).unwrap();
    let mut p = client_pub.split_whitespace();
    std::fs::write(
        &other,
        format!(
            "[127.0.0.1]:{} {} {}\n",
            sshd.port,
            p.next().unwrap(),
            p.next().unwrap()
        ),
    )
    .unwrap();
    let err = SftpTarget::from_url(&url, password_secret(other, PASSWORD))
        .unwrap()
        .put(&set)
        .await
        .unwrap_err();
    assert!(matches!(err, TargetError::HostKey { .. }), "{err}");
    assert!(!Path::new(HOME).join("x").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_a_clear_error_the_set_stays_and_a_fixed_restart_delivers() {
    let work = tempfile::tempdir().unwrap();
    let sink = MailSink::start(work.path());
    let sshd = Sshd::start(&work.path().join("sshd"), free_port());
    let made = make_sets(work.path(), 1);
    let m = &made[0];
    let folder = unique_folder("wrongpw");
    let url = format!("sftp://{USER}@127.0.0.1:{}/{folder}", sshd.port);
    let data = work.path().join("data");
    let notifier = Notifier::new(MailConfig {
        smtp_url: sink.url(),
        username: None,
        password: None,
        from: "callrec@test.example".into(),
        to: vec!["ops@test.example".into()],
        interval: Duration::from_secs(3600),
        ca_file: None,
    })
    .unwrap();
    {
        let mut secrets = Secrets::new();
        secrets.insert(
            url.clone(),
            password_secret(sshd.known_hosts(), "not-the-password"),
        );
        let db = Db::open_in(&data).unwrap();
        let spool = Spool::start(fast_spool(&data), db.clone(), secrets, Some(notifier)).unwrap();
        spool.enqueue(&m.set, std::slice::from_ref(&url)).unwrap();
        let failed = eventually(Duration::from_secs(30), || {
            db.flush();
            !db.attempts(&m.set.base_name).unwrap().is_empty()
        })
        .await;
        assert!(failed);
        let err = db.attempts(&m.set.base_name).unwrap()[0]
            .error
            .clone()
            .unwrap();
        assert!(
            err.contains("login refused")
                && err.contains(USER)
                && err.contains("check user name, password"),
            "clear error: {err}"
        );
        assert_eq!(spool.pending().len(), 1, "the set stays in the spool");
        assert!(
            eventually(Duration::from_secs(15), || sink.mails().len() == 1).await,
            "one mail"
        );
        let mail = sink.mails()[0].replace("=\r\n", "").replace("=\n", "");
        assert!(
            mail.contains("login refused") && mail.contains(&url),
            "{mail}"
        );
    }
    // Restart with the right password: the pending set is delivered.
    let mut secrets = Secrets::new();
    secrets.insert(url.clone(), password_secret(sshd.known_hosts(), PASSWORD));
    let db = Db::open_in(&data).unwrap();
    let spool = Spool::start(fast_spool(&data), db.clone(), secrets, None).unwrap();
    assert!(
        spool.wait_empty(Duration::from_secs(60)).await,
        "{:?}",
        spool.pending()
    );
    assert_delivered(&Path::new(HOME).join(&folder), m);
    let _ = std::fs::remove_dir_all(Path::new(HOME).join(&folder));
}

/// An sshd that is stopped while the set is queued and started again on the
/// same port with the same host key.
struct StoppedSshd {
    dir: PathBuf,
    port: u16,
    known_hosts: PathBuf,
    folder: String,
    sshd: Option<Sshd>,
}

impl Outage for StoppedSshd {
    fn url(&self) -> String {
        format!("sftp://{USER}@127.0.0.1:{}/{}", self.port, self.folder)
    }

    fn secrets(&self) -> Secrets {
        let mut secrets = Secrets::new();
        secrets.insert(
            self.url(),
            password_secret(self.known_hosts.clone(), PASSWORD),
        );
        secrets
    }

    fn down(&mut self, _made: &MadeSet) {
        if let Some(mut sshd) = self.sshd.take() {
            sshd.daemon.stop();
        }
    }

    fn error_says(&self) -> Vec<String> {
        vec!["server unreachable".into()]
    }

    fn up(&mut self) -> Option<Secrets> {
        self.sshd = Some(Sshd::start(&self.dir, self.port));
        None
    }

    fn read_back(&self, _made: &MadeSet, name: &str) -> Option<Vec<u8>> {
        std::fs::read(Path::new(HOME).join(&self.folder).join(name)).ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_keeps_the_set_until_it_is_back() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let dir = work.path().join("sshd");
    let sshd = Sshd::start(&dir, port);
    let mut target = StoppedSshd {
        known_hosts: sshd.known_hosts(),
        dir,
        port,
        folder: unique_folder("down"),
        sshd: Some(sshd),
    };
    let run = target_down_then_back(work.path(), &mut target).await;
    assert_delivered(&Path::new(HOME).join(&target.folder), &run.made);
    let _ = std::fs::remove_dir_all(Path::new(HOME).join(&target.folder));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_expired_sets_on_the_server_and_documents_each() {
    use callrec::archive::{purge_everywhere, PurgeRequest};
    use callrec::db::{now_ms, Record};
    let work = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&work.path().join("sshd"), free_port());
    let made = make_sets(work.path(), 2);
    let (old, young) = (&made[0], &made[1]);
    let folder = unique_folder("purge");
    let url = format!("sftp://{USER}@127.0.0.1:{}/{folder}/$Y-$M", sshd.port);
    let secret = password_secret(sshd.known_hosts(), PASSWORD);
    let mut secrets = Secrets::new();
    secrets.insert(url.clone(), secret.clone());
    let data = work.path().join("data");
    let db = Db::open_in(&data).unwrap();
    let year_ms = 366 * 86_400_000i64;
    for (m, start_ms) in [(old, now_ms() - 6 * year_ms), (young, now_ms() - year_ms)] {
        db.send(Record::Recording {
            call_id: format!("{}@test", m.set.base_name),
            base_name: m.set.base_name.clone(),
            profile: Some("sales".into()),
            start_ms,
            end_ms: Some(start_ms + 1000),
            caller: None,
            callee: None,
            answered_by: None,
        });
        db.send(Record::Seal {
            base_name: m.set.base_name.clone(),
            at_ms: start_ms,
            checksum_sha256: m.set.checksum_sha256.clone(),
            files: m.set.files.len() as u32,
            chain: m.set.chain_json(),
        });
    }
    let spool = Spool::start(fast_spool(&data), db.clone(), secrets.clone(), None).unwrap();
    for m in &made {
        spool.enqueue(&m.set, std::slice::from_ref(&url)).unwrap();
    }
    assert!(
        spool.wait_empty(Duration::from_secs(60)).await,
        "not delivered: {:?}",
        db.attempts(&old.set.base_name)
    );
    drop(spool);
    let server_folder = Path::new(HOME).join(&folder).join("2026-03");
    for m in &made {
        assert_delivered(&server_folder, m);
    }
    let request = PurgeRequest {
        older_than: callrec::archive::parse_age("5y").unwrap(),
        dry_run: false,
        reason: "retention 5y".into(),
        profile: Some("sales".into()),
        tombstones: Some(callrec::archive::TombstoneSigner {
            identity: callrec::seal::Identity::load_or_create(
                &data,
                callrec::seal::PasswordSource::Value("test-pass".into()),
            )
            .unwrap(),
            staging: data.join("tombstones"),
        }),
        plan: Default::default(),
        transcript_staging: None,
    };

    // A wrong password: nothing is deleted or documented as deleted; the failure is reported.
    let mut wrong = Secrets::new();
    wrong.insert(url.clone(), password_secret(sshd.known_hosts(), "wrong"));
    let report = purge_everywhere(&db, &[], &wrong, &request).await.unwrap();
    assert!(report.deleted.is_empty(), "{report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(report.failed[0].2.contains("login refused"), "{report:?}");
    assert_delivered(&server_folder, old);
    assert_eq!(db.count("deletions").unwrap(), 0);

    // With the right password the expired set goes, the younger one stays.
    let report = purge_everywhere(&db, &[], &secrets, &request)
        .await
        .unwrap();
    assert_eq!(report.deleted.len(), 1, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    for (name, _) in &old.contents {
        assert!(
            !server_folder.join(name).exists(),
            "{name} still on the server"
        );
    }
    assert_delivered(&server_folder, young);
    // The signed tombstone took the set's place on the server: the server's
    // folder verifies as an unbroken chain with one lawful deletion.
    let tomb = server_folder.join(format!("{}.deleted.json", old.set.base_name));
    assert!(tomb.is_file(), "no tombstone on the server");
    let out = Command::new(env!("CARGO_BIN_EXE_callrec"))
        .args(["verify", "--chain"])
        .arg(&server_folder)
        .arg("--cert")
        .arg(data.join("cert.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("deleted lawfully on").count(), 1, "{text}");
    std::fs::remove_file(&tomb).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_callrec"))
        .args(["verify", "--chain"])
        .arg(&server_folder)
        .arg("--cert")
        .arg(data.join("cert.pem"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a deletion without its record is a gap"
    );
    // Deleted everywhere: its rows now go by its set id, not its base name (which holds numbers).
    let purged_id = old.set.position.as_ref().unwrap().set_id.clone();
    assert!(db.deletions_of(&old.set.base_name).unwrap().is_empty());
    let rows = db.deletions_of(&purged_id).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].target, url);
    assert_eq!(rows[0].reason, "retention 5y");
    assert_eq!(
        rows[0].checksum_sha256.as_deref(),
        Some(old.set.checksum_sha256.as_str())
    );
    assert!(db.deletions_of(&young.set.base_name).unwrap().is_empty());
    assert_eq!(
        db.uploads_of(&purged_id).unwrap()[0].state.as_str(),
        "deleted"
    );
    let _ = std::fs::remove_dir_all(Path::new(HOME).join(&folder));
}

/// The web console plays a set that only the SFTP target holds: fetched on
/// demand, verified against the instance certificate before it is served; a
/// set changed on the server is shown as failing and not played.
#[test]
fn console_plays_a_set_only_the_sftp_target_holds() {
    use common::console::{
        assert_plays, assert_refuses, record_one_remote_set, signed_set_in, start_with_config,
        tamper,
    };
    let work = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&work.path().join("sshd"), free_port());
    let folder = unique_folder("console");
    let config = work.path().join("callrec.toml");
    std::fs::write(
        &config,
        format!(
            "[targets.offsite]\nurl = \"sftp://{USER}@127.0.0.1:{}/{folder}\"\npassword = \"{PASSWORD}\"\nknown_hosts = \"{}\"\n\n[[profiles]]\nname = \"default\"\nrecord_all = true\ntargets = [\"offsite\"]\n",
            sshd.port,
            sshd.known_hosts().display()
        ),
    )
    .unwrap();
    let data = work.path().join("data");
    let server = Path::new(HOME).join(&folder);
    let (proxy, id) = record_one_remote_set(&data, &config, || signed_set_in(&server));
    let wav = server.join(format!("{id}.wav"));
    assert_plays(&proxy, &data, &id, &std::fs::read(&wav).unwrap());

    // Changed on the server: a new start fetches it again and refuses to play it.
    drop(proxy);
    tamper(&wav);
    let proxy = start_with_config(&data, &config);
    assert_refuses(&proxy, &data, &id);
    drop(proxy);
    let _ = std::fs::remove_dir_all(&server);
}
