//! Failure mails into a real SMTP sink (aiosmtpd on loopback): a failing
//! target gives exactly one mail naming the target, the set's files and the error;
//! further failures within the interval send no second mail; after the interval
//! they arrive as one digest. A proxy whose PBX directory cannot be refreshed
//! mails that once the snapshot is older than `alert_after_secs`.

mod common;
mod storage_support;

use std::time::Duration;

use callrec::db::Db;
use callrec::notify::{MailConfig, Notifier, UploadFailure};
use callrec::spool::Spool;
use callrec::storage::Secrets;
use storage_support::{eventually, fast_spool, make_sets, MailSink};

fn mail_config(sink: &MailSink, interval: Duration) -> MailConfig {
    MailConfig {
        smtp_url: sink.url(),
        username: None,
        password: None,
        from: "callrec@test.example".into(),
        to: vec!["ops@test.example".into()],
        interval,
        ca_file: None,
    }
}

/// The mail's text with quoted-printable soft line breaks undone.
fn unfold(mail: &str) -> String {
    mail.replace("=\r\n", "").replace("=\n", "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_sends_one_mail_per_interval() {
    let work = tempfile::tempdir().unwrap();
    let sink = MailSink::start(work.path());
    let made = make_sets(work.path(), 1);
    let m = &made[0];
    let data = work.path().join("data");
    let bad = work.path().join("bad");
    std::fs::write(&bad, b"a file where the target folder should be").unwrap();
    let url = format!("file://{}/$Y", bad.display());

    let notifier = Notifier::new(mail_config(&sink, Duration::from_secs(3600))).unwrap();
    let db = Db::open_in(&data).unwrap();
    let spool = Spool::start(
        fast_spool(&data),
        db.clone(),
        Secrets::new(),
        Some(notifier),
    )
    .unwrap();
    spool.enqueue(&m.set, std::slice::from_ref(&url)).unwrap();

    assert!(
        eventually(Duration::from_secs(20), || !sink.mails().is_empty()).await,
        "no mail arrived; aiosmtpd log: {}",
        sink.daemon.log_text()
    );
    // Let several more attempts fail within the interval.
    let many = eventually(Duration::from_secs(20), || {
        db.flush();
        db.attempts(&m.set.base_name).unwrap().len() >= 4
    })
    .await;
    assert!(many, "expected repeated failed attempts");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = sink.mails();
    assert_eq!(mails.len(), 1, "exactly one mail within the interval");
    let mail = unfold(&mails[0]);
    assert!(mail.contains(&url), "mail names the target: {mail}");
    assert!(
        mail.contains(&m.set.base_name),
        "mail names the set: {mail}"
    );
    assert!(
        mail.contains(&format!("{}.wav", m.set.base_name)),
        "mail lists the files: {mail}"
    );
    assert!(
        mail.contains("Error: ") && mail.contains("create folder"),
        "mail gives the error: {mail}"
    );
    assert!(mail.contains("To: ops@test.example"), "{mail}");
    assert_eq!(spool.pending().len(), 1, "the set stays in the spool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_within_the_interval_become_one_digest() {
    let work = tempfile::tempdir().unwrap();
    let sink = MailSink::start(work.path());
    // Long enough that the first two mails' deliveries (a Python SMTP sink on
    // a busy machine) and the look after them fit inside it.
    let interval = Duration::from_secs(5);
    let notifier = Notifier::new(mail_config(&sink, interval)).unwrap();
    let failure = |set: &str, error: &str| UploadFailure {
        target: "sftp://rec@backup.example/calls".into(),
        base_name: set.into(),
        files: vec![format!("{set}.wav")],
        error: error.into(),
        at: "2026-03-01T10:00:00.000Z".into(),
    };
    notifier.upload_failed(failure("set-a", "login refused"));
    assert!(eventually(Duration::from_secs(10), || sink.mails().len() == 1).await);
    notifier.upload_failed(failure("set-b", "unreachable one"));
    notifier.upload_failed(failure("set-c", "unreachable two"));
    // Another target has its own allowance.
    let mut other = failure("set-d", "disk full");
    other.target = "file:///srv/rec".into();
    notifier.upload_failed(other);
    assert!(eventually(Duration::from_secs(10), || sink.mails().len() == 2).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.mails().len(), 2, "the rest waits for the digest");
    assert!(
        eventually(Duration::from_secs(10), || sink.mails().len() == 3).await,
        "digest after the interval"
    );
    let digest = unfold(
        &sink
            .mails()
            .into_iter()
            .find(|m| m.contains("digest"))
            .expect("a digest mail"),
    );
    assert!(
        digest.contains("set-b") && digest.contains("set-c"),
        "{digest}"
    );
    assert!(digest.contains("unreachable one") && digest.contains("unreachable two"));
    tokio::time::sleep(interval + Duration::from_millis(500)).await;
    assert_eq!(sink.mails().len(), 3, "nothing more without new failures");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_smtp_server_is_a_clear_error() {
    let port = storage_support::free_port();
    let notifier = Notifier::new(MailConfig {
        smtp_url: format!("smtp://127.0.0.1:{port}"),
        username: None,
        password: None,
        from: "callrec@test.example".into(),
        to: vec!["ops@test.example".into()],
        interval: Duration::from_secs(60),
        ca_file: None,
    })
    .unwrap();
    let err = notifier.send("s", "b").await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("check"),
        "{err}"
    );
}

/// A private CA and a server certificate for `localhost` / 127.0.0.1 signed by it:
/// (ca.pem, cert.pem, key.pem).
fn tls_cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let openssl = storage_support::require("openssl", "openssl");
    let p = |n: &str| dir.join(n);
    let openssl_run = |args: &[&std::ffi::OsStr]| {
        storage_support::run(std::process::Command::new(&openssl).args(args));
    };
    openssl_run(&[
        "req".as_ref(),
        "-x509".as_ref(),
        "-newkey".as_ref(),
        "rsa:2048".as_ref(),
        "-nodes".as_ref(),
        "-days".as_ref(),
        "1".as_ref(),
        "-subj".as_ref(),
        "/CN=callrec test CA".as_ref(),
        "-keyout".as_ref(),
        p("ca.key").as_os_str(),
        "-out".as_ref(),
        p("ca.pem").as_os_str(),
    ]);
    openssl_run(&[
        "req".as_ref(),
        "-newkey".as_ref(),
        "rsa:2048".as_ref(),
        "-nodes".as_ref(),
        "-subj".as_ref(),
        "/CN=localhost".as_ref(),
        "-keyout".as_ref(),
        p("key.pem").as_os_str(),
        "-out".as_ref(),
        p("leaf.csr").as_os_str(),
    ]);
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl_run(&[
        "x509".as_ref(),
        "-req".as_ref(),
        "-in".as_ref(),
        p("leaf.csr").as_os_str(),
        "-CA".as_ref(),
        p("ca.pem").as_os_str(),
        "-CAkey".as_ref(),
        p("ca.key").as_os_str(),
        "-CAcreateserial".as_ref(),
        "-days".as_ref(),
        "1".as_ref(),
        "-extfile".as_ref(),
        p("ext.cnf").as_os_str(),
        "-out".as_ref(),
        p("cert.pem").as_os_str(),
    ]);
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_implicit_tls_with_a_private_ca() {
    let work = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_cert(work.path());
    // STARTTLS (required by the server too).
    let starttls = MailSink::start_with(
        &work.path().join("starttls"),
        &[
            "--tlscert".as_ref(),
            cert.as_os_str(),
            "--tlskey".as_ref(),
            key.as_os_str(),
        ],
    );
    let mut config = MailConfig::new(
        &format!("smtp+starttls://localhost:{}", starttls.daemon.port),
        "callrec@test.example",
        &["ops@test.example"],
    );
    config.ca_file = Some(ca.clone());
    Notifier::new(config.clone())
        .unwrap()
        .send("starttls check", "body over STARTTLS")
        .await
        .unwrap_or_else(|e| panic!("{e}; aiosmtpd: {}", starttls.daemon.log_text()));
    assert!(starttls.mails()[0].contains("body over STARTTLS"));
    // Without the CA the server's certificate is refused.
    config.ca_file = None;
    let err = Notifier::new(config)
        .unwrap()
        .send("s", "b")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("failed"), "{err}");
    assert_eq!(starttls.mails().len(), 1);

    // Implicit TLS.
    let smtps = MailSink::start_with(
        &work.path().join("smtps"),
        &[
            "--smtpscert".as_ref(),
            cert.as_os_str(),
            "--smtpskey".as_ref(),
            key.as_os_str(),
        ],
    );
    let mut config = MailConfig::new(
        &format!("smtps://localhost:{}", smtps.daemon.port),
        "callrec@test.example",
        &["ops@test.example"],
    );
    config.ca_file = Some(ca);
    Notifier::new(config)
        .unwrap()
        .send("smtps check", "body over implicit TLS")
        .await
        .unwrap_or_else(|e| panic!("{e}; aiosmtpd: {}", smtps.daemon.log_text()));
    assert!(smtps.mails()[0].contains("body over implicit TLS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_spool_disk_sends_a_warning_mail() {
    let work = tempfile::tempdir().unwrap();
    let sink = MailSink::start(work.path());
    let made = make_sets(work.path(), 2);
    let data = work.path().join("data");
    let mut spool_config = fast_spool(&data);
    spool_config.low_disk_bytes = u64::MAX;
    let notifier = Notifier::new(mail_config(&sink, Duration::from_secs(3600))).unwrap();
    let db = Db::open_in(&data).unwrap();
    let spool = Spool::start(spool_config, db, Secrets::new(), Some(notifier)).unwrap();
    let url = format!("file://{}", work.path().join("out").display());
    for m in &made {
        spool.enqueue(&m.set, std::slice::from_ref(&url)).unwrap();
    }
    assert!(eventually(Duration::from_secs(10), || !sink.mails().is_empty()).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = sink.mails();
    assert_eq!(mails.len(), 1, "one warning per interval");
    assert!(mails[0].contains("spool disk low on space"), "{}", mails[0]);
    assert!(spool.wait_empty(Duration::from_secs(10)).await);
}

/// The PBX's REST API never answers: once `alert_after_secs` have passed, the
/// running proxy mails the operator, naming the source, the error and what it
/// means for recording.
#[test]
fn a_directory_that_cannot_be_refreshed_is_mailed() {
    let work = tempfile::tempdir().unwrap();
    let sink = MailSink::start(work.path());
    let dead = common::free_port();
    let cfg = work.path().join("callrec.toml");
    std::fs::write(
        &cfg,
        format!(
            "[smtp]\nurl = \"{}\"\nfrom = \"callrec@test.example\"\n\n\
             [directory]\nsource = \"http://127.0.0.1:{dead}/rest\"\nlogin_id = \"0001\"\n\
             password = \"secret\"\nrefresh_secs = 1\nalert_after_secs = 2\n",
            sink.url()
        ),
    )
    .unwrap();
    let proxy = common::Proxy::builder()
        .arg("--config")
        .arg(cfg.to_str().unwrap())
        .arg("--notify-email")
        .arg("ops@test.example")
        .start();
    let mut mails = Vec::new();
    assert!(
        common::wait_until(Duration::from_secs(20), || {
            mails = sink.mails();
            !mails.is_empty()
        }),
        "no mail; proxy log:\n{}\naiosmtpd: {}",
        proxy.log_tail(20),
        sink.daemon.log_text()
    );
    let mail = unfold(&mails[0]);
    assert!(mail.contains("directory from http://127.0.0.1"), "{mail}");
    assert!(mail.contains(&format!("127.0.0.1:{dead}")), "{mail}");
    assert!(mail.contains("No snapshot was ever fetched"), "{mail}");
    assert!(mail.contains("Last error:"), "{mail}");
    // Failures go on every second; the interval (15 min by default) allows one mail.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.mails().len(), 1, "one mail per interval");
}
