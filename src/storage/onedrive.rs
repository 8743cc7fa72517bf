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

mod account;
mod authorize;
mod fetch;
pub mod graph;
mod setup;
pub mod token;

pub use account::*;
pub use authorize::*;
pub use setup::*;

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
