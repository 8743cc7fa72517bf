//! Retention on folder targets: sets are delivered through
//! the real spool to two `file://` targets, then purged by age. A set past the
//! period is deleted from every target the database says holds it, one deletion
//! row per target (set, target, time, reason, SHA-256 of the checksum file) and
//! its upload rows become `deleted`; a younger set and other profiles' sets stay;
//! a dry run deletes nothing; a second purge finds nothing left to do. The
//! per-profile `retention` key of the config file is read and checked.
//! The purge runs once on SQLite and once on PostgreSQL.

mod storage_support;

use std::path::Path;
use std::time::Duration;

use callrec::archive::{purge_everywhere, purge_profiles, PurgeRequest};
use callrec::db::scratch::{ScratchDb, ENGINES};
use callrec::db::{now_ms, Engine, Record};
use callrec::policy::PolicyConfig;
use callrec::spool::Spool;
use callrec::storage::Secrets;
use sha2::{Digest, Sha256};
use storage_support::{assert_delivered, fast_spool, make_sets, MadeSet};

/// Lowercase hex SHA-256 of the set's checksum file, from the bytes it was sealed with.
fn checksum_hash(m: &MadeSet) -> String {
    let name = format!("{}.sha256", m.set.base_name);
    let bytes = &m.contents.iter().find(|(n, _)| *n == name).unwrap().1;
    hex::encode(Sha256::digest(bytes))
}

/// True when no file of `m` is in `folder`.
fn all_gone(folder: &Path, m: &MadeSet) -> bool {
    m.contents.iter().all(|(n, _)| !folder.join(n).exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sets_are_deleted_from_every_folder_target_and_documented() {
    for engine in ENGINES {
        deleted_and_documented(engine).await;
    }
}

async fn deleted_and_documented(engine: Engine) {
    let work = tempfile::tempdir().unwrap();
    let made = make_sets(work.path(), 2);
    let (old, young) = (&made[0], &made[1]);
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    let a_url = format!("file://{}/$Y/$M", a.display());
    let b_url = format!("file://{}", b.display());
    let a_folder = a.join("2026/03");
    let data = work.path().join("data");
    let scratch = ScratchDb::new(engine, &data);
    let db = scratch.open();
    // What the proxy records for each set: the recording (its start) and the seal.
    let day_ms = 86_400_000;
    for (m, start_ms) in [(old, now_ms() - 10 * day_ms), (young, now_ms() - day_ms)] {
        db.send(Record::Recording {
            call_id: format!("{}@test", m.set.base_name),
            base_name: m.set.base_name.clone(),
            profile: Some("sales".into()),
            start_ms,
            end_ms: Some(start_ms + 1000),
            caller: Some("4930123".into()),
            callee: Some("200".into()),
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
    let spool = Spool::start(fast_spool(&data), db.clone(), Secrets::new(), None).unwrap();
    for m in &made {
        spool
            .enqueue(&m.set, &[a_url.clone(), b_url.clone()])
            .unwrap();
    }
    assert!(spool.wait_empty(Duration::from_secs(20)).await);
    drop(spool);
    for m in &made {
        assert_delivered(&a_folder, m);
        assert_delivered(&b, m);
    }
    let week = PurgeRequest {
        older_than: Duration::from_secs(7 * 86_400),
        dry_run: true,
        reason: "retention 7d".into(),
        profile: None,
        tombstones: None,
        plan: Default::default(),
        transcript_staging: None,
    };
    let secrets = Secrets::new();

    // A dry run names both targets of the old set and touches nothing.
    let dry = purge_everywhere(&db, &[], &secrets, &week).await.unwrap();
    let mut places: Vec<_> = dry
        .deleted
        .iter()
        .map(|(s, t)| (s.clone(), t.display().to_string()))
        .collect();
    places.sort();
    let mut want = vec![
        (old.set.base_name.clone(), a_url.clone()),
        (old.set.base_name.clone(), b_url.clone()),
    ];
    want.sort();
    assert_eq!(places, want);
    assert_delivered(&a_folder, old);
    assert_eq!(db.count("deletions").unwrap(), 0);

    // Another profile's period does not touch sales' sets.
    let mut policy = PolicyConfig::default();
    policy.retention.insert("support".into(), "1d".into());
    let reports = purge_profiles(&db, &[], &secrets, &policy, None, None)
        .await
        .unwrap();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].1.deleted.is_empty(), "{:?}", reports[0].1);
    assert_delivered(&a_folder, old);

    // Sales' own period deletes the old set everywhere, and only that set.
    let mut policy = PolicyConfig::default();
    policy.retention.insert("sales".into(), "7d".into());
    let reports = purge_profiles(&db, &[], &secrets, &policy, None, None)
        .await
        .unwrap();
    let report = &reports[0].1;
    assert_eq!(report.deleted.len(), 2, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(report.sets(), 1);
    assert!(
        all_gone(&a_folder, old),
        "old set left on target A: {:?}",
        std::fs::read_dir(&a_folder)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect::<Vec<_>>()
    );
    assert!(all_gone(&b, old), "old set left on target B");
    assert_delivered(&a_folder, young);
    assert_delivered(&b, young);

    // Deleted everywhere: its rows now go by its set id, not its base name (which holds numbers).
    let purged_id = old.set.position.as_ref().unwrap().set_id.clone();
    assert!(db.deletions_of(&old.set.base_name).unwrap().is_empty());
    let rows = db.deletions_of(&purged_id).unwrap();
    let mut targets: Vec<_> = rows.iter().map(|r| r.target.clone()).collect();
    targets.sort();
    let mut expected = vec![a_url.clone(), b_url.clone()];
    expected.sort();
    assert_eq!(targets, expected, "one deletion row per target");
    for r in &rows {
        assert_eq!(r.reason, "retention 7d (profile sales)");
        assert_eq!(
            r.checksum_sha256.as_deref(),
            Some(checksum_hash(old).as_str())
        );
        assert!((now_ms() - r.at_ms).abs() < 60_000, "{r:?}");
    }
    assert!(db.deletions_of(&young.set.base_name).unwrap().is_empty());
    let uploads = db.uploads_of(&purged_id).unwrap();
    assert!(
        uploads.iter().all(|u| u.state.as_str() == "deleted"),
        "{uploads:?}"
    );

    // Nothing left to do the next day: no new rows, nothing reported missing.
    let reports = purge_profiles(&db, &[], &secrets, &policy, None, None)
        .await
        .unwrap();
    let again = &reports[0].1;
    assert!(
        again.deleted.is_empty() && again.not_found.is_empty() && again.failed.is_empty(),
        "{again:?}"
    );
    assert_eq!(db.count("deletions").unwrap(), 2);
}

#[test]
fn the_retention_key_of_a_profile_is_read_and_checked() {
    let text = r#"
[[profiles]]
name = "sales"
record_all = true
retention = "5y"

[[profiles]]
name = "support"
record_all = true
"#;
    let cfg = PolicyConfig::parse(text, Path::new("t.toml")).unwrap();
    assert_eq!(cfg.profiles.len(), 2);
    assert_eq!(cfg.retention.get("sales").map(String::as_str), Some("5y"));
    assert!(!cfg.retention.contains_key("support"));
    let bad = text.replace("\"5y\"", "\"5 years\"");
    let err = PolicyConfig::parse(&bad, Path::new("t.toml")).unwrap_err();
    assert!(
        err.to_string().contains("sales") && err.to_string().contains("5y, 90d"),
        "{err}"
    );
    // Other mistakes are still caught with a retention key present.
    let typo = text.replace(
        "record_all = true\nretention",
        "recrd_all = true\nretention",
    );
    let err = PolicyConfig::parse(&typo, Path::new("t.toml")).unwrap_err();
    assert!(err.to_string().contains("recrd_all"), "{err}");
}
