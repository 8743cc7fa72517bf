//! The fake PBX's REST routes: login (nonce, login, logout), users, groups,
//! one group, phone numbers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::*;

async fn login_get(State(pbx): State<Arc<Pbx>>, h: HeaderMap) -> Response {
    if let Some(r) = check_version(&h) {
        return r;
    }
    let nonce = random_hex();
    pbx.nonces.lock().unwrap().insert(nonce.clone());
    Json(json!({ "loginType": "Internal", "nonce": nonce, "secret": null })).into_response()
}

async fn login_post(
    State(pbx): State<Arc<Pbx>>,
    h: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = check_version(&h) {
        return r;
    }
    let nonce = body["nonce"].as_str().unwrap_or_default().to_string();
    if body["loginType"] != "Internal" || !pbx.nonces.lock().unwrap().remove(&nonce) {
        return error(StatusCode::BAD_REQUEST, "unknown nonce");
    }
    let want = format!(
        "{LOGIN_ID}:{}",
        sha512_hex(&format!("{LOGIN_ID}{nonce}{}", sha512_hex(PASSWORD)))
    );
    if body["secret"].as_str() != Some(want.as_str()) {
        return error(StatusCode::BAD_REQUEST, "login failed");
    }
    let token = random_hex();
    pbx.tokens.lock().unwrap().insert(token.clone());
    pbx.logins.fetch_add(1, Ordering::SeqCst);
    Json(json!({ "token": token })).into_response()
}

async fn login_delete(State(pbx): State<Arc<Pbx>>, h: HeaderMap) -> Response {
    if let Some(r) = pbx.authorize(&h) {
        return r;
    }
    if let Some(t) = h.get("authToken").and_then(|v| v.to_str().ok()) {
        pbx.tokens.lock().unwrap().remove(t);
    }
    StatusCode::NO_CONTENT.into_response()
}

fn fixture(name: &str) -> Response {
    let text = std::fs::read_to_string(testdata().join("rest").join(name)).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    Json(v).into_response()
}

async fn users(State(pbx): State<Arc<Pbx>>, h: HeaderMap) -> Response {
    pbx.authorize(&h).unwrap_or_else(|| fixture("users.json"))
}

async fn groups(State(pbx): State<Arc<Pbx>>, h: HeaderMap) -> Response {
    pbx.authorize(&h).unwrap_or_else(|| fixture("groups.json"))
}

async fn group(State(pbx): State<Arc<Pbx>>, h: HeaderMap, UrlPath(id): UrlPath<u64>) -> Response {
    if let Some(r) = pbx.authorize(&h) {
        return r;
    }
    if testdata()
        .join("rest")
        .join(format!("group_{id}.json"))
        .exists()
    {
        fixture(&format!("group_{id}.json"))
    } else {
        error(StatusCode::NOT_FOUND, "no such group")
    }
}

async fn phonenumbers(State(pbx): State<Arc<Pbx>>, h: HeaderMap) -> Response {
    pbx.authorize(&h)
        .unwrap_or_else(|| fixture("phonenumbers.json"))
}

pub fn router(pbx: Arc<Pbx>) -> Router {
    Router::new()
        .route(
            "/rest/login",
            get(login_get).post(login_post).delete(login_delete),
        )
        .route("/rest/users", get(users))
        .route("/rest/groups", get(groups))
        .route("/rest/groups/{id}", get(group))
        .route("/rest/phonenumbers", get(phonenumbers))
        .with_state(pbx)
}
