//! The access log as an auditor reads it: a search and an export through the
//! CLI each leave an entry naming the OS user who ran them, the number and (for
//! the export) the sets handed over; `callrec audit` lists them, filtered by
//! time and actor, as text and JSON. On SQLite and on PostgreSQL.

mod common;

use std::path::{Path, PathBuf};

use callrec::db::scratch::ScratchDb;
use callrec::db::{Engine, Record};
use callrec::seal::{Identity, PasswordSource, Sealer};
use common::*;

/// The user the tests run as, by `id -un` (what the CLI must log).
fn me() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .expect("cannot run id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A data dir with one sealed set of 03012345678 -> 200 and its database row.
fn data_dir_with_one_set(data: &Path, db: &ScratchDb) -> String {
    let id = Identity::load_or_create(data, PasswordSource::Value("pw".into())).unwrap();
    std::fs::write(data.join("cert.pem"), id.certificate_pem()).unwrap();
    let mut sealer = Sealer::new(id, data).unwrap();
    let folder = data.join("recordings");
    std::fs::create_dir_all(&folder).unwrap();
    let base = "20261201_100000_in_03012345678_200_aa01";
    std::fs::write(folder.join(format!("{base}.wav")), b"RIFF not really").unwrap();
    sealer
        .seal(
            &folder,
            base,
            serde_json::json!({"caller": "03012345678", "callee": "200"}),
            &[PathBuf::from(format!("{base}.wav"))],
        )
        .unwrap();
    db.open()
        .write_sync(vec![Record::Recording {
            call_id: "c1".into(),
            base_name: base.into(),
            profile: Some("default".into()),
            start_ms: callrec::db::now_ms() - 60_000,
            end_ms: Some(callrec::db::now_ms()),
            caller: Some("03012345678".into()),
            callee: Some("200".into()),
            answered_by: None,
        }])
        .unwrap();
    base.to_string()
}

#[test]
fn search_and_export_are_logged_and_audit_lists_them_on_sqlite() {
    logged_and_listed(Engine::Sqlite);
}

#[test]
fn search_and_export_are_logged_and_audit_lists_them_on_postgres() {
    logged_and_listed(Engine::Postgres);
}

fn logged_and_listed(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let scratch = ScratchDb::new(engine, &data);
    let base = data_dir_with_one_set(&data, &scratch);
    let d = data.to_str().unwrap();
    let flags = scratch.flags();
    let with_db = |args: &[&str]| -> (i32, String) {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(flags.iter().map(String::as_str));
        callrec_cli(&all)
    };

    let (code, out) = with_db(&[
        "recordings",
        "search",
        "--number",
        "030 12345678",
        "--data-dir",
        d,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&base), "{out}");
    let export_dir = tmp.path().join("client");
    let (code, out) = with_db(&[
        "recordings",
        "export",
        "--number",
        "03012345678",
        "--out",
        export_dir.to_str().unwrap(),
        "--data-dir",
        d,
    ]);
    assert_eq!(code, 0, "{out}");

    let (code, out) = with_db(&["audit", "--data-dir", d]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "one line per access expected:\n{out}");
    let user = me();
    assert!(
        lines[0].contains(&format!("  {user}  search  030 12345678")),
        "search not logged with the OS user and the number:\n{out}"
    );
    assert!(
        lines[1].contains(&format!("  {user}  export  03012345678")) && lines[1].contains(&base),
        "export not logged with the user, number and set:\n{out}"
    );

    // Filters: another actor, or a time after both, list nothing.
    let (code, out) = with_db(&["audit", "--actor", "nobody-else", "--data-dir", d]);
    assert_eq!((code, out.trim()), (0, ""));
    let (_, out) = with_db(&["audit", "--since", "2999-01-01", "--data-dir", d]);
    assert_eq!(out.trim(), "");
    let (code, out) = with_db(&["audit", "--actor", &user, "--json", "--data-dir", d]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("audit --json is JSON");
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v[1]["action"], "export");
    assert_eq!(v[1]["actor"], user.as_str());
}
