//! Recovery when the protocol database cannot answer: a journal left in
//! `work/` without its audio is either a set that reached the spool before
//! the crash (nothing lost) or a recording whose audio is gone (a loss to
//! report). Only the database's upload rows tell the two apart; while it
//! cannot be read, recovery must neither report a loss it cannot show nor
//! drop the journal, and must say so.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use callrec::db::Db;
use callrec::recorder::failure::{FailureReason, FailureReporter};
use callrec::recorder::journal::{Journal, JOURNAL_VERSION};
use callrec::recorder::metadata::{CallIds, PartyInfo};
use callrec::recovery::{Recovery, Summary};
use callrec::seal::service::SealService;
use callrec::seal::{Identity, PasswordSource, Sealer};
use callrec::spool::{Spool, SpoolConfig};
use callrec::vocab::{ChannelMode, Direction};

fn journal(work: &Path, base: &str) {
    let party = |n: &str| PartyInfo {
        name: None,
        number: n.into(),
        ..Default::default()
    };
    Journal {
        version: JOURNAL_VERSION,
        base_name: base.into(),
        call_ids: CallIds {
            caller_leg: "a@x".into(),
            callee_leg: "b@y".into(),
        },
        caller: party("0301"),
        callee: party("200"),
        dialled_number: "200".into(),
        direction: Direction::Incoming,
        profile: "default".into(),
        matched_rule: "all".into(),
        channels: ChannelMode::Stereo,
        files: vec![format!("{base}.wav")],
        start_ms: 1_767_265_200_000,
        announcement: None,
        targets: vec![],
        instance_id: "i".into(),
        instance_name: "rec-a".into(),
    }
    .write(work)
    .unwrap();
}

#[tokio::test]
async fn a_journal_without_audio_is_kept_and_not_reported_while_the_database_cannot_answer() {
    let keep = tempfile::tempdir().unwrap();
    let data = keep.path().join("data");
    let work = data.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let base = "20260101_120000_in_0301_200_undecided1";
    journal(&work, base);
    let journal_path = Journal::path(&work, base);
    let db = Db::open_in(&data).unwrap();
    let spool = Spool::start(
        SpoolConfig::new(&data),
        db.clone(),
        callrec::storage::Secrets::new(),
        None,
    )
    .unwrap();
    let id = Identity::load_or_create(&data, PasswordSource::Value("pw".into())).unwrap();
    let service = SealService::start(Sealer::new(id, &data).unwrap(), Box::new(|_| {}));
    // The upload rows become unreadable (a damaged or half-migrated
    // database); what makes them, kept to mend it later.
    let sqlite = rusqlite::Connection::open(data.join(callrec::db::DB_FILE_NAME)).unwrap();
    let schema: Vec<String> = sqlite
        .prepare("SELECT sql FROM sqlite_master WHERE tbl_name = 'uploads' AND sql IS NOT NULL ORDER BY type DESC")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    sqlite.execute_batch("DROP TABLE uploads").unwrap();
    assert!(db.uploads_of(base).is_err(), "the sabotage did not take");

    let failures = FailureReporter::new();
    let recover = || {
        let recovery = Recovery {
            work: work.clone(),
            db: db.clone(),
            failures: failures.clone(),
            recovered: Arc::new(AtomicU64::new(0)),
            profile_targets: Default::default(),
            default_targets: vec![],
        };
        let (sender, sp) = (service.sender(), spool.clone());
        tokio::task::spawn_blocking(move || recovery.run(&sender, &sp))
    };
    let summary = recover().await.unwrap();
    let reported = |reason: FailureReason| -> u64 {
        failures
            .counts()
            .iter()
            .filter(|(r, _)| *r == reason)
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!(
        reported(FailureReason::RecoveredAfterCrash),
        0,
        "a loss was reported that the database could not confirm"
    );
    assert_eq!(
        reported(FailureReason::UndecidedAfterCrash),
        1,
        "the operator was not told that a journal waits"
    );
    assert!(
        journal_path.exists(),
        "the journal left work/ although nobody could tell whether its set was delivered"
    );
    assert!(
        !work.join(callrec::recovery::UNRECOVERABLE_DIR).exists(),
        "the journal was set aside as unrecoverable"
    );
    assert_eq!(
        summary,
        Summary {
            undecided: 1,
            ..Summary::default()
        }
    );

    // The next start reads the database again: no rows, so the audio is
    // gone, and that is a loss to report.
    for sql in &schema {
        sqlite.execute_batch(sql).unwrap();
    }
    let summary = recover().await.unwrap();
    assert_eq!(
        summary,
        Summary {
            set_aside: 1,
            ..Summary::default()
        }
    );
    assert_eq!(reported(FailureReason::RecoveredAfterCrash), 1);
    assert!(!journal_path.exists());
    assert!(work
        .join(callrec::recovery::UNRECOVERABLE_DIR)
        .join(journal_path.file_name().unwrap())
        .exists());
    drop(service);
}
