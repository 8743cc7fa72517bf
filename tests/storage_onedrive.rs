//! OneDrive targets against a Graph-compatible server inside the test (axum on
//! 127.0.0.1): the identity platform's token endpoint for client credentials,
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
mod storage_support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use callrec::db::Db;
use callrec::spool::Spool;
use callrec::storage::onedrive::{authorize, AuthorizeError, AuthorizeOutcome};
use callrec::storage::{
    open_target, OneDriveTarget, Secrets, Target, TargetError, TargetSecret, UploadSet,
};
use serde_json::{json, Value};
use storage_support::{eventually, fast_spool, make_sets, MadeSet};

const TENANT: &str = "contoso-tenant-id";
const CLIENT_ID: &str = "app-client-id";
const CLIENT_SECRET: &str = "the-right-client-secret";
const UPN: &str = "rec@contoso.example";
const SITE: &str = "contoso.sharepoint.com,1111,2222";
const CHUNK_UNIT: usize = 320 * 1024;

/// One file or folder on the fake drive.
#[derive(Clone)]
enum Node {
    Folder,
    File(Vec<u8>),
}

struct Session {
    drive: String,
    path: String,
    size: usize,
    received: Vec<u8>,
}

/// What the fake Graph knows and saw.
#[derive(Default)]
struct Fake {
    base: String,
    token_lifetime: i64,
    /// code → (PKCE challenge, redirect URI)
    codes: HashMap<String, (String, String)>,
    refresh_tokens: Vec<String>,
    /// access token → "app" | "delegated"
    access_tokens: HashMap<String, &'static str>,
    next_id: u64,
    /// grant types in order
    grants: Vec<String>,
    /// (drive, path) → node
    items: BTreeMap<(String, String), Node>,
    sessions: HashMap<String, Session>,
    /// download id → (drive, path)
    downloads: HashMap<String, (String, String)>,
    /// (start, end inclusive, total, body length)
    chunks: Vec<(usize, usize, usize, usize)>,
    /// (method, path) of every Graph API request
    requests: Vec<(String, String)>,
    unauthorized: usize,
    throttle_api: usize,
    throttle_upload: usize,
    /// keep the next non-final chunk but answer 416, as for a chunk whose answer was lost and that is sent again
    lose_chunk_answer: bool,
    retry_after_secs: u64,
    /// times of throttled answers and of every request after them
    throttled_at: Vec<Instant>,
    request_times: Vec<Instant>,
    violations: Vec<String>,
}

type Shared = Arc<Mutex<Fake>>;

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn b64url_sha256(s: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(s.as_bytes()))
}

impl Fake {
    fn issue(&mut self, kind: &'static str, with_refresh: bool) -> Response {
        self.next_id += 1;
        let at = format!("at-{}", self.next_id);
        self.access_tokens.insert(at.clone(), kind);
        let mut body =
            json!({"token_type": "Bearer", "access_token": at, "expires_in": self.token_lifetime});
        if with_refresh {
            let rt = format!("rt-{}", self.next_id);
            self.refresh_tokens.push(rt.clone());
            body["refresh_token"] = json!(rt);
        }
        axum::Json(body).into_response()
    }

    fn token(&mut self, tenant: &str, body: &[u8]) -> Response {
        let f = form(body);
        let get = |k: &str| f.get(k).cloned().unwrap_or_default();
        let grant = get("grant_type");
        self.grants.push(grant.clone());
        let oauth = |status: StatusCode, error: &str, desc: &str| {
            (
                status,
                axum::Json(json!({"error": error, "error_description": desc})),
            )
                .into_response()
        };
        if get("client_id") != CLIENT_ID {
            return oauth(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                "AADSTS700016: Application not found in the directory.",
            );
        }
        match grant.as_str() {
            "client_credentials" => {
                if tenant != TENANT {
                    self.violations
                        .push(format!("client credentials on tenant {tenant}"));
                }
                if !get("scope").ends_with("/.default") {
                    self.violations
                        .push(format!("app-only scope {}", get("scope")));
                }
                if get("client_secret") != CLIENT_SECRET {
                    return oauth(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x",
                    );
                }
                self.issue("app", false)
            }
            "authorization_code" => {
                let Some((challenge, redirect)) = self.codes.remove(&get("code")) else {
                    return oauth(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "AADSTS70008: The provided authorization code or refresh token has expired.",
                    );
                };
                if b64url_sha256(&get("code_verifier")) != challenge {
                    return oauth(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "AADSTS501481: The Code_Verifier does not match the code_challenge.",
                    );
                }
                if get("redirect_uri") != redirect {
                    self.violations
                        .push(format!("redirect_uri {}", get("redirect_uri")));
                }
                if !get("scope").contains("offline_access") {
                    self.violations.push("no offline_access".into());
                }
                self.issue("delegated", true)
            }
            "refresh_token" => {
                let rt = get("refresh_token");
                match self.refresh_tokens.iter().position(|t| *t == rt) {
                    Some(i) => {
                        self.refresh_tokens.remove(i);
                        self.issue("delegated", true)
                    }
                    None => oauth(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "AADSTS700082: The refresh token has expired.",
                    ),
                }
            }
            other => oauth(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant {other}"),
            ),
        }
    }

    fn exists_folder(&self, drive: &str, path: &str) -> bool {
        path.is_empty()
            || matches!(
                self.items.get(&(drive.to_string(), path.to_string())),
                Some(Node::Folder)
            )
    }

    fn item_json(&self, drive: &str, path: &str) -> Option<Value> {
        let name = path.rsplit('/').next().unwrap_or("");
        match self.items.get(&(drive.to_string(), path.to_string()))? {
            Node::Folder => Some(json!({"name": name, "folder": {"childCount": 0}})),
            Node::File(b) => Some(json!({"name": name, "size": b.len(), "file": {}})),
        }
    }

    fn graph(
        &mut self,
        method: &Method,
        path: &str,
        query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response {
        self.request_times.push(Instant::now());
        self.requests.push((method.to_string(), path.to_string()));
        if self.throttle_api > 0 {
            self.throttle_api -= 1;
            self.throttled_at.push(Instant::now());
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", self.retry_after_secs.to_string())],
                axum::Json(
                    json!({"error": {"code": "activityLimitReached", "message": "throttled"}}),
                ),
            )
                .into_response();
        }
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let Some(kind) = self.access_tokens.get(token).copied() else {
            self.unauthorized += 1;
            return graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Access token has expired or is not yet valid.",
            );
        };
        let rest = path.strip_prefix("/v1.0").unwrap_or(path);
        let (drive, rest) = if let Some(r) = rest.strip_prefix("/me/drive") {
            if kind != "delegated" {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "/me request is only valid with delegated authentication flow.",
                );
            }
            ("me".to_string(), r)
        } else if let Some(r) = rest.strip_prefix("/users/") {
            let (u, r) = r.split_once('/').unwrap_or((r, ""));
            let Some(r) = r.strip_prefix("drive") else {
                return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "no drive");
            };
            if decode(u) != UPN {
                return graph_error(StatusCode::NOT_FOUND, "itemNotFound", "user not found");
            }
            (format!("user:{}", decode(u)), r)
        } else if let Some(r) = rest.strip_prefix("/sites/") {
            let (s, r) = r.split_once('/').unwrap_or((r, ""));
            let Some(r) = r.strip_prefix("drive") else {
                return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "no drive");
            };
            (format!("site:{}", decode(s)), r)
        } else {
            return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "unknown resource");
        };
        // "/root" ["/children"] or "/root:/{path}:" ["/children" | "/content" | "/createUploadSession"]
        let (item, action) = if let Some(r) = rest.strip_prefix("/root:/") {
            let idx = r.rfind(':').unwrap_or(r.len());
            (
                decode(&r[..idx]),
                r.get(idx + 1..).unwrap_or("").to_string(),
            )
        } else if let Some(r) = rest.strip_prefix("/root") {
            (String::new(), r.to_string())
        } else {
            return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "not by path");
        };
        let parent = item
            .rsplit_once('/')
            .map(|(p, _)| p)
            .unwrap_or("")
            .to_string();
        match (method.as_str(), action.as_str()) {
            ("GET", "") => match self.item_json(&drive, &item) {
                Some(j) => axum::Json(j).into_response(),
                None => graph_error(
                    StatusCode::NOT_FOUND,
                    "itemNotFound",
                    "The resource could not be found.",
                ),
            },
            ("DELETE", "") => match self.items.get(&(drive.clone(), item.clone())) {
                // Like Graph: 204 for a file (it goes to the recycle bin), 404 when missing.
                Some(Node::File(_)) => {
                    self.items.remove(&(drive, item));
                    StatusCode::NO_CONTENT.into_response()
                }
                Some(Node::Folder) => {
                    self.violations.push(format!("folder {item} deleted"));
                    StatusCode::NO_CONTENT.into_response()
                }
                None => graph_error(StatusCode::NOT_FOUND, "itemNotFound", "no such item"),
            },
            ("GET", "/content") => match self.items.get(&(drive.clone(), item.clone())) {
                Some(Node::File(_)) => {
                    // Like Graph: a redirect to a pre-authenticated download URL.
                    self.next_id += 1;
                    let id = format!("d{}", self.next_id);
                    self.downloads.insert(id.clone(), (drive, item));
                    (
                        StatusCode::FOUND,
                        [("location", format!("{}/download/{id}", self.base))],
                    )
                        .into_response()
                }
                _ => graph_error(StatusCode::NOT_FOUND, "itemNotFound", "no such file"),
            },
            ("POST", "/children") => {
                let j: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                if j["@microsoft.graph.conflictBehavior"] != "fail" || !j["folder"].is_object() {
                    self.violations.push(format!("folder create body {j}"));
                }
                if !self.exists_folder(&drive, &item) {
                    return graph_error(StatusCode::NOT_FOUND, "itemNotFound", "parent missing");
                }
                let name = j["name"].as_str().unwrap_or("").to_string();
                let path = if item.is_empty() {
                    name
                } else {
                    format!("{item}/{name}")
                };
                let key = (drive.clone(), path.clone());
                if self.items.contains_key(&key) {
                    return graph_error(
                        StatusCode::CONFLICT,
                        "nameAlreadyExists",
                        "The specified item name already exists.",
                    );
                }
                self.items.insert(key, Node::Folder);
                (
                    StatusCode::CREATED,
                    axum::Json(self.item_json(&drive, &path).unwrap()),
                )
                    .into_response()
            }
            ("PUT", "/content") => {
                if !query.contains("conflictBehavior=fail") {
                    self.violations.push(format!(
                        "simple upload without conflictBehavior=fail: {query}"
                    ));
                }
                if body.len() > 4 * 1024 * 1024 {
                    self.violations
                        .push(format!("simple upload of {} bytes", body.len()));
                    return graph_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "BadRequest",
                        "too large for simple upload",
                    );
                }
                if !self.exists_folder(&drive, &parent) {
                    return graph_error(
                        StatusCode::NOT_FOUND,
                        "itemNotFound",
                        "parent folder missing (fake requires folders)",
                    );
                }
                let key = (drive.clone(), item.clone());
                if self.items.contains_key(&key) {
                    return graph_error(
                        StatusCode::CONFLICT,
                        "nameAlreadyExists",
                        "The specified item name already exists.",
                    );
                }
                self.items.insert(key, Node::File(body.to_vec()));
                (
                    StatusCode::CREATED,
                    axum::Json(self.item_json(&drive, &item).unwrap()),
                )
                    .into_response()
            }
            ("POST", "/createUploadSession") => {
                let j: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                if j["item"]["@microsoft.graph.conflictBehavior"] != "fail" {
                    self.violations.push(format!("upload session body {j}"));
                }
                if !self.exists_folder(&drive, &parent) {
                    return graph_error(
                        StatusCode::NOT_FOUND,
                        "itemNotFound",
                        "parent folder missing",
                    );
                }
                if self.items.contains_key(&(drive.clone(), item.clone())) {
                    return graph_error(
                        StatusCode::CONFLICT,
                        "nameAlreadyExists",
                        "The specified item name already exists.",
                    );
                }
                self.next_id += 1;
                let sid = format!("s{}", self.next_id);
                self.sessions.insert(
                    sid.clone(),
                    Session {
                        drive,
                        path: item,
                        size: 0,
                        received: Vec::new(),
                    },
                );
                axum::Json(json!({
                    "uploadUrl": format!("{}/upload/{sid}?tempauth=secret-ish", self.base),
                    "expirationDateTime": "2030-01-01T00:00:00Z",
                    "nextExpectedRanges": ["0-"]
                }))
                .into_response()
            }
            _ => graph_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("{method} {action}"),
            ),
        }
    }

    fn upload(&mut self, method: &Method, sid: &str, headers: &HeaderMap, body: &[u8]) -> Response {
        self.request_times.push(Instant::now());
        if headers.contains_key("authorization") {
            self.violations
                .push("bearer token sent to the upload URL".into());
        }
        if self.throttle_upload > 0 && method == Method::PUT {
            self.throttle_upload -= 1;
            self.throttled_at.push(Instant::now());
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", self.retry_after_secs.to_string())],
                "busy",
            )
                .into_response();
        }
        let Some(s) = self.sessions.get_mut(sid) else {
            return graph_error(StatusCode::NOT_FOUND, "itemNotFound", "no such session");
        };
        match method.as_str() {
            "DELETE" => {
                self.sessions.remove(sid);
                StatusCode::NO_CONTENT.into_response()
            }
            "GET" => axum::Json(json!({"nextExpectedRanges": [format!("{}-", s.received.len())]}))
                .into_response(),
            "PUT" => {
                let range = headers
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let parsed = range.strip_prefix("bytes ").and_then(|r| {
                    let (se, total) = r.split_once('/')?;
                    let (a, b) = se.split_once('-')?;
                    Some((
                        a.parse::<usize>().ok()?,
                        b.parse::<usize>().ok()?,
                        total.parse::<usize>().ok()?,
                    ))
                });
                let Some((start, end, total)) = parsed else {
                    self.violations.push(format!("bad Content-Range {range:?}"));
                    return graph_error(StatusCode::BAD_REQUEST, "invalidRange", "bad range");
                };
                self.chunks.push((start, end, total, body.len()));
                if s.size == 0 {
                    s.size = total;
                }
                let mut slip = Vec::new();
                if start != s.received.len() {
                    slip.push(format!(
                        "chunk starts at {start}, expected {}",
                        s.received.len()
                    ));
                }
                if end + 1 - start != body.len() {
                    slip.push(format!("range {range} but {} bytes", body.len()));
                }
                if total != s.size {
                    slip.push(format!("total {total} != {}", s.size));
                }
                if end + 1 < total && !body.len().is_multiple_of(CHUNK_UNIT) {
                    slip.push(format!(
                        "non-final chunk of {} bytes is no multiple of 320 KiB",
                        body.len()
                    ));
                }
                if body.len() > 60 * 1024 * 1024 {
                    slip.push("chunk over 60 MiB".into());
                }
                if !slip.is_empty() {
                    self.violations.extend(slip);
                    return graph_error(StatusCode::RANGE_NOT_SATISFIABLE, "invalidRange", "range");
                }
                s.received.extend_from_slice(body);
                if s.received.len() < s.size && self.lose_chunk_answer {
                    self.lose_chunk_answer = false;
                    return graph_error(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "invalidRange",
                        "The uploaded fragment overlaps with data that has already been received.",
                    );
                }
                if s.received.len() < s.size {
                    return (
                        StatusCode::ACCEPTED,
                        axum::Json(json!({"expirationDateTime": "2030-01-01T00:00:00Z", "nextExpectedRanges": [format!("{}-", s.received.len())]})),
                    )
                        .into_response();
                }
                let s = self.sessions.remove(sid).unwrap();
                let key = (s.drive.clone(), s.path.clone());
                if self.items.contains_key(&key) {
                    return graph_error(
                        StatusCode::CONFLICT,
                        "nameAlreadyExists",
                        "The specified item name already exists.",
                    );
                }
                self.items.insert(key, Node::File(s.received));
                (
                    StatusCode::CREATED,
                    axum::Json(self.item_json(&s.drive, &s.path).unwrap()),
                )
                    .into_response()
            }
            _ => graph_error(StatusCode::METHOD_NOT_ALLOWED, "BadRequest", "method"),
        }
    }
}

async fn handle(State(fake): State<Shared>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let mut f = fake.lock().unwrap();
    if let Some(rest) = path
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix("/oauth2/v2.0/token"))
    {
        return f.token(rest, &body);
    }
    if let Some(id) = path.strip_prefix("/download/") {
        return match f
            .downloads
            .remove(id)
            .and_then(|k| f.items.get(&k).cloned())
        {
            Some(Node::File(b)) => b.into_response(),
            _ => (StatusCode::NOT_FOUND, "gone").into_response(),
        };
    }
    if let Some(sid) = path.strip_prefix("/upload/") {
        return f.upload(&method, sid, &headers, &body);
    }
    if path.starts_with("/v1.0/") {
        return f.graph(&method, &path, &decode(&query), &headers, &body);
    }
    (StatusCode::NOT_FOUND, Body::from("unknown")).into_response()
}

/// The fake Graph and identity platform, serving on 127.0.0.1.
struct FakeGraph {
    state: Shared,
    base: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGraph {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeGraph {
    async fn start() -> FakeGraph {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(Fake {
            base: base.clone(),
            token_lifetime: 3600,
            retry_after_secs: 1,
            ..Fake::default()
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeGraph { state, base, task }
    }

    fn fake(&self) -> std::sync::MutexGuard<'_, Fake> {
        self.state.lock().unwrap()
    }

    fn file(&self, drive: &str, path: &str) -> Option<Vec<u8>> {
        match self
            .fake()
            .items
            .get(&(drive.to_string(), path.to_string()))
        {
            Some(Node::File(b)) => Some(b.clone()),
            _ => None,
        }
    }

    /// Asserts that `folder` on `drive` holds every file of `files` with the same bytes.
    fn assert_holds(&self, drive: &str, folder: &str, files: &[(String, Vec<u8>)]) {
        for (name, bytes) in files {
            let got = self
                .file(drive, &format!("{folder}/{name}"))
                .unwrap_or_else(|| panic!("{folder}/{name} missing on {drive}"));
            assert!(
                got == *bytes,
                "{folder}/{name} differs on {drive} ({} vs {} bytes)",
                got.len(),
                bytes.len()
            );
        }
    }

    fn assert_no_violations(&self) {
        let v = self.fake().violations.clone();
        assert!(v.is_empty(), "protocol slips: {v:#?}");
    }

    /// Secrets for an app-only target on this server.
    fn app_secret(&self, client_secret: &str) -> TargetSecret {
        let mut s = TargetSecret::default();
        s.cloud.tenant = Some(TENANT.into());
        s.cloud.client_id = Some(CLIENT_ID.into());
        s.cloud.client_secret = Some(client_secret.into());
        s.cloud.login_host = Some(self.base.clone());
        s.cloud.graph_host = Some(self.base.clone());
        s
    }

    /// Secrets for a delegated target on this server.
    fn delegated_secret(&self) -> TargetSecret {
        let mut s = TargetSecret::default();
        s.cloud.client_id = Some(CLIENT_ID.into());
        s.cloud.login_host = Some(self.base.clone());
        s.cloud.graph_host = Some(self.base.clone());
        s
    }
}

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

    // Same names and sizes as set 0 but other bytes (another instance's keys sign
    // differently): the content is read back and compared, and the upload refused.
    let other = make_sets(&work.path().join("other"), 1);
    assert_eq!(other[0].set.base_name, made[0].set.base_name);
    let err = target.put(&upload_set(&other[0])).await.unwrap_err();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onedrive_wrong_client_secret_is_a_clear_error_and_the_set_stays_until_fixed() {
    let graph = FakeGraph::start().await;
    let work = tempfile::tempdir().unwrap();
    let made = make_sets(work.path(), 1);
    let m = &made[0];
    let url = format!("onedrive://{UPN}/Rec/$Y/$M");
    let data = work.path().join("data");
    {
        let mut secrets = Secrets::new();
        secrets.insert(url.clone(), graph.app_secret("not-the-secret"));
        let db = Db::open_in(&data).unwrap();
        let spool = Spool::start(fast_spool(&data), db.clone(), secrets, None).unwrap();
        spool.enqueue(&m.set, std::slice::from_ref(&url)).unwrap();
        assert!(
            eventually(Duration::from_secs(30), || {
                db.flush();
                !db.attempts(&m.set.base_name).unwrap().is_empty()
            })
            .await
        );
        let err = db.attempts(&m.set.base_name).unwrap()[0]
            .error
            .clone()
            .unwrap();
        assert!(
            err.contains("login refused")
                && err.contains("invalid_client")
                && err.contains("client_id"),
            "clear error: {err}"
        );
        assert!(
            !err.contains("not-the-secret"),
            "the secret is not in the error: {err}"
        );
        assert_eq!(spool.pending().len(), 1, "the set stays in the spool");
    }
    let mut secrets = Secrets::new();
    secrets.insert(url.clone(), graph.app_secret(CLIENT_SECRET));
    let db = Db::open_in(&data).unwrap();
    let spool = Spool::start(fast_spool(&data), db.clone(), secrets, None).unwrap();
    assert!(
        spool.wait_empty(Duration::from_secs(60)).await,
        "{:?}",
        spool.pending()
    );
    graph.assert_holds(&format!("user:{UPN}"), "Rec/2026/03", &m.contents);
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
