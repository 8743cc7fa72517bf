//! What a STARFACE's particulars do to the directory snapshot, against the fake
//! STARFACE in tests/starface_fake. What a user would notice: the numbers in the
//! snapshot (outside-line exit code and every other spelling, links checked
//! against each account's own route), the ERROR naming an account whose links
//! disagree, a member the REST user cannot see left out instead of a failed
//! refresh, an Active Directory login that works, and no token left live on the
//! PBX (after a replacement and after the proxy's shutdown).

mod common;
#[path = "starface_fake/mod.rs"]
mod starface_fake;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callrec::policy::{Number, RestError};
use serde_json::{json, Value};
use starface_fake::client::{client, fixture_directory, plan};
use starface_fake::{serve, Pbx, LOGIN_ID, PASSWORD};

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
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
/// the same number, and one that cannot be normalised is logged once and left_out.
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
    let left_out = logs.lines_with("WARN", "phone_number_id=19");
    assert_eq!(left_out.len(), 1, "{}", logs.text());
    assert!(
        left_out[0]
            .contains(r#"exitCode="+" nationalPrefix="" localPrefix="30" number="12345205""#),
        "the raw fields are logged: {}",
        left_out[0]
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

/// A group member the REST user cannot see in `/users` is left out (and named in
/// the log); the rest of the snapshot is used.
#[tokio::test]
async fn a_member_missing_from_users_is_left_out() {
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
