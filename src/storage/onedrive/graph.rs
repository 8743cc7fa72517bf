//! A small Microsoft Graph client on reqwest: bearer tokens from a [`TokenSource`],
//! one renewal and retry after a 401, and 429/503 (and 502/504) waited out as the
//! server's `Retry-After` says (seconds or an HTTP date), with a capped back-off
//! when it says nothing.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};

use super::token::{TokenError, TokenSource};

/// Retries of one request after 429/503 before giving up.
pub const MAX_THROTTLE_RETRIES: u32 = 6;
/// Longest wait honoured from one `Retry-After`.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Why a Graph request failed.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// No token.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// Graph could not be reached.
    #[error("{0}")]
    Transport(String),
    /// Graph answered with an error status.
    #[error("HTTP {status}: {code}: {message}")]
    Status {
        /// HTTP status.
        status: StatusCode,
        /// Graph error code, e.g. `accessDenied`.
        code: String,
        /// Graph error message.
        message: String,
    },
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(serde::Deserialize)]
struct ErrorInner {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl GraphError {
    /// Builds a [`GraphError::Status`] from an error response.
    pub async fn from_response(resp: Response) -> GraphError {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => (
                String::new(),
                String::from_utf8_lossy(&body[..body.len().min(200)]).to_string(),
            ),
        };
        GraphError::Status {
            status,
            code,
            message,
        }
    }

    /// The HTTP status, if Graph answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            GraphError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The wait that a 429/503 answer asks for, if any.
pub fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v.trim()).ok()?;
    let wait = when.timestamp() - chrono::Utc::now().timestamp();
    Some(Duration::from_secs(wait.max(0) as u64))
}

fn throttled(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::BAD_GATEWAY
            | StatusCode::GATEWAY_TIMEOUT
    )
}

/// Graph for one target.
#[derive(Debug, Clone)]
pub struct Graph {
    http: reqwest::Client,
    /// `https://graph.microsoft.com/v1.0` or the configured test host.
    base: String,
    tokens: Arc<TokenSource>,
}

impl Graph {
    /// A client for `base` (Graph URL including `/v1.0`).
    pub fn new(http: reqwest::Client, base: String, tokens: Arc<TokenSource>) -> Graph {
        Graph { http, base, tokens }
    }

    /// The token source.
    pub fn tokens(&self) -> &Arc<TokenSource> {
        &self.tokens
    }

    /// Sends an authorized request to `base + path`, built fresh for every try by
    /// `body` (which adds headers and body). Renews the token once after a 401 and
    /// waits out throttling. Returns the final answer, whatever its status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, GraphError> {
        let url = format!("{}{}", self.base, path);
        let mut rejected: Option<String> = None;
        let mut renewed = false;
        let mut throttles = 0;
        loop {
            let token = self.tokens.access_token(rejected.as_deref()).await?;
            let req = body(self.http.request(method.clone(), &url).bearer_auth(&token));
            let resp = req
                .send()
                .await
                .map_err(|e| GraphError::Transport(super::transport_detail(e)))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !renewed {
                tracing::info!(%method, path, "onedrive: Graph refused the access token (401); renewing it once");
                renewed = true;
                rejected = Some(token);
                continue;
            }
            if throttled(status) && throttles < MAX_THROTTLE_RETRIES {
                throttles += 1;
                wait_out(&resp, throttles, path).await;
                continue;
            }
            return Ok(resp);
        }
    }

    /// Sends an unauthenticated request to a pre-authenticated upload URL (upload
    /// sessions must not carry the bearer token), waiting out throttling.
    pub async fn send_upload(
        &self,
        method: Method,
        url: &str,
        body: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, GraphError> {
        let mut throttles = 0;
        loop {
            let resp = body(self.http.request(method.clone(), url))
                .send()
                .await
                .map_err(|e| GraphError::Transport(super::transport_detail(e)))?;
            if throttled(resp.status()) && throttles < MAX_THROTTLE_RETRIES {
                throttles += 1;
                wait_out(&resp, throttles, "upload session").await;
                continue;
            }
            return Ok(resp);
        }
    }
}

/// Sleeps as long as the answer's `Retry-After` says (capped), or a back-off of 2^n s.
async fn wait_out(resp: &Response, attempt: u32, what: &str) {
    let wait = retry_after(resp)
        .unwrap_or_else(|| Duration::from_secs(1 << attempt.min(5)))
        .min(MAX_RETRY_AFTER);
    tracing::warn!(
        status = resp.status().as_u16(),
        what,
        wait_ms = wait.as_millis() as u64,
        "onedrive: Graph is throttling; waiting as asked (Retry-After)"
    );
    tokio::time::sleep(wait).await;
}
