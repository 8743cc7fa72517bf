//! A Graph-compatible server for the OneDrive tests (axum on 127.0.0.1): the
//! identity platform's token endpoint and the drive API, stricter than Graph where
//! that tests our client (see tests/storage_onedrive.rs); every protocol slip is
//! recorded in `violations`. The request handling of the fake is in `api.rs`.

#![allow(dead_code)]

mod api;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use callrec::storage::TargetSecret;
use serde_json::json;

pub const TENANT: &str = "contoso-tenant-id";
pub const CLIENT_ID: &str = "app-client-id";
pub const CLIENT_SECRET: &str = "the-right-client-secret";
pub const UPN: &str = "rec@contoso.example";
/// The display name of every drive's owner.
pub const OWNER_NAME: &str = "Recording Account";
pub const SITE: &str = "contoso.sharepoint.com,1111,2222";
pub const CHUNK_UNIT: usize = 320 * 1024;

/// One file or folder on the fake drive.
#[derive(Clone)]
pub enum Node {
    Folder,
    File(Vec<u8>),
}

pub struct Session {
    pub drive: String,
    pub path: String,
    pub size: usize,
    pub received: Vec<u8>,
}

/// What the fake Graph knows and saw.
#[derive(Default)]
pub struct Fake {
    pub base: String,
    pub token_lifetime: i64,
    /// code → (PKCE challenge, redirect URI)
    pub codes: HashMap<String, (String, String)>,
    pub refresh_tokens: Vec<String>,
    /// access token → "app" | "delegated"
    pub access_tokens: HashMap<String, &'static str>,
    pub next_id: u64,
    /// grant types in order
    pub grants: Vec<String>,
    /// (drive, path) → node
    pub items: BTreeMap<(String, String), Node>,
    pub sessions: HashMap<String, Session>,
    /// download id → (drive, path)
    pub downloads: HashMap<String, (String, String)>,
    /// (start, end inclusive, total, body length)
    pub chunks: Vec<(usize, usize, usize, usize)>,
    /// (method, path) of every Graph API request
    pub requests: Vec<(String, String)>,
    pub unauthorized: usize,
    pub throttle_api: usize,
    pub throttle_upload: usize,
    /// keep the next non-final chunk but answer 416, as for a chunk whose answer was lost and that is sent again
    pub lose_chunk_answer: bool,
    pub retry_after_secs: u64,
    /// times of throttled answers and of every request after them
    pub throttled_at: Vec<Instant>,
    pub request_times: Vec<Instant>,
    pub violations: Vec<String>,
}

pub type Shared = Arc<Mutex<Fake>>;

pub fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

pub fn form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

pub fn decode(s: &str) -> String {
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

pub fn b64url_sha256(s: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(s.as_bytes()))
}

pub async fn handle(State(fake): State<Shared>, req: Request) -> Response {
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
pub struct FakeGraph {
    pub state: Shared,
    pub base: String,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGraph {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeGraph {
    pub async fn start() -> FakeGraph {
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

    pub fn fake(&self) -> std::sync::MutexGuard<'_, Fake> {
        self.state.lock().unwrap()
    }

    pub fn file(&self, drive: &str, path: &str) -> Option<Vec<u8>> {
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
    pub fn assert_holds(&self, drive: &str, folder: &str, files: &[(String, Vec<u8>)]) {
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

    pub fn assert_no_violations(&self) {
        let v = self.fake().violations.clone();
        assert!(v.is_empty(), "protocol slips: {v:#?}");
    }

    /// Secrets for an app-only target on this server.
    pub fn app_secret(&self, client_secret: &str) -> TargetSecret {
        let mut s = TargetSecret::default();
        s.cloud.tenant = Some(TENANT.into());
        s.cloud.client_id = Some(CLIENT_ID.into());
        s.cloud.client_secret = Some(client_secret.into());
        s.cloud.login_host = Some(self.base.clone());
        s.cloud.graph_host = Some(self.base.clone());
        s
    }

    /// Secrets for a delegated target on this server.
    pub fn delegated_secret(&self) -> TargetSecret {
        let mut s = TargetSecret::default();
        s.cloud.client_id = Some(CLIENT_ID.into());
        s.cloud.login_host = Some(self.base.clone());
        s.cloud.graph_host = Some(self.base.clone());
        s
    }
}
