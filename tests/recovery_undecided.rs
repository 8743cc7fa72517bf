//! Recovery when the protocol database cannot answer: a journal left in
//! `work/` without its audio is either a set that reached the spool before
//! the crash (nothing lost) or a recording whose audio is gone (a loss to
//! report). Only the database's upload rows tell the two apart; while it
//! cannot be read, recovery must neither report a loss it cannot show nor
//! drop the journal, and must say so.

use std::path::{Path, PathBuf};
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

/// A start after a crash: `work/` holds one journal without its audio, the
/// database's upload rows are unreadable (a damaged or half-migrated
/// database), and what makes them is kept to mend it.
struct Start {
    _keep: tempfile::TempDir,
    work: PathBuf,
    journal_path: PathBuf,
    db: Db,
    spool: Spool,
    service: SealService,
    sqlite: rusqlite::Connection,
    schema: Vec<String>,
    failures: FailureReporter,
}

impl Start {
    fn with_unreadable_uploads() -> Start {
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
        Start {
            _keep: keep,
            work,
            journal_path,
            db,
            spool,
            service,
            sqlite,
            schema,
            failures: FailureReporter::new(),
        }
    }

    /// Runs recovery as a start does.
    async fn recover(&self) -> Summary {
        let recovery = Recovery {
            work: self.work.clone(),
            db: self.db.clone(),
            failures: self.failures.clone(),
            recovered: Arc::new(AtomicU64::new(0)),
            profile_targets: Default::default(),
            default_targets: vec![],
        };
        let (sender, sp) = (self.service.sender(), self.spool.clone());
        tokio::task::spawn_blocking(move || recovery.run(&sender, &sp))
            .await
            .unwrap()
    }

    /// Makes the upload rows readable again (none for the journal's set).
    fn mend(sqlite: &rusqlite::Connection, schema: &[String]) {
        for sql in schema {
            sqlite.execute_batch(sql).unwrap();
        }
    }

    fn reported(&self, reason: FailureReason) -> u64 {
        self.failures
            .counts()
            .iter()
            .filter(|(r, _)| *r == reason)
            .map(|(_, n)| n)
            .sum()
    }

    /// The journal is in `unrecoverable/` and reported as a loss.
    fn assert_set_aside_as_lost(&self, summary: Summary) {
        assert_eq!(
            summary,
            Summary {
                set_aside: 1,
                ..Summary::default()
            }
        );
        assert_eq!(self.reported(FailureReason::RecoveredAfterCrash), 1);
        assert!(!self.journal_path.exists());
        assert!(self
            .work
            .join(callrec::recovery::UNRECOVERABLE_DIR)
            .join(self.journal_path.file_name().unwrap())
            .exists());
    }
}

#[tokio::test]
async fn a_journal_without_audio_is_kept_and_not_reported_while_the_database_cannot_answer() {
    let start = Start::with_unreadable_uploads();
    let summary = start.recover().await;
    assert_eq!(
        start.reported(FailureReason::RecoveredAfterCrash),
        0,
        "a loss was reported that the database could not confirm"
    );
    assert_eq!(
        start.reported(FailureReason::UndecidedAfterCrash),
        1,
        "the operator was not told that a journal waits"
    );
    assert!(
        start.journal_path.exists(),
        "the journal left work/ although nobody could tell whether its set was delivered"
    );
    assert!(
        !start
            .work
            .join(callrec::recovery::UNRECOVERABLE_DIR)
            .exists(),
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
    Start::mend(&start.sqlite, &start.schema);
    let summary = start.recover().await;
    start.assert_set_aside_as_lost(summary);
}

#[tokio::test]
async fn a_database_back_within_a_second_or_two_decides_at_this_start() {
    let start = Start::with_unreadable_uploads();
    // The database answers again while recovery waits to ask once more.
    let path = start.sqlite.path().unwrap().to_owned();
    let schema = start.schema.clone();
    let mender = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(400));
        Start::mend(&rusqlite::Connection::open(path).unwrap(), &schema);
    });
    let summary = start.recover().await;
    mender.join().unwrap();
    assert_eq!(
        start.reported(FailureReason::UndecidedAfterCrash),
        0,
        "a moment's outage left the set undecided until the next start"
    );
    start.assert_set_aside_as_lost(summary);
}
