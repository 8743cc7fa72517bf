//! `callrec spool adopt`: the pending uploads of an instance that is gone for
//! good reach their target through another instance sharing the database.
//! Refused while the gone instance still runs, for a folder that is not its
//! data directory, and for a set that does not verify (half written): that
//! one stays where it is, still pending, nothing lost; nothing is uploaded twice.

mod common;

use callrec::db::Engine;
use common::console::{get, login, users_cli};
use common::shared_db::Shared;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The queue: set, state, instance of every upload row.
const QUEUE: &str =
    "SELECT base_name, state, COALESCE(instance, '') FROM uploads ORDER BY base_name";

fn queue(shared: &Shared) -> Vec<(String, String, String)> {
    shared
        .rows(QUEUE)
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect()
}

fn adopt(shared: &Shared, from: &Path, instance: &str, data: &Path) -> (i32, String) {
    shared.cli(&[
        "spool",
        "adopt",
        "--from",
        from.to_str().unwrap(),
        "--instance",
        instance,
        "--data-dir",
        data.to_str().unwrap(),
        "--instance-name",
        "rec-b",
    ])
}

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn a_gone_instances_pending_uploads_reach_the_target_through_another_sqlite() {
    adopted_uploads_reach_the_target(Engine::Sqlite);
}

#[test]
fn a_gone_instances_pending_uploads_reach_the_target_through_another_postgres() {
    adopted_uploads_reach_the_target(Engine::Postgres);
}

fn adopted_uploads_reach_the_target(engine: Engine) {
    let work = TestDir::new("adopt");
    // The target is blocked while rec-a runs: a plain file sits where its folder goes.
    let blocker = work.join("archive");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let config = work.join("callrec.toml");
    std::fs::write(
        &config,
        format!(
            "[[profiles]]\nname = \"default\"\nrecord_all = true\ntargets = [\"file://{}/sets\"]\n",
            blocker.display()
        ),
    )
    .unwrap();
    let (data_a, data_b) = (work.join("a"), work.join("b"));
    let shared = Shared::new(engine, &data_a);
    let mut a = shared.start("rec-a", &data_a, &config);
    for caller in ["03012345678", "08955512345"] {
        a.call(pair("basic"))
            .numbers(caller, "200")
            .run()
            .assert_success();
    }
    let failed = wait_until(Duration::from_secs(30), || {
        shared
            .rows("SELECT base_name FROM uploads WHERE attempts > 0")
            .len()
            == 2
    });
    assert!(failed, "{:?}\n{}", queue(&shared), a.log_tail(30));

    // While rec-a runs, its spool is its own.
    shared.link(&data_b);
    let (code, out) = adopt(&shared, &data_a, "rec-a", &data_b);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("still runs"), "{out}");
    assert_eq!(
        a.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        a.log_tail(30)
    );

    let b = shared.start("rec-b", &data_b, &config);
    let before = queue(&shared);
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(
        before
            .iter()
            .all(|(_, s, i)| s == "pending" && i == "rec-a"),
        "rec-b's start leaves rec-a's queue alone: {before:?}"
    );
    let (good, half) = (before[0].0.clone(), before[1].0.clone());

    // Wrong folders and names are refused, and change nothing.
    std::fs::create_dir_all(work.join("elsewhere")).unwrap();
    for (from, name, says) in [
        (
            work.join("elsewhere"),
            "rec-a",
            "no instance ever ran with it",
        ),
        (data_a.clone(), "rec-x", "belongs to instance \"rec-a\""),
        (data_a.clone(), "rec-b", "this instance's own name"),
    ] {
        let (code, out) = adopt(&shared, &from, name, &data_b);
        assert_ne!(code, 0, "{out}");
        assert!(out.contains(says), "{says:?} expected in: {out}");
    }
    assert_eq!(queue(&shared), before);

    // One set was cut short in rec-a's spool (a disk that filled up mid-write).
    let wav = data_a.join("spool").join(&half).join(format!("{half}.wav"));
    let len = std::fs::metadata(&wav).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wav)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // The target works again.
    std::fs::remove_file(&blocker).unwrap();

    let (code, out) = adopt(&shared, &data_a, "rec-a", &data_b);
    assert_eq!(
        code, 1,
        "one set is left, so not everything was adopted: {out}"
    );
    assert!(out.contains(&format!("adopted {good}")), "{out}");
    assert!(
        out.contains(&format!("LEFT {half}: does not verify")),
        "{out}"
    );
    assert!(!data_a.join("spool").join(&good).exists(), "{out}");

    // The running rec-b takes the adopted set at once and delivers it.
    let delivered = wait_until(Duration::from_secs(30), || {
        queue(&shared)
            .iter()
            .any(|(s, st, i)| *s == good && st == "done" && i == "rec-b")
    });
    assert!(delivered, "{:?}\n{}", queue(&shared), b.log_tail(30));
    let on_target: Vec<String> = files_below(&blocker)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        on_target.contains(&format!("{good}.wav")) && on_target.contains(&format!("{good}.sha256")),
        "{on_target:?}"
    );
    assert!(
        !on_target.iter().any(|n| n.starts_with(&half)),
        "{on_target:?}"
    );
    // The confirmation is committed before the delivered set's folder goes.
    let gone = wait_until(Duration::from_secs(10), || {
        !data_b.join("spool").join(&good).exists()
    });
    assert!(gone, "delivered sets leave the spool");
    let ok_attempts = shared.rows(&format!(
        "SELECT CAST(COUNT(*) AS TEXT) FROM upload_attempts WHERE ok = 1 AND base_name = '{good}'"
    ));
    assert_eq!(ok_attempts, vec![vec!["1".to_string()]], "uploaded once");
    // The cut set is neither lost nor taken: still rec-a's, still pending, still there.
    let left: Vec<_> = queue(&shared).into_iter().filter(|r| r.0 == half).collect();
    assert_eq!(left, vec![(half.clone(), "pending".into(), "rec-a".into())]);
    assert!(data_a.join("spool").join(&half).is_dir());

    // The console's upload view lists every instance's waiting uploads.
    let mut add = vec!["add", "ada", "--role", "admin"];
    let flags = shared.db.flags();
    add.extend(flags.iter().map(String::as_str));
    let (code, out) = users_cli(&data_b, &add, "admin password 1\n");
    assert_eq!(code, 0, "{out}");
    let s = login(b.admin_addr(), "ada", "admin password 1")
        .1
        .expect("login");
    let ops = get(b.admin_addr(), &s, "/operations").text();
    assert!(ops.contains("<th scope=\"col\">Instance</th>"), "{ops}");
    assert!(ops.contains("<td class=\"instance\">rec-a</td>"), "{ops}");
}
