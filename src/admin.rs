//! The admin HTTP API: health and Prometheus metrics for monitoring, and under
//! `/api/` (bearer token required) the recently finished calls and the group
//! login/logout that a phone's URL key can trigger. The web console
//! (`crate::console`) is served beside it, on the same listener.

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

use crate::access_log::{AccessAction, AccessEntry};
use crate::b2bua::{CallSummary, Core};

/// The access log's actor for requests with the admin API's bearer token
/// (there is one token; its name is what the log shows).
pub const API_ACTOR: &str = "api:admin-token";

/// Shared state of the admin API.
struct Admin {
    core: Arc<Core>,
    /// The upload spool, for its metrics; calls never touch it, so it is not in `Core`.
    spool: Option<crate::spool::Spool>,
    token: String,
}

/// Serves the admin API on `addr` until the process ends; over HTTPS with `tls`.
pub async fn serve(
    core: Arc<Core>,
    spool: Option<crate::spool::Spool>,
    addr: SocketAddr,
    token: String,
    tls: Option<Arc<crate::sip::tls::TlsContext>>,
) -> std::io::Result<()> {
    let app_core = core.clone();
    let state = Arc::new(Admin { core, spool, token });
    let api = Router::new()
        .route("/api/calls/recent", get(recent))
        .route("/api/calls/active", get(active))
        .route("/api/recordings", get(recordings))
        .route(
            "/api/groups/{group}/members/{user}/{action}",
            get(membership).post(membership),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(api)
        .with_state(state);
    if let Some(console) = crate::console::router(app_core.clone(), app_core.cfg.console.clone()) {
        app = app.merge(console);
    }
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot bind admin API on {addr}: {e}"))
    })?;
    // A trusted reverse proxy brings every user's connections.
    let proxies = app_core.cfg.console.trusted_proxies.clone();
    match tls {
        Some(ctx) => {
            tracing::info!("admin API on https://{addr}");
            let listener = crate::admin_tls::TlsListener::new(listener, ctx)?;
            tokio::spawn(crate::http_serve::serve(listener, app, proxies));
        }
        None => {
            tracing::info!("admin API on http://{addr}");
            tokio::spawn(crate::http_serve::serve(listener, app, proxies));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Compares in constant time, so the token cannot be guessed byte by byte from
/// response times. Both sides are hashed first so that the time does not
/// reveal the token's length either.
fn same(given: &str, token: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let (a, b) = (Sha256::digest(given), Sha256::digest(token));
    !token.is_empty() && bool::from(a.as_slice().ct_eq(b.as_slice()))
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

async fn active(State(s): State<Arc<Admin>>) -> Json<Vec<crate::b2bua::LiveCall>> {
    let live = s.core.live.lock().expect("live calls poisoned");
    let mut v: Vec<_> = live.values().cloned().collect();
    v.sort_by_key(|c| c.started_ms);
    Json(v)
}

#[derive(Deserialize)]
struct SearchQuery {
    number: String,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
}

/// Recordings of a party (any spelling of the number), from the protocol database.
async fn recordings(State(s): State<Arc<Admin>>, Query(q): Query<SearchQuery>) -> Response {
    let Some(db) = s.core.db.clone() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no protocol database").into_response();
    };
    let plan = match &s.core.planner {
        Some(p) => p.directory().current().plan().clone(),
        None => crate::policy::NumberPlan::default(),
    };
    let rows = tokio::task::spawn_blocking(move || {
        let rows = crate::archive::search(
            &db,
            &plan,
            &q.number,
            q.from_ms.unwrap_or(0),
            q.to_ms.unwrap_or(i64::MAX),
        )?;
        // Logged before the answer leaves; a search that cannot be logged is refused.
        let entry = AccessEntry::now(
            API_ACTOR,
            AccessAction::Search,
            &q.number,
            Some(format!(
                "{} set(s), from_ms {:?} to_ms {:?}",
                rows.len(),
                q.from_ms,
                q.to_ms
            )),
        );
        crate::access_log::record_sync(&db, entry)?;
        Ok::<_, crate::archive::ArchiveError>(rows)
    })
    .await;
    match rows {
        Ok(Ok(rows)) => Json(rows).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
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
    let changed = match result {
        Ok(changed) => changed,
        Err(e) => return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let member = dir.user(u).map_or(u.to_string(), |x| x.login.clone());
    let group_name = dir.group(g).map_or(g.to_string(), |x| x.name.clone());
    let logged = match s.core.db.clone() {
        Some(db) => {
            let entry = AccessEntry::membership(
                API_ACTOR,
                &member,
                &format!("group {group_name}"),
                action == "login",
                "admin API",
            );
            tokio::task::spawn_blocking(move || crate::access_log::record_sync(&db, entry))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
        }
        None => Ok(()),
    };
    if let Err(e) = logged {
        return err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("switched, but the access log could not be written: {e}"),
        );
    }
    tracing::info!(group = g, user = u, action = %action, changed, "group membership switched");
    Json(serde_json::json!({
        "group": g,
        "user": u,
        "active": action == "login",
        "changed": changed,
    }))
    .into_response()
}

/// 200 when SIP, media and the database work; 503 with what is wrong otherwise.
async fn health(State(s): State<Arc<Admin>>) -> Response {
    let core = &s.core;
    let mut problems = Vec::new();
    if core.draining.load(Ordering::Relaxed) {
        problems.push("shutting down: new calls are refused".to_string());
    }
    if core.ports.available() == 0 {
        problems.push("no free RTP port pair (widen --rtp-ports)".to_string());
    }
    if let Some(db) = &core.db {
        let db = db.clone();
        let ok = tokio::task::spawn_blocking(move || db.count("calls"))
            .await
            .map(|r| r.map_err(|e| e.to_string()))
            .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = ok {
            problems.push(format!("protocol database: {e}"));
        }
    }
    if problems.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", problems.join("\n")),
        )
            .into_response()
    }
}

async fn metrics(State(s): State<Arc<Admin>>) -> String {
    let core = &s.core;
    let st = &core.stats;
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let plain: [(&str, &str, &str, u64); 25] = [
        (
            "callrec_calls_active",
            "gauge",
            "Calls whose dialog is not over.",
            l(&st.calls_active),
        ),
        (
            "callrec_call_tasks",
            "gauge",
            "Call tasks alive, including those absorbing retransmissions.",
            l(&st.call_tasks),
        ),
        (
            "callrec_calls_total",
            "counter",
            "Calls started.",
            l(&st.calls_total),
        ),
        (
            "callrec_calls_incoming_total",
            "counter",
            "Incoming calls started.",
            l(&st.calls_incoming),
        ),
        (
            "callrec_calls_outgoing_total",
            "counter",
            "Outgoing calls started.",
            l(&st.calls_outgoing),
        ),
        (
            "callrec_calls_answered_total",
            "counter",
            "Calls answered.",
            l(&st.calls_answered),
        ),
        (
            "callrec_calls_refused_total",
            "counter",
            "New calls refused while shutting down.",
            l(&st.calls_refused),
        ),
        (
            "callrec_calls_refused_unrecordable_total",
            "counter",
            "Calls refused or ended because their recording could not be made (on_record_failure = reject).",
            l(&st.calls_refused_unrecordable),
        ),
        (
            "callrec_untrusted_requests_total",
            "counter",
            "Requests refused: sender not trusted, or not the peer of the call leg.",
            l(&st.untrusted_requests),
        ),
        (
            "callrec_decisions_recorded_total",
            "counter",
            "Calls decided to be recorded.",
            l(&st.decisions_recorded),
        ),
        (
            "callrec_decisions_not_recorded_total",
            "counter",
            "Calls decided not to be recorded.",
            l(&st.decisions_not_recorded),
        ),
        (
            "callrec_sip_received_total",
            "counter",
            "SIP messages received.",
            l(&st.sip_received),
        ),
        (
            "callrec_sip_malformed_total",
            "counter",
            "SIP messages that could not be parsed.",
            l(&st.sip_malformed),
        ),
        (
            "callrec_rtp_packets_total",
            "counter",
            "RTP packets relayed by finished calls.",
            l(&st.rtp_packets),
        ),
        (
            "callrec_rtp_foreign_dropped_total",
            "counter",
            "Media packets from sources other than the call's parties, dropped.",
            l(&st.rtp_foreign_dropped),
        ),
        (
            "callrec_srtp_auth_failed_total",
            "counter",
            "SRTP/SRTCP packets that failed authentication (or were replays), dropped and never recorded.",
            l(&st.srtp_auth_failed),
        ),
        (
            "callrec_rtp_timeouts_total",
            "counter",
            "Calls ended for lack of RTP.",
            l(&st.rtp_timeouts),
        ),
        (
            "callrec_recorder_queue_dropped_total",
            "counter",
            "RTP packets the recorder queue refused (slow disk).",
            l(&st.recorder_queue_dropped),
        ),
        (
            "callrec_recordings_finished_total",
            "counter",
            "Recordings finished and queued for sealing.",
            l(&st.recordings_finished),
        ),
        (
            "callrec_recordings_pending",
            "gauge",
            "Recordings being finished.",
            l(&st.recordings_pending),
        ),
        (
            "callrec_recordings_sealed_total",
            "counter",
            "Recordings sealed.",
            st.sealed.load(Ordering::Relaxed),
        ),
        (
            "callrec_media_ports_in_use",
            "gauge",
            "RTP port pairs bound.",
            core.ports.in_use() as u64,
        ),
        (
            "callrec_media_ports_free",
            "gauge",
            "RTP port pairs free.",
            core.ports.available() as u64,
        ),
        (
            "callrec_draining",
            "gauge",
            "1 while shutting down.",
            core.draining.load(Ordering::Relaxed) as u64,
        ),
        ("callrec_up", "gauge", "1 while the proxy runs.", 1),
    ];
    let limits: [(&str, &str, &str, u64); 4] = [
        (
            "callrec_calls_over_limit_total",
            "counter",
            "New calls refused with 503 because --max-calls calls were in progress.",
            l(&st.calls_over_limit),
        ),
        (
            "callrec_invites_rate_limited_total",
            "counter",
            "New calls refused with 503 by --invite-rate-per-source.",
            l(&st.invites_rate_limited),
        ),
        (
            "callrec_calls_max_duration_total",
            "counter",
            "Calls hung up by --max-call-duration.",
            l(&st.calls_max_duration),
        ),
        (
            "callrec_sip_dropped_call_busy_total",
            "counter",
            "SIP messages dropped because their call's queue was full.",
            l(&st.sip_dropped_call_busy),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, v) in plain.into_iter().chain(limits) {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
    st.transport.write_prometheus(&mut out);
    let _ = writeln!(
        out,
        "# HELP callrec_recording_failures_total Recordings that failed or are incomplete, by reason.\n# TYPE callrec_recording_failures_total counter"
    );
    for (reason, n) in core.failures.counts() {
        let _ = writeln!(
            out,
            "callrec_recording_failures_total{{reason=\"{reason}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP callrec_recordings_recovered_total Recordings left by a crash and finished at start-up.\n# TYPE callrec_recordings_recovered_total counter\ncallrec_recordings_recovered_total {}",
        st.recordings_recovered.load(Ordering::Relaxed)
    );
    #[cfg(feature = "kernel-relay")]
    if let Some(k) = crate::media::kernel::get() {
        // Map reads: a few system calls, off the async workers.
        let ([relayed, ring_full], flows) =
            tokio::task::spawn_blocking(move || (k.totals(), k.flow_count()))
                .await
                .unwrap_or_default();
        let _ = writeln!(
            out,
            "# HELP callrec_kernel_relayed_packets_total RTP packets relayed (and copied to the recorder) by the kernel path.\n# TYPE callrec_kernel_relayed_packets_total counter\ncallrec_kernel_relayed_packets_total {relayed}\n# HELP callrec_kernel_left_to_userspace_total Packets of kernel flows left to the userspace relay (which relayed and recorded them) because the recorder ring was full.\n# TYPE callrec_kernel_left_to_userspace_total counter\ncallrec_kernel_left_to_userspace_total {ring_full}\n# HELP callrec_kernel_flows Directions of streams the kernel relays now.\n# TYPE callrec_kernel_flows gauge\ncallrec_kernel_flows {flows}"
        );
    }
    if let Some(planner) = &core.planner {
        // Decisions use the last good snapshot however old it is: these show when
        // the PBX has not answered for a while and group changes are not seen.
        let st = planner.directory().status();
        let _ = writeln!(
            out,
            "# HELP callrec_directory_refresh_failures Failed directory refreshes since the last success.\n# TYPE callrec_directory_refresh_failures gauge\ncallrec_directory_refresh_failures {}",
            st.consecutive_failures
        );
        if let Some(age) = st.last_success.and_then(|t| t.elapsed().ok()) {
            let _ = writeln!(
                out,
                "# HELP callrec_directory_snapshot_age_seconds Age of the directory snapshot decisions use (absent until the first fetch succeeds).\n# TYPE callrec_directory_snapshot_age_seconds gauge\ncallrec_directory_snapshot_age_seconds {}",
                age.as_secs()
            );
        }
    }
    if let Some(spool) = &s.spool {
        let spool = spool.clone();
        let pending = tokio::task::spawn_blocking(move || spool.pending())
            .await
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "# HELP callrec_spool_sets Sealed sets waiting for a target.\n# TYPE callrec_spool_sets gauge\ncallrec_spool_sets {}",
            pending.len()
        );
    }
    if let Some(db) = &core.db {
        let pending_db = db.clone();
        let oldest = tokio::task::spawn_blocking(move || pending_db.pending_uploads())
            .await
            .ok()
            .and_then(|r| r.ok())
            .and_then(|rows| rows.iter().map(|r| r.queued_ms).min())
            .map(|q| ((crate::db::now_ms() - q).max(0) / 1000) as u64)
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "# HELP callrec_spool_oldest_age_seconds Age of the oldest upload still waiting (0 when none).\n# TYPE callrec_spool_oldest_age_seconds gauge\ncallrec_spool_oldest_age_seconds {oldest}"
        );
        let db = db.clone();
        let rows = tokio::task::spawn_blocking(move || db.attempt_counts())
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        let _ = writeln!(out, "# HELP callrec_upload_attempts_total Upload attempts per target.\n# TYPE callrec_upload_attempts_total counter");
        for (t, n, _) in &rows {
            let _ = writeln!(
                out,
                "callrec_upload_attempts_total{{target=\"{}\"}} {n}",
                label(t)
            );
        }
        let _ = writeln!(out, "# HELP callrec_upload_failures_total Failed upload attempts per target.\n# TYPE callrec_upload_failures_total counter");
        for (t, _, f) in &rows {
            let _ = writeln!(
                out,
                "callrec_upload_failures_total{{target=\"{}\"}} {f}",
                label(t)
            );
        }
    }
    out
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_comparison() {
        assert!(super::same("secret-token", "secret-token"));
        assert!(!super::same("secret-tokeN", "secret-token"));
        assert!(!super::same("secret", "secret-token"));
        assert!(!super::same("", ""), "an empty token never matches");
    }
}
