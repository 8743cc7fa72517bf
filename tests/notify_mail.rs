//! Failure mails (R6.7) into a real SMTP sink (aiosmtpd on loopback): a failing
//! target gives exactly one mail naming the target, the set's files and the error;
//! further failures within the interval send no second mail; after the interval
//! they arrive as one digest.

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
    let notifier = Notifier::new(mail_config(&sink, Duration::from_secs(2))).unwrap();
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
    tokio::time::sleep(Duration::from_millis(2500)).await;
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
    })
    .unwrap();
    let err = notifier.send("s", "b").await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("check"),
        "{err}"
    );
}
