//! The admin HTTP API: health, Prometheus metrics and the recently finished
//! calls (with their per-call packet counters) for operators and tests.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use crate::b2bua::{CallSummary, Core};

/// Serves the admin API on `addr` until the process ends.
pub async fn serve(core: Arc<Core>, addr: SocketAddr) -> std::io::Result<()> {
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/calls/recent", get(recent))
        .with_state(core);
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

async fn recent(State(core): State<Arc<Core>>) -> Json<Vec<CallSummary>> {
    let r = core.recent.lock().expect("recent calls poisoned");
    Json(r.iter().cloned().collect())
}

async fn metrics(State(core): State<Arc<Core>>) -> String {
    let s = &core.stats;
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
        l(&s.calls_active),
    );
    put(
        "callrec_call_tasks",
        "gauge",
        "Call tasks alive, including those absorbing retransmissions.",
        l(&s.call_tasks),
    );
    put(
        "callrec_calls_total",
        "counter",
        "Calls started.",
        l(&s.calls_total),
    );
    put(
        "callrec_calls_answered_total",
        "counter",
        "Calls answered.",
        l(&s.calls_answered),
    );
    put(
        "callrec_sip_received_total",
        "counter",
        "SIP messages received.",
        l(&s.sip_received),
    );
    put(
        "callrec_sip_malformed_total",
        "counter",
        "SIP messages that could not be parsed.",
        l(&s.sip_malformed),
    );
    put(
        "callrec_rtp_packets_total",
        "counter",
        "RTP packets relayed by finished calls.",
        l(&s.rtp_packets),
    );
    put(
        "callrec_rtp_timeouts_total",
        "counter",
        "Calls ended for lack of RTP.",
        l(&s.rtp_timeouts),
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
