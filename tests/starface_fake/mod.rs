//! A fake STARFACE PBX for the directory tests (axum on 127.0.0.1): nonce login
//! checked with SHA-512, `authToken` required (401 when missing or expired),
//! `X-Version: 2` required, the directory answered from testdata/rest/.
//! This file holds the state and the server start; the REST routes are in
//! `routes.rs`. Further route files build their own `Router` from `Arc<Pbx>` and
//! are merged in `app()` below.

#![allow(dead_code)]

pub mod keys;
mod routes;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use rand::Rng;
use serde_json::json;
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
    /// Successful logins.
    pub logins: AtomicU32,
    /// Requests that carried a valid token.
    pub authorized: AtomicU32,
    /// Revoke every token when the authorized request counter reaches this (0 = never).
    pub expire_at: AtomicU32,
    /// The users' function key sets.
    pub keys: keys::Keys,
}

pub fn sha512_hex(s: &str) -> String {
    hex::encode(Sha512::digest(s.as_bytes()))
}

pub fn random_hex() -> String {
    let bytes: [u8; 16] = rand::thread_rng().gen();
    hex::encode(bytes)
}

pub fn error(status: StatusCode, msg: &str) -> Response {
    (
        status,
        Json(json!({ "code": status.as_u16(), "message": msg })),
    )
        .into_response()
}

/// The rejection for a request without `X-Version: 2`, if any.
pub fn check_version(h: &HeaderMap) -> Option<Response> {
    match h.get("X-Version").and_then(|v| v.to_str().ok()) {
        Some("2") => None,
        _ => Some(error(StatusCode::BAD_REQUEST, "X-Version: 2 required")),
    }
}

impl Pbx {
    /// The rejection (400 or 401) for a request without version or valid token, if any.
    pub fn authorize(&self, h: &HeaderMap) -> Option<Response> {
        if let Some(r) = check_version(h) {
            return Some(r);
        }
        let n = self.authorized.load(Ordering::SeqCst) + 1;
        if self.expire_at.load(Ordering::SeqCst) == n {
            self.expire_at.store(0, Ordering::SeqCst);
            self.tokens.lock().unwrap().clear();
        }
        let token = h.get("authToken").and_then(|v| v.to_str().ok());
        match token {
            Some(t) if self.tokens.lock().unwrap().contains(t) => {
                self.authorized.fetch_add(1, Ordering::SeqCst);
                None
            }
            _ => Some(error(
                StatusCode::UNAUTHORIZED,
                "authToken missing or expired",
            )),
        }
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
