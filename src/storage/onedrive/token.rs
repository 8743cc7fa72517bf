//! OAuth 2.0 access tokens for Microsoft Graph from the Microsoft identity platform
//! (v2.0 endpoints of the cloud's login host): client credentials (app-only) and
//! authorization code with PKCE plus refresh tokens (delegated).
//!
//! The delegated flow keeps its refresh token in a JSON file written with mode 0600
//! (temporary file, fsync, rename). An access token is renewed when less than
//! [`REFRESH_MARGIN_SECS`] of its life is left, and on demand after a 401. Tokens
//! and secrets never appear in logs or errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Renew an access token this many seconds before it expires (at most half its lifetime).
pub const REFRESH_MARGIN_SECS: i64 = 300;

/// Which sign-in a target uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// A signed-in user's consent (authorization code, refresh token in the data dir).
    Delegated,
    /// The application itself (client credentials: tenant, client id, client secret).
    AppOnly,
}

/// Everything needed to get tokens for one target. `Debug` hides the client secret.
#[derive(Clone)]
pub struct OAuthConfig {
    /// Login base URL, e.g. `https://login.microsoftonline.com`.
    pub login_base: String,
    /// Graph base URL (without `/v1.0`), e.g. `https://graph.microsoft.com`.
    pub graph_base: String,
    /// The Graph resource that scopes are written against (the cloud's real Graph URL).
    pub graph_resource: String,
    /// Directory (tenant) id or domain, or `organizations`.
    pub tenant: String,
    /// Application (client) id.
    pub client_id: String,
    /// Client secret (app-only; optional for delegated).
    pub client_secret: Option<String>,
    /// Redirect URI of the delegated flow.
    pub redirect_uri: String,
    /// Permission name, e.g. `Files.ReadWrite.All`.
    pub permission: String,
    /// Sign-in kind.
    pub flow: Flow,
    /// Token file of the delegated flow.
    pub token_file: Option<PathBuf>,
}

impl std::fmt::Debug for OAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthConfig")
            .field("login_base", &self.login_base)
            .field("graph_base", &self.graph_base)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<hidden>"),
            )
            .field("redirect_uri", &self.redirect_uri)
            .field("permission", &self.permission)
            .field("flow", &self.flow)
            .field("token_file", &self.token_file)
            .finish()
    }
}

impl OAuthConfig {
    /// The token endpoint of the tenant.
    pub fn token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.login_base, self.tenant)
    }

    /// The authorization endpoint of the tenant.
    pub fn authorize_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/authorize", self.login_base, self.tenant)
    }

    /// Scopes requested by the flow.
    pub fn scope(&self) -> String {
        match self.flow {
            Flow::AppOnly => format!("{}/.default", self.graph_resource),
            Flow::Delegated => {
                format!("{}/{} offline_access", self.graph_resource, self.permission)
            }
        }
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The identity platform refused the request (bad client id/secret, expired grant, no consent).
    #[error("sign-in refused by {endpoint}: {code}: {description}")]
    Refused {
        /// The token endpoint.
        endpoint: String,
        /// OAuth error code, e.g. `invalid_client`.
        code: String,
        /// First line of the server's description (never a secret).
        description: String,
    },
    /// The login host could not be reached.
    #[error("login host {endpoint} unreachable: {detail}")]
    Unreachable {
        /// The token endpoint.
        endpoint: String,
        /// The transport error.
        detail: String,
    },
    /// Delegated sign-in has not been done yet (or its token file is gone).
    #[error("no delegated sign-in yet ({path} missing or unreadable: {detail}); run `callrec onedrive authorize` and then `callrec onedrive authorize --code CODE`")]
    NotSignedIn {
        /// The token file.
        path: String,
        /// Why it could not be used.
        detail: String,
    },
    /// The token file could not be written.
    #[error("writing the token file {path} failed: {detail}; check the data dir's permissions and free space")]
    Store {
        /// The token file.
        path: String,
        /// The I/O error.
        detail: String,
    },
    /// The token endpoint answered something that is not a token.
    #[error("unexpected answer from {endpoint}: {detail}")]
    Protocol {
        /// The token endpoint.
        endpoint: String,
        /// What was wrong.
        detail: String,
    },
}

/// A token as kept in memory and (delegated) in the token file.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredToken {
    /// Bearer token for Graph.
    pub access_token: String,
    /// Unix time (s) at which the access token expires.
    pub expires_at: i64,
    /// Refresh token (delegated only).
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Unix time (s) of the last successful refresh or sign-in.
    #[serde(default)]
    pub refreshed_at: i64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Unix time now, in seconds.
pub fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Reads a token file.
pub fn load_token(path: &Path) -> Result<StoredToken, TokenError> {
    let not_signed_in = |detail: String| TokenError::NotSignedIn {
        path: path.display().to_string(),
        detail,
    };
    let bytes = std::fs::read(path).map_err(|e| not_signed_in(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| not_signed_in(format!("not a token file: {e}")))
}

/// Writes a token file with mode 0600 (temporary file, fsync, rename).
pub fn save_token(path: &Path, token: &StoredToken) -> Result<(), TokenError> {
    write_private_json(path, token)
}

/// Writes `value` as JSON to `path` with mode 0600 (temporary file, fsync, rename).
pub fn write_private_json(path: &Path, value: &impl Serialize) -> Result<(), TokenError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| TokenError::Store {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec_pretty(value).map_err(|e| TokenError::Store {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(&json).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

/// Posts a form to the token endpoint and reads the token it returns.
pub async fn request_token(
    http: &reqwest::Client,
    cfg: &OAuthConfig,
    form: &[(&str, &str)],
) -> Result<StoredToken, TokenError> {
    let endpoint = cfg.token_url();
    let resp = http
        .post(&endpoint)
        .form(form)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| TokenError::Unreachable {
            endpoint: endpoint.clone(),
            detail: super::transport_detail(e),
        })?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| TokenError::Unreachable {
        endpoint: endpoint.clone(),
        detail: super::transport_detail(e),
    })?;
    if !status.is_success() {
        let (code, description) = match serde_json::from_slice::<OAuthErrorBody>(&body) {
            Ok(b) if !b.error.is_empty() => (
                b.error,
                b.error_description.lines().next().unwrap_or("").to_string(),
            ),
            _ => (format!("HTTP {status}"), String::new()),
        };
        return Err(TokenError::Refused {
            endpoint,
            code,
            description,
        });
    }
    let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| TokenError::Protocol {
        endpoint: endpoint.clone(),
        detail: format!("no access token in the answer ({e})"),
    })?;
    let now = now_unix();
    Ok(StoredToken {
        access_token: t.access_token,
        expires_at: now + t.expires_in.unwrap_or(3600),
        refresh_token: t.refresh_token,
        refreshed_at: now,
    })
}

/// Hands out access tokens for one target, renewing them as needed.
pub struct TokenSource {
    cfg: OAuthConfig,
    http: reqwest::Client,
    current: tokio::sync::Mutex<Option<StoredToken>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl TokenSource {
    /// A token source for `cfg`, using `http` for the token endpoint.
    pub fn new(cfg: OAuthConfig, http: reqwest::Client) -> TokenSource {
        TokenSource {
            cfg,
            http,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &OAuthConfig {
        &self.cfg
    }

    /// A valid access token. With `renew`, the current one is replaced even if it
    /// has not expired yet (after Graph answered 401 for it). `rejected` is the token
    /// that Graph refused: if another task already replaced it, that one is used.
    pub async fn access_token(&self, rejected: Option<&str>) -> Result<String, TokenError> {
        let mut current = self.current.lock().await;
        if current.is_none() && self.cfg.flow == Flow::Delegated {
            *current = Some(load_token(self.token_path()?)?);
        }
        if let Some(t) = current.as_ref() {
            let replaced_meanwhile = rejected.is_some_and(|r| r != t.access_token);
            // Renew within the margin, or within the last half of a short-lived token.
            let margin = REFRESH_MARGIN_SECS.min((t.expires_at - t.refreshed_at) / 2);
            let fresh = t.expires_at - now_unix() > margin;
            if replaced_meanwhile || (rejected.is_none() && fresh) {
                return Ok(t.access_token.clone());
            }
        }
        let new = self.renew(current.as_ref()).await?;
        let token = new.access_token.clone();
        *current = Some(new);
        Ok(token)
    }

    /// Renews the delegated refresh token if it was last renewed more than `max_age`
    /// ago, so that it does not lapse while no uploads happen.
    pub async fn keep_alive(&self, max_age: Duration) -> Result<bool, TokenError> {
        if self.cfg.flow != Flow::Delegated {
            return Ok(false);
        }
        let mut current = self.current.lock().await;
        let stored = match current.take() {
            Some(t) => t,
            None => load_token(self.token_path()?)?,
        };
        if now_unix() - stored.refreshed_at < max_age.as_secs() as i64 {
            *current = Some(stored);
            return Ok(false);
        }
        match self.renew(Some(&stored)).await {
            Ok(new) => {
                *current = Some(new);
                Ok(true)
            }
            Err(e) => {
                *current = Some(stored);
                Err(e)
            }
        }
    }

    fn token_path(&self) -> Result<&Path, TokenError> {
        self.cfg
            .token_file
            .as_deref()
            .ok_or_else(|| TokenError::NotSignedIn {
                path: "(no token file configured)".into(),
                detail: "the data dir is not known to the storage targets".into(),
            })
    }

    async fn renew(&self, old: Option<&StoredToken>) -> Result<StoredToken, TokenError> {
        let scope = self.cfg.scope();
        let secret = self.cfg.client_secret.clone().unwrap_or_default();
        match self.cfg.flow {
            Flow::AppOnly => {
                tracing::debug!(client_id = %self.cfg.client_id, "onedrive: requesting an app-only token");
                let form = [
                    ("grant_type", "client_credentials"),
                    ("client_id", self.cfg.client_id.as_str()),
                    ("client_secret", secret.as_str()),
                    ("scope", scope.as_str()),
                ];
                request_token(&self.http, &self.cfg, &form).await
            }
            Flow::Delegated => {
                let path = self.token_path()?;
                // The file may hold a newer refresh token than memory (authorize ran again).
                let on_disk = load_token(path).ok();
                let refresh = on_disk
                    .as_ref()
                    .filter(|d| d.refreshed_at >= old.map(|o| o.refreshed_at).unwrap_or(0))
                    .or(old)
                    .and_then(|t| t.refresh_token.clone())
                    .ok_or_else(|| TokenError::NotSignedIn {
                        path: path.display().to_string(),
                        detail: "no refresh token in it".into(),
                    })?;
                tracing::info!(token_file = %path.display(), "onedrive: renewing the delegated access token");
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("client_id", self.cfg.client_id.as_str()),
                    ("refresh_token", refresh.as_str()),
                    ("scope", scope.as_str()),
                ];
                if self.cfg.client_secret.is_some() {
                    form.push(("client_secret", secret.as_str()));
                }
                let mut new = request_token(&self.http, &self.cfg, &form).await?;
                if new.refresh_token.is_none() {
                    new.refresh_token = Some(refresh);
                }
                save_token(path, &new)?;
                Ok(new)
            }
        }
    }
}
