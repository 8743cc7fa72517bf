//! The scale-out example of `deploy/kamailio/` with shared state: the shipped
//! Kamailio config in front of two callrec instances that share one protocol
//! database, with a recording policy (the static directory of testdata/).
//!
//! ```text
//! SIPp PBX phone 127.0.0.2 ─┐                         ┌─▶ callrec A ─┐ ─▶ SIPp trunk 127.0.0.3
//! SIPp carrier 127.0.0.3 ───┴─▶ Kamailio 127.0.0.1 ───┴─▶ callrec B ─┘ ─▶ SIPp PBX 127.0.0.2
//!                                                          └── one database ──┘
//! ```
//!
//! Kamailio names each call's original sender in X-Callrec-Source and the
//! instances run with `--dispatcher` Kamailio's address, so:
//! 1. a stranger's INVITE through Kamailio, naming the PBX in a forged
//!    header, gets 403 and reaches neither side;
//! 2. outgoing calls from the PBX through Kamailio go to the trunk and are
//!    recorded by the outgoing rule (OutgoingActiveMember) on both
//!    instances; incoming ones from the carrier go to the PBX and are
//!    recorded by the group number rule;
//! 3. a member logged out through A's admin API is no longer recorded on B
//!    (after one --membership-refresh), logged in through B is recorded on A
//!    again;
//! 4. a search through A's admin API (for the dialled number) finds the
//!    recordings of the calls B made to it;
//! 5. B stopped (SIGTERM), Kamailio's keepalives mark it down and its new
//!    calls go to A.
//!
//! The test runs twice: with PostgreSQL on loopback (a fresh database on the
//! cluster `deploy/test.sh` starts, named by CALLREC_TEST_POSTGRES and
//! CALLREC_TEST_POSTGRES_PASSWORD_FILE; the test fails without them), and
//! with a shared SQLite file (B's data dir links to A's), the one-box form.

mod common;

use common::kamailio::*;
use common::raw::*;
use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

/// The member (Ben, 202, in Sales) whose outgoing calls the policy records.
const MEMBER: &str = "202";
const EXTERNAL: &str = "004989123456";
/// The refresh interval of the instances' group logouts, seconds.
const REFRESH: u64 = 1;

fn policy(dir: &TestDir) -> std::path::PathBuf {
    let path = dir.join("callrec.toml");
    std::fs::write(
        &path,
        format!(
            "[numbers]\ncountry_code = \"49\"\narea_code = \"30\"\nexit_code = \"0\"\nmax_extension_len = 4\n\n\
             [directory]\nsource = \"{}\"\n\n\
             [[profiles]]\nname = \"sales\"\ngroup = \"Sales\"\n",
            repo_dir().join("testdata/directory.toml").display()
        ),
    )
    .unwrap();
    path
}

/// A fresh PostgreSQL database on the test cluster, dropped with this value.
struct PgDatabase {
    admin: postgres::Client,
    name: String,
    url: String,
    password_file: String,
}

impl PgDatabase {
    fn create() -> PgDatabase {
        let url = std::env::var("CALLREC_TEST_POSTGRES").unwrap_or_else(|_| {
            panic!("this test needs PostgreSQL: env CALLREC_TEST_POSTGRES is not set; run it through deploy/test.sh, which starts a PostgreSQL cluster on loopback")
        });
        let password_file = std::env::var("CALLREC_TEST_POSTGRES_PASSWORD_FILE")
            .expect("CALLREC_TEST_POSTGRES_PASSWORD_FILE is not set (deploy/test.sh sets it)");
        let password = std::fs::read_to_string(&password_file).unwrap();
        let mut config: postgres::Config = url.parse().expect("CALLREC_TEST_POSTGRES is a URL");
        config.password(password.trim_end());
        let mut admin = config
            .connect(postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        let name = format!("callrec_dispatch_{:016x}", rand::random::<u64>());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&url);
        let url = format!("{base}/{name}");
        PgDatabase {
            admin,
            name,
            url,
            password_file,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = self.admin.batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// Where the two instances keep their one protocol database.
enum Shared {
    Postgres(Box<PgDatabase>),
    SqliteFile,
}

fn instance(
    name: &'static str,
    data: &Path,
    cfg: &Path,
    db: &Shared,
    pbx: SocketAddr,
    trunk: SocketAddr,
) -> Instance {
    Instance::start_with(name, pbx, trunk, |b| {
        let b = b
            .data_dir(data)
            .arg("--config")
            .arg(cfg.to_str().unwrap())
            .arg("--membership-refresh")
            .arg(&REFRESH.to_string());
        match db {
            Shared::Postgres(pg) => b
                .arg("--database")
                .arg(&pg.url)
                .arg("--database-password-file")
                .arg(&pg.password_file),
            Shared::SqliteFile => b,
        }
    })
}

/// `n` calls through Kamailio from `caller` (an address) to `callee` (an address).
fn calls(k: &Kamailio, from: SocketAddr, to: SocketAddr, numbers: (&str, &str), n: u32) {
    let out = CallRun::direct(pair("basic"))
        .caller_at(from)
        .callee_at(to)
        .via(k.sip)
        .numbers(numbers.0, numbers.1)
        .calls(n)
        .rate(5.0)
        .timeout(Duration::from_secs(60))
        .run();
    if !(out.caller.success() && out.callee.success()) {
        eprintln!("{}", k.log_tail(80));
    }
    out.assert_success();
}

/// Answered calls of `i` after the first `skip`: (direction, anchored, caller Call-ID).
fn answered_since(i: &Instance, skip: usize) -> Vec<(String, bool, String)> {
    i.answered()
        .into_iter()
        .skip(skip)
        .map(|c| {
            (
                c["direction"].as_str().unwrap_or("").to_string(),
                c["anchored"].as_bool().unwrap_or(false),
                c["caller_call_id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Waits until A and B have answered `want` calls together since `base`.
fn wait_answered(a: &Instance, b: &Instance, base: (usize, usize), want: usize) -> (usize, usize) {
    let mut seen = (0, 0);
    let ok = wait_until(Duration::from_secs(20), || {
        seen = (a.answered().len() - base.0, b.answered().len() - base.1);
        seen.0 + seen.1 == want
    });
    assert!(
        ok,
        "expected {want} answered calls on A and B, saw {seen:?}"
    );
    seen
}

fn switch(i: &Instance, action: &str) {
    let path = format!("/api/groups/Sales/members/ben/{action}");
    let (code, body) =
        http_request(i.proxy.admin_addr(), "POST", &path, Some(TEST_ADMIN_TOKEN)).unwrap();
    assert_eq!(code, 200, "{action} on {}: {body}", i.name);
}

#[test]
fn deploy_kamailio_two_instances_on_postgres() {
    two_instances_behind_kamailio(Shared::Postgres(Box::new(PgDatabase::create())));
}

#[test]
fn deploy_kamailio_two_instances_on_a_shared_sqlite_file() {
    two_instances_behind_kamailio(Shared::SqliteFile);
}

fn two_instances_behind_kamailio(shared: Shared) {
    let dir = TestDir::new("dispatch");
    let cfg = policy(&dir);
    let pbx = SocketAddr::from((PBX_IP, free_port()));
    let trunk = SocketAddr::from((TRUNK_IP, free_port()));
    let (da, db) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&db).unwrap();
    let a = instance("A", &da, &cfg, &shared, pbx, trunk);
    if let Shared::SqliteFile = shared {
        // One database for both: B's data dir links to A's file.
        std::os::unix::fs::symlink(da.join("callrec.sqlite"), db.join("callrec.sqlite")).unwrap();
    }
    let mut b = instance("B", &db, &cfg, &shared, pbx, trunk);
    let k = Kamailio::start(&dir, &[a.sip, b.sip], 1);

    // 1. A stranger names the PBX in a forged header: Kamailio replaces it,
    //    the instance refuses the stranger, nothing reaches either side.
    {
        let (pbx_sock, trunk_sock) = (
            UdpSocket::bind(pbx).unwrap(),
            UdpSocket::bind(trunk).unwrap(),
        );
        for s in [&pbx_sock, &trunk_sock] {
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
        }
        let s = sock(STRANGER);
        let forged = format!("X-Callrec-Source: {}:5060;transport=udp\r\n", PBX_IP);
        for n in 0..2 {
            let id = format!("stranger-{n}");
            let req = invite(
                s.local_addr().unwrap(),
                k.sip,
                &id,
                "stranger",
                EXTERNAL,
                &forged,
            );
            s.send_to(req.as_bytes(), k.sip).unwrap();
        }
        // (Call-ID, code) of the final answers, retransmissions counted once.
        let answers: std::collections::BTreeSet<(String, u16)> =
            receive(&s, Duration::from_secs(2))
                .iter()
                .filter(|m| m.code() >= 200)
                .map(|m| (m.header("Call-ID").unwrap_or("").to_string(), m.code()))
                .collect();
        let want: std::collections::BTreeSet<(String, u16)> = [
            ("stranger-0".to_string(), 403),
            ("stranger-1".to_string(), 403),
        ]
        .into();
        assert_eq!(
            answers,
            want,
            "the stranger's calls through Kamailio\n{}",
            k.log_tail(40)
        );
        let leaked: Vec<String> = [&pbx_sock, &trunk_sock]
            .iter()
            .flat_map(|s| first_lines(&receive(s, Duration::from_millis(500))))
            .filter(|l| l.starts_with("INVITE"))
            .collect();
        assert!(leaked.is_empty(), "the stranger's call went on: {leaked:?}");
    }

    // 2. Outgoing from the PBX and incoming from the carrier, through Kamailio.
    let phone = SocketAddr::from((PBX_IP, free_port()));
    let carrier = SocketAddr::from((TRUNK_IP, free_port()));
    calls(&k, phone, trunk, (MEMBER, EXTERNAL), 4);
    let n = wait_answered(&a, &b, (0, 0), 4);
    assert!(
        n.0 > 0 && n.1 > 0,
        "both instances should take calls: {n:?}"
    );
    for i in [&a, &b] {
        for (dir, anchored, id) in answered_since(i, 0) {
            assert_eq!(dir, "outgoing", "call {id} from the PBX on {}", i.name);
            assert!(
                anchored,
                "outgoing call {id} of an active member not recorded on {}",
                i.name
            );
        }
    }
    let rules = |i: &Instance| -> Vec<String> {
        walk_json(&i.proxy.data_dir().join("recordings"))
            .into_iter()
            .map(|m| m["matched_rule"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert!(wait_until(Duration::from_secs(15), || rules(&a).len()
        + rules(&b).len()
        == 4));
    for i in [&a, &b] {
        assert!(
            rules(i).iter().all(|r| r == "OutgoingActiveMember"),
            "{}: {:?}",
            i.name,
            rules(i)
        );
    }
    let base = (a.answered().len(), b.answered().len());
    calls(&k, carrier, pbx, ("089555123", "03012345600"), 2);
    wait_answered(&a, &b, base, 2);
    for (i, skip) in [(&a, base.0), (&b, base.1)] {
        for (dir, anchored, id) in answered_since(i, skip) {
            assert_eq!(dir, "incoming", "call {id} from the carrier on {}", i.name);
            assert!(
                anchored,
                "call {id} to the group number not recorded on {}",
                i.name
            );
        }
    }

    // 3. Logout through A: B stops recording the member within one refresh.
    switch(&a, "logout");
    std::thread::sleep(Duration::from_secs(REFRESH * 2 + 1));
    let base = (a.answered().len(), b.answered().len());
    calls(&k, phone, trunk, (MEMBER, EXTERNAL), 4);
    let n = wait_answered(&a, &b, base, 4);
    assert!(n.1 > 0, "B should have taken some of the calls: {n:?}");
    for (i, skip) in [(&a, base.0), (&b, base.1)] {
        for (dir, anchored, id) in answered_since(i, skip) {
            assert_eq!(dir, "outgoing");
            assert!(
                !anchored,
                "call {id} of a logged-out member recorded on {}",
                i.name
            );
        }
    }
    // Login through B: A records the member again.
    switch(&b, "login");
    std::thread::sleep(Duration::from_secs(REFRESH * 2 + 1));
    let base = (a.answered().len(), b.answered().len());
    calls(&k, phone, trunk, (MEMBER, EXTERNAL), 4);
    let n = wait_answered(&a, &b, base, 4);
    assert!(n.0 > 0, "A should have taken some of the calls: {n:?}");
    for (i, skip) in [(&a, base.0), (&b, base.1)] {
        for (_, anchored, id) in answered_since(i, skip) {
            assert!(
                anchored,
                "call {id} of a member logged in again not recorded on {}",
                i.name
            );
        }
    }

    // 4. A's search finds the recordings B made.
    let b_recorded: Vec<String> = answered_since(&b, 0)
        .into_iter()
        .filter(|(dir, anchored, _)| *anchored && dir == "outgoing")
        .map(|(_, _, id)| id)
        .collect();
    assert!(!b_recorded.is_empty());
    let found = |i: &Instance| {
        let (code, body) = http_get(
            i.proxy.admin_addr(),
            &format!("/api/recordings?number={EXTERNAL}"),
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        body
    };
    assert!(
        wait_until(Duration::from_secs(15), || b_recorded
            .iter()
            .all(|id| found(&a).contains(id))),
        "A's search does not list B's recordings {b_recorded:?}:\n{}",
        found(&a)
    );

    // 5. B stops: it drains (OPTIONS 503), Kamailio marks it down, new calls go to A.
    b.stop();
    let down = format!("callrec instance down: sip:{}", b.sip);
    assert!(
        wait_until(Duration::from_secs(15), || k.log().contains(&down)),
        "Kamailio did not mark B down\n{}",
        k.log_tail(60)
    );
    let base_a = a.answered().len();
    calls(&k, phone, trunk, (MEMBER, EXTERNAL), 3);
    assert!(
        wait_until(Duration::from_secs(20), || a.answered().len() == base_a + 3),
        "the 3 calls after B stopped should all be answered by A"
    );
}

/// Every set's metadata JSON under `dir`.
fn walk_json(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_json(&p));
        } else if p.extension().is_some_and(|x| x == "json") {
            if let Ok(v) =
                serde_json::from_slice::<serde_json::Value>(&std::fs::read(&p).unwrap_or_default())
            {
                if v.get("matched_rule").is_some() {
                    out.push(v);
                }
            }
        }
    }
    out
}
