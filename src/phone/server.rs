//! The phone listener: `GET /phone/<token>/recording/{login|logout|toggle}`
//! answers a short plain text the phone's display can show and switches the
//! member in every group she is assigned to, in the same membership state
//! the admin API and the console switch. Anything else, and an unknown
//! token, gets the same bare 404; wrong tokens are counted per address and
//! guessing is throttled. Tokens appear in logs only as `keys::log_name`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::keys;
use crate::b2bua::Core;
use crate::console::auth::{Auth, FAIL_WINDOW};

struct Phone {
    core: Arc<Core>,
    /// Wrong tokens per address (the console's failed-login record, keyed by address).
    guesses: Auth,
}

/// Serves the phone links on `addr` until the process ends.
pub async fn serve(core: Arc<Core>, addr: SocketAddr) -> std::io::Result<()> {
    if core.db.is_none() || core.planner.is_none() {
        tracing::warn!(
            "phone listener without protocol database or directory: every link answers 404"
        );
    }
    let state = Arc::new(Phone {
        core,
        guesses: Auth::new(FAIL_WINDOW),
    });
    let app = Router::new()
        .route("/phone/{token}/recording/{action}", get(key))
        .fallback(|| async { not_found() })
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot bind the phone listener on {addr}: {e}"),
        )
    })?;
    tracing::info!("phone recording keys on http://{addr}");
    tokio::spawn(crate::http_serve::serve(listener, app, Vec::new()));
    Ok(())
}

fn text(code: StatusCode, body: String) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The one answer for every path and token that is not right: no hint.
fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "Not found.\n".into())
}

/// The throttle's key for an address (one wrong link counts against the address only).
fn guesser(addr: &SocketAddr) -> String {
    format!("phone-link@{}", addr.ip())
}

async fn key(
    State(p): State<Arc<Phone>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((token, action)): Path<(String, String)>,
) -> Response {
    let who = guesser(&peer);
    if let Some(wait) = p.guesses.throttled(&who, peer.ip()) {
        tracing::warn!(addr = %peer.ip(), key = %keys::log_name(&token), "phone key: refused, too many wrong links from this address; allowed again in {} s", wait.as_secs() + 1);
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many wrong links. Try later.\n".into(),
        );
    }
    let (Some(db), Some(planner)) = (p.core.db.clone(), p.core.planner.as_ref()) else {
        return not_found();
    };
    let t = token.clone();
    let member = tokio::task::spawn_blocking(move || keys::member_of(&db, &t)).await;
    let uid = match member {
        Ok(Ok(Some(u))) => u,
        Ok(Ok(None)) => {
            p.guesses.failed(&who, peer.ip());
            tracing::warn!(addr = %peer.ip(), key = %keys::log_name(&token), "phone key: unknown link refused");
            return not_found();
        }
        Ok(Err(e)) => return failed(e.to_string()),
        Err(e) => return failed(e.to_string()),
    };
    let dir = planner.directory().current();
    let Some(user) = dir.user(uid) else {
        tracing::warn!(user = uid, key = %keys::log_name(&token), "phone key: the member is no longer in the directory; refused");
        return not_found();
    };
    let groups: Vec<_> = dir.groups().iter().filter(|g| g.has_member(uid)).collect();
    let store = planner.membership();
    let out = store.snapshot();
    let login = match action.as_str() {
        "login" => true,
        "logout" => false,
        "toggle" => groups.iter().all(|g| out.is_logged_out(g.id, uid)),
        _ => return not_found(),
    };
    if groups.is_empty() {
        tracing::warn!(member = %user.login, user = uid, key = %keys::log_name(&token), "phone key: the member is in no group; nothing switched");
        return text(StatusCode::FORBIDDEN, "Not in a group.\n".into());
    }
    // Every group switched is in the access log, also when a later one fails.
    let mut switched = Vec::new();
    let mut failure = None;
    for g in &groups {
        let r = if login {
            store.login(g.id, uid)
        } else {
            store.logout(g.id, uid)
        };
        match r {
            Ok(_) => switched.push(g.name.as_str()),
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    let names = switched.join(", ");
    if let (Some(db), false) = (p.core.db.clone(), switched.is_empty()) {
        let entry = crate::access_log::AccessEntry::membership(
            format!("phone:{}", user.login),
            &user.login,
            &format!("groups {names}"),
            login,
            "phone link",
        );
        match tokio::task::spawn_blocking(move || crate::access_log::record_sync(&db, entry)).await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return failed(format!(
                    "switched, but the access log could not be written: {e}"
                ))
            }
            Err(e) => return failed(e.to_string()),
        }
    }
    if let Some(e) = failure {
        return failed(e);
    }
    let state = if login { "ON" } else { "OFF" };
    tracing::info!(member = %user.login, user = uid, groups = %names, action = %action, addr = %peer.ip(), key = %keys::log_name(&token), "phone key: recording {state}");
    text(StatusCode::OK, format!("Recording {state}: {names}\n"))
}

fn failed(e: String) -> Response {
    tracing::error!(error = %e, "phone key request failed");
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Error; see the log.\n".into(),
    )
}
