//! OneDrive targets against a Graph-compatible server inside the test (tests/onedrive_fake,
//! axum on 127.0.0.1): the identity platform's token endpoint for client credentials,
//! authorization code (with PKCE check) and refresh tokens, and the Graph drive API
//! for item-by-path lookup, folder creation, simple upload and upload sessions with
//! ranged PUTs. The fake is stricter than Graph where that tests our client: a file
//! PUT into a missing folder is refused (so folders must be created), simple uploads
//! over 4 MiB are refused, non-final chunks must be multiples of 320 KiB, an upload
//! URL must be called without the bearer token, and every protocol slip is recorded
//! and asserted empty. Uploaded bytes are compared with the local files. Deleting a
//! set (retention) removes exactly its files. The web console plays a set only the
//! drive holds (its content downloaded through Graph) and refuses one changed there.

mod common;
mod onedrive_fake;
mod storage_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use callrec::storage::onedrive::{authorize, AuthorizeError, AuthorizeOutcome};
use callrec::storage::{
    open_target, OneDriveTarget, Secrets, Target, TargetError, TargetSecret, UploadSet,
};
use serde_json::{json, Value};
use storage_support::outage::{target_down_then_back, Outage};
use storage_support::{make_sets, MadeSet};

use onedrive_fake::*;

/// A set with one file above 4 MiB (goes through an upload session) and two small ones.
fn large_set(dir: &Path) -> (UploadSet, Vec<(String, Vec<u8>)>) {
    let base = "20260301_101500_in_4930123_200_beef";
    std::fs::create_dir_all(dir).unwrap();
    let mut contents = Vec::new();
    let mut files = Vec::new();
    let big: Vec<u8> = (0..(9 * 1024 * 1024 + 12345u32))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for (name, bytes) in [
        (format!("{base}.json"), b"{\"call\":1}".to_vec()),
        (format!("{base}.wav"), big),
        (format!("{base}.sha256"), b"0000  x\n".to_vec()),
    ] {
        let p = dir.join(&name);
        std::fs::write(&p, &bytes).unwrap();
        files.push(p);
        contents.push((name, bytes));
    }
    (UploadSet::new(base, files), contents)
}

fn upload_set(m: &MadeSet) -> UploadSet {
    UploadSet::from_sealed(&m.set)
}

/// `m`'s files copied into `dir` with one byte of the WAV's audio changed:
/// the same names and sizes, other content.
fn altered_copy(m: &MadeSet, dir: &Path) -> UploadSet {
    std::fs::create_dir_all(dir).unwrap();
    let mut set = m.set.clone();
    set.folder = dir.to_path_buf();
    set.files = m
        .contents
        .iter()
        .map(|(name, bytes)| {
            let mut bytes = bytes.clone();
            if name.ends_with(".wav") {
                let last = bytes.len() - 1;
                bytes[last] ^= 0xff;
            }
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        })
        .collect();
    UploadSet::from_sealed(&set)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onedrive_app_only_creates_folders_and_uploads_small_files_and_sessions_into_user_and_site_drives(
) {
    let graph = FakeGraph::start().await;
    let work = tempfile::tempdir().unwrap();
    let made = make_sets(work.path(), 2);
    let (big_set, big_contents) = large_set(&work.path().join("big"));

    let user = OneDriveTarget::from_url(
        &format!("onedrive://{UPN}/Call Recordings/$Y/$M"),
        graph.app_secret(CLIENT_SECRET),
        None,
    )
    .unwrap();
    user.put(&upload_set(&made[0])).await.unwrap();
    user.put(&big_set).await.unwrap();
    let drive = format!("user:{UPN}");
    graph.assert_holds(&drive, "Call Recordings/2026/03", &made[0].contents);
    graph.assert_holds(&drive, "Call Recordings/2026/03", &big_contents);

    {
        let f = graph.fake();
        // Folders were created level by level.
        let creates: Vec<_> = f
            .requests
            .iter()
            .filter(|(m, p)| m == "POST" && p.ends_with("/children"))
            .map(|(_, p)| p.clone())
            .collect();
        assert_eq!(creates.len(), 3, "{creates:?}");
        assert!(
            creates[0].ends_with("/users/rec%40contoso.example/drive/root/children"),
            "{creates:?}"
        );
        assert!(
            creates[2].ends_with("/root:/Call%20Recordings/2026:/children"),
            "{creates:?}"
        );
        // The large file went in ranged chunks: contiguous, 320 KiB multiples, to the end.
        let total = big_contents[1].1.len();
        assert!(f.chunks.len() >= 3, "{:?}", f.chunks);
        let mut next = 0;
        for (i, &(start, end, t, len)) in f.chunks.iter().enumerate() {
            assert_eq!((start, t), (next, total), "chunk {i}: {:?}", f.chunks);
            if i + 1 < f.chunks.len() {
                assert!(len.is_multiple_of(CHUNK_UNIT), "chunk {i} is {len} bytes");
            }
            next = end + 1;
        }
        assert_eq!(next, total);
        // Only the large file used a session; one app-only token served everything.
        let sessions = f
            .requests
            .iter()
            .filter(|(_, p)| p.ends_with(":/createUploadSession"))
            .count();
        assert_eq!(sessions, 1);
        assert_eq!(f.grants, ["client_credentials"]);
    }

    // The app-only token expires on the server: one 401, a new token, the request retried.
    graph.fake().access_tokens.clear();
    user.put(&upload_set(&made[1])).await.unwrap();
    graph.assert_holds(&drive, "Call Recordings/2026/03", &made[1].contents);
    assert_eq!(graph.fake().unauthorized, 1);
    assert_eq!(
        graph.fake().grants,
        ["client_credentials", "client_credentials"]
    );

    // A SharePoint site's library, templated folder again.
    let site = OneDriveTarget::from_url(
        &format!("onedrive://site:{SITE}/Recordings/$Y-$M-$D"),
        graph.app_secret(CLIENT_SECRET),
        None,
    )
    .unwrap();
    site.put(&upload_set(&made[0])).await.unwrap();
    graph.assert_holds(
        &format!("site:{SITE}"),
        "Recordings/2026-03-01",
        &made[0].contents,
    );
    graph.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onedrive_delegated_authorize_link_code_token_file_and_refresh_on_expiry_and_before_it() {
    let graph = FakeGraph::start().await;
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let made = make_sets(work.path(), 3);
    let url = "onedrive://me/Recordings/$Y";
    let mut secrets = Secrets::new();
    secrets.insert(url, graph.delegated_secret());
    secrets.set_data_dir(&data);

    // Before any sign-in, uploads fail with a hint to authorize.
    let err = open_target(url, &secrets)
        .unwrap()
        .put(&upload_set(&made[0]))
        .await
        .unwrap_err();
    assert!(matches!(err, TargetError::Auth { .. }), "{err}");
    assert!(
        err.to_string().contains("callrec onedrive authorize"),
        "{err}"
    );

    // --code before a link: a clear error.
    let err = authorize(&data, url, &secrets, Some("whatever"))
        .await
        .unwrap_err();
    assert!(matches!(err, AuthorizeError::NotStarted { .. }), "{err}");

    let link = match authorize(&data, url, &secrets, None).await.unwrap() {
        AuthorizeOutcome::Link { url } => url,
        other => panic!("{other:?}"),
    };
    assert!(
        link.starts_with(&format!(
            "{}/organizations/oauth2/v2.0/authorize?",
            graph.base
        )),
        "{link}"
    );
    let q: HashMap<String, String> = form(link.split_once('?').unwrap().1.as_bytes());
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(
        q["redirect_uri"],
        "https://login.microsoftonline.com/common/oauth2/nativeclient"
    );
    assert!(
        q["scope"].contains("Files.ReadWrite.All") && q["scope"].contains("offline_access"),
        "{q:?}"
    );
    graph.fake().codes.insert(
        "code-1".into(),
        (q["code_challenge"].clone(), q["redirect_uri"].clone()),
    );

    // A wrong code is refused clearly; the pasted redirect address with the right one works.
    let err = authorize(&data, url, &secrets, Some("wrong-code"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid_grant"), "{err}");
    let redirect = "https://login.microsoftonline.com/common/oauth2/nativeclient";
    // An address from another link (other state) is refused before the code is used.
    let stale = format!("{redirect}?code=code-1&state=not-ours&session_state=y");
    let err = authorize(&data, url, &secrets, Some(&stale))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("state differs"), "{err}");
    let pasted = format!(
        "{redirect}?code=code-1&state={}&session_state=y",
        q["state"]
    );
    let outcome = authorize(&data, url, &secrets, Some(&pasted))
        .await
        .unwrap();
    let AuthorizeOutcome::SignedIn { token_file } = outcome.clone() else {
        panic!("{outcome:?}")
    };
    assert!(outcome.to_string().contains("Signed in"));
    assert!(token_file.starts_with(&data));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "token file mode {mode:o}");
    let stored: Value = serde_json::from_slice(&std::fs::read(&token_file).unwrap()).unwrap();
    assert_eq!(stored["refresh_token"], graph.fake().refresh_tokens[0]);

    // The signed-in user's drive receives the set.
    let target = open_target(url, &secrets).unwrap();
    target.put(&upload_set(&made[0])).await.unwrap();
    graph.assert_holds("me", "Recordings/2026", &made[0].contents);

    // The access token expires on the server: one 401, a refresh, the request retried.
    graph.fake().access_tokens.clear();
    target.put(&upload_set(&made[1])).await.unwrap();
    graph.assert_holds("me", "Recordings/2026", &made[1].contents);
    {
        let f = graph.fake();
        assert_eq!(f.unauthorized, 1);
        // the wrong code, the right one, then one refresh after the 401
        assert_eq!(
            f.grants,
            ["authorization_code", "authorization_code", "refresh_token"]
        );
        let stored: Value = serde_json::from_slice(&std::fs::read(&token_file).unwrap()).unwrap();
        assert_eq!(
            stored["refresh_token"], f.refresh_tokens[0],
            "rotated refresh token saved"
        );
    }

    // A token close to its expiry is renewed before use: no 401. The stored token is
    // made to expire in 100 s (it was issued 3500 s ago with a lifetime of 3600 s).
    let mut stored: Value = serde_json::from_slice(&std::fs::read(&token_file).unwrap()).unwrap();
    let now = chrono::Utc::now().timestamp();
    stored["refreshed_at"] = json!(now - 3500);
    stored["expires_at"] = json!(now + 100);
    std::fs::write(&token_file, serde_json::to_vec(&stored).unwrap()).unwrap();
    let t2 = open_target(url, &secrets).unwrap(); // a new target reads the file
    t2.put(&upload_set(&made[2])).await.unwrap();
    {
        let f = graph.fake();
        assert_eq!(f.unauthorized, 1, "renewed before expiry, not after a 401");
        assert_eq!(
            f.grants.iter().filter(|g| *g == "refresh_token").count(),
            2,
            "{:?}",
            f.grants
        );
    }
    // Renewed tokens are used as they are until they near their expiry.
    t2.put(&upload_set(&made[1])).await.unwrap();
    assert_eq!(graph.fake().grants.len(), 4);
    graph.assert_holds("me", "Recordings/2026", &made[2].contents);
    graph.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onedrive_429_and_503_with_retry_after_are_waited_out_and_a_session_resumes_after_416() {
    let graph = FakeGraph::start().await;
    let work = tempfile::tempdir().unwrap();
    let (big_set, big_contents) = large_set(&work.path().join("big"));
    {
        let mut f = graph.fake();
        f.retry_after_secs = 2;
        f.throttle_api = 1;
        f.throttle_upload = 1;
        f.lose_chunk_answer = true;
    }
    let target = OneDriveTarget::from_url(
        &format!("onedrive://{UPN}/T"),
        graph.app_secret(CLIENT_SECRET),
        None,
    )
    .unwrap();
    let started = Instant::now();
    target.put(&big_set).await.unwrap();
    graph.assert_holds(&format!("user:{UPN}"), "T", &big_contents);
    let f = graph.fake();
    assert_eq!(
        f.throttled_at.len(),
        2,
        "one 429 (API) and one 503 (upload URL)"
    );
    assert!(!f.lose_chunk_answer, "a chunk was answered with 416");
    for t in &f.throttled_at {
        let next = f
            .request_times
            .iter()
            .find(|r| *r > t)
            .expect("a request after the throttle");
        assert!(
            next.duration_since(*t) >= Duration::from_millis(1900),
            "retried after {:?}, Retry-After was 2 s",
            next.duration_since(*t)
        );
    }
    assert!(started.elapsed() >= Duration::from_secs(4));
    drop(f);
    graph.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onedrive_never_overwrites_identical_counts_as_delivered_different_fails() {
    let graph = FakeGraph::start().await;
    let work = tempfile::tempdir().unwrap();
    let made = make_sets(work.path(), 2);
    let (big_set, big_contents) = large_set(&work.path().join("big"));
    let drive = format!("user:{UPN}");
    let folder = "R/2026";
    {
        let mut f = graph.fake();
        for p in ["R", "R/2026"] {
            f.items.insert((drive.clone(), p.into()), Node::Folder);
        }
        // Set 0: already there in full (an earlier attempt's answer was lost).
        for (name, bytes) in &made[0].contents {
            f.items.insert(
                (drive.clone(), format!("{folder}/{name}")),
                Node::File(bytes.clone()),
            );
        }
        // Set 1: its WAV name is taken by another file of another size.
        let wav = &made[1]
            .contents
            .iter()
            .find(|(n, _)| n.ends_with(".wav"))
            .unwrap()
            .0;
        f.items.insert(
            (drive.clone(), format!("{folder}/{wav}")),
            Node::File(b"someone else's".to_vec()),
        );
        // The large set: its WAV is there with the same size (upload session → 409).
        f.items.insert(
            (drive.clone(), format!("{folder}/{}", big_contents[1].0)),
            Node::File(big_contents[1].1.clone()),
        );
    }
    let target = OneDriveTarget::from_url(
        &format!("onedrive://{UPN}/R/$Y"),
        graph.app_secret(CLIENT_SECRET),
        None,
    )
    .unwrap();
    target.put(&upload_set(&made[0])).await.unwrap();
    graph.assert_holds(&drive, folder, &made[0].contents);

    let err = target.put(&upload_set(&made[1])).await.unwrap_err();
    assert!(matches!(err, TargetError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("never overwritten"), "{err}");
    let wav = &made[1]
        .contents
        .iter()
        .find(|(n, _)| n.ends_with(".wav"))
        .unwrap()
        .0;
    assert_eq!(
        graph.file(&drive, &format!("{folder}/{wav}")).unwrap(),
        b"someone else's"
    );

    target.put(&big_set).await.unwrap();
    graph.assert_holds(&drive, folder, &big_contents);
    assert!(graph.fake().sessions.is_empty(), "no session left open");

    // Same names and sizes as set 0 but other bytes: the content is read back and
    // compared, and the upload refused. A copy with one audio byte changed; a set
    // sealed afresh is no good here, its certificate's length varies by a few bytes.
    let other = altered_copy(&made[0], &work.path().join("other"));
    let err = target.put(&other).await.unwrap_err();
    assert!(matches!(err, TargetError::Mismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("other content") && err.to_string().contains("never overwritten"),
        "{err}"
    );
    graph.assert_holds(&drive, folder, &made[0].contents);

    // Retention: set 0 is deleted file by file, signature first; the other file stays.
    target
        .delete(&UploadSet::by_name(&made[0].set.base_name))
        .await
        .unwrap();
    for (name, _) in &made[0].contents {
        assert!(
            graph.file(&drive, &format!("{folder}/{name}")).is_none(),
            "{name} still on the drive"
        );
    }
    assert_eq!(
        graph.file(&drive, &format!("{folder}/{wav}")).unwrap(),
        b"someone else's"
    );
    graph.assert_no_violations();
}

/// The drive with the spool holding a wrong client secret; fixed by a
/// restart with the right one.
struct WrongSecret<'a> {
    graph: &'a FakeGraph,
}

impl Outage for WrongSecret<'_> {
    fn url(&self) -> String {
        format!("onedrive://{UPN}/Rec/$Y/$M")
    }

    fn secrets(&self) -> Secrets {
        let mut secrets = Secrets::new();
        secrets.insert(self.url(), self.graph.app_secret("not-the-secret"));
        secrets
    }

    fn error_says(&self) -> Vec<String> {
        ["login refused", "invalid_client", "client_id"]
            .map(String::from)
            .to_vec()
    }

    fn error_hides(&self) -> Vec<String> {
        vec!["not-the-secret".into()]
    }

    fn up(&mut self) -> Option<Secrets> {
        let mut secrets = Secrets::new();
        secrets.insert(self.url(), self.graph.app_secret(CLIENT_SECRET));
        Some(secrets)
    }

    fn read_back(&self, _made: &MadeSet, name: &str) -> Option<Vec<u8>> {
        self.graph
            .file(&format!("user:{UPN}"), &format!("Rec/2026/03/{name}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onedrive_wrong_client_secret_is_a_clear_error_and_the_set_stays_until_fixed() {
    let graph = FakeGraph::start().await;
    let work = tempfile::tempdir().unwrap();
    target_down_then_back(work.path(), &mut WrongSecret { graph: &graph }).await;
    graph.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onedrive_national_cloud_germany_uses_its_login_and_graph_hosts() {
    let work = tempfile::tempdir().unwrap();
    let url = "onedrive://me/Rec";
    let mut secret = TargetSecret::default();
    secret.cloud.client_id = Some(CLIENT_ID.into());
    secret.cloud.tenant = Some("contoso.de".into());
    secret.cloud.cloud = Some("germany".into());
    let mut secrets = Secrets::new();
    secrets.insert(url, secret);
    let link = authorize(work.path(), url, &secrets, None)
        .await
        .unwrap()
        .to_string();
    assert!(
        link.contains("https://login.microsoftonline.de/contoso.de/oauth2/v2.0/authorize?"),
        "{link}"
    );
    assert!(
        link.contains("https%3A%2F%2Fgraph.microsoft.de%2FFiles.ReadWrite.All"),
        "{link}"
    );
    assert!(link.contains("callrec onedrive authorize --code"), "{link}");

    // App-only without a tenant, or with an unknown cloud: configuration errors.
    let mut app = TargetSecret::default();
    app.cloud.client_id = Some(CLIENT_ID.into());
    app.cloud.client_secret = Some("s".into());
    let err = OneDriveTarget::from_url("onedrive://u@x/y", app.clone(), None).unwrap_err();
    assert!(err.to_string().contains("tenant"), "{err}");
    app.cloud.tenant = Some("t".into());
    app.cloud.cloud = Some("mars".into());
    let err = OneDriveTarget::from_url("onedrive://u@x/y", app, None).unwrap_err();
    assert!(err.to_string().contains("unknown cloud"), "{err}");
    let _: PathBuf = work.path().to_path_buf();
}

/// The web console plays a set that only OneDrive holds: its content downloaded
/// through Graph on demand, verified, played whole and by range; after the WAV is
/// changed in the drive a new start refuses to play it.
#[test]
fn console_plays_a_set_only_onedrive_holds() {
    use common::console::{assert_plays, assert_refuses, record_one_remote_set, start_with_config};
    // The fake serves from this runtime's threads while the test drives callrec.
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
    let (proxy, id) = record_one_remote_set(&data, &config, || {
        graph.fake().items.keys().find_map(|(d, p)| {
            (*d == drive)
                .then(|| {
                    p.strip_prefix("Console/")?
                        .strip_suffix(".sha256.SHA256withRSA.sig")
                })
                .flatten()
                .map(str::to_string)
        })
    });
    let wav_path = format!("Console/{id}.wav");
    let wav = graph.file(&drive, &wav_path).unwrap();
    assert_plays(&proxy, &data, &id, &wav);

    drop(proxy);
    let mut changed = wav.clone();
    let n = changed.len();
    changed[n - 7] ^= 0x5a;
    graph
        .fake()
        .items
        .insert((drive.clone(), wav_path), Node::File(changed));
    let proxy = start_with_config(&data, &config);
    assert_refuses(&proxy, &data, &id);
    graph.assert_no_violations();
}
