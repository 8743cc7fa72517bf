//! `callrec spool adopt`: the pending uploads of an instance that is gone for
//! good reach their target through another instance sharing the database.
//! Refused while the gone instance still runs, for a folder that is not its
//! data directory, and for a set that does not verify (half written): that
//! one stays where it is, still pending, nothing lost; nothing is uploaded twice.

mod common;

use common::console::{get, login, users_cli};
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn start(name: &str, data: &Path, config: &Path) -> Proxy {
    Proxy::builder()
        .data_dir(data)
        .arg("--config")
        .arg(config.to_str().unwrap())
        .env("CALLREC_INSTANCE_NAME", name)
        .start()
}

fn rows(db: &Path, sql: &str) -> Vec<(String, String, String)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut st = conn.prepare(sql).unwrap();
    st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?.unwrap_or_default(),
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn adopt(from: &Path, instance: &str, data: &Path) -> (i32, String) {
    callrec_cli(&[
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
fn a_gone_instances_pending_uploads_reach_the_target_through_another() {
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
    let mut a = start("rec-a", &data_a, &config);
    for caller in ["03012345678", "08955512345"] {
        a.call(pair("basic"))
            .numbers(caller, "200")
            .run()
            .assert_success();
    }
    let db = data_a.join("callrec.sqlite");
    let queue = "SELECT base_name, state, instance FROM uploads ORDER BY base_name";
    let failed = wait_until(Duration::from_secs(30), || {
        rows(
            &db,
            "SELECT base_name, state, instance FROM uploads WHERE attempts > 0",
        )
        .len()
            == 2
    });
    assert!(failed, "{:?}\n{}", rows(&db, queue), a.log_tail(30));

    // While rec-a runs, its spool is its own.
    std::fs::create_dir_all(&data_b).unwrap();
    std::os::unix::fs::symlink(&db, data_b.join("callrec.sqlite")).unwrap();
    let (code, out) = adopt(&data_a, "rec-a", &data_b);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("still runs"), "{out}");
    assert_eq!(
        a.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        a.log_tail(30)
    );

    let b = start("rec-b", &data_b, &config);
    let before = rows(&db, queue);
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
        let (code, out) = adopt(&from, name, &data_b);
        assert_ne!(code, 0, "{out}");
        assert!(out.contains(says), "{says:?} expected in: {out}");
    }
    assert_eq!(rows(&db, queue), before);

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

    let (code, out) = adopt(&data_a, "rec-a", &data_b);
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
        rows(&db, queue)
            .iter()
            .any(|(s, st, i)| *s == good && st == "done" && i == "rec-b")
    });
    assert!(delivered, "{:?}\n{}", rows(&db, queue), b.log_tail(30));
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
    let ok_attempts = rows(
        &db,
        &format!("SELECT base_name, CAST(COUNT(*) AS TEXT), NULL FROM upload_attempts WHERE ok = 1 AND base_name = '{good}' GROUP BY base_name"),
    );
    assert_eq!(
        ok_attempts,
        vec![(good.clone(), "1".into(), String::new())],
        "uploaded once"
    );
    // The cut set is neither lost nor taken: still rec-a's, still pending, still there.
    let left: Vec<_> = rows(&db, queue)
        .into_iter()
        .filter(|r| r.0 == half)
        .collect();
    assert_eq!(left, vec![(half.clone(), "pending".into(), "rec-a".into())]);
    assert!(data_a.join("spool").join(&half).is_dir());

    // The console's upload view lists every instance's waiting uploads.
    let (code, out) = users_cli(
        &data_b,
        &["add", "ada", "--role", "admin"],
        "admin password 1\n",
    );
    assert_eq!(code, 0, "{out}");
    let s = login(b.admin_addr(), "ada", "admin password 1")
        .1
        .expect("login");
    let ops = get(b.admin_addr(), &s, "/operations").text();
    assert!(ops.contains("<th scope=\"col\">Instance</th>"), "{ops}");
    assert!(ops.contains("<td class=\"instance\">rec-a</td>"), "{ops}");
}
