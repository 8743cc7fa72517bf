//! How the fake Graph answers: tokens (client credentials, authorization code with
//! PKCE, refresh), drive items by path, folder creation, uploads and sessions.

use std::time::Instant;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::*;

impl Fake {
    pub(super) fn issue(&mut self, kind: &'static str, with_refresh: bool) -> Response {
        self.next_id += 1;
        let at = format!("at-{}", self.next_id);
        self.access_tokens.insert(at.clone(), kind);
        let mut body =
            json!({"token_type": "Bearer", "access_token": at, "expires_in": self.token_lifetime});
        if with_refresh {
            let rt = format!("rt-{}", self.next_id);
            self.refresh_tokens.push(rt.clone());
            body["refresh_token"] = json!(rt);
        }
        axum::Json(body).into_response()
    }

    pub(super) fn token(&mut self, tenant: &str, body: &[u8]) -> Response {
        let f = form(body);
        let get = |k: &str| f.get(k).cloned().unwrap_or_default();
        let grant = get("grant_type");
        self.grants.push(grant.clone());
        let oauth = |status: StatusCode, error: &str, desc: &str| {
            (
                status,
                axum::Json(json!({"error": error, "error_description": desc})),
            )
                .into_response()
        };
        if get("client_id") != CLIENT_ID {
            return oauth(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                "AADSTS700016: Application not found in the directory.",
            );
        }
        match grant.as_str() {
            "client_credentials" => {
                if tenant != TENANT {
                    self.violations
                        .push(format!("client credentials on tenant {tenant}"));
                }
                if !get("scope").ends_with("/.default") {
                    self.violations
                        .push(format!("app-only scope {}", get("scope")));
                }
                if get("client_secret") != CLIENT_SECRET {
                    return oauth(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x",
                    );
                }
                self.issue("app", false)
            }
            "authorization_code" => {
                let Some((challenge, redirect)) = self.codes.remove(&get("code")) else {
                    return oauth(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "AADSTS70008: The provided authorization code or refresh token has expired.",
                    );
                };
                if b64url_sha256(&get("code_verifier")) != challenge {
                    return oauth(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "AADSTS501481: The Code_Verifier does not match the code_challenge.",
                    );
                }
                if get("redirect_uri") != redirect {
                    self.violations
                        .push(format!("redirect_uri {}", get("redirect_uri")));
                }
                if !get("scope").contains("offline_access") {
                    self.violations.push("no offline_access".into());
                }
                self.issue("delegated", true)
            }
            "refresh_token" => {
                let rt = get("refresh_token");
                match self.refresh_tokens.iter().position(|t| *t == rt) {
                    Some(i) => {
                        self.refresh_tokens.remove(i);
                        self.issue("delegated", true)
                    }
                    None => oauth(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "AADSTS700082: The refresh token has expired.",
                    ),
                }
            }
            other => oauth(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant {other}"),
            ),
        }
    }

    pub(super) fn exists_folder(&self, drive: &str, path: &str) -> bool {
        path.is_empty()
            || matches!(
                self.items.get(&(drive.to_string(), path.to_string())),
                Some(Node::Folder)
            )
    }

    pub(super) fn item_json(&self, drive: &str, path: &str) -> Option<Value> {
        let name = path.rsplit('/').next().unwrap_or("");
        match self.items.get(&(drive.to_string(), path.to_string()))? {
            Node::Folder => Some(json!({"name": name, "folder": {"childCount": 0}})),
            Node::File(b) => Some(json!({"name": name, "size": b.len(), "file": {}})),
        }
    }

    pub(super) fn graph(
        &mut self,
        method: &Method,
        path: &str,
        query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response {
        self.request_times.push(Instant::now());
        self.requests.push((method.to_string(), path.to_string()));
        if self.throttle_api > 0 {
            self.throttle_api -= 1;
            self.throttled_at.push(Instant::now());
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", self.retry_after_secs.to_string())],
                axum::Json(
                    json!({"error": {"code": "activityLimitReached", "message": "throttled"}}),
                ),
            )
                .into_response();
        }
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let Some(kind) = self.access_tokens.get(token).copied() else {
            self.unauthorized += 1;
            return graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Access token has expired or is not yet valid.",
            );
        };
        let rest = path.strip_prefix("/v1.0").unwrap_or(path);
        let (drive, rest) = if let Some(r) = rest.strip_prefix("/me/drive") {
            if kind != "delegated" {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "/me request is only valid with delegated authentication flow.",
                );
            }
            ("me".to_string(), r)
        } else if let Some(r) = rest.strip_prefix("/users/") {
            let (u, r) = r.split_once('/').unwrap_or((r, ""));
            let Some(r) = r.strip_prefix("drive") else {
                return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "no drive");
            };
            if decode(u) != UPN {
                return graph_error(StatusCode::NOT_FOUND, "itemNotFound", "user not found");
            }
            (format!("user:{}", decode(u)), r)
        } else if let Some(r) = rest.strip_prefix("/sites/") {
            let (s, r) = r.split_once('/').unwrap_or((r, ""));
            let Some(r) = r.strip_prefix("drive") else {
                return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "no drive");
            };
            (format!("site:{}", decode(s)), r)
        } else {
            return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "unknown resource");
        };
        // The drive itself: who owns it (the signed-in user for /me/drive).
        if rest.is_empty() && *method == Method::GET {
            return axum::Json(json!({
                "id": format!("drive-{drive}"),
                "driveType": "business",
                "owner": {"user": {"displayName": OWNER_NAME, "email": UPN, "id": "owner-id"}}
            }))
            .into_response();
        }
        // "/root" ["/children"] or "/root:/{path}:" ["/children" | "/content" | "/createUploadSession"]
        let (item, action) = if let Some(r) = rest.strip_prefix("/root:/") {
            let idx = r.rfind(':').unwrap_or(r.len());
            (
                decode(&r[..idx]),
                r.get(idx + 1..).unwrap_or("").to_string(),
            )
        } else if let Some(r) = rest.strip_prefix("/root") {
            (String::new(), r.to_string())
        } else {
            return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "not by path");
        };
        let parent = item
            .rsplit_once('/')
            .map(|(p, _)| p)
            .unwrap_or("")
            .to_string();
        match (method.as_str(), action.as_str()) {
            ("GET", "") => match self.item_json(&drive, &item) {
                Some(j) => axum::Json(j).into_response(),
                None => graph_error(
                    StatusCode::NOT_FOUND,
                    "itemNotFound",
                    "The resource could not be found.",
                ),
            },
            ("DELETE", "") => match self.items.get(&(drive.clone(), item.clone())) {
                // Like Graph: 204 for a file (it goes to the recycle bin), 404 when missing.
                Some(Node::File(_)) => {
                    self.items.remove(&(drive, item));
                    StatusCode::NO_CONTENT.into_response()
                }
                Some(Node::Folder) => {
                    self.violations.push(format!("folder {item} deleted"));
                    StatusCode::NO_CONTENT.into_response()
                }
                None => graph_error(StatusCode::NOT_FOUND, "itemNotFound", "no such item"),
            },
            ("GET", "/content") => match self.items.get(&(drive.clone(), item.clone())) {
                Some(Node::File(_)) => {
                    // Like Graph: a redirect to a pre-authenticated download URL.
                    self.next_id += 1;
                    let id = format!("d{}", self.next_id);
                    self.downloads.insert(id.clone(), (drive, item));
                    (
                        StatusCode::FOUND,
                        [("location", format!("{}/download/{id}", self.base))],
                    )
                        .into_response()
                }
                _ => graph_error(StatusCode::NOT_FOUND, "itemNotFound", "no such file"),
            },
            ("POST", "/children") => {
                let j: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                if j["@microsoft.graph.conflictBehavior"] != "fail" || !j["folder"].is_object() {
                    self.violations.push(format!("folder create body {j}"));
                }
                if !self.exists_folder(&drive, &item) {
                    return graph_error(StatusCode::NOT_FOUND, "itemNotFound", "parent missing");
                }
                let name = j["name"].as_str().unwrap_or("").to_string();
                let path = if item.is_empty() {
                    name
                } else {
                    format!("{item}/{name}")
                };
                let key = (drive.clone(), path.clone());
                if self.items.contains_key(&key) {
                    return graph_error(
                        StatusCode::CONFLICT,
                        "nameAlreadyExists",
                        "The specified item name already exists.",
                    );
                }
                self.items.insert(key, Node::Folder);
                (
                    StatusCode::CREATED,
                    axum::Json(self.item_json(&drive, &path).unwrap()),
                )
                    .into_response()
            }
            ("PUT", "/content") => {
                if !query.contains("conflictBehavior=fail") {
                    self.violations.push(format!(
                        "simple upload without conflictBehavior=fail: {query}"
                    ));
                }
                if body.len() > 4 * 1024 * 1024 {
                    self.violations
                        .push(format!("simple upload of {} bytes", body.len()));
                    return graph_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "BadRequest",
                        "too large for simple upload",
                    );
                }
                if !self.exists_folder(&drive, &parent) {
                    return graph_error(
                        StatusCode::NOT_FOUND,
                        "itemNotFound",
                        "parent folder missing (fake requires folders)",
                    );
                }
                let key = (drive.clone(), item.clone());
                if self.items.contains_key(&key) {
                    return graph_error(
                        StatusCode::CONFLICT,
                        "nameAlreadyExists",
                        "The specified item name already exists.",
                    );
                }
                self.items.insert(key, Node::File(body.to_vec()));
                (
                    StatusCode::CREATED,
                    axum::Json(self.item_json(&drive, &item).unwrap()),
                )
                    .into_response()
            }
            ("POST", "/createUploadSession") => {
                let j: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                if j["item"]["@microsoft.graph.conflictBehavior"] != "fail" {
                    self.violations.push(format!("upload session body {j}"));
                }
                if !self.exists_folder(&drive, &parent) {
                    return graph_error(
                        StatusCode::NOT_FOUND,
                        "itemNotFound",
                        "parent folder missing",
                    );
                }
                if self.items.contains_key(&(drive.clone(), item.clone())) {
                    return graph_error(
                        StatusCode::CONFLICT,
                        "nameAlreadyExists",
                        "The specified item name already exists.",
                    );
                }
                self.next_id += 1;
                let sid = format!("s{}", self.next_id);
                self.sessions.insert(
                    sid.clone(),
                    Session {
                        drive,
                        path: item,
                        size: 0,
                        received: Vec::new(),
                    },
                );
                axum::Json(json!({
                    "uploadUrl": format!("{}/upload/{sid}?tempauth=secret-ish", self.base),
                    "expirationDateTime": "2030-01-01T00:00:00Z",
                    "nextExpectedRanges": ["0-"]
                }))
                .into_response()
            }
            _ => graph_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("{method} {action}"),
            ),
        }
    }

    pub(super) fn upload(
        &mut self,
        method: &Method,
        sid: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response {
        self.request_times.push(Instant::now());
        if headers.contains_key("authorization") {
            self.violations
                .push("bearer token sent to the upload URL".into());
        }
        if self.throttle_upload > 0 && method == Method::PUT {
            self.throttle_upload -= 1;
            self.throttled_at.push(Instant::now());
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", self.retry_after_secs.to_string())],
                "busy",
            )
                .into_response();
        }
        let Some(s) = self.sessions.get_mut(sid) else {
            return graph_error(StatusCode::NOT_FOUND, "itemNotFound", "no such session");
        };
        match method.as_str() {
            "DELETE" => {
                self.sessions.remove(sid);
                StatusCode::NO_CONTENT.into_response()
            }
            "GET" => axum::Json(json!({"nextExpectedRanges": [format!("{}-", s.received.len())]}))
                .into_response(),
            "PUT" => {
                let range = headers
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let parsed = range.strip_prefix("bytes ").and_then(|r| {
                    let (se, total) = r.split_once('/')?;
                    let (a, b) = se.split_once('-')?;
                    Some((
                        a.parse::<usize>().ok()?,
                        b.parse::<usize>().ok()?,
                        total.parse::<usize>().ok()?,
                    ))
                });
                let Some((start, end, total)) = parsed else {
                    self.violations.push(format!("bad Content-Range {range:?}"));
                    return graph_error(StatusCode::BAD_REQUEST, "invalidRange", "bad range");
                };
                self.chunks.push((start, end, total, body.len()));
                if s.size == 0 {
                    s.size = total;
                }
                let mut slip = Vec::new();
                if start != s.received.len() {
                    slip.push(format!(
                        "chunk starts at {start}, expected {}",
                        s.received.len()
                    ));
                }
                if end + 1 - start != body.len() {
                    slip.push(format!("range {range} but {} bytes", body.len()));
                }
                if total != s.size {
                    slip.push(format!("total {total} != {}", s.size));
                }
                if end + 1 < total && !body.len().is_multiple_of(CHUNK_UNIT) {
                    slip.push(format!(
                        "non-final chunk of {} bytes is no multiple of 320 KiB",
                        body.len()
                    ));
                }
                if body.len() > 60 * 1024 * 1024 {
                    slip.push("chunk over 60 MiB".into());
                }
                if !slip.is_empty() {
                    self.violations.extend(slip);
                    return graph_error(StatusCode::RANGE_NOT_SATISFIABLE, "invalidRange", "range");
                }
                s.received.extend_from_slice(body);
                if s.received.len() < s.size && self.lose_chunk_answer {
                    self.lose_chunk_answer = false;
                    return graph_error(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "invalidRange",
                        "The uploaded fragment overlaps with data that has already been received.",
                    );
                }
                if s.received.len() < s.size {
                    return (
                        StatusCode::ACCEPTED,
                        axum::Json(json!({"expirationDateTime": "2030-01-01T00:00:00Z", "nextExpectedRanges": [format!("{}-", s.received.len())]})),
                    )
                        .into_response();
                }
                let s = self.sessions.remove(sid).unwrap();
                let key = (s.drive.clone(), s.path.clone());
                if self.items.contains_key(&key) {
                    return graph_error(
                        StatusCode::CONFLICT,
                        "nameAlreadyExists",
                        "The specified item name already exists.",
                    );
                }
                self.items.insert(key, Node::File(s.received));
                (
                    StatusCode::CREATED,
                    axum::Json(self.item_json(&s.drive, &s.path).unwrap()),
                )
                    .into_response()
            }
            _ => graph_error(StatusCode::METHOD_NOT_ALLOWED, "BadRequest", "method"),
        }
    }
}
