//! One protocol database for several instances: a purge never runs while
//! another process sharing the database purges (SQLite and PostgreSQL), the
//! tombstone is signed by the purging instance, and `callrec db migrate`
//! copies an SQLite database whole into an empty PostgreSQL one (and refuses
//! a database that holds tables).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use callrec::db::scratch::ScratchDb;
use callrec::db::{Db, Engine, LockName, Record};
use callrec::seal::{Identity, PasswordSource, Sealer};

const BASE: &str = "20261201_100000_in_03012345678_200_aa01";

/// `callrec ARGS` with the test keystore's password; (exit code, stdout+stderr).
fn cli(args: &[String]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_callrec"))
        .args(args)
        .env("CALLREC_KEYSTORE_PASSWORD", "pw")
        .env_remove("CALLREC_DATA_DIR")
        .env_remove("CALLREC_CONFIG")
        .env_remove("CALLREC_DATABASE")
        .env_remove("CALLREC_DATABASE_PASSWORD_FILE")
        .env_remove("CALLREC_DATABASE_PASSWORD")
        .output()
        .expect("cannot run callrec");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn args(words: &[&str], data: &Path, flags: &[String]) -> Vec<String> {
    let mut v: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    v.push("--data-dir".into());
    v.push(data.display().to_string());
    v.extend(flags.iter().cloned());
    v
}

/// A data dir whose instance sealed one set of 03012345678 -> 200 an hour
/// ago, recorded in `db`; returns the instance id.
fn one_sealed_set(data: &Path, db: &Db) -> String {
    let id = Identity::load_or_create(data, PasswordSource::Value("pw".into())).unwrap();
    let instance = id.instance_id().to_string();
    std::fs::write(data.join("cert.pem"), id.certificate_pem()).unwrap();
    let mut sealer = Sealer::new(id, data).unwrap();
    let folder = data.join("recordings");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join(format!("{BASE}.wav")), b"RIFF not really").unwrap();
    let sealed = sealer
        .seal(
            &folder,
            BASE,
            serde_json::json!({"caller": "03012345678", "callee": "200"}),
            &[PathBuf::from(format!("{BASE}.wav"))],
        )
        .unwrap();
    let now = callrec::db::now_ms();
    db.write_sync(vec![
        Record::Recording {
            call_id: "c1".into(),
            base_name: BASE.into(),
            profile: Some("default".into()),
            start_ms: now - 3_600_000,
            end_ms: Some(now - 3_500_000),
            caller: Some("03012345678".into()),
            callee: Some("200".into()),
            answered_by: None,
        },
        Record::Seal {
            base_name: BASE.into(),
            at_ms: now - 3_500_000,
            checksum_sha256: sealed.checksum_sha256.clone(),
            files: sealed.files.len() as u32,
            chain: sealed.chain_json(),
        },
    ])
    .unwrap();
    instance
}

#[test]
fn purge_refuses_while_another_process_holds_the_purge_lock_on_sqlite() {
    purge_is_exclusive(Engine::Sqlite);
}

#[test]
fn purge_refuses_while_another_process_holds_the_purge_lock_on_postgres() {
    purge_is_exclusive(Engine::Postgres);
}

fn purge_is_exclusive(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let scratch = ScratchDb::new(engine, &data);
    let db = scratch.open();
    let instance = one_sealed_set(&data, &db);
    let flags = scratch.flags();
    let wav = data.join("recordings").join(format!("{BASE}.wav"));

    // This test process stands for another instance in the middle of its purge.
    let held = db
        .try_lock(LockName::Purge)
        .unwrap()
        .expect("the lock is free");
    assert!(
        db.try_lock(LockName::Purge).unwrap().is_none(),
        "a second holder must be refused"
    );
    let (code, out) = cli(&args(&["purge", "--older-than", "1m"], &data, &flags));
    assert_eq!(code, 2, "the second purge must refuse: {out}");
    assert!(out.contains("is purging now"), "{out}");
    assert!(wav.exists(), "nothing deleted while another purges");
    assert_eq!(db.count("deletions").unwrap(), 0);

    // Released, but a legal hold (placed through the shared database) keeps the set.
    drop(held);
    let hold = |words: &[&str]| cli(&args(words, &data, &flags));
    let (code, out) = hold(&[
        "hold",
        "add",
        "--number",
        "030 12345678",
        "--reason",
        "case 7",
    ]);
    assert_eq!(code, 0, "{out}");
    let (_, list) = hold(&["hold", "list"]);
    assert!(
        list.contains("number +493012345678") && list.contains("case 7"),
        "{list}"
    );
    let (code, out) = cli(&args(&["purge", "--older-than", "1m"], &data, &flags));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 set(s) deleted") && wav.exists(), "{out}");
    let (code, out) = hold(&["hold", "remove", "--number", "+493012345678"]);
    assert_eq!(code, 0, "{out}");

    // The purge runs, and signs the tombstone as this instance.
    let (code, out) = cli(&args(&["purge", "--older-than", "1m"], &data, &flags));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 set(s) deleted"), "{out}");
    assert!(!wav.exists());
    assert_eq!(db.count("deletions").unwrap(), 1);
    let tomb = data.join("recordings").join(format!("{BASE}.deleted.json"));
    let tomb: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&tomb).expect("tombstone written")).unwrap();
    assert_eq!(tomb["deleted"]["deleted_by"], instance.as_str(), "{tomb}");
    let (code, out) = cli(&[
        "verify".into(),
        "--chain".into(),
        data.join("recordings").display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("deleted lawfully on"), "{out}");
    // The lock was given back when the purge ended.
    assert!(db.try_lock(LockName::Purge).unwrap().is_some());
}

/// Every table's rows, in a fixed order, as text (both engines' values compare equal as text).
fn dump(conn: &callrec::db::Conn, tables: &[String]) -> Vec<(String, Vec<String>)> {
    tables
        .iter()
        .map(|t| {
            // Ordered by up to the first three columns (some tables have two).
            let width = callrec::db::table_rows(conn, t, "1")
                .unwrap()
                .first()
                .map_or(1, |r| r.len().min(3));
            let order: Vec<String> = (1..=width).map(|i| i.to_string()).collect();
            let rows = callrec::db::table_rows(conn, t, &order.join(", "))
                .unwrap()
                .into_iter()
                .map(|r| format!("{r:?}"))
                .collect();
            (t.clone(), rows)
        })
        .collect()
}

#[test]
fn db_migrate_copies_every_row_into_an_empty_postgres_and_refuses_a_full_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sqlite = ScratchDb::new(Engine::Sqlite, &data);
    let db = sqlite.open();
    one_sealed_set(&data, &db);
    // History of every kind: access log, a hold, an anchor (bytes), a phone
    // key, a deletion, errors, a console user (through its command).
    let (code, out) = cli(&args(
        &["recordings", "search", "--number", "03012345678"],
        &data,
        &[],
    ));
    assert_eq!(code, 0, "{out}");
    db.write_sync(vec![
        Record::Hold(callrec::hold::HoldChange {
            hold: callrec::hold::Hold {
                kind: callrec::hold::HoldKind::Number,
                value: "+493012345678".into(),
                reason: "case 7".into(),
                actor: "ann".into(),
                at_ms: 5,
            },
            add: true,
        }),
        Record::Anchor(callrec::anchoring::AnchorRow {
            profile: "default".into(),
            seq: 1,
            sha256: "ab".into(),
            at_ms: 6,
            reply: vec![0, 159, 255, 1],
        }),
        Record::PhoneKey(callrec::phone::keys::PhoneKeyChange::Create {
            user: 42,
            token: "tok".into(),
            at_ms: 7,
        }),
        Record::Deletion {
            base_name: "older_set".into(),
            target: "file:///x".into(),
            at_ms: 8,
            reason: "retention 1y".into(),
            checksum_sha256: Some("cd".into()),
        },
        Record::Error {
            at_ms: 9,
            component: "t".into(),
            message: "it's \"quoted\"".into(),
        },
    ])
    .unwrap();
    drop(db);
    let pg = ScratchDb::postgres();
    let pw_flags: Vec<String> = pg.flags()[2..].to_vec();
    let mut user = Command::new(env!("CARGO_BIN_EXE_callrec"));
    user.args(["users", "add", "ann", "--role", "admin", "--data-dir"])
        .arg(&data)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child = user.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"twelve chars pw\n").unwrap();
    assert!(child.wait().unwrap().success());

    let mut migrate = args(
        &["db", "migrate", "--to", &pg.location.shown()],
        &data,
        &pw_flags,
    );
    let (code, out) = cli(&migrate);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("row(s) copied"), "{out}");

    // Every table, every row, equal.
    let from = sqlite.location.connect().unwrap();
    let to = pg.location.connect().unwrap();
    let tables: Vec<String> = from
        .query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0).unwrap())
        .collect();
    assert!(tables.len() >= 10, "{tables:?}");
    let (a, b) = (dump(&from, &tables), dump(&to, &tables));
    for ((t, rows_a), (_, rows_b)) in a.iter().zip(&b) {
        assert_eq!(rows_a, rows_b, "table {t} differs after the copy");
    }
    let filled = a.iter().filter(|(_, r)| !r.is_empty()).count();
    assert!(filled >= 8, "the history was not varied enough: {a:?}");

    // The old set is found through PostgreSQL, and new rows get new ids.
    let pg_flags = pg.flags();
    let (code, out) = cli(&args(
        &["recordings", "search", "--number", "+49 30 12345678"],
        &data,
        &pg_flags,
    ));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(BASE), "{out}");
    let (code, out) = cli(&args(&["audit"], &data, &pg_flags));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.matches("search").count(),
        2,
        "old and new search: {out}"
    );
    let (code, out) = cli(&args(&["users", "list"], &data, &pg_flags));
    assert_eq!((code, out.trim()), (0, "ann  admin"));
    let (code, out) = cli(&args(&["db", "check"], &data, &pg_flags));
    assert_eq!(code, 0, "{out}");
    let version = callrec::db::MIGRATIONS.len();
    assert!(
        out.contains(&format!(
            "schema version {version}, this callrec knows {version}"
        )),
        "{out}"
    );
    // The password may come from the environment instead of a file.
    let password = std::fs::read_to_string(&pg_flags[3]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_callrec"))
        .args(["audit", "--database", &pg_flags[1]])
        .env("CALLREC_DATABASE_PASSWORD", password.trim_end())
        .env_remove("CALLREC_DATABASE_PASSWORD_FILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("search")
            .count(),
        2
    );

    // A second copy into the same (now full) database is refused, untouched.
    let (code, out) = cli(&migrate);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("only into an empty database"), "{out}");
    // …and a URL with a password in it is refused before anything connects.
    migrate[3] = pg
        .location
        .shown()
        .replace("callrec_test@", "callrec_test:secret@");
    let (code, out) = cli(&migrate);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--database-password-file") && !out.contains("secret"),
        "{out}"
    );
}
