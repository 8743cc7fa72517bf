//! `onedrive://DRIVE/folder/$Y`: OneDrive for Business / SharePoint through Microsoft
//! Graph, with our own small client ([`graph`], [`token`]).
//!
//! DRIVE selects the drive:
//! - `me` (or empty: `onedrive:///folder`) — the signed-in user's drive (delegated);
//! - a user principal name, `rec@contoso.com` — `/users/{upn}/drive`;
//! - `site:{site-id}` — the default document library of a SharePoint site;
//! - `drive:{drive-id}` — any drive by id.
//!
//! Sign-in (from the target's secrets, never from the URL): `app` = client credentials
//! (tenant, client id, client secret), `delegated` = a user's consent through
//! [`authorize`] (link, pasted code, refresh token in the data dir, mode 0600). The
//! default is `delegated` for `me` and when no client secret is configured, else `app`.
//!
//! Uploads: folders created one level at a time; files up to [`SIMPLE_UPLOAD_MAX`] with
//! one PUT, larger ones through an upload session in chunks of [`CHUNK`] (a multiple
//! of 320 KiB). Nothing is ever overwritten (`conflictBehavior=fail`): a file that
//! is already there counts as delivered when its size matches and its content, read
//! back, has the local file's SHA-256; else the upload fails. Deleting a set removes
//! its items (signature first; a missing one counts as deleted) to the recycle bin.
//! Fetching a set (for the console) downloads each of its files the drive holds.

mod fetch;
pub mod graph;
pub mod token;

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use self::graph::{Graph, GraphError};
use self::token::{Flow, OAuthConfig, TokenError, TokenSource};
use super::{expand_template, Placement, Secrets, Target, TargetError, TargetSecret, UploadSet};

/// Largest file sent with a single PUT; larger files go through an upload session.
pub const SIMPLE_UPLOAD_MAX: u64 = 4 * 1024 * 1024;
/// Upload-session chunks must be multiples of this (Graph's rule).
pub const CHUNK_UNIT: u64 = 320 * 1024;
/// Chunk size of upload sessions: 10 × 320 KiB.
pub const CHUNK: u64 = 10 * CHUNK_UNIT;
const _: () = assert!(CHUNK.is_multiple_of(CHUNK_UNIT) && CHUNK <= 60 * 1024 * 1024);
/// Redirect URI used by default for the delegated sign-in (a native/public client):
/// `https://<the cloud's login host>/common/oauth2/nativeclient`.
pub fn native_client_redirect(login_host: &str) -> String {
    format!("https://{login_host}/common/oauth2/nativeclient")
}
/// How often an idle delegated target renews its refresh token.
pub const KEEP_ALIVE_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Login and Graph hosts of a Microsoft cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloudHosts {
    /// Login (Entra ID) host.
    pub login: &'static str,
    /// Microsoft Graph host.
    pub graph: &'static str,
}

/// The hosts of a cloud by name: `global`, `usgov` (GCC High), `usgov-dod`, `china`
/// (21Vianet), `germany` (the old Microsoft Cloud Deutschland).
pub fn cloud_hosts(name: &str) -> Option<CloudHosts> {
    let (login, graph) = match name.to_ascii_lowercase().as_str() {
        "" | "global" | "public" | "worldwide" => {
            ("login.microsoftonline.com", "graph.microsoft.com")
        }
        "usgov" | "us-gov" | "gcchigh" => ("login.microsoftonline.us", "graph.microsoft.us"),
        "usgov-dod" | "dod" => ("login.microsoftonline.us", "dod-graph.microsoft.us"),
        "china" | "cn" => ("login.chinacloudapi.cn", "microsoftgraph.chinacloudapi.cn"),
        "germany" | "de" => ("login.microsoftonline.de", "graph.microsoft.de"),
        _ => return None,
    };
    Some(CloudHosts { login, graph })
}

/// `host` → `https://host`; a full base URL is kept (without a trailing slash).
fn base_url(host: &str) -> String {
    let h = host.trim_end_matches('/');
    if h.starts_with("http://") || h.starts_with("https://") {
        h.to_string()
    } else {
        format!("https://{h}")
    }
}

/// Why `callrec onedrive authorize` failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    /// The target or its settings are unusable for a delegated sign-in.
    #[error("onedrive target {target}: {detail}; check the target URL and its [[secrets.target]] entry (client_id, tenant, redirect_uri)")]
    Config {
        /// The target URL.
        target: String,
        /// What is wrong.
        detail: String,
    },
    /// `--code` was given without a link having been made first.
    #[error("no authorization in progress for {target} ({path}: {detail}); run `callrec onedrive authorize` first and open the link it prints")]
    NotStarted {
        /// The target URL.
        target: String,
        /// The pending-authorization file.
        path: String,
        /// Why it could not be read.
        detail: String,
    },
    /// The identity platform refused the code, or storing the token failed.
    #[error("onedrive target {target}: {source}; a code works only once and for a few minutes: run `callrec onedrive authorize` again for a new link")]
    Token {
        /// The target URL.
        target: String,
        /// The underlying failure.
        source: TokenError,
    },
    /// A local file could not be written.
    #[error("writing {path} failed: {detail}; check the data dir's permissions")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        detail: String,
    },
}

/// What [`authorize`] did; its `Display` is the text for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeOutcome {
    /// The link to open; the code from the page it leads to goes to `--code`.
    Link {
        /// The authorization URL.
        url: String,
    },
    /// The code was exchanged; the refresh token is in `token_file`.
    SignedIn {
        /// Where the token is kept (mode 0600).
        token_file: PathBuf,
    },
}

impl std::fmt::Display for AuthorizeOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthorizeOutcome::Link { url } => write!(
                f,
                "Open this link in a browser and sign in with the account whose drive receives the recordings:\n\n{url}\n\n\
                 After the sign-in the browser shows an address containing code=…; copy the code \
                 (or the whole address) and run:\n  callrec onedrive authorize --code CODE"
            ),
            AuthorizeOutcome::SignedIn { token_file } => write!(
                f,
                "Signed in. The refresh token is kept in {} (mode 0600) and renewed automatically.",
                token_file.display()
            ),
        }
    }
}

/// The drive a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drive {
    /// The signed-in user's drive.
    Me,
    /// A user's drive by user principal name or id.
    User(String),
    /// A SharePoint site's default library by site id.
    Site(String),
    /// A drive by id.
    Id(String),
}

impl Drive {
    /// The Graph path of the drive, e.g. `/users/rec%40contoso.com/drive`.
    pub fn graph_path(&self) -> String {
        match self {
            Drive::Me => "/me/drive".into(),
            Drive::User(u) => format!("/users/{}/drive", encode_segment(u)),
            Drive::Site(s) => format!("/sites/{}/drive", encode_segment(s)),
            Drive::Id(d) => format!("/drives/{}", encode_segment(d)),
        }
    }
}

/// Splits `onedrive://DRIVE/folder/…` into the drive and the folder template.
pub fn parse_url(url: &str) -> Result<(Drive, String), String> {
    let rest = url
        .strip_prefix("onedrive://")
        .ok_or("not an onedrive:// URL")?;
    let (authority, folder) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains(':')
        && !authority.starts_with("site:")
        && !authority.starts_with("drive:")
    {
        return Err(
            "the URL must not carry a password or port; secrets go into the config file".into(),
        );
    }
    let drive = if authority.is_empty() || authority.eq_ignore_ascii_case("me") {
        Drive::Me
    } else if let Some(s) = authority.strip_prefix("site:") {
        Drive::Site(s.to_string())
    } else if let Some(d) = authority.strip_prefix("drive:") {
        Drive::Id(d.to_string())
    } else {
        Drive::User(authority.to_string())
    };
    let folder = folder.trim_matches('/').to_string();
    if folder.split('/').any(|s| s == ".." || s == ".") {
        return Err("the folder must not contain . or .. segments".into());
    }
    Ok((drive, folder))
}

/// Percent-encodes one path segment for a Graph URL (RFC 3986 unreserved characters stay).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a `/`-separated path, segment by segment.
fn encode_path(p: &str) -> String {
    p.split('/')
        .filter(|s| !s.is_empty())
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// Where the delegated token of `url` is kept: the secrets' `token_file`, else
/// `<data_dir>/onedrive/<first 16 hex of SHA-256(url)>.token.json`.
pub fn token_file_for(
    data_dir: Option<&Path>,
    url: &str,
    secret: &TargetSecret,
) -> Option<PathBuf> {
    if let Some(f) = &secret.cloud.token_file {
        return Some(f.clone());
    }
    use sha2::{Digest, Sha256};
    let h = hex::encode(Sha256::digest(url.as_bytes()));
    data_dir.map(|d| d.join("onedrive").join(format!("{}.token.json", &h[..16])))
}

/// The sign-in settings of a target from its secrets.
pub fn oauth_config(
    url: &str,
    drive: &Drive,
    secret: &TargetSecret,
    data_dir: Option<&Path>,
) -> Result<OAuthConfig, String> {
    let c = &secret.cloud;
    let cloud_name = c.cloud.clone().unwrap_or_default();
    let hosts = cloud_hosts(&cloud_name).ok_or_else(|| {
        format!("unknown cloud {cloud_name:?}; use global, usgov, usgov-dod, china or germany")
    })?;
    let client_id =
        c.client_id.clone().filter(|s| !s.is_empty()).ok_or(
            "no client_id (the app registration's application id) in the target's secrets",
        )?;
    let client_secret = c.resolved_client_secret();
    if c.client_secret_env.is_some() && client_secret.is_none() {
        return Err(format!(
            "client_secret_env names {:?}, which is not set",
            c.client_secret_env.as_deref().unwrap_or("")
        ));
    }
    let flow = match c.auth.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("app") | Some("app-only") | Some("client_credentials") => Flow::AppOnly,
        Some("delegated") | Some("user") => Flow::Delegated,
        Some(other) => return Err(format!("auth = {other:?}; use \"app\" or \"delegated\"")),
        None if *drive == Drive::Me || client_secret.is_none() => Flow::Delegated,
        None => Flow::AppOnly,
    };
    let tenant = match (&c.tenant, flow) {
        (Some(t), _) if !t.is_empty() => t.clone(),
        (_, Flow::Delegated) => "organizations".into(),
        (_, Flow::AppOnly) => {
            return Err("app-only sign-in needs tenant (the directory id or domain)".into())
        }
    };
    if flow == Flow::AppOnly {
        if client_secret.is_none() {
            return Err("app-only sign-in needs client_secret or client_secret_env".into());
        }
        if *drive == Drive::Me {
            return Err("app-only sign-in has no \"me\": name the user (onedrive://user@domain/…) or the site (onedrive://site:ID/…)".into());
        }
    }
    let token_file = match flow {
        Flow::Delegated => Some(token_file_for(data_dir, url, secret).ok_or(
            "delegated sign-in keeps its token in the data dir, which was not passed to the storage targets (Secrets::set_data_dir), and no token_file is set",
        )?),
        Flow::AppOnly => None,
    };
    let graph_resource = format!("https://{}", hosts.graph);
    Ok(OAuthConfig {
        login_base: base_url(c.login_host.as_deref().unwrap_or(hosts.login)),
        graph_base: base_url(c.graph_host.as_deref().unwrap_or(hosts.graph)),
        graph_resource,
        tenant,
        client_id,
        client_secret,
        redirect_uri: c
            .redirect_uri
            .clone()
            .unwrap_or_else(|| native_client_redirect(hosts.login)),
        permission: c
            .scope
            .clone()
            .unwrap_or_else(|| "Files.ReadWrite.All".to_string()),
        flow,
        token_file,
    })
}

/// Builds an HTTP client for Graph and the login host.
fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        .user_agent(concat!("callrec/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// The text of a transport error with its causes, without the URL (upload URLs carry a
/// pre-authenticated token).
pub fn transport_detail(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The `onedrive://` URLs among `urls` that sign in delegated (and so need
/// `callrec onedrive authorize`), judged by their secrets; for the CLI to pick the
/// target when the user names none.
pub fn delegated_targets<'a>(
    urls: impl IntoIterator<Item = &'a str>,
    secrets: &Secrets,
) -> Vec<String> {
    urls.into_iter()
        .filter(|u| u.starts_with("onedrive://"))
        .filter(|u| {
            parse_url(u).is_ok_and(|(drive, _)| {
                let secret = secrets.for_target(u);
                oauth_config(u, &drive, &secret, Some(Path::new("/")))
                    .is_ok_and(|c| c.flow == Flow::Delegated)
            })
        })
        .map(str::to_string)
        .collect()
}

/// Starts a delegated sign-in (`code = None`: returns the link to open) or finishes it
/// (`code = Some(code or the whole redirect address)`: exchanges the code and stores the
/// refresh token with mode 0600). `data_dir` is callrec's data dir; `target_url` the
/// `onedrive://` target as configured, whose secrets hold client id, tenant and cloud.
pub async fn authorize(
    data_dir: &Path,
    target_url: &str,
    secrets: &Secrets,
    code: Option<&str>,
) -> Result<AuthorizeOutcome, AuthorizeError> {
    let cfg_err = |detail: String| AuthorizeError::Config {
        target: target_url.to_string(),
        detail,
    };
    let (drive, _) = parse_url(target_url).map_err(cfg_err)?;
    let secret = secrets.for_target(target_url);
    let mut cfg = oauth_config(target_url, &drive, &secret, Some(data_dir)).map_err(cfg_err)?;
    if cfg.flow != Flow::Delegated {
        return Err(cfg_err(
            "the target signs in app-only (client credentials); authorize is for delegated sign-in (set auth = \"delegated\")".into(),
        ));
    }
    let token_file = cfg
        .token_file
        .clone()
        .ok_or_else(|| cfg_err("no token file".into()))?;
    let pending = token_file.with_extension("pending.json");
    match code {
        None => {
            use rand::RngCore;
            let mut raw = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut raw);
            let verifier = base64url(&raw);
            let mut st = [0u8; 12];
            rand::thread_rng().fill_bytes(&mut st);
            let state = base64url(&st);
            let challenge = {
                use sha2::{Digest, Sha256};
                base64url(&Sha256::digest(verifier.as_bytes()))
            };
            let p = Pending {
                code_verifier: verifier,
                state: state.clone(),
                created_at: token::now_unix(),
            };
            token::write_private_json(&pending, &p).map_err(|e| AuthorizeError::Io {
                path: pending.display().to_string(),
                detail: e.to_string(),
            })?;
            let query = [
                ("client_id", cfg.client_id.as_str()),
                ("response_type", "code"),
                ("redirect_uri", cfg.redirect_uri.as_str()),
                ("response_mode", "query"),
                ("scope", &cfg.scope()),
                ("state", &state),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ]
            .iter()
            .map(|(k, v)| format!("{k}={}", encode_segment(v)))
            .collect::<Vec<_>>()
            .join("&");
            tracing::info!(target_url, "onedrive: authorization link made");
            Ok(AuthorizeOutcome::Link {
                url: format!("{}?{query}", cfg.authorize_url()),
            })
        }
        Some(pasted) => {
            let not_started = |detail: String| AuthorizeError::NotStarted {
                target: target_url.to_string(),
                path: pending.display().to_string(),
                detail,
            };
            let bytes = std::fs::read(&pending).map_err(|e| not_started(e.to_string()))?;
            let p: Pending = serde_json::from_slice(&bytes)
                .map_err(|e| not_started(format!("unreadable: {e}")))?;
            let (code, state) = extract_code(pasted);
            if state.as_ref().is_some_and(|s| *s != p.state) {
                return Err(not_started(
                    "the pasted address belongs to another authorization link (state differs)"
                        .into(),
                ));
            }
            let verifier = p.code_verifier;
            let http = http_client().map_err(cfg_err)?;
            let scope = cfg.scope();
            let secret_value = cfg.client_secret.take();
            let mut form = vec![
                ("grant_type", "authorization_code"),
                ("client_id", cfg.client_id.as_str()),
                ("code", code.as_str()),
                ("redirect_uri", cfg.redirect_uri.as_str()),
                ("code_verifier", verifier.as_str()),
                ("scope", scope.as_str()),
            ];
            if let Some(s) = &secret_value {
                form.push(("client_secret", s.as_str()));
            }
            let tok = token::request_token(&http, &cfg, &form)
                .await
                .map_err(|source| AuthorizeError::Token {
                    target: target_url.to_string(),
                    source,
                })?;
            if tok.refresh_token.is_none() {
                return Err(AuthorizeError::Token {
                    target: target_url.to_string(),
                    source: TokenError::Protocol {
                        endpoint: cfg.token_url(),
                        detail: "no refresh token returned; the scope offline_access must be allowed for the app".into(),
                    },
                });
            }
            token::save_token(&token_file, &tok).map_err(|source| AuthorizeError::Token {
                target: target_url.to_string(),
                source,
            })?;
            let _ = std::fs::remove_file(&pending);
            tracing::info!(target_url, token_file = %token_file.display(), "onedrive: signed in (delegated)");
            Ok(AuthorizeOutcome::SignedIn { token_file })
        }
    }
}

/// A started delegated sign-in: the PKCE verifier and the state of the link.
#[derive(serde::Serialize, Deserialize)]
struct Pending {
    code_verifier: String,
    state: String,
    created_at: i64,
}

/// The code (and state, if given) from what the user pasted: the code itself or the
/// whole redirect address.
fn extract_code(pasted: &str) -> (String, Option<String>) {
    let s = pasted.trim();
    let Some(q) = s
        .split_once('?')
        .map(|(_, q)| q)
        .or_else(|| s.contains("code=").then_some(s))
    else {
        return (s.to_string(), None);
    };
    let mut code = None;
    let mut state = None;
    for pair in q.split(['&', '#']) {
        if let Some(v) = pair.strip_prefix("code=") {
            code = Some(percent_decode(v));
        } else if let Some(v) = pair.strip_prefix("state=") {
            state = Some(percent_decode(v));
        }
    }
    (code.unwrap_or_else(|| s.to_string()), state)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or(""), 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

fn base64url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// An item as Graph returns it.
#[derive(Debug, Deserialize)]
struct Item {
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    folder: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionInfo {
    #[serde(default)]
    upload_url: Option<String>,
    #[serde(default)]
    next_expected_ranges: Vec<String>,
}

/// A OneDrive / SharePoint drive target.
#[derive(Debug)]
pub struct OneDriveTarget {
    url: String,
    drive: Drive,
    template: String,
    graph: Graph,
    /// Folders known to exist (created or seen) since start.
    folders: Mutex<HashSet<String>>,
}

impl OneDriveTarget {
    /// Opens `onedrive://…` with its secrets; `data_dir` holds the delegated token.
    pub fn from_url(
        url: &str,
        secret: TargetSecret,
        data_dir: Option<&Path>,
    ) -> Result<OneDriveTarget, TargetError> {
        let cfg_err = |detail: String| TargetError::Config {
            target: url.to_string(),
            detail,
        };
        let (drive, template) = parse_url(url).map_err(cfg_err)?;
        let cfg = oauth_config(url, &drive, &secret, data_dir).map_err(cfg_err)?;
        let http = http_client().map_err(cfg_err)?;
        let base = format!("{}/v1.0", cfg.graph_base);
        let flow = cfg.flow;
        let tokens = Arc::new(TokenSource::new(cfg, http.clone()));
        if flow == Flow::Delegated {
            spawn_keep_alive(url, Arc::downgrade(&tokens));
        }
        tracing::debug!(target_url = url, ?flow, "onedrive: target opened");
        Ok(OneDriveTarget {
            url: url.to_string(),
            drive,
            template,
            graph: Graph::new(http, base, tokens),
            folders: Mutex::new(HashSet::new()),
        })
    }

    /// The drive folder (without leading slash) a set goes to.
    pub fn folder_for(&self, set: &UploadSet) -> String {
        expand_template(&self.template, set.start)
            .split('/')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("/")
    }

    fn item_path(&self, path: &str) -> String {
        if path.is_empty() {
            format!("{}/root", self.drive.graph_path())
        } else {
            format!("{}/root:/{}:", self.drive.graph_path(), encode_path(path))
        }
    }

    /// Maps a Graph failure to a [`TargetError`] for `path`.
    fn error(&self, op: &str, path: &str, e: GraphError) -> TargetError {
        let target = self.url.clone();
        let path = path.to_string();
        match e {
            GraphError::Token(TokenError::Unreachable { endpoint, detail }) => TargetError::Unreachable {
                target,
                detail: format!("login host {endpoint}: {detail}"),
            },
            GraphError::Token(t) => TargetError::Auth {
                target,
                detail: format!("{t}; check tenant, client_id and the client secret (app-only) or sign in again with `callrec onedrive authorize` (delegated)"),
            },
            GraphError::Transport(detail) => TargetError::Unreachable {
                target,
                detail: format!("Graph: {detail}"),
            },
            GraphError::Status { status, code, message } => {
                let detail = format!("HTTP {} {code}: {message}", status.as_u16());
                match status {
                    StatusCode::UNAUTHORIZED => TargetError::Auth {
                        target,
                        detail: format!("{detail}; Graph refused a fresh token too: check the app's API permissions and admin consent"),
                    },
                    StatusCode::FORBIDDEN => TargetError::Permission {
                        target,
                        path,
                        detail: format!("{detail}; the app needs Files.ReadWrite.All (or Sites.ReadWrite.All for sites) with admin consent, and the user or site must exist"),
                    },
                    StatusCode::INSUFFICIENT_STORAGE => TargetError::NoSpace { target, path, detail },
                    StatusCode::NOT_FOUND => TargetError::Io {
                        target,
                        op: op.to_string(),
                        path,
                        detail: format!("{detail}; check that the user, site or drive in the URL exists and has a OneDrive"),
                    },
                    _ => TargetError::Io {
                        target,
                        op: op.to_string(),
                        path,
                        detail,
                    },
                }
            }
        }
    }

    async fn get_item(&self, path: &str) -> Result<Option<Item>, TargetError> {
        let resp = self
            .graph
            .send(Method::GET, &self.item_path(path), |r| r)
            .await
            .map_err(|e| self.error("look up", path, e))?;
        match resp.status() {
            s if s.is_success() => Ok(Some(resp.json().await.map_err(|e| TargetError::Io {
                target: self.url.clone(),
                op: "look up".into(),
                path: path.to_string(),
                detail: format!("bad item JSON: {e}"),
            })?)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.error("look up", path, GraphError::from_response(resp).await)),
        }
    }

    /// Creates `folder` and its parents, one level at a time.
    async fn ensure_folder(&self, folder: &str) -> Result<(), TargetError> {
        if folder.is_empty()
            || self
                .folders
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(folder)
        {
            return Ok(());
        }
        let exists = matches!(self.get_item(folder).await?, Some(i) if i.folder.is_some());
        if !exists {
            let mut parent = String::new();
            for seg in folder.split('/') {
                let children = format!("{}/children", self.item_path(&parent));
                let body =
                    json!({"name": seg, "folder": {}, "@microsoft.graph.conflictBehavior": "fail"});
                let here = if parent.is_empty() {
                    seg.to_string()
                } else {
                    format!("{parent}/{seg}")
                };
                let resp = self
                    .graph
                    .send(Method::POST, &children, |r| r.json(&body))
                    .await
                    .map_err(|e| self.error("create folder", &here, e))?;
                match resp.status() {
                    s if s.is_success() => {
                        tracing::info!(target_url = %self.url, folder = %here, "onedrive: folder created")
                    }
                    StatusCode::CONFLICT => {}
                    _ => {
                        return Err(self.error(
                            "create folder",
                            &here,
                            GraphError::from_response(resp).await,
                        ))
                    }
                }
                parent = here;
            }
        }
        self.folders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(folder.to_string());
        Ok(())
    }

    /// A name that is already taken: delivered if the size matches and the content is
    /// the local file's (read back and compared by SHA-256), else refused.
    async fn existing(&self, path: &str, local: &Path, size: u64) -> Result<(), TargetError> {
        let mismatch = |detail: String| TargetError::Mismatch {
            target: self.url.clone(),
            path: path.to_string(),
            detail: format!("{detail}; it is never overwritten: move or delete the remote file"),
        };
        let found = self.get_item(path).await?.and_then(|i| i.size);
        if found != Some(size) {
            return Err(mismatch(format!(
                "a file of this name already exists with size {found:?}, local size {size}"
            )));
        }
        let remote = self.remote_sha256(path).await?;
        let local_sum = super::sha256_file(local).map_err(|e| TargetError::Local {
            target: self.url.clone(),
            path: local.display().to_string(),
            detail: e.to_string(),
        })?;
        if remote != local_sum {
            return Err(mismatch(format!(
                "a file of this name and size already exists with other content (SHA-256 {remote}, local {local_sum})"
            )));
        }
        tracing::info!(target_url = %self.url, path, size, "onedrive: identical file already there; counted as delivered");
        Ok(())
    }

    /// Downloads a file (Graph redirects to a pre-authenticated URL) and hashes it.
    async fn remote_sha256(&self, path: &str) -> Result<String, TargetError> {
        use sha2::{Digest, Sha256};
        let url = format!("{}/content", self.item_path(path));
        let mut resp = self
            .graph
            .send(Method::GET, &url, |r| r)
            .await
            .map_err(|e| self.error("read back", path, e))?;
        if !resp.status().is_success() {
            return Err(self.error("read back", path, GraphError::from_response(resp).await));
        }
        let mut h = Sha256::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            self.error(
                "read back",
                path,
                GraphError::Transport(transport_detail(e)),
            )
        })? {
            h.update(&chunk);
        }
        Ok(hex::encode(h.finalize()))
    }

    fn check_size(&self, path: &str, item: &Item, size: u64) -> Result<(), TargetError> {
        if item.size == Some(size) {
            Ok(())
        } else {
            Err(TargetError::Mismatch {
                target: self.url.clone(),
                path: path.to_string(),
                detail: format!("Graph reports size {:?}, local size {size}", item.size),
            })
        }
    }

    async fn simple_upload(&self, path: &str, local: &Path, size: u64) -> Result<(), TargetError> {
        let bytes = bytes::Bytes::from(read_local(&self.url, local, 0, size)?);
        let url = format!(
            "{}/content?@microsoft.graph.conflictBehavior=fail",
            self.item_path(path)
        );
        let resp = self
            .graph
            .send(Method::PUT, &url, |r| {
                r.header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(bytes.clone())
            })
            .await
            .map_err(|e| self.error("upload", path, e))?;
        match resp.status() {
            s if s.is_success() => {
                let item: Item = resp.json().await.map_err(|e| self.bad_json(path, e))?;
                self.check_size(path, &item, size)
            }
            StatusCode::CONFLICT => self.existing(path, local, size).await,
            _ => Err(self.error("upload", path, GraphError::from_response(resp).await)),
        }
    }

    fn bad_json(&self, path: &str, e: reqwest::Error) -> TargetError {
        TargetError::Io {
            target: self.url.clone(),
            op: "upload".into(),
            path: path.to_string(),
            detail: format!("unexpected answer from Graph: {e}"),
        }
    }

    async fn session_upload(&self, path: &str, local: &Path, size: u64) -> Result<(), TargetError> {
        let create = format!("{}/createUploadSession", self.item_path(path));
        let body = json!({"item": {"@microsoft.graph.conflictBehavior": "fail"}});
        let resp = self
            .graph
            .send(Method::POST, &create, |r| r.json(&body))
            .await
            .map_err(|e| self.error("create upload session", path, e))?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::CONFLICT => return self.existing(path, local, size).await,
            _ => {
                return Err(self.error(
                    "create upload session",
                    path,
                    GraphError::from_response(resp).await,
                ))
            }
        }
        let info: SessionInfo = resp.json().await.map_err(|e| self.bad_json(path, e))?;
        let upload_url = info.upload_url.ok_or_else(|| TargetError::Io {
            target: self.url.clone(),
            op: "create upload session".into(),
            path: path.to_string(),
            detail: "no uploadUrl in Graph's answer".into(),
        })?;
        let result = self.send_chunks(path, local, size, &upload_url).await;
        if result.is_err() {
            // Best effort: cancel the session so that no partial upload lingers.
            let _ = self
                .graph
                .send_upload(Method::DELETE, &upload_url, |r| r)
                .await;
        }
        result
    }

    async fn send_chunks(
        &self,
        path: &str,
        local: &Path,
        size: u64,
        upload_url: &str,
    ) -> Result<(), TargetError> {
        let mut offset = 0u64;
        let mut resumes = 0;
        loop {
            let len = CHUNK.min(size - offset);
            let chunk = bytes::Bytes::from(read_local(&self.url, local, offset, len)?);
            let range = format!("bytes {}-{}/{}", offset, offset + len - 1, size);
            tracing::debug!(path, %range, "onedrive: sending chunk");
            let sent = self
                .graph
                .send_upload(Method::PUT, upload_url, |r| {
                    r.header(reqwest::header::CONTENT_RANGE, &range)
                        .header(reqwest::header::CONTENT_LENGTH, len)
                        .body(chunk.clone())
                })
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) if resumes < 3 => {
                    resumes += 1;
                    tracing::warn!(path, error = %e, "onedrive: chunk failed; asking the session where to resume");
                    offset = self.resume_offset(path, upload_url).await?;
                    continue;
                }
                Err(e) => return Err(self.error("upload", path, e)),
            };
            match resp.status() {
                StatusCode::OK | StatusCode::CREATED => {
                    let item: Item = resp.json().await.map_err(|e| self.bad_json(path, e))?;
                    return self.check_size(path, &item, size);
                }
                StatusCode::ACCEPTED => {
                    let info: SessionInfo =
                        resp.json().await.map_err(|e| self.bad_json(path, e))?;
                    offset = next_offset(&info).unwrap_or(offset + len);
                }
                StatusCode::CONFLICT => return self.existing(path, local, size).await,
                StatusCode::RANGE_NOT_SATISFIABLE if resumes < 3 => {
                    resumes += 1;
                    offset = self.resume_offset(path, upload_url).await?;
                }
                _ => return Err(self.error("upload", path, GraphError::from_response(resp).await)),
            }
            if offset >= size {
                return Err(TargetError::Io {
                    target: self.url.clone(),
                    op: "upload".into(),
                    path: path.to_string(),
                    detail: format!("the upload session expects bytes from {offset} of {size}"),
                });
            }
        }
    }

    async fn resume_offset(&self, path: &str, upload_url: &str) -> Result<u64, TargetError> {
        let resp = self
            .graph
            .send_upload(Method::GET, upload_url, |r| r)
            .await
            .map_err(|e| self.error("upload", path, e))?;
        if !resp.status().is_success() {
            return Err(self.error("upload", path, GraphError::from_response(resp).await));
        }
        let info: SessionInfo = resp.json().await.map_err(|e| self.bad_json(path, e))?;
        next_offset(&info).ok_or_else(|| TargetError::Io {
            target: self.url.clone(),
            op: "upload".into(),
            path: path.to_string(),
            detail: "the upload session names no next range".into(),
        })
    }
}

/// Start of the first `nextExpectedRanges` entry (`"start-"` or `"start-end"`).
fn next_offset(info: &SessionInfo) -> Option<u64> {
    info.next_expected_ranges
        .first()
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse().ok())
}

/// Reads `len` bytes at `offset` from a local file of the set.
fn read_local(target: &str, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, TargetError> {
    let err = |e: std::io::Error| TargetError::Local {
        target: target.to_string(),
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    let mut f = std::fs::File::open(path).map_err(err)?;
    f.seek(SeekFrom::Start(offset)).map_err(err)?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).map_err(err)?;
    Ok(buf)
}

/// Renews an idle delegated refresh token now and then (only within a tokio runtime).
fn spawn_keep_alive(url: &str, tokens: std::sync::Weak<TokenSource>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let url = url.to_string();
    rt.spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(6 * 3600)).await;
            let Some(t) = tokens.upgrade() else { return };
            if let Err(e) = t.keep_alive(KEEP_ALIVE_MAX_AGE).await {
                tracing::warn!(target_url = %url, error = %e, "onedrive: renewing the idle refresh token failed");
            }
        }
    });
}

#[async_trait::async_trait]
impl Target for OneDriveTarget {
    async fn put(&self, set: &UploadSet) -> Result<(), TargetError> {
        let folder = self.folder_for(set);
        self.ensure_folder(&folder).await?;
        for Placement {
            local,
            remote: path,
            size,
        } in set.placements(&self.url, &folder)?
        {
            if size <= SIMPLE_UPLOAD_MAX {
                self.simple_upload(&path, &local, size).await?;
            } else {
                self.session_upload(&path, &local, size).await?;
            }
            tracing::debug!(target_url = %self.url, path, size, "onedrive: file delivered");
        }
        Ok(())
    }

    async fn delete(&self, set: &UploadSet) -> Result<(), TargetError> {
        let folder = self.folder_for(set);
        for path in set.paths_for_deletion(&self.url, &folder)? {
            let resp = self
                .graph
                .send(Method::DELETE, &self.item_path(&path), |r| r)
                .await
                .map_err(|e| self.error("delete", &path, e))?;
            match resp.status() {
                s if s.is_success() => {
                    tracing::debug!(target_url = %self.url, path, "onedrive: file deleted")
                }
                StatusCode::NOT_FOUND => {}
                _ => {
                    return Err(self.error("delete", &path, GraphError::from_response(resp).await))
                }
            }
            if self.get_item(&path).await?.is_some() {
                return Err(TargetError::still_there(&self.url, path));
            }
        }
        Ok(())
    }

    async fn fetch(&self, set: &UploadSet, into: &Path) -> Result<Vec<PathBuf>, TargetError> {
        self.fetch_set(set, into).await
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drives_and_folders_from_urls() {
        assert_eq!(
            parse_url("onedrive://me/Rec/$Y").unwrap(),
            (Drive::Me, "Rec/$Y".into())
        );
        assert_eq!(parse_url("onedrive:///Rec").unwrap().0, Drive::Me);
        let (d, f) = parse_url("onedrive://rec@contoso.com/A B/$Y-$M/").unwrap();
        assert_eq!(d, Drive::User("rec@contoso.com".into()));
        assert_eq!(f, "A B/$Y-$M");
        assert_eq!(d.graph_path(), "/users/rec%40contoso.com/drive");
        assert_eq!(
            parse_url("onedrive://site:contoso.sharepoint.com,1,2/x")
                .unwrap()
                .0
                .graph_path(),
            "/sites/contoso.sharepoint.com%2C1%2C2/drive"
        );
        assert_eq!(
            parse_url("onedrive://drive:b!x/y").unwrap().0,
            Drive::Id("b!x".into())
        );
        assert!(parse_url("onedrive://u:pw@host/x").is_err());
        assert!(parse_url("onedrive://me/../x").is_err());
    }

    #[test]
    fn delegated_targets_are_told_apart() {
        let mut secrets = Secrets::new();
        let mut d = TargetSecret::default();
        d.cloud.client_id = Some("c".into());
        secrets.insert("onedrive://me/a", d.clone());
        let mut app = d.clone();
        app.cloud.client_secret = Some("s".into());
        app.cloud.tenant = Some("t".into());
        secrets.insert("onedrive://u@x/b", app);
        let urls = [
            "onedrive://me/a",
            "onedrive://u@x/b",
            "s3://b/c",
            "file:///x",
        ];
        assert_eq!(delegated_targets(urls, &secrets), ["onedrive://me/a"]);
    }

    #[test]
    fn national_clouds() {
        assert_eq!(
            cloud_hosts("global").unwrap().login,
            "login.microsoftonline.com"
        );
        let de = cloud_hosts("germany").unwrap();
        assert_eq!(
            (de.login, de.graph),
            ("login.microsoftonline.de", "graph.microsoft.de")
        );
        assert_eq!(cloud_hosts("usgov").unwrap().graph, "graph.microsoft.us");
        assert_eq!(
            cloud_hosts("china").unwrap().login,
            "login.chinacloudapi.cn"
        );
        assert!(cloud_hosts("mars").is_none());
    }

    #[test]
    fn codes_are_taken_from_pasted_addresses() {
        assert_eq!(extract_code("  abc-123 "), ("abc-123".into(), None));
        assert_eq!(
            extract_code("https://login.microsoftonline.com/common/oauth2/nativeclient?code=0.AX%2Fy&state=s&session_state=t"),
            ("0.AX/y".into(), Some("s".into()))
        );
    }
}
