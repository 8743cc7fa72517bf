//! The web console with OneDrive targets (the fake Graph and login server of
//! tests/onedrive_fake): the operations view's sign-in button does the
//! delegated sign-in from the browser (admins only, CSRF checked, the token
//! stored, the account shown, every step in the access log); and sets fetched
//! from a remote target for playing are bounded: a set within the limit
//! plays, the least recently used set is deleted to make room for another,
//! and one larger than the limit is refused with a clear message while its
//! download is stopped early, so the disk never fills. The new settings are
//! given as environment variables.

mod common;
mod onedrive_fake;

use common::console::{form, get, http, login, users_cli, wav_names, Session};
use common::*;
use onedrive_fake::*;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

const ADMIN_PW: &str = "admin password 333";
const VIEWER_PW: &str = "viewer password 1";

fn add_users(data: &Path) {
    for (name, role, pw) in [("adam", "admin", ADMIN_PW), ("vera", "viewer", VIEWER_PW)] {
        let (code, out) = users_cli(data, &["add", name, "--role", role], &format!("{pw}\n"));
        assert_eq!(code, 0, "{out}");
    }
}

fn post(admin: std::net::SocketAddr, s: &Session, path: &str, body: &str) -> common::console::Resp {
    http(
        admin,
        "POST",
        path,
        &[
            ("Cookie", &s.cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        body,
    )
}

/// The HTML attribute value unescaped (maud escapes `&` and `"`).
fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&amp;", "&")
}

#[test]
fn console_onedrive_sign_in_button_stores_the_token_and_shows_the_account() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let graph = rt.block_on(FakeGraph::start());
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("callrec.toml");
    let target = "onedrive://me/Console";
    std::fs::write(
        &config,
        format!(
            "[targets.mine]\nurl = \"{target}\"\nclient_id = \"{CLIENT_ID}\"\nauth = \"delegated\"\nlogin_host = \"{0}\"\ngraph_host = \"{0}\"\n\n[[profiles]]\nname = \"default\"\nrecord_all = true\ntargets = [\"mine\"]\n",
            graph.base
        ),
    )
    .unwrap();
    let data = work.path().join("data");
    let proxy = common::console::start_with_config(&data, &config);
    let admin = proxy.admin_addr();
    add_users(&data);

    // A viewer has no button and cannot start a sign-in.
    let vera = login(admin, "vera", VIEWER_PW).1.expect("viewer login");
    let r = post(
        admin,
        &vera,
        "/operations/onedrive/start",
        &form(&[("csrf", &vera.csrf), ("target", target)]),
    );
    assert_eq!(r.status, 403, "{}", r.text());

    let adam = login(admin, "adam", ADMIN_PW).1.expect("admin login");
    let ops = get(admin, &adam, "/operations");
    assert_eq!(ops.status, 200);
    let text = ops.text();
    assert!(
        text.contains("OneDrive sign-in")
            && text.contains(target)
            && text.contains("not signed in"),
        "{text}"
    );

    // No CSRF token, or a target that is not configured: refused.
    let r = post(
        admin,
        &adam,
        "/operations/onedrive/start",
        &form(&[("target", target)]),
    );
    assert_eq!(
        r.status, 403,
        "a sign-in without CSRF token must be refused"
    );
    let r = post(
        admin,
        &adam,
        "/operations/onedrive/start",
        &form(&[("csrf", &adam.csrf), ("target", "onedrive://me/Elsewhere")]),
    );
    assert_eq!(r.status, 404, "only configured targets: {}", r.text());

    // The button: a link to the (fake) Microsoft sign-in with PKCE.
    let r = post(
        admin,
        &adam,
        "/operations/onedrive/start",
        &form(&[("csrf", &adam.csrf), ("target", target)]),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.text();
    let href = page
        .split("id=\"signin-link\" href=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .map(unescape)
        .unwrap_or_else(|| panic!("no sign-in link:\n{page}"));
    assert!(
        href.starts_with(&format!(
            "{}/organizations/oauth2/v2.0/authorize?",
            graph.base
        )),
        "{href}"
    );
    let q: HashMap<String, String> =
        onedrive_fake::form(href.split_once('?').unwrap().1.as_bytes());
    assert_eq!(q["code_challenge_method"], "S256");
    // The sign-in page hands out this code for that challenge.
    graph.fake().codes.insert(
        "code-1".into(),
        (q["code_challenge"].clone(), q["redirect_uri"].clone()),
    );

    // A wrong code: a clear failure, nothing stored.
    let r = post(
        admin,
        &adam,
        "/operations/onedrive/finish",
        &form(&[
            ("csrf", &adam.csrf),
            ("target", target),
            ("code", "wrong-code"),
        ]),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("Sign-in failed") && r.text().contains("invalid_grant"),
        "{}",
        r.text()
    );

    // The address the browser ends on, pasted: signed in, as whom, token kept.
    let pasted = format!(
        "{}?code=code-1&state={}&session_state=x",
        q["redirect_uri"], q["state"]
    );
    let no_csrf = post(
        admin,
        &adam,
        "/operations/onedrive/finish",
        &form(&[("target", target), ("code", &pasted)]),
    );
    assert_eq!(no_csrf.status, 403);
    let r = post(
        admin,
        &adam,
        "/operations/onedrive/finish",
        &form(&[("csrf", &adam.csrf), ("target", target), ("code", &pasted)]),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let done = r.text();
    assert!(
        done.contains("Signed in to OneDrive as <strong>Recording Account &lt;rec@contoso.example&gt;</strong>"),
        "{done}"
    );
    let tokens: Vec<_> = std::fs::read_dir(data.join("onedrive"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".token.json"))
        .collect();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&tokens[0]).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&tokens[0]).unwrap()).unwrap();
    assert_eq!(stored["refresh_token"], graph.fake().refresh_tokens[0]);
    let ops = get(admin, &adam, "/operations").text();
    assert!(ops.contains("token stored"), "{ops}");

    // Each step is in the access log as the admin's.
    let db = rusqlite::Connection::open(data.join("callrec.sqlite")).unwrap();
    let mut st = db
        .prepare("SELECT detail FROM access_log WHERE actor = 'console:adam' AND action = 'configure' AND subject = ?1 ORDER BY id")
        .unwrap();
    let details: Vec<String> = st
        .query_map([target], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(details.len(), 3, "{details:?}");
    assert_eq!(details[0], "OneDrive sign-in started");
    assert!(
        details[1].starts_with("OneDrive sign-in failed"),
        "{details:?}"
    );
    assert_eq!(
        details[2],
        "OneDrive signed in as Recording Account <rec@contoso.example>"
    );
    graph.assert_no_violations();
}

/// Bytes of the files below `dir`.
fn tree_size(dir: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => n += m.len(),
                Err(_) => {}
            }
        }
    }
    n
}

fn start(data: &Path, config: &Path, max_mb: &str) -> Proxy {
    Proxy::builder()
        .data_dir(data)
        .arg("--config")
        .arg(config.to_str().unwrap())
        .env("CALLREC_CONSOLE_FETCH_MAX_MB", max_mb)
        .start()
}

#[test]
fn console_fetch_folder_is_bounded_and_a_too_large_set_is_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let graph = rt.block_on(FakeGraph::start());
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("callrec.toml");
    std::fs::write(
        &config,
        format!(
            "[targets.offsite]\nurl = \"onedrive://{UPN}/Console\"\ntenant = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\nlogin_host = \"{0}\"\ngraph_host = \"{0}\"\n\n[[profiles]]\nname = \"default\"\nrecord_all = true\ntargets = [\"offsite\"]\n",
            graph.base
        ),
    )
    .unwrap();
    let data = work.path().join("data");
    let drive = format!("user:{UPN}");
    let proxy = start(&data, &config, "1");
    proxy
        .call(pair("basic"))
        .numbers("03012345678", "200")
        .calls(2)
        .run()
        .assert_success();
    // Both sets on the drive only.
    let mut ids: Vec<String> = Vec::new();
    let only_remote = wait_until(Duration::from_secs(60), || {
        ids = graph
            .fake()
            .items
            .keys()
            .filter(|(d, _)| *d == drive)
            .filter_map(|(_, p)| {
                p.strip_prefix("Console/")?
                    .strip_suffix(".sha256.SHA256withRSA.sig")
                    .map(str::to_string)
            })
            .collect();
        ids.len() == 2
            && !wav_names(&data)
                .iter()
                .any(|n| ids.iter().any(|id| n.starts_with(id.as_str())))
    });
    assert!(
        only_remote,
        "sets not delivered to the drive only ({ids:?}): {}",
        proxy.log_tail(30)
    );
    ids.sort();
    let (a, b) = (ids[0].clone(), ids[1].clone());
    let set_bytes = |id: &str| -> usize {
        let f = graph.fake();
        f.items
            .iter()
            .filter(|((d, p), _)| *d == drive && p.starts_with(&format!("Console/{id}")))
            .map(|(_, n)| match n {
                Node::File(b) => b.len(),
                Node::Folder => 0,
            })
            .sum()
    };
    const LIMIT: usize = 1024 * 1024;
    let wav_a = graph.file(&drive, &format!("Console/{a}.wav")).unwrap();
    // Within the limit: fetched, verified, played; kept in the fetch folder.
    common::console::assert_plays(&proxy, &data, &a, &wav_a);
    let fetched = data.join("console-cache").join("fetched");
    assert!(fetched.join(&a).is_dir());

    // Set b grows on the drive so that a and b together exceed the limit
    // (b alone still fits): fetching b deletes a, the least recently used.
    let b_wav = format!("Console/{b}.wav");
    let b_others = set_bytes(&b) - graph.file(&drive, &b_wav).unwrap().len();
    let grown = vec![0x55u8; LIMIT - b_others - 1024];
    graph
        .fake()
        .items
        .insert((drive.clone(), b_wav.clone()), Node::File(grown));
    assert!(set_bytes(&a) + set_bytes(&b) > LIMIT && set_bytes(&b) <= LIMIT);
    let admin = proxy.admin_addr();
    let vera = common::console::viewer(&proxy, &data);
    let page = get(admin, &vera, &format!("/recordings/{b}"));
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains("FAILED"), "b was changed on the drive");
    assert!(
        !fetched.join(&a).exists() && fetched.join(&b).is_dir(),
        "a (least recently used) must make room for b"
    );
    assert!(tree_size(&fetched) <= LIMIT as u64);
    // a again: fetched anew (b makes room now) and still verified.
    let page = get(admin, &vera, &format!("/recordings/{a}"));
    assert!(
        page.text().contains("verified:") && !page.text().contains("FAILED"),
        "{}",
        page.text()
    );
    assert!(fetched.join(&a).is_dir() && !fetched.join(&b).exists());
    assert!(tree_size(&fetched) <= LIMIT as u64);
    drop(proxy);
    let (id, wav_path) = (b, b_wav);

    // The drive's copy grows to 64 MB (a huge or hostile set): a new start
    // (which forgets what was fetched) must not download it whole.
    let huge: Vec<u8> = (0..64 * 1024 * 1024u32).map(|i| (i >> 5) as u8).collect();
    graph
        .fake()
        .items
        .insert((drive.clone(), wav_path), Node::File(huge));
    let proxy = start(&data, &config, "1");
    let admin = proxy.admin_addr();
    let vera = common::console::login(admin, "vera", "viewer password 1")
        .1
        .expect("login");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let (fetched, stop) = (fetched.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut max = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(tree_size(&fetched));
                std::thread::sleep(Duration::from_millis(1));
            }
            max
        })
    };
    let page = get(admin, &vera, &format!("/recordings/{id}"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = watch.join().unwrap();
    eprintln!(
        "largest fetch folder seen while refusing a 64 MB set with a 1 MB limit: {most} bytes"
    );
    assert_eq!(page.status, 507, "{}", page.text());
    assert!(
        page.text().contains("more than the console may fetch") && page.text().contains("1 MB"),
        "{}",
        page.text()
    );
    assert!(
        most < 16 * 1024 * 1024,
        "the download went on to {most} bytes with a 1 MB limit"
    );
    assert!(
        tree_size(&fetched) <= 1024 * 1024,
        "the refused set is left in the fetch folder"
    );
    let audio = get(admin, &vera, &format!("/recordings/{id}/audio"));
    assert_eq!(audio.status, 507);
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .log()
            .contains("fetch stopped")),
        "{}",
        proxy.log_tail(20)
    );
    graph.assert_no_violations();
}
