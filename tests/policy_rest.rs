//! The directory over the PBX REST API against the fake STARFACE in
//! tests/starface_fake (spec-shaped: nonce login for internal and Active Directory
//! users, a wrong password gets 400, `authToken` required, 401 when missing or
//! expired, fixtures from testdata/rest/). What a user would notice: the numbers in
//! the snapshot (outside-line exit code, links checked against each account's own
//! route), the ERROR naming an account whose links disagree, a member the REST user
//! cannot see skipped instead of a failed refresh, no token left live on the PBX
//! (after a replacement and after the proxy's shutdown). Also the background
//! refresher: last good snapshot kept while the PBX is down.

mod common;
#[path = "starface_fake/mod.rs"]
mod starface_fake;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callrec::policy::Number;
use callrec::policy::{
    decide, spawn_refresher, start_directory, Directory, DirectoryConfig, DirectoryHandle,
    DirectorySource, LoggedOut, NumberPlan, PbxClient, Profile, RestError, Rule,
};
use callrec::vocab::Direction;
use serde_json::{json, Value};
use starface_fake::{serve, testdata, Pbx, LOGIN_ID, PASSWORD};

fn plan() -> NumberPlan {
    NumberPlan {
        country_code: "49".into(),
        area_code: "30".into(),
        exit_code: "0".into(),
        ..NumberPlan::default()
    }
}

fn fixture_directory() -> Directory {
    Directory::load_file(&testdata().join("directory.toml"), plan()).unwrap()
}

fn client(addr: SocketAddr, password: &str) -> PbxClient {
    PbxClient::new(
        &format!("http://{addr}/rest"),
        LOGIN_ID,
        password,
        false,
        Duration::from_secs(5),
    )
    .unwrap()
}

#[tokio::test]
async fn fetched_directory_equals_the_fixture() {
    let pbx = Arc::new(Pbx::default());
    let (addr, _server) = serve(pbx.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let c = client(addr, PASSWORD);
    let dir = c.fetch_directory(&plan()).await.unwrap();
    assert_eq!(dir, fixture_directory());
    assert_eq!(dir.users().len(), 6);
    assert_eq!(dir.find_group("Sales").unwrap().members, vec![1, 2, 3]);
    // The token is reused: a second fetch needs no new login.
    let again = c.fetch_directory(&plan()).await.unwrap();
    assert_eq!(again, dir);
    assert_eq!(pbx.logins.load(Ordering::SeqCst), 1);
    // 2 × (users, groups, 2 groups, phonenumbers, 4 users' own number routes).
    assert_eq!(pbx.authorized.load(Ordering::SeqCst), 18);
    c.logout().await.unwrap();
    assert!(pbx.tokens.lock().unwrap().is_empty());
    assert_eq!(pbx.logouts.load(Ordering::SeqCst), 1);
    assert_eq!(pbx.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn wrong_password_is_a_clear_error() {
    let pbx = Arc::new(Pbx::default());
    let (addr, _server) = serve(pbx.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let err = client(addr, "wrong")
        .fetch_directory(&plan())
        .await
        .unwrap_err();
    assert!(matches!(err, RestError::LoginRejected { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("HTTP 400") && msg.contains("password") && msg.contains(LOGIN_ID),
        "{msg}"
    );
    assert_eq!(pbx.logins.load(Ordering::SeqCst), 0);
}

/// The fake answers only what the spec documents: 401 for a missing token (what
/// the spec's example client reacts to), the nonce without `X-Version`, 204 for any
/// logout; a missing `X-Version` elsewhere is recorded, not refused.
#[tokio::test]
async fn fake_answers_only_documented_codes() {
    let pbx = Arc::new(Pbx::default());
    let (addr, _server) = serve(pbx.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/rest/users");
    let no_token = http
        .get(&url)
        .header("X-Version", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status().as_u16(), 401);
    assert!(pbx.violations().is_empty());
    let nonce = http
        .get(format!("http://{addr}/rest/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(nonce.status().as_u16(), 200);
    let logout = http
        .delete(format!("http://{addr}/rest/login"))
        .header("authToken", "never-issued")
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status().as_u16(), 204);
    assert_eq!(pbx.violations(), vec!["DELETE /login without X-Version: 2"]);
}

#[tokio::test]
async fn a_401_mid_session_triggers_one_relogin() {
    let pbx = Arc::new(Pbx::default());
    let (addr, _server) = serve(pbx.clone(), "127.0.0.1:0".parse().unwrap()).await;
    // The token expires at the third authorized request (the first group's detail).
    pbx.expire_at.store(3, Ordering::SeqCst);
    let dir = client(addr, PASSWORD)
        .fetch_directory(&plan())
        .await
        .unwrap();
    assert_eq!(dir, fixture_directory());
    assert_eq!(pbx.logins.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unreachable_pbx_at_start_leaves_an_empty_snapshot() {
    // Bind and release a port so nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let handle = DirectoryHandle::new(Directory::empty(plan()));
    let source = DirectorySource::Rest(Arc::new(client(addr, PASSWORD)));
    let err = handle.refresh_once(&source, &plan()).await.unwrap_err();
    assert!(err.to_string().contains("unreachable"), "{err}");
    let dir = handle.current();
    assert!(dir.is_empty());
    assert_eq!(handle.status().consecutive_failures, 1);
    // Rules that need no directory still work.
    let profiles = [Profile {
        name: "cli".into(),
        group: Some("+493012345600".into()),
        ..Profile::default()
    }];
    let d = decide(
        &profiles,
        &dir,
        &LoggedOut::new(),
        Direction::Incoming,
        "+4989555123",
        "030 12345600",
    );
    assert!(d.record);
    assert_eq!(d.rule, Rule::GroupNumber);
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// What a stale-directory alert was called with: source, snapshot age, error.
type Alert = (String, Option<Duration>, String);

#[tokio::test]
async fn refresher_keeps_the_last_snapshot_while_the_pbx_is_down() {
    let pbx = Arc::new(Pbx::default());
    let (addr, server) = serve(pbx.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let cfg = DirectoryConfig {
        source: format!("http://{addr}/rest"),
        login_id: Some(LOGIN_ID.into()),
        password: Some(PASSWORD.into()),
        refresh_secs: 1,
        accept_invalid_certs: false,
        alert_after_secs: 3600,
    };
    let source = DirectorySource::from_config(&cfg).unwrap();
    let handle = DirectoryHandle::new(Directory::empty(plan()));
    // Alerts once the snapshot in use is 300 ms old and refreshes fail.
    let alerts: Arc<std::sync::Mutex<Vec<Alert>>> = Arc::default();
    let sink = alerts.clone();
    handle.alert_when_stale(
        Duration::from_millis(300),
        Arc::new(move |src: &str, age: Option<Duration>, err: &str| {
            sink.lock().unwrap().push((src.into(), age, err.into()))
        }),
    );
    let refresher = spawn_refresher(handle.clone(), source, plan(), Duration::from_millis(100));

    wait_for("first snapshot", || handle.status().generation >= 1).await;
    assert_eq!(*handle.current(), fixture_directory());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        alerts.lock().unwrap().is_empty(),
        "refreshes succeed: no alert"
    );

    // The PBX goes down.
    server.abort();
    let _ = server.await;
    wait_for("two failed refreshes", || {
        handle.status().consecutive_failures >= 2
    })
    .await;
    let st = handle.status();
    assert!(
        st.last_error
            .as_deref()
            .unwrap_or("")
            .contains("unreachable"),
        "{st:?}"
    );
    assert_eq!(
        *handle.current(),
        fixture_directory(),
        "last good snapshot kept"
    );
    wait_for("the stale-directory alert", || {
        !alerts.lock().unwrap().is_empty()
    })
    .await;
    {
        let alerts = alerts.lock().unwrap();
        let (src, age, err) = &alerts[0];
        assert!(src.contains(&addr.to_string()), "{src}");
        assert!(
            age.is_some_and(|a| a >= Duration::from_millis(300)),
            "{age:?}"
        );
        assert!(err.contains("unreachable"), "{err}");
    }

    // It comes back on the same address: the next refresh swaps in a new snapshot.
    let generation = st.generation;
    let (_, _server) = serve(pbx.clone(), addr).await;
    wait_for("recovery", || handle.status().generation > generation).await;
    let st = handle.status();
    assert_eq!(st.consecutive_failures, 0);
    assert!(st.last_error.is_none());
    assert_eq!(*handle.current(), fixture_directory());
    refresher.abort();
}

#[tokio::test]
async fn start_loads_a_file_at_once_and_a_pbx_in_the_background() {
    // No directory: empty, no task.
    let (h, task) = start_directory(None, plan()).await.unwrap();
    assert!(h.current().is_empty() && task.is_none());
    // A static file is there before start returns.
    let file = DirectoryConfig {
        source: testdata().join("directory.toml").display().to_string(),
        login_id: None,
        password: None,
        refresh_secs: 60,
        accept_invalid_certs: false,
        alert_after_secs: 3600,
    };
    let (h, task) = start_directory(Some(&file), plan()).await.unwrap();
    assert_eq!(*h.current(), fixture_directory());
    task.unwrap().abort();
    // A broken file is a setup error.
    let broken = DirectoryConfig {
        source: "/nonexistent/directory.toml".into(),
        ..file.clone()
    };
    let err = start_directory(Some(&broken), plan()).await.unwrap_err();
    assert!(err.to_string().contains("--directory"), "{err}");
    // An unreachable PBX: start returns at once with an empty snapshot.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let rest = DirectoryConfig {
        source: format!("http://{addr}/rest"),
        login_id: Some(LOGIN_ID.into()),
        password: Some(PASSWORD.into()),
        ..file
    };
    let (h, task) = start_directory(Some(&rest), plan()).await.unwrap();
    assert!(h.current().is_empty());
    wait_for("the background fetch to fail", || {
        h.status().consecutive_failures >= 1
    })
    .await;
    assert!(h.current().is_empty());
    task.unwrap().abort();
}

#[tokio::test]
async fn static_file_source_refreshes_and_keeps_last_good() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("directory.toml");
    std::fs::copy(testdata().join("directory.toml"), &path).unwrap();
    let handle = DirectoryHandle::new(Directory::empty(plan()));
    let source = DirectorySource::File(path.clone());
    handle.refresh_once(&source, &plan()).await.unwrap();
    assert_eq!(*handle.current(), fixture_directory());
    std::fs::write(&path, "[[users]]\nid = \"not a number\"\n").unwrap();
    let err = handle.refresh_once(&source, &plan()).await.unwrap_err();
    assert!(err.to_string().contains("not a valid directory"), "{err}");
    assert_eq!(*handle.current(), fixture_directory());
    assert_eq!(handle.status().generation, 1);
}

/// Log lines written while the guard lives (this thread only: the tests run on
/// tokio's current-thread runtime, so the client logs here).
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(sink.clone()))
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (Logs(buf), guard)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn lines_with(&self, level: &str, needle: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(level) && l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn e164(s: &str) -> Number {
    Number::E164(s.into())
}

/// The fixture with `edit` applied to one of its files.
fn edit_fixture(pbx: &Pbx, name: &str, edit: impl FnOnce(&mut Value)) {
    let mut v = pbx.fixture(name).unwrap();
    edit(&mut v);
    pbx.fixtures.lock().unwrap().insert(name.into(), v);
}

/// A STARFACE commonly lists the outside-line digit as exit code: `0` + `49` + `30`
/// + number is +49 30 number, not 049…; every other spelling the spec allows gives
/// the same number, and one that cannot be normalised is logged once and skipped.
#[tokio::test]
async fn external_numbers_are_assembled_for_every_spelling() {
    let (logs, _guard) = Logs::capture();
    let pbx = Arc::new(Pbx::default());
    edit_fixture(&pbx, "phonenumbers.json", |v| {
        let spell = |v: &mut Value, id: u64, fields: Value| {
            let n = v
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|n| n["id"] == id)
                .unwrap();
            for k in ["exitCode", "nationalPrefix", "localPrefix"] {
                n.as_object_mut().unwrap().remove(k);
            }
            for (k, val) in fields.as_object().unwrap() {
                n[k] = val.clone();
            }
        };
        // Anna: `+` and the country code. Ben: trunk prefix, area inside the number.
        spell(
            v,
            11,
            json!({"exitCode": "+", "nationalPrefix": "49", "localPrefix": "30"}),
        );
        spell(
            v,
            13,
            json!({"exitCode": "0", "nationalPrefix": "0", "number": "3012345202"}),
        );
        // Clara: `00`. David: no prefixes at all (the plan's area code places it).
        spell(
            v,
            15,
            json!({"exitCode": "00", "nationalPrefix": "49", "localPrefix": "30"}),
        );
        spell(v, 17, json!({"exitCode": ""}));
        // Eva: `+` but no country code: cannot be normalised.
        spell(v, 19, json!({"exitCode": "+", "localPrefix": "30"}));
    });
    let (addr, _server) = serve(pbx.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let c = client(addr, PASSWORD);
    let dir = c.fetch_directory(&plan()).await.unwrap();
    let ext = |login: &str| {
        dir.users()
            .iter()
            .find(|u| u.login == login)
            .unwrap()
            .external_numbers
            .clone()
    };
    assert_eq!(ext("anna"), vec![e164("493012345201")]);
    assert_eq!(ext("ben"), vec![e164("493012345202")]);
    assert_eq!(ext("clara"), vec![e164("493012345203")]);
    assert_eq!(ext("david"), vec![e164("493012345204")]);
    assert_eq!(ext("eva"), Vec::<Number>::new());
    // The rest of the snapshot is used.
    assert_eq!(dir.find_group("Sales").unwrap().members, vec![1, 2, 3]);
    let skipped = logs.lines_with("WARN", "phone_number_id=19");
    assert_eq!(skipped.len(), 1, "{}", logs.text());
    assert!(
        skipped[0].contains(r#"exitCode="+" nationalPrefix="" localPrefix="30" number="12345205""#),
        "the raw fields are logged: {}",
        skipped[0]
    );
    // Logged once, not at every refresh.
    c.fetch_directory(&plan()).await.unwrap();
    assert_eq!(logs.lines_with("WARN", "phone_number_id=19").len(), 1);
}

/// The user's own route wins over `/phonenumbers` when they disagree, and an ERROR
/// names the account; one disagreement gets every user checked.
#[tokio::test]
async fn a_users_own_number_route_wins_over_the_number_list() {
    let (logs, _guard) = Logs::capture();
    let pbx = Arc::new(Pbx::default());
    // Ben's own route: his extension and number 26, not number 13.
    pbx.user_routes.lock().unwrap().insert(2, vec![12, 26]);
    let (addr, _server) = serve(pbx.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let dir = client(addr, PASSWORD)
        .fetch_directory(&plan())
        .await
        .unwrap();
    let ben = dir.users().iter().find(|u| u.login == "ben").unwrap();
    assert_eq!(ben.external_numbers, vec![e164("493012345298")]);
    assert_eq!(ben.internal_numbers, vec![Number::Extension("202".into())]);
    assert!(dir.user_by_number(&e164("493012345202")).is_none());
    let errors = logs.lines_with("ERROR", "account_id=2");
    assert_eq!(errors.len(), 1, "{}", logs.text());
    assert!(errors[0].contains("ben"), "{}", errors[0]);
    let requests = pbx.requests.lock().unwrap().clone();
    for u in 1..=6 {
        let route = format!("GET /users/{u}/phonenumberconfig/phonenumbers/");
        assert!(
            requests.contains(&route),
            "{route} not checked: {requests:?}"
        );
    }
}

/// A number `/phonenumbers` links to a group that the group's own route does not
/// list is not used for the group (an ERROR names the group).
#[tokio::test]
async fn a_group_keeps_only_the_numbers_it_lists_itself() {
    let (logs, _guard) = Logs::capture();
    let pbx = Arc::new(Pbx::default());
    edit_fixture(&pbx, "phonenumbers.json", |v| {
        let n = v
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|n| n["id"] == 26)
            .unwrap();
        n["assignedGroupAccountId"] = json!(100);
    });
    let (addr, _server) = serve(pbx.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let dir = client(addr, PASSWORD)
        .fetch_directory(&plan())
        .await
        .unwrap();
    let sales = dir.find_group("Sales").unwrap();
    assert_eq!(sales.external_numbers, vec![e164("493012345600")]);
    assert!(dir.group_by_number(&e164("493012345298")).is_none());
    let errors = logs.lines_with("ERROR", "account_id=100");
    assert_eq!(errors.len(), 1, "{}", logs.text());
    assert!(errors[0].contains("Sales"), "{}", errors[0]);
}

/// A group member the REST user cannot see in `/users` is skipped (and named in
/// the log); the rest of the snapshot is used.
#[tokio::test]
async fn a_member_missing_from_users_is_skipped() {
    let (logs, _guard) = Logs::capture();
    let pbx = Arc::new(Pbx::default());
    edit_fixture(&pbx, "users.json", |v| {
        v.as_array_mut().unwrap().retain(|u| u["id"] != 3);
    });
    let (addr, _server) = serve(pbx.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let dir = client(addr, PASSWORD)
        .fetch_directory(&plan())
        .await
        .unwrap();
    assert_eq!(dir.users().len(), 5);
    assert_eq!(dir.find_group("Sales").unwrap().members, vec![1, 2]);
    assert_eq!(dir.find_group("Support").unwrap().members, vec![4]);
    assert!(dir.user_by_number(&e164("493012345201")).is_some());
    assert_eq!(
        logs.lines_with("ERROR", "member=3").len(),
        2,
        "{}",
        logs.text()
    );
}

/// A REST user from Active Directory logs in with the secret the spec gives for it.
#[tokio::test]
async fn an_active_directory_user_logs_in() {
    let pbx = Arc::new(Pbx::default());
    pbx.active_directory.store(true, Ordering::SeqCst);
    let (addr, _server) = serve(pbx.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let dir = client(addr, PASSWORD)
        .fetch_directory(&plan())
        .await
        .unwrap();
    assert_eq!(dir, fixture_directory());
    assert_eq!(pbx.logins.load(Ordering::SeqCst), 1);
    let err = client(addr, "wrong")
        .fetch_directory(&plan())
        .await
        .unwrap_err();
    assert!(matches!(err, RestError::LoginRejected { .. }), "{err:?}");
}

/// A token the PBX refused once is logged out when the new one replaces it, so
/// no session stays live on the PBX.
#[tokio::test]
async fn a_replaced_token_is_logged_out() {
    let pbx = Arc::new(Pbx::default());
    pbx.refuse_at.store(2, Ordering::SeqCst);
    let (addr, _server) = serve(pbx.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let c = client(addr, PASSWORD);
    let dir = c.fetch_directory(&plan()).await.unwrap();
    assert_eq!(dir, fixture_directory());
    assert_eq!(pbx.logins.load(Ordering::SeqCst), 2);
    assert_eq!(pbx.logouts.load(Ordering::SeqCst), 1);
    assert_eq!(
        pbx.tokens.lock().unwrap().len(),
        1,
        "only the new token is live"
    );
    c.logout().await.unwrap();
    assert!(pbx.tokens.lock().unwrap().is_empty());
}

/// `callrec run` with the PBX as directory: after SIGTERM its token is logged out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_logs_out_of_the_pbx_at_shutdown() {
    let pbx = Arc::new(Pbx::default());
    let (addr, _server) = serve(pbx.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("callrec.toml");
    std::fs::write(
        &cfg,
        format!(
            "[numbers]\ncountry_code = \"49\"\narea_code = \"30\"\nexit_code = \"0\"\n\n\
             [directory]\nsource = \"http://{addr}/rest\"\nlogin_id = \"{LOGIN_ID}\"\n\
             password = \"{PASSWORD}\"\nrefresh_secs = 3600\n"
        ),
    )
    .unwrap();
    let mut proxy = tokio::task::spawn_blocking(move || {
        common::Proxy::builder()
            .arg("--config")
            .arg(cfg.to_str().unwrap())
            .start()
    })
    .await
    .unwrap();
    wait_for("the proxy's directory fetch", || {
        pbx.authorized.load(Ordering::SeqCst) >= 5
    })
    .await;
    assert_eq!(pbx.tokens.lock().unwrap().len(), 1);
    let (proxy, code) = tokio::task::spawn_blocking(move || {
        let code = proxy.terminate(Duration::from_secs(20));
        (proxy, code)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{}", proxy.log_tail(30));
    assert!(
        pbx.tokens.lock().unwrap().is_empty(),
        "token still live after shutdown: {}",
        proxy.log_tail(30)
    );
    assert_eq!(pbx.logouts.load(Ordering::SeqCst), 1);
    assert_eq!(pbx.violations(), Vec::<String>::new());
}
