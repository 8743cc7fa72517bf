//! A fake STARFACE PBX for the directory tests (axum on 127.0.0.1), shaped after
//! the published STARFACE REST spec 6.7.0.22: every field name and type as there,
//! only documented status codes; where the fake can see a client slip the spec
//! does not answer with an error (a missing `X-Version: 2`), it records it in
//! `violations`, which the tests assert empty. The directory comes from
//! testdata/rest/ (a test may replace a fixture in `fixtures`). This file holds
//! the state and the server start; the REST routes are in `routes.rs`. Further
//! route files build their own `Router` from `Arc<Pbx>` and are merged in `app()`.

#![allow(dead_code)]

pub mod client;
pub mod keys;
mod routes;
pub mod schema;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rand::Rng;
use serde_json::Value;
use sha2::{Digest, Sha512};

pub const LOGIN_ID: &str = "0001";
pub const PASSWORD: &str = "s3cret-Pbx";

pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// State of the fake PBX.
#[derive(Default)]
pub struct Pbx {
    pub nonces: Mutex<HashSet<String>>,
    pub tokens: Mutex<HashSet<String>>,
    /// The REST user is an Active Directory user (`loginType: ActiveDirectory`).
    pub active_directory: AtomicBool,
    /// Successful logins.
    pub logins: AtomicU32,
    /// `DELETE /login` requests that ended a live token.
    pub logouts: AtomicU32,
    /// Requests that carried a valid token.
    pub authorized: AtomicU32,
    /// Revoke every token when the authorized request counter reaches this (0 = never).
    pub expire_at: AtomicU32,
    /// The users' function key sets.
    pub keys: keys::Keys,
    /// Answer 401 once when the authorized request counter reaches this, without
    /// revoking the token (a refusal the client cannot tell from expiry).
    pub refuse_at: AtomicU32,
    /// Replacement answers by fixture file name (`users.json`, …).
    pub fixtures: Mutex<HashMap<String, Value>>,
    /// Phone number ids the per-user route answers, instead of those derived
    /// from `phonenumbers.json`.
    pub user_routes: Mutex<HashMap<u64, Vec<u64>>>,
    /// (method path) of every request.
    pub requests: Mutex<Vec<String>>,
    /// Client slips the spec gives no error code for.
    pub violations: Mutex<Vec<String>>,
}

pub fn sha512_hex(s: &str) -> String {
    hex::encode(Sha512::digest(s.as_bytes()))
}

pub fn random_hex() -> String {
    let bytes: [u8; 16] = rand::thread_rng().gen();
    hex::encode(bytes)
}

/// An error answer without a body (the spec gives none for these).
pub fn status(code: StatusCode) -> Response {
    code.into_response()
}

impl Pbx {
    /// Record a missing `X-Version: 2` on `what`.
    pub fn check_version(&self, h: &HeaderMap, what: &str) {
        if h.get("X-Version").and_then(|v| v.to_str().ok()) != Some("2") {
            self.violations
                .lock()
                .unwrap()
                .push(format!("{what} without X-Version: 2"));
        }
    }

    /// The rejection for a request without a valid token, if any: 401, the code
    /// a STARFACE answers then (the spec's own example client re-authenticates
    /// on it).
    pub fn authorize(&self, h: &HeaderMap, what: &str) -> Option<Response> {
        self.requests.lock().unwrap().push(what.to_string());
        self.check_version(h, what);
        let n = self.authorized.load(Ordering::SeqCst) + 1;
        if self.expire_at.load(Ordering::SeqCst) == n {
            self.expire_at.store(0, Ordering::SeqCst);
            self.tokens.lock().unwrap().clear();
        }
        if self.refuse_at.load(Ordering::SeqCst) == n {
            self.refuse_at.store(0, Ordering::SeqCst);
            return Some(status(StatusCode::UNAUTHORIZED));
        }
        let token = h.get("authToken").and_then(|v| v.to_str().ok());
        match token {
            Some(t) if self.tokens.lock().unwrap().contains(t) => {
                self.authorized.fetch_add(1, Ordering::SeqCst);
                None
            }
            _ => Some(status(StatusCode::UNAUTHORIZED)),
        }
    }

    /// The JSON of a fixture file (or its replacement).
    pub fn fixture(&self, name: &str) -> Option<Value> {
        if let Some(v) = self.fixtures.lock().unwrap().get(name) {
            return Some(v.clone());
        }
        let text = std::fs::read_to_string(testdata().join("rest").join(name)).ok()?;
        Some(serde_json::from_str(&text).unwrap())
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }
}

/// Every route of the fake. A new route file adds one `.merge(file::router(pbx.clone()))`.
pub fn app(pbx: Arc<Pbx>) -> Router {
    Router::new()
        .merge(routes::router(pbx.clone()))
        .merge(keys::router(pbx))
}

/// Serve the fake PBX on `addr` (port 0: any); returns the address and the server task.
pub async fn serve(pbx: Arc<Pbx>, addr: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app(pbx)).await.unwrap();
    });
    (addr, task)
}
