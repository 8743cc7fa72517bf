//! The evidence an auditor relies on, with real files in real folders and the
//! real `callrec` and stock tools: one chain per instance and profile (each
//! profile's folder verifies on its own), links by id and hash only (an export
//! for one party names no other party), and signed tombstones that retention
//! leaves in a deleted set's place, which `verify --chain` accepts while a
//! deletion without one, or an altered one, is a gap.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use callrec::db::{now_ms, Db, Record};
use callrec::seal::{Identity, PasswordSource, SealedSet, Sealer};
use serde_json::json;

const PASS: &str = "evidence-pass";

/// Runs `callrec` with the keystore password in its environment.
fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_callrec"))
        .args(args)
        .env_remove("CALLREC_DATA_DIR")
        .env_remove("CALLREC_CONFIG")
        .env("CALLREC_KEYSTORE_PASSWORD", PASS)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn sealer(data: &Path) -> Sealer {
    let id = Identity::load_or_create(data, PasswordSource::Value(PASS.into())).unwrap();
    Sealer::new(id, data).unwrap()
}

/// Seals a set of a call `caller -> 200` of `profile` into `folder`.
fn seal(s: &mut Sealer, folder: &Path, base: &str, caller: &str, profile: &str) -> SealedSet {
    std::fs::create_dir_all(folder).unwrap();
    std::fs::write(
        folder.join(format!("{base}.wav")),
        format!("audio of {base}"),
    )
    .unwrap();
    s.seal(
        folder,
        base,
        json!({"base_name": base, "profile": profile,
               "caller": {"number": caller}, "callee": {"number": "200"}}),
        &[PathBuf::from(format!("{base}.wav"))],
    )
    .unwrap()
}

fn meta(folder: &Path, base: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(folder.join(format!("{base}.json"))).unwrap()).unwrap()
}

#[test]
fn each_profile_has_its_own_chain_and_its_folder_verifies_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (sales, support) = (tmp.path().join("sales"), tmp.path().join("support"));
    let mut s = sealer(&data);
    let mut bases = Vec::new();
    for i in 0..6 {
        let (folder, profile) = if i % 2 == 0 {
            (&sales, "sales")
        } else {
            (&support, "support")
        };
        let base = format!("20261201_10000{i}_in_0301112{i}_200_{i:04x}");
        seal(&mut s, folder, &base, &format!("0301112{i}"), profile);
        bases.push((folder.clone(), base));
    }
    let cert = data.join("cert.pem");
    for folder in [&sales, &support] {
        let (code, out) = cli(&[
            "verify",
            "--chain",
            folder.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
        ]);
        assert_eq!(
            code,
            0,
            "{} does not verify alone:\n{out}",
            folder.display()
        );
    }
    // Numbers 1..3 per profile; each link is id, hash and number, never a base name.
    let all_bases: Vec<&String> = bases.iter().map(|(_, b)| b).collect();
    for (i, (folder, base)) in bases.iter().enumerate() {
        let m = meta(folder, base);
        assert_eq!(m["chain"]["seq"], (i / 2 + 1) as u64, "{m}");
        let prev = &m["previous"];
        if i < 2 {
            assert!(prev.is_null(), "{m}");
            continue;
        }
        let keys: Vec<&String> = prev.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["id", "seq", "sha256"], "{prev}");
        let (pfolder, pbase) = &bases[i - 2];
        assert_eq!(prev["id"], meta(pfolder, pbase)["set_id"], "{prev}");
        let text = prev.to_string();
        assert!(
            !all_bases.iter().any(|b| text.contains(b.as_str())),
            "the link names a set by its base name: {text}"
        );
    }
    // A set removed from one profile's folder is a gap in that chain only.
    let (f2, b2) = &bases[2];
    let (code, out) = cli(&[
        "verify",
        "--chain",
        tmp.path().to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "both profiles together verify too:\n{out}");
    std::fs::remove_file(f2.join(format!("{b2}.sha256.SHA256withRSA.sig"))).unwrap();
    std::fs::remove_file(f2.join(format!("{b2}.sha256"))).unwrap();
    let (code, out) = cli(&[
        "verify",
        "--chain",
        sales.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("gap in chain") && out.contains("/sales: set number 2"),
        "{out}"
    );
    assert!(!out.contains("/support"), "{out}");
}

#[test]
fn an_export_names_no_other_party() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let rec = data.join("recordings");
    let mut s = sealer(&data);
    let db = Db::open_in(&data).unwrap();
    let calls = [
        ("20261201_090000_in_03011122233_200_0a01", "03011122233"),
        ("20261201_091000_in_08955544466_200_0b01", "08955544466"),
        ("20261201_092000_in_03011122233_200_0a02", "03011122233"),
    ];
    for (i, (base, caller)) in calls.iter().enumerate() {
        seal(&mut s, &rec, base, caller, "default");
        db.write_sync(vec![Record::Recording {
            call_id: format!("c{i}"),
            base_name: base.to_string(),
            profile: Some("default".into()),
            start_ms: now_ms() - 10_000 + i as i64,
            end_ms: None,
            caller: Some(caller.to_string()),
            callee: Some("200".into()),
            answered_by: None,
        }])
        .unwrap();
    }
    drop(db);
    let out_dir = tmp.path().join("client");
    let (code, out) = cli(&[
        "recordings",
        "export",
        "--number",
        "03011122233",
        "--out",
        out_dir.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let mut sums = Vec::new();
    for e in std::fs::read_dir(&out_dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&p).unwrap();
        // The other call's id with its separator: a bare "0b01" turns up by
        // chance in the hex of the chain link to the set before.
        for foreign in ["08955544466", "8955544466", "_0b01"] {
            assert!(
                !name.contains(foreign),
                "exported file {name} names the other party"
            );
            assert!(
                !String::from_utf8_lossy(&bytes).contains(foreign),
                "exported file {name} mentions the other party ({foreign})"
            );
        }
        if name.ends_with(".sha256") {
            sums.push(p);
        }
    }
    assert_eq!(sums.len(), 2, "both of the party's sets exported");
    let v = Command::new("sh")
        .arg(out_dir.join("verify.sh"))
        .arg("--cert")
        .arg(out_dir.join("cert.pem"))
        .args(&sums)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}
/// Every value of every row of every table of the protocol database, as text.
fn db_text(data: &Path) -> String {
    let conn = rusqlite::Connection::open(data.join("callrec.sqlite")).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = String::new();
    for t in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {t}")).unwrap();
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            out.push_str(&t);
            for i in 0..n {
                let v: rusqlite::types::Value = row.get(i).unwrap();
                out.push_str(&format!(" {v:?}"));
            }
            out.push('\n');
        }
    }
    out
}

/// Every file name in `dir`.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn purge_leaves_signed_tombstones_that_verify_accepts_and_a_bare_gap_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let target = tmp.path().join("target");
    let url = format!("file://{}", target.display());
    let mut s = sealer(&data);
    let db = Db::open_in(&data).unwrap();
    let day = 86_400_000i64;
    let mut bases = Vec::new();
    for i in 0..3 {
        let base = format!("20261101_10000{i}_in_0301234567{i}_200_{i:04x}");
        let set = seal(&mut s, &target, &base, "0301234567", "default");
        // Two old sets, one young.
        let start_ms = if i < 2 { now_ms() - 30 * day } else { now_ms() };
        db.write_sync(vec![
            Record::Recording {
                call_id: format!("c{i}"),
                base_name: base.clone(),
                profile: Some("default".into()),
                start_ms,
                end_ms: None,
                caller: Some("0301234567".into()),
                callee: Some("200".into()),
                answered_by: None,
            },
            Record::Seal {
                base_name: base.clone(),
                at_ms: start_ms,
                checksum_sha256: set.checksum_sha256.clone(),
                files: set.files.len() as u32,
                chain: set.chain_json(),
            },
            Record::UploadAttempt {
                base_name: base.clone(),
                target: url.clone(),
                started_ms: start_ms,
                ended_ms: start_ms,
                files: set.files.len() as u32,
                bytes: 1,
                error: None,
                next_ms: None,
            },
        ])
        .unwrap();
        bases.push(base);
    }
    drop((db, s));
    let cert = data.join("cert.pem");
    let verify = || {
        cli(&[
            "verify",
            "--chain",
            target.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
        ])
    };
    let (code, out) = cli(&[
        "purge",
        "--older-than",
        "7d",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 set(s) deleted"), "{out}");
    let files = names(&target);
    for b in &bases[..2] {
        assert!(!files.contains(&format!("{b}.wav")), "{files:?}");
        for f in [
            ".deleted.json",
            ".deleted.sha256",
            ".deleted.sha256.SHA256withRSA.sig",
        ] {
            assert!(
                files.contains(&format!("{b}{f}")),
                "{b}{f} missing: {files:?}"
            );
        }
    }
    assert!(
        !data.join("tombstones").exists() || names(&data.join("tombstones")).is_empty(),
        "staged tombstones left behind"
    );
    // The tombstone holds what an auditor needs and verifies with stock tools.
    let t: serde_json::Value = serde_json::from_slice(
        &std::fs::read(target.join(format!("{}.deleted.json", bases[0]))).unwrap(),
    )
    .unwrap();
    assert_eq!(t["deleted"]["seq"], 1, "{t}");
    assert_eq!(t["deleted"]["reason"], "retention 7d", "{t}");
    assert_eq!(t["deleted"]["retention"], "7d", "{t}");
    assert_eq!(
        t["deleted"]["checksum_sha256"].as_str().unwrap().len(),
        64,
        "{t}"
    );
    let v = Command::new("sh")
        .arg(common::repo_dir().join("deploy/verify.sh"))
        .arg("--cert")
        .arg(&cert)
        .arg(target.join(format!("{}.deleted.sha256", bases[0])))
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));

    let (code, out) = verify();
    assert_eq!(
        code, 0,
        "the chain with two lawful deletions must verify:\n{out}"
    );
    assert_eq!(out.matches("deleted lawfully on").count(), 2, "{out}");

    // An altered tombstone covers nothing.
    let t1 = target.join(format!("{}.deleted.json", bases[1]));
    let original = std::fs::read(&t1).unwrap();
    std::fs::write(
        &t1,
        String::from_utf8_lossy(&original).replace("retention 7d", "retention 1d"),
    )
    .unwrap();
    let (code, out) = verify();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("gap in chain") && out.contains("set number 2"),
        "{out}"
    );
    std::fs::write(&t1, original).unwrap();
    assert_eq!(verify().0, 0);

    // A set removed without a tombstone is a gap.
    for f in [
        ".deleted.json",
        ".deleted.sha256",
        ".deleted.sha256.SHA256withRSA.sig",
    ] {
        std::fs::remove_file(target.join(format!("{}{f}", bases[1]))).unwrap();
    }
    let (code, out) = verify();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("gap in chain")
            && out.contains("set number 2")
            && out.contains("no deletion record"),
        "{out}"
    );
    assert_eq!(out.matches("deleted lawfully on").count(), 1, "{out}");
}

#[test]
fn held_sets_survive_retention_and_the_skip_is_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let rec = data.join("recordings");
    let d = data.to_str().unwrap().to_string();
    let mut s = sealer(&data);
    let db = Db::open_in(&data).unwrap();
    let old = now_ms() - 30 * 86_400_000i64;
    let calls = [
        ("20261101_090000_in_03011111111_200_0c01", "03011111111"),
        ("20261101_091000_in_08922222222_200_0c02", "08922222222"),
        ("20261101_092000_in_04033333333_200_0c03", "04033333333"),
    ];
    for (i, (base, caller)) in calls.iter().enumerate() {
        let set = seal(&mut s, &rec, base, caller, "default");
        db.write_sync(vec![
            Record::Recording {
                call_id: format!("h{i}"),
                base_name: base.to_string(),
                profile: Some("default".into()),
                start_ms: old + i as i64,
                end_ms: None,
                caller: Some(caller.to_string()),
                callee: Some("200".into()),
                answered_by: None,
            },
            Record::Seal {
                base_name: base.to_string(),
                at_ms: old,
                checksum_sha256: set.checksum_sha256.clone(),
                files: set.files.len() as u32,
                chain: set.chain_json(),
            },
        ])
        .unwrap();
    }
    drop((db, s));
    // One hold by set, one by number in another spelling.
    let (code, out) = cli(&[
        "hold",
        "add",
        "--set",
        calls[0].0,
        "--reason",
        "case 17/26",
        "--data-dir",
        &d,
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&[
        "hold",
        "add",
        "--number",
        "+49 89 22222222",
        "--reason",
        "dispute",
        "--data-dir",
        &d,
    ]);
    assert_eq!(code, 0, "{out}");
    let (_, list) = cli(&["hold", "list", "--data-dir", &d]);
    assert_eq!(list.lines().count(), 2, "{list}");

    let (code, out) = cli(&["purge", "--older-than", "7d", "--data-dir", &d]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 set(s) deleted"), "{out}");
    assert!(
        out.contains(&format!("held, not deleted: {}", calls[0].0))
            && out.contains(&format!("held, not deleted: {}", calls[1].0)),
        "{out}"
    );
    let files = names(&rec);
    for (base, _) in &calls[..2] {
        assert!(
            files.contains(&format!("{base}.wav")),
            "held set {base} deleted: {files:?}"
        );
    }
    assert!(!files.contains(&format!("{}.wav", calls[2].0)), "{files:?}");
    // The purged set's rows keep the deletion record, not its party's number.
    let text = db_text(&data);
    assert!(
        !text.contains("4033333333"),
        "purged number still in the database:\n{text}"
    );
    assert!(text.contains("08922222222"), "a held set's rows must stay");
    let conn = rusqlite::Connection::open(data.join("callrec.sqlite")).unwrap();
    let (reason, hash): (String, Option<String>) = conn
        .query_row("SELECT reason, checksum_sha256 FROM deletions", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(
        (reason.as_str(), hash.map(|h| h.len())),
        ("retention 7d", Some(64))
    );
    // The skips are in the access log.
    let (_, audit) = cli(&["audit", "--actor", "retention", "--data-dir", &d]);
    assert!(
        audit.contains(&format!("retention  hold  {}", calls[0].0))
            && audit.contains("case 17/26")
            && audit.contains(&format!("retention  hold  {}", calls[1].0)),
        "{audit}"
    );
    // Lifted, the set goes at the next purge.
    let (code, out) = cli(&["hold", "remove", "--set", calls[0].0, "--data-dir", &d]);
    assert_eq!(code, 0, "{out}");
    let (_, out) = cli(&["purge", "--older-than", "7d", "--data-dir", &d]);
    assert!(out.contains("1 set(s) deleted"), "{out}");
    assert!(!names(&rec).contains(&format!("{}.wav", calls[0].0)));
    assert!(names(&rec).contains(&format!("{}.wav", calls[1].0)));
}

#[test]
fn rows_of_unrecorded_calls_go_after_their_period() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open_in(tmp.path()).unwrap();
    let day = 86_400_000i64;
    let old = now_ms() - 100 * day;
    let mut records = Vec::new();
    for (call, at, recorded) in [
        ("old-unrec", old, false),
        ("new-unrec", now_ms(), false),
        ("old-rec", old, true),
    ] {
        records.push(Record::Decision {
            call_id: call.into(),
            at_ms: at,
            recorded,
            profile: None,
            reason: format!("reason for {call}"),
        });
        records.push(Record::Call {
            call_id: call.into(),
            at_ms: at,
            event: "start".into(),
            direction: Some("in".into()),
            caller: Some("03055555555".into()),
            callee: Some("200".into()),
            detail: None,
        });
    }
    records.push(Record::Recording {
        call_id: "old-rec".into(),
        base_name: "20260101_000000_in_03055555555_200_x".into(),
        profile: None,
        start_ms: old,
        end_ms: None,
        caller: Some("03055555555".into()),
        callee: Some("200".into()),
        answered_by: None,
    });
    records.push(Record::ExpireUnrecorded {
        before_ms: now_ms() - 90 * day,
    });
    db.write_sync(records).unwrap();
    let left = |table: &str| -> Vec<String> {
        db.read(|c| {
            c.query(
                &format!("SELECT call_id FROM {table} ORDER BY call_id"),
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect()
        })
        .unwrap()
    };
    assert_eq!(left("decisions"), ["new-unrec", "old-rec"]);
    assert_eq!(left("calls"), ["new-unrec", "old-rec"]);
}
