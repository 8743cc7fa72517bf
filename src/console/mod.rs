//! The web console on the admin HTTP server: server-rendered pages for the
//! people who use the recordings (search, listen, verify, export) and, for
//! admins, the operations view. Off while no console user exists; every page
//! needs a session (see `auth`), every state change a CSRF token, and each
//! role sees only what it may (see `users::Role`). See README "Web console".

pub(crate) mod auth;
mod fetch_cache;
mod handlers;
mod lookup;
mod onedrive;
mod ops;
mod pages;
mod phone_links;
mod playback_log;
mod proxy_login;
mod sets;
pub mod users;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::b2bua::Core;
use crate::db::Db;
pub use users::Role;

/// How the console behaves; from `callrec run`'s flags.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// A session ends after this long without a request.
    pub idle: Duration,
    /// Mark cookies `Secure` (served over TLS, or reached over HTTPS through a reverse proxy).
    pub secure_cookies: bool,
    /// Header in which a trusted reverse proxy names the user it authenticated.
    pub trusted_header: Option<axum::http::HeaderName>,
    /// Peers whose `trusted_header` is believed; from anyone else it is ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Most bytes of sets fetched from remote targets kept at once for playing.
    pub fetch_max_bytes: u64,
}

impl Default for ConsoleSettings {
    fn default() -> ConsoleSettings {
        ConsoleSettings {
            idle: Duration::from_secs(30 * 60),
            secure_cookies: false,
            trusted_header: None,
            trusted_proxies: Vec::new(),
            fetch_max_bytes: 2048 * 1024 * 1024,
        }
    }
}

/// Shared state of the console's handlers.
pub(crate) struct Console {
    core: Arc<Core>,
    db: Db,
    auth: auth::Auth,
    settings: ConsoleSettings,
    /// Local folders holding delivered sets.
    roots: Vec<PathBuf>,
    /// Secrets of the storage targets, to fetch sets that only a remote target holds.
    secrets: crate::storage::Secrets,
    /// Where fetched sets are kept (emptied at every start).
    fetched: PathBuf,
    /// Which fetched sets are kept, their sizes and last use (bounded in total).
    fetch_cache: fetch_cache::FetchCache,
    /// The OneDrive targets that sign in delegated (the operations view's button).
    onedrive_targets: Vec<String>,
    /// CSRF tokens of users signed in by the trusted reverse proxy.
    proxy_tokens: proxy_login::ProxyTokens,
    /// The instance certificate: sets are verified against it, so "verified"
    /// also means "made by this instance".
    cert_path: PathBuf,
    verified: sets::VerifyCache,
    /// Which sessions' playbacks the access log already names.
    playbacks: playback_log::PlaybackLog,
    /// Password checks running now: each holds its hash's working memory.
    password_checks: Arc<tokio::sync::Semaphore>,
}

/// The console's routes, or `None` when there is no protocol database to keep users in.
pub fn router(core: Arc<Core>, settings: ConsoleSettings) -> Option<Router> {
    let db = core.db.clone()?;
    let data_dir = core.cfg.data_dir.clone();
    let (targets, secrets) = crate::proxy::resolve_targets(&core.cfg.policy, &data_dir)
        .map(|(_, all, secrets)| (all, secrets))
        .unwrap_or_default();
    let fetched = data_dir.join("console-cache").join("fetched");
    let _ = std::fs::remove_dir_all(&fetched);
    let onedrive_targets = onedrive::delegated(&targets, &secrets);
    let state = Arc::new(Console {
        roots: crate::archive::local_roots(&data_dir, &targets),
        secrets,
        fetch_cache: fetch_cache::FetchCache::new(fetched.clone(), settings.fetch_max_bytes),
        fetched,
        proxy_tokens: proxy_login::ProxyTokens::default(),
        onedrive_targets,
        cert_path: data_dir.join(crate::seal::CERT_FILE_NAME),
        auth: auth::Auth::new(settings.idle),
        verified: sets::VerifyCache::default(),
        playbacks: playback_log::PlaybackLog::default(),
        password_checks: Arc::new(tokio::sync::Semaphore::new(
            handlers::PASSWORD_CHECKS_AT_ONCE,
        )),
        settings,
        db,
        core,
    });
    Some(
        Router::new()
            .route("/", get(|| async { Redirect::to("/recordings") }))
            .route("/login", get(handlers::login_form).post(handlers::login))
            .route("/logout", post(handlers::logout))
            .route("/recordings", get(handlers::search))
            .route("/recordings/{id}", get(handlers::recording))
            .route("/recordings/{id}/audio", get(handlers::audio))
            .route("/recordings/{id}/export", get(handlers::export))
            .route("/access-log", get(handlers::access_log))
            .route("/operations", get(ops::operations))
            .route(
                "/operations/groups/{group}/members/{user}/{action}",
                post(ops::membership),
            )
            .route("/operations/onedrive/start", post(onedrive::start))
            .route("/operations/onedrive/finish", post(onedrive::finish))
            .route(
                "/operations/phone-keys/{user}/rotate",
                post(phone_links::rotate),
            )
            .route("/console.js", get(handlers::script))
            .route("/console.css", get(handlers::style))
            .layer(axum::middleware::map_response(security_headers))
            .with_state(state),
    )
}

/// Headers that keep the pages from being framed, leaking their address or
/// running scripts from elsewhere.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, axum::http::HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    );
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    r
}

/// Runs blocking work (database, files) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Refusal::Internal(e.to_string()))
}

/// Why a console request is not answered with its page.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The console is off (no user) or the thing does not exist.
    NotFound,
    /// Not logged in: to the login page.
    Login,
    /// The role does not allow it.
    Forbidden,
    /// A state change without a valid CSRF token.
    Csrf,
    /// The trusted reverse proxy named no usable console user.
    ProxyUser,
    /// A set too large for the console's fetch folder (the text says why).
    TooLarge(String),
    /// Something failed on our side.
    Internal(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (code, text) = match self {
            Refusal::NotFound => (StatusCode::NOT_FOUND, "Not found.".to_string()),
            Refusal::Login => return Redirect::to("/login").into_response(),
            Refusal::Forbidden => (
                StatusCode::FORBIDDEN,
                "Your role does not allow this.".to_string(),
            ),
            Refusal::Csrf => (
                StatusCode::FORBIDDEN,
                "The form is missing its security token or it has expired; reload the page and try again.".to_string(),
            ),
            Refusal::ProxyUser => (
                StatusCode::FORBIDDEN,
                "The sign-in server did not name a console user. Ask an admin to add you with `callrec users add`.".to_string(),
            ),
            Refusal::TooLarge(text) => (StatusCode::INSUFFICIENT_STORAGE, text),
            Refusal::Internal(e) => {
                tracing::error!(error = %e, "console request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "Internal error; see the log.".to_string())
            }
        };
        (
            code,
            axum::response::Html(pages::message(code.as_str(), &text).into_string()),
        )
            .into_response()
    }
}

/// The logged-in user of a request.
#[derive(Debug, Clone)]
pub(crate) struct Me {
    /// Login name.
    pub name: String,
    /// Role, as stored now.
    pub role: Role,
    /// The session's CSRF token.
    pub csrf: String,
    /// The session id.
    pub session: String,
}

impl Me {
    /// Refuses unless the user's role includes `role`.
    pub fn require(&self, role: Role) -> Result<(), Refusal> {
        if self.role >= role {
            Ok(())
        } else {
            tracing::warn!(user = %self.name, role = %self.role, needed = %role, "console: refused by role");
            Err(Refusal::Forbidden)
        }
    }

    /// Refuses unless `token` is this session's CSRF token.
    pub fn check_csrf(&self, token: Option<&str>) -> Result<(), Refusal> {
        match token {
            Some(t) if auth::same_secret(t, &self.csrf) => Ok(()),
            _ => {
                tracing::warn!(user = %self.name, "console: state change without a valid CSRF token refused");
                Err(Refusal::Csrf)
            }
        }
    }
}

/// Whether the console is on: at least one user exists.
async fn console_on(c: &Arc<Console>) -> Result<bool, Refusal> {
    let db = c.db.clone();
    blocking(move || users::any(&db))
        .await?
        .map_err(|e| Refusal::Internal(e.to_string()))
}

impl FromRequestParts<Arc<Console>> for Me {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Console>) -> Result<Me, Refusal> {
        if !console_on(c).await? {
            return Err(Refusal::NotFound);
        }
        if let Some(me) = proxy_login::from_header(parts, c).await? {
            return Ok(me);
        }
        let id = parts
            .headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| auth::cookie(h, auth::SESSION_COOKIE))
            .map(str::to_string)
            .ok_or(Refusal::Login)?;
        let session = c.auth.get(&id).ok_or(Refusal::Login)?;
        let (db, name) = (c.db.clone(), session.user.clone());
        let user = blocking(move || users::find(&db, &name))
            .await?
            .map_err(|e| Refusal::Internal(e.to_string()))?;
        // Removed, or the password changed since this login: the session is over.
        match user {
            Some(u) if u.hash == session.hash => Ok(Me {
                name: u.name,
                role: u.role,
                csrf: session.csrf,
                session: id,
            }),
            _ => {
                c.auth.end(&id);
                Err(Refusal::Login)
            }
        }
    }
}
