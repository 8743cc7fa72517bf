//! Unit tests of `db_repair` (kept beside it so the module itself stays short).

use super::*;
use crate::db::Record;

fn filled(dir: &Path, rows: i64) -> PathBuf {
    let db = Db::open_in(dir).unwrap();
    let records = (0..rows)
        .map(|i| Record::Error {
            at_ms: i,
            component: "t".into(),
            message: format!("message {i} {}", "x".repeat(200)),
        })
        .collect();
    db.write_sync(records).unwrap();
    let path = db.path().to_path_buf();
    drop(db);
    path
}

#[test]
fn a_header_ahead_of_the_file_with_the_pages_in_the_log_is_not_damage() {
    // What a crash during a checkpoint leaves: the main file's header
    // already names pages that are still only in the write-ahead log.
    let dir = tempfile::tempdir().unwrap();
    let path = filled(dir.path(), 10);
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    for i in 0..200 {
        conn.execute(
            "INSERT INTO errors (at_ms, component, message) VALUES (?1, 't', ?2)",
            rusqlite::params![i, "y".repeat(500)],
        )
        .unwrap();
    }
    // Dies without closing: the log keeps its frames.
    std::mem::forget(conn);
    let len = std::fs::metadata(&path).unwrap().len();
    let mut bytes = std::fs::read(&path).unwrap();
    let page = u64::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    let ahead = (len / page + 20) as u32;
    bytes[28..32].copy_from_slice(&ahead.to_be_bytes());
    std::fs::write(&path, bytes).unwrap();
    let wal = companion(&path, "-wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "the log holds the pages"
    );
    assert_eq!(
        truncation(&path),
        None,
        "`db check` reads the header the same way"
    );
    Db::open_in(dir.path()).expect("SQLite completes the checkpoint from the log");
}

#[test]
fn a_sound_file_checks_clean_and_garbage_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = filled(dir.path(), 10);
    assert_eq!(check(dir.path()).unwrap().findings, Vec::<String>::new());
    std::fs::write(&path, vec![0x5a; 20_000]).unwrap();
    let report = check(dir.path()).unwrap();
    assert!(!report.findings.is_empty());
    assert!(matches!(
        Db::open_in(dir.path()),
        Err(DbError::Corrupt { .. })
    ));
}

#[test]
fn a_truncated_file_keeps_its_first_half() {
    let dir = tempfile::tempdir().unwrap();
    let path = filled(dir.path(), 2000);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let found = check(dir.path()).unwrap().findings;
    assert!(found[0].contains("cut off"), "{found:?}");
    let report = recover(dir.path()).unwrap();
    let errors = report.tables.iter().find(|t| t.table == "errors").unwrap();
    assert!(errors.damaged, "{report:?}");
    // The other tables' (empty) pages come first, so a little less than half
    // of the rows lie before the cut.
    assert!(
        errors.rows > 600 && errors.rows < 1100,
        "about the first half survives: {report:?}"
    );
}

#[test]
fn tables_before_the_cut_survive_when_later_ones_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = filled(dir.path(), 3);
    let len = std::fs::metadata(&path).unwrap().len();
    // The first pages hold the first tables; the last ones are cut off.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let db = Db::open_in(dir.path());
    assert!(matches!(db, Err(DbError::Corrupt { .. })), "{db:?}");
    drop(db);
    let report = recover(dir.path()).unwrap();
    let sound: Vec<&str> = report
        .tables
        .iter()
        .filter(|t| !t.damaged)
        .map(|t| t.table.as_str())
        .collect();
    assert!(sound.contains(&"calls"), "{report:?}");
}

#[test]
fn a_damaged_page_in_the_middle_loses_only_that_page() {
    let dir = tempfile::tempdir().unwrap();
    let path = filled(dir.path(), 2000);
    // Overwrite one page in the middle of the file with garbage.
    let mut bytes = std::fs::read(&path).unwrap();
    let pages = bytes.len() / 4096;
    assert!(pages > 20, "{pages} pages");
    let mid = pages / 2 * 4096;
    bytes[mid..mid + 4096].fill(0xa5);
    std::fs::write(&path, bytes).unwrap();
    assert!(!check(dir.path()).unwrap().findings.is_empty());

    let report = recover(dir.path()).unwrap();
    let errors = report.tables.iter().find(|t| t.table == "errors").unwrap();
    assert!(errors.damaged, "{report:?}");
    assert!(
        errors.rows > 1900 && errors.rows < 2000,
        "most rows survive: {report:?}"
    );
    assert!(report.kept.is_file());
    assert!(check(dir.path()).unwrap().findings.is_empty());
    let db = Db::open_in(dir.path()).unwrap();
    assert_eq!(db.count("errors").unwrap(), errors.rows as i64);
}
