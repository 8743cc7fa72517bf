//! Two instances sharing one protocol database (PostgreSQL, or one SQLite
//! file: the second instance's data directory links to the first one's
//! database file), each with its own data directory, key and chain, both
//! delivering to one folder. Each set names the instance that sealed it; search, export, chain
//! verification and the web console through either instance see both
//! instances' sets; the start of one instance leaves the other's pending
//! uploads alone (they are in the other's spool, not lost).

mod common;

use callrec::db::Engine;
use common::console::{get, login, users_cli};
use common::shared_db::Shared;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A config file recording every call into `target`.
fn config(dir: &Path, name: &str, target: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("[[profiles]]\nname = \"default\"\nrecord_all = true\ntargets = [\"{target}\"]\n"),
    )
    .unwrap();
    path
}

#[test]
fn the_start_of_a_second_instance_leaves_the_pending_uploads_of_the_first_alone_sqlite() {
    pending_uploads_of_the_first_are_left_alone(Engine::Sqlite);
}

#[test]
fn the_start_of_a_second_instance_leaves_the_pending_uploads_of_the_first_alone_postgres() {
    pending_uploads_of_the_first_are_left_alone(Engine::Postgres);
}

fn pending_uploads_of_the_first_are_left_alone(engine: Engine) {
    let work = TestDir::new("instances-pending");
    // The first instance's target cannot be written: a plain file sits where its folder goes.
    std::fs::write(work.join("blocked"), b"not a folder").unwrap();
    let blocked = format!("file://{}/sets", work.join("blocked").display());
    let cfg_a = config(work.path(), "a.toml", &blocked);
    let good = format!("file://{}", work.join("archive").display());
    let cfg_b = config(work.path(), "b.toml", &good);
    let (data_a, data_b) = (work.join("a"), work.join("b"));
    let shared = Shared::new(engine, &data_a);

    let mut a = shared.start("rec-a", &data_a, &cfg_a);
    a.call(pair("basic"))
        .numbers("03012345678", "200")
        .run()
        .assert_success();
    let failed = wait_until(Duration::from_secs(30), || {
        shared
            .rows("SELECT CAST(attempts AS TEXT) FROM uploads WHERE state = 'pending'")
            .iter()
            .any(|r| r[0] != "0")
    });
    assert!(
        failed,
        "the upload to the blocked target should have failed once: {}",
        a.log_tail(30)
    );
    assert_eq!(
        a.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        a.log_tail(30)
    );
    let pending = shared.rows("SELECT base_name FROM uploads WHERE state = 'pending'");
    assert_eq!(pending.len(), 1, "{pending:?}");
    let base = pending[0][0].clone();
    assert!(
        data_a.join("spool").join(&base).is_dir(),
        "set waits in rec-a's spool"
    );

    // The second instance starts on the shared database with its own spool.
    let mut b = shared.start("rec-b", &data_b, &cfg_b);
    b.call(pair("basic"))
        .numbers("08955512345", "200")
        .run()
        .assert_success();
    assert_eq!(
        b.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        b.log_tail(30)
    );
    assert!(
        !data_b.join("callrec.sqlite-wal").exists(),
        "both instances must use one database, not one each"
    );
    let states = shared.rows(&format!(
        "SELECT state, COALESCE(last_error, '') FROM uploads WHERE base_name = '{base}'"
    ));
    assert_eq!(
        states,
        vec![vec!["pending".to_string(), states[0][1].clone()]],
        "rec-b must not mark the set in rec-a's spool lost: {states:?}\n{}",
        b.log_tail(30)
    );
    assert!(
        data_a.join("spool").join(&base).is_dir(),
        "set still in rec-a's spool"
    );
    // rec-b's own set was delivered by rec-b.
    let done = shared.rows("SELECT CAST(COUNT(*) AS TEXT) FROM uploads WHERE state = 'done'");
    assert_eq!(done[0][0], "1", "{}", b.log_tail(30));
}

#[test]
fn search_export_verify_and_the_console_through_either_instance_see_both_sqlite() {
    either_instance_sees_both(Engine::Sqlite);
}

#[test]
fn search_export_verify_and_the_console_through_either_instance_see_both_postgres() {
    either_instance_sees_both(Engine::Postgres);
}

fn either_instance_sees_both(engine: Engine) {
    let work = TestDir::new("instances-shared");
    let archive = work.join("archive");
    let target = format!("file://{}", archive.display());
    let cfg = config(work.path(), "shared.toml", &target);
    let (data_a, data_b) = (work.join("a"), work.join("b"));
    let shared = Shared::new(engine, &data_a);
    let mut a = shared.start("rec-a", &data_a, &cfg);
    let mut b = shared.start("rec-b", &data_b, &cfg);
    a.call(pair("basic"))
        .numbers("03011111111", "200")
        .run()
        .assert_success();
    b.call(pair("basic"))
        .numbers("03022222222", "200")
        .run()
        .assert_success();
    assert_eq!(
        a.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        a.log_tail(30)
    );
    assert_eq!(
        b.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        b.log_tail(30)
    );
    let cfg_s = cfg.to_str().unwrap();

    // Search through either instance finds the other's set, naming its instance.
    let mut sets = Vec::new();
    for (data, number, sealed_by) in [
        (&data_a, "03022222222", "rec-b"),
        (&data_b, "03011111111", "rec-a"),
    ] {
        let (code, out) = shared.cli(&[
            "recordings",
            "search",
            "--number",
            number,
            "--data-dir",
            data.to_str().unwrap(),
            "--config",
            cfg_s,
        ]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(out.lines().count(), 1, "one set of {number}:\n{out}");
        assert!(
            out.contains(sealed_by),
            "{number} was sealed by {sealed_by}:\n{out}"
        );
        // The line: time, instance, set, caller -> callee, profile.
        let words: Vec<&str> = out.split_whitespace().collect();
        let at = words.iter().position(|w| *w == sealed_by).unwrap();
        let base = words[at + 1].to_string();
        let (_, only) = shared.cli(&[
            "recordings",
            "search",
            "--number",
            number,
            "--instance",
            sealed_by,
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        assert_eq!(only.lines().count(), 1, "{only}");
        let (_, none) = shared.cli(&[
            "recordings",
            "search",
            "--number",
            number,
            "--instance",
            "rec-x",
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        assert_eq!(none.lines().count(), 0, "{none}");
        sets.push((base, sealed_by));
    }
    // The metadata, and so the seal, names the instance.
    for (base, sealed_by) in &sets {
        let json = std::fs::read_to_string(find_file(&archive, &format!("{base}.json"))).unwrap();
        let meta: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(meta["instance_name"], *sealed_by, "{json}");
    }

    // Export through rec-a of rec-b's set verifies, with rec-b's certificate beside it.
    let out = work.join("export");
    let (code, text) = shared.cli(&[
        "recordings",
        "export",
        "--number",
        "03022222222",
        "--data-dir",
        data_a.to_str().unwrap(),
        "--config",
        cfg_s,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("exported {}", sets[0].0)), "{text}");
    let sums = out.join(format!("{}.sha256", sets[0].0));
    let verify = Command::new("sh")
        .arg(out.join("verify.sh"))
        .arg("--cert")
        .arg(out.join("cert-rec-b.pem"))
        .arg(&sums)
        .output()
        .expect("sh");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // The chains: each instance's own, checked with its own certificate.
    for (name, data) in [("rec-a", &data_a), ("rec-b", &data_b)] {
        let (code, text) = callrec_cli(&[
            "verify",
            "--chain",
            archive.to_str().unwrap(),
            "--instance",
            name,
            "--cert",
            data.join("cert.pem").to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "chain of {name}: {text}");
        assert_eq!(
            text.matches("chain ").count(),
            1,
            "one chain of {name}: {text}"
        );
    }
    // Without naming the instance, one certificate cannot vouch for both.
    let (code, text) = callrec_cli(&[
        "verify",
        "--chain",
        archive.to_str().unwrap(),
        "--cert",
        data_a.join("cert.pem").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{text}");

    // The console of either instance lists and verifies the other's set.
    let mut add = vec!["add", "vera", "--role", "viewer"];
    let flags = shared.db.flags();
    add.extend(flags.iter().map(String::as_str));
    let (code, out) = users_cli(&data_a, &add, "viewer password 1\n");
    assert_eq!(code, 0, "{out}");
    let a = shared.start("rec-a", &data_a, &cfg);
    let b_console = shared.start("rec-b", &data_b, &cfg);
    for (proxy, number, (base, sealed_by)) in [
        (&a, "03022222222", &sets[0]),
        (&b_console, "03011111111", &sets[1]),
    ] {
        let admin = proxy.admin_addr();
        let s = login(admin, "vera", "viewer password 1").1.expect("login");
        let page = get(
            admin,
            &s,
            &format!("/recordings?number={number}&instance={sealed_by}"),
        )
        .text();
        assert!(page.contains("<th scope=\"col\">Instance</th>"), "{page}");
        assert!(
            page.contains(&format!("<td class=\"instance\">{sealed_by}</td>")),
            "{page}"
        );
        assert!(page.contains(base.as_str()), "{page}");
        let other = get(
            admin,
            &s,
            &format!("/recordings?number={number}&instance=rec-x"),
        )
        .text();
        assert!(other.contains("0 recording(s)"), "{other}");
        let set = get(admin, &s, &format!("/recordings/{base}"));
        let text = set.text();
        assert_eq!(set.status, 200, "{text}");
        assert!(
            text.contains("verified: checksums and signature hold"),
            "{text}"
        );
        assert!(
            text.contains(&format!("<strong class=\"instance\">{sealed_by}</strong>")),
            "{text}"
        );
        assert!(text.contains("/default</code>, number 1"), "{text}");
    }
    drop(a);
    drop(b_console);
}

/// The first file named `name` below `dir`.
fn find_file(dir: &Path, name: &str) -> PathBuf {
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if e.file_name().to_string_lossy() == name {
                return p;
            }
        }
    }
    panic!("{name} not below {}", dir.display());
}
