//! The archive subcommands on real recordings: calls from two numbers are
//! recorded through the proxy, then
//! `recordings search` finds a party's sets in any spelling of its number,
//! `recordings export` hands over a copy that verifies on its own with the
//! bundled verify.sh, `uploads status` shows every set delivered, and `purge`
//! deletes only sets past the retention period and documents each deletion.
//! Once with the SQLite file in the data directory, once with PostgreSQL.

mod common;

use callrec::db::scratch::ScratchDb;
use callrec::db::Engine;
use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn search_export_status_and_purge_on_sqlite() {
    search_export_status_and_purge(Engine::Sqlite);
}

#[test]
fn search_export_status_and_purge_on_postgres() {
    search_export_status_and_purge(Engine::Postgres);
}

fn search_export_status_and_purge(engine: Engine) {
    let data_dir = tempfile::tempdir().unwrap();
    let scratch = ScratchDb::new(engine, data_dir.path());
    let flags = scratch.flags();
    let mut builder = Proxy::builder().data_dir(data_dir.path());
    for f in &flags {
        builder = builder.arg(f);
    }
    let mut proxy = builder.start();
    let callrec_cli = |args: &[&str]| -> (i32, String) {
        let mut all: Vec<&str> = args.to_vec();
        if args[0] != "verify" {
            all.extend(flags.iter().map(String::as_str));
        }
        common::callrec_cli(&all)
    };
    for caller in ["03012345678", "03012345678", "08955512345"] {
        proxy
            .call(pair("basic"))
            .numbers(caller, "200")
            .run()
            .assert_success();
    }
    // Stop the proxy cleanly: every set sealed, delivered and in the database.
    assert_eq!(
        proxy.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        proxy.log_tail(30)
    );
    let data = proxy.data_dir().to_str().unwrap().to_string();

    let (code, out) = callrec_cli(&[
        "recordings",
        "search",
        "--number",
        "+49 30 12345678",
        "--data-dir",
        &data,
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines().count(),
        2,
        "two calls from that number expected:\n{out}"
    );
    let (_, out) = callrec_cli(&[
        "recordings",
        "search",
        "--number",
        "0049895551234 5",
        "--data-dir",
        &data,
    ]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let (_, out) = callrec_cli(&[
        "recordings",
        "search",
        "--number",
        "03012345678",
        "--from",
        "2000-01-01",
        "--to",
        "2001-01-01",
        "--data-dir",
        &data,
    ]);
    assert_eq!(out.lines().count(), 0, "nothing recorded in 2000: {out}");

    let (code, out) = callrec_cli(&["uploads", "status", "--data-dir", &data]);
    assert_eq!(code, 0, "{out}");
    // The state as a word of its own: a base name's random part may hold "done".
    assert_eq!(
        out.split_whitespace().filter(|w| *w == "done").count(),
        3,
        "{out}"
    );

    // Export a client's copy and verify it with only the bundled script.
    let dir = TestDir::new("export");
    let out_dir = dir.join("client");
    let (code, out) = callrec_cli(&[
        "recordings",
        "export",
        "--number",
        "03012345678",
        "--out",
        out_dir.to_str().unwrap(),
        "--data-dir",
        &data,
    ]);
    assert_eq!(code, 0, "{out}");
    let sets: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sha256"))
        .collect();
    assert_eq!(sets.len(), 2, "{out}");
    let v = Command::new("sh")
        .arg(out_dir.join("verify.sh"))
        .arg("--cert")
        .arg(out_dir.join("cert.pem"))
        .args(&sets)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "exported sets fail verify.sh: {}",
        String::from_utf8_lossy(&v.stdout)
    );

    // Retention: a long period deletes nothing, a dry run deletes nothing,
    // a 1 s period deletes all three and documents each.
    std::thread::sleep(Duration::from_millis(1100));
    let (code, out) = callrec_cli(&["purge", "--older-than", "5y", "--data-dir", &data]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 set(s) deleted"), "{out}");
    let (_, out) = callrec_cli(&[
        "purge",
        "--older-than",
        "1s",
        "--dry-run",
        "--data-dir",
        &data,
    ]);
    assert!(out.contains("3 set(s) would delete"), "{out}");
    let rec = proxy.data_dir().join("recordings");
    let count = || std::fs::read_dir(&rec).unwrap().count();
    assert!(count() >= 3 * 4, "dry run deleted files");
    let (code, out) = callrec_cli(&["purge", "--older-than", "1s", "--data-dir", &data]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 set(s) deleted"), "{out}");
    // Only the signed tombstones stay, three files for each deleted set.
    let left: Vec<String> = std::fs::read_dir(&rec)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter().all(|n| n.contains(".deleted.")),
        "set files left after purge: {left:?}"
    );
    assert_eq!(left.len(), 3 * 3, "a tombstone for each set: {left:?}");
    let (code, out) = callrec_cli(&["verify", "--chain", rec.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("deleted lawfully on").count(), 3, "{out}");
    let n: i64 = scratch
        .open()
        .read(|c| {
            c.query_one("SELECT COUNT(*) FROM deletions WHERE reason = 'retention 1s' AND checksum_sha256 IS NOT NULL", &[])?
                .get(0)
        })
        .unwrap();
    assert_eq!(
        n, 3,
        "each deletion documented with the checksum file's hash"
    );
}
