//! The directory over the PBX REST API against the fake STARFACE in
//! tests/starface_fake (spec-shaped: nonce login checked with SHA-512, a wrong
//! password gets 400, `authToken` required, 401 when missing or expired, fixtures
//! from testdata/rest/). Also the background refresher: last good snapshot kept
//! while the PBX is down. What a STARFACE's particulars do to the snapshot is in
//! tests/starface_directory.rs.

#[path = "starface_fake/mod.rs"]
mod starface_fake;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use callrec::policy::{
    decide, spawn_refresher, start_directory, Directory, DirectoryConfig, DirectoryHandle,
    DirectorySource, LoggedOut, Profile, RestError, Rule,
};
use callrec::vocab::Direction;
use starface_fake::client::{client, fixture_directory, plan};
use starface_fake::{serve, testdata, Pbx, LOGIN_ID, PASSWORD};

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
