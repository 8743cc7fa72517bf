//! The fake PBX's REST routes as the STARFACE spec has them: login (nonce,
//! login for `Internal` and `ActiveDirectory`, logout), users, groups, one group,
//! phone numbers and a user's phone number assignments. Error answers use only the
//! documented codes: 400 for a failed login, 500 for anything unexpected (an
//! unknown id), 401 for a missing or expired token.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};

use super::*;

async fn login_get(State(pbx): State<Arc<Pbx>>) -> Response {
    // The spec's example client asks for the nonce without X-Version: not checked here.
    pbx.requests.lock().unwrap().push("GET /login".into());
    let nonce = random_hex();
    pbx.nonces.lock().unwrap().insert(nonce.clone());
    let kind = if pbx.active_directory.load(Ordering::SeqCst) {
        "ActiveDirectory"
    } else {
        "Internal"
    };
    // `secret` is a string in the spec: absent, never null.
    Json(json!({ "loginType": kind, "nonce": nonce })).into_response()
}

fn login_failed() -> Response {
    // The spec names AuthToken as the body of the 400.
    (StatusCode::BAD_REQUEST, Json(json!({ "token": "" }))).into_response()
}

async fn login_post(
    State(pbx): State<Arc<Pbx>>,
    h: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    pbx.requests.lock().unwrap().push("POST /login".into());
    pbx.check_version(&h, "POST /login");
    let nonce = body["nonce"].as_str().unwrap_or_default().to_string();
    let ad = pbx.active_directory.load(Ordering::SeqCst);
    let kind = if ad { "ActiveDirectory" } else { "Internal" };
    if body["loginType"] != kind || !pbx.nonces.lock().unwrap().remove(&nonce) {
        return login_failed();
    }
    let want = if ad {
        base64::engine::general_purpose::STANDARD.encode(format!("{LOGIN_ID}{nonce}{PASSWORD}"))
    } else {
        format!(
            "{LOGIN_ID}:{}",
            sha512_hex(&format!("{LOGIN_ID}{nonce}{}", sha512_hex(PASSWORD)))
        )
    };
    if body["secret"].as_str() != Some(want.as_str()) {
        return login_failed();
    }
    let token = random_hex();
    pbx.tokens.lock().unwrap().insert(token.clone());
    pbx.logins.fetch_add(1, Ordering::SeqCst);
    Json(json!({ "token": token })).into_response()
}

/// 204 whether or not the token was live, as the spec documents.
async fn login_delete(State(pbx): State<Arc<Pbx>>, h: HeaderMap) -> Response {
    pbx.requests.lock().unwrap().push("DELETE /login".into());
    pbx.check_version(&h, "DELETE /login");
    if let Some(t) = h.get("authToken").and_then(|v| v.to_str().ok()) {
        if pbx.tokens.lock().unwrap().remove(t) {
            pbx.logouts.fetch_add(1, Ordering::SeqCst);
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

fn answer(pbx: &Pbx, name: &str) -> Response {
    match pbx.fixture(name) {
        Some(v) => Json(v).into_response(),
        None => status(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

async fn users(State(pbx): State<Arc<Pbx>>, h: HeaderMap) -> Response {
    pbx.authorize(&h, "GET /users")
        .unwrap_or_else(|| answer(&pbx, "users.json"))
}

async fn groups(State(pbx): State<Arc<Pbx>>, h: HeaderMap) -> Response {
    pbx.authorize(&h, "GET /groups")
        .unwrap_or_else(|| answer(&pbx, "groups.json"))
}

async fn group(State(pbx): State<Arc<Pbx>>, h: HeaderMap, UrlPath(id): UrlPath<u64>) -> Response {
    pbx.authorize(&h, &format!("GET /groups/{id}"))
        .unwrap_or_else(|| answer(&pbx, &format!("group_{id}.json")))
}

async fn phonenumbers(State(pbx): State<Arc<Pbx>>, h: HeaderMap) -> Response {
    pbx.authorize(&h, "GET /phonenumbers")
        .unwrap_or_else(|| answer(&pbx, "phonenumbers.json"))
}

/// `PhoneNumberAssignment`s of one user: from `phonenumbers.json` unless replaced.
async fn user_numbers(
    State(pbx): State<Arc<Pbx>>,
    h: HeaderMap,
    UrlPath(id): UrlPath<u64>,
) -> Response {
    let what = format!("GET /users/{id}/phonenumberconfig/phonenumbers/");
    if let Some(r) = pbx.authorize(&h, &what) {
        return r;
    }
    let known = pbx.fixture("users.json").unwrap_or_default();
    if !known
        .as_array()
        .is_some_and(|a| a.iter().any(|u| u["id"] == id))
    {
        return status(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let ids: Vec<u64> = match pbx.user_routes.lock().unwrap().get(&id) {
        Some(ids) => ids.clone(),
        None => pbx
            .fixture("phonenumbers.json")
            .unwrap_or_default()
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["assignedUserAccountId"] == id)
            .filter_map(|n| n["id"].as_u64())
            .collect(),
    };
    let list: Vec<Value> = ids
        .into_iter()
        .map(|n| json!({ "accountId": id, "phoneNumberId": n, "serviceId": 0 }))
        .collect();
    Json(list).into_response()
}

pub fn router(pbx: Arc<Pbx>) -> Router {
    Router::new()
        .route(
            "/rest/login",
            get(login_get).post(login_post).delete(login_delete),
        )
        .route("/rest/users", get(users))
        .route(
            "/rest/users/{id}/phonenumberconfig/phonenumbers/",
            get(user_numbers),
        )
        .route("/rest/groups", get(groups))
        .route("/rest/groups/{id}", get(group))
        .route("/rest/phonenumbers", get(phonenumbers))
        .with_state(pbx)
}
