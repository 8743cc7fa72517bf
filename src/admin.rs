//! The admin HTTP API: health and Prometheus metrics for monitoring, and under
//! `/api/` (bearer token required) the recently finished calls and the group
//! login/logout that a phone's URL key can trigger (DESIGN §5).

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::b2bua::{CallSummary, Core};

/// Shared state of the admin API.
struct Admin {
    core: Arc<Core>,
    token: String,
}

/// Serves the admin API on `addr` until the process ends.
pub async fn serve(core: Arc<Core>, addr: SocketAddr, token: String) -> std::io::Result<()> {
    let state = Arc::new(Admin { core, token });
    let api = Router::new()
        .route("/api/calls/recent", get(recent))
        .route(
            "/api/groups/{group}/members/{user}/{action}",
            get(membership).post(membership),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .merge(api)
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot bind admin API on {addr}: {e}"))
    })?;
    tracing::info!("admin API on http://{addr}");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("admin API stopped: {e}");
        }
    });
    Ok(())
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Compares without an early exit, so the token cannot be guessed by timing.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Accepts `Authorization: Bearer <token>`, or `?token=` for phones whose URL
/// keys cannot set headers.
async fn require_token(
    State(s): State<Arc<Admin>>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
        .or(q.token);
    match given {
        Some(t) if same(t.trim(), &s.token) => next.run(req).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({
                "error": "missing or wrong bearer token; send 'Authorization: Bearer <token>' with the token from --admin-token-file (default <data-dir>/admin.token)"
            })),
        )
            .into_response(),
    }
}

async fn recent(State(s): State<Arc<Admin>>) -> Json<Vec<CallSummary>> {
    let r = s.core.recent.lock().expect("recent calls poisoned");
    Json(r.iter().cloned().collect())
}

/// `login` or `logout` of `user` (login, number or id) in `group` (name, number or id).
async fn membership(
    State(s): State<Arc<Admin>>,
    Path((group, user, action)): Path<(String, String, String)>,
) -> Response {
    let err = |code: StatusCode, msg: String| {
        (code, Json(serde_json::json!({ "error": msg }))).into_response()
    };
    let Some(planner) = &s.core.planner else {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "no recording policy is configured".into(),
        );
    };
    let dir = planner.directory().current();
    let group_id = dir
        .find_group(&group)
        .map(|g| g.id)
        .or_else(|| group.parse().ok());
    let user_id = dir
        .find_user(&user)
        .map(|u| u.id)
        .or_else(|| user.parse().ok());
    let (Some(g), Some(u)) = (group_id, user_id) else {
        return err(
            StatusCode::NOT_FOUND,
            format!("unknown group {group:?} or user {user:?}; use a name, number or id from the directory"),
        );
    };
    let store = planner.membership();
    let result = match action.as_str() {
        "login" => store.login(g, u),
        "logout" => store.logout(g, u),
        _ => {
            return err(
                StatusCode::NOT_FOUND,
                format!("unknown action {action:?}; use login or logout"),
            )
        }
    };
    match result {
        Ok(changed) => {
            tracing::info!(group = g, user = u, action = %action, changed, "group membership switched");
            Json(serde_json::json!({
                "group": g,
                "user": u,
                "active": action == "login",
                "changed": changed,
            }))
            .into_response()
        }
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn metrics(State(s): State<Arc<Admin>>) -> String {
    let core = &s.core;
    let st = &core.stats;
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    };
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    put(
        "callrec_calls_active",
        "gauge",
        "Calls whose dialog is not over.",
        l(&st.calls_active),
    );
    put(
        "callrec_call_tasks",
        "gauge",
        "Call tasks alive, including those absorbing retransmissions.",
        l(&st.call_tasks),
    );
    put(
        "callrec_calls_total",
        "counter",
        "Calls started.",
        l(&st.calls_total),
    );
    put(
        "callrec_calls_answered_total",
        "counter",
        "Calls answered.",
        l(&st.calls_answered),
    );
    put(
        "callrec_sip_received_total",
        "counter",
        "SIP messages received.",
        l(&st.sip_received),
    );
    put(
        "callrec_sip_malformed_total",
        "counter",
        "SIP messages that could not be parsed.",
        l(&st.sip_malformed),
    );
    put(
        "callrec_rtp_packets_total",
        "counter",
        "RTP packets relayed by finished calls.",
        l(&st.rtp_packets),
    );
    put(
        "callrec_rtp_timeouts_total",
        "counter",
        "Calls ended for lack of RTP.",
        l(&st.rtp_timeouts),
    );
    put(
        "callrec_media_ports_in_use",
        "gauge",
        "RTP port pairs bound.",
        core.ports.in_use() as u64,
    );
    put(
        "callrec_media_ports_free",
        "gauge",
        "RTP port pairs free.",
        core.ports.available() as u64,
    );
    out
}
