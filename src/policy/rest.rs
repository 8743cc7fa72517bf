//! Client for the PBX's REST API in the STARFACE shape: nonce login with
//! SHA-512, `authToken` reused until a 401, then one re-login; fetches users, groups,
//! group members and phone numbers and turns them into a `Directory` snapshot.
//! The function key sets are in `function_keys`.

mod function_keys;
pub use function_keys::{FunctionKey, FunctionKeySet, GENERIC_URL};

use std::collections::HashMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};
use tokio::sync::Mutex;

use super::directory::{Directory, Group, GroupId, User, UserId};
use super::error::RestError;
use super::numbers::NumberPlan;

/// The API version sent in `X-Version` on every request.
pub const API_VERSION: &str = "2";

/// The login object of `GET/POST /rest/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginObject {
    /// Always "Internal" for a PBX user.
    pub login_type: String,
    /// One-time nonce issued by the PBX.
    pub nonce: String,
    /// `loginId:sha512hex(loginId + nonce + sha512hex(password))`, null in the GET answer.
    pub secret: Option<String>,
}

/// `sha512` of `data` as lowercase hex.
pub fn sha512_hex(data: &str) -> String {
    hex::encode(Sha512::digest(data.as_bytes()))
}

/// The login secret (the PBX's REST login).
pub fn login_secret(login_id: &str, nonce: &str, password: &str) -> String {
    let inner = sha512_hex(password);
    format!(
        "{login_id}:{}",
        sha512_hex(&format!("{login_id}{nonce}{inner}"))
    )
}

/// A logged-in (or lazily logging-in) connection to one PBX.
pub struct PbxClient {
    base: String,
    login_id: String,
    password: String,
    http: reqwest::Client,
    token: Mutex<Option<String>>,
}

impl std::fmt::Debug for PbxClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PbxClient")
            .field("base", &self.base)
            .field("login_id", &self.login_id)
            .finish_non_exhaustive()
    }
}

impl PbxClient {
    /// A client for the REST base URL (`https://pbx/rest`); no request is made yet.
    pub fn new(
        base: &str,
        login_id: &str,
        password: &str,
        accept_invalid_certs: bool,
        timeout: Duration,
    ) -> Result<PbxClient, RestError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A refresh runs every few minutes: a fresh connection each time makes an
            // outage visible at once instead of hiding behind a pooled socket.
            .pool_max_idle_per_host(0)
            .danger_accept_invalid_certs(accept_invalid_certs)
            .build()
            .map_err(|source| RestError::Unreachable {
                url: base.to_string(),
                source,
            })?;
        Ok(PbxClient {
            base: base.trim_end_matches('/').to_string(),
            login_id: login_id.to_string(),
            password: password.to_string(),
            http,
            token: Mutex::new(None),
        })
    }

    /// The REST base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .header("Content-Type", "application/json")
            .header("X-Version", API_VERSION)
    }

    /// Log in (nonce, secret) and keep the token; returns it.
    pub async fn login(&self) -> Result<String, RestError> {
        let url = self.url("/login");
        let unreachable = |source| RestError::Unreachable {
            url: url.clone(),
            source,
        };
        let resp = self
            .request(Method::GET, &url)
            .send()
            .await
            .map_err(unreachable)?;
        let mut login: LoginObject = decode(&url, "GET", resp).await?;
        login.secret = Some(login_secret(&self.login_id, &login.nonce, &self.password));
        let resp = self
            .request(Method::POST, &url)
            .json(&login)
            .send()
            .await
            .map_err(unreachable)?;
        if resp.status() == StatusCode::BAD_REQUEST {
            return Err(RestError::LoginRejected {
                login_id: self.login_id.clone(),
            });
        }
        #[derive(Deserialize)]
        struct Token {
            token: String,
        }
        let token: Token = decode(&url, "POST", resp).await?;
        tracing::debug!(base = %self.base, "PBX REST login succeeded");
        *self.token.lock().await = Some(token.token.clone());
        Ok(token.token)
    }

    /// Log out (`DELETE /rest/login`) and forget the token.
    pub async fn logout(&self) -> Result<(), RestError> {
        let Some(token) = self.token.lock().await.take() else {
            return Ok(());
        };
        let url = self.url("/login");
        let resp = self
            .request(Method::DELETE, &url)
            .header("authToken", token)
            .send()
            .await
            .map_err(|source| RestError::Unreachable {
                url: url.clone(),
                source,
            })?;
        if !resp.status().is_success() && resp.status() != StatusCode::UNAUTHORIZED {
            return Err(status_error("DELETE", &url, resp).await);
        }
        Ok(())
    }

    /// `GET path` with the token; on 401 log in again once and repeat.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, RestError> {
        let url = self.url(path);
        let mut relogged = false;
        loop {
            let cached = self.token.lock().await.clone();
            let token = match cached {
                Some(t) => t,
                None => {
                    relogged = true;
                    self.login().await?
                }
            };
            let resp = self
                .request(Method::GET, &url)
                .header("authToken", token)
                .send()
                .await
                .map_err(|source| RestError::Unreachable {
                    url: url.clone(),
                    source,
                })?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                if relogged {
                    return Err(RestError::TokenRefused { url });
                }
                tracing::info!(
                    url,
                    "PBX REST token expired or revoked (401): logging in again"
                );
                *self.token.lock().await = None;
                continue;
            }
            return decode(&url, "GET", resp).await;
        }
    }

    /// Fetch users, groups (with members) and phone numbers and build a snapshot.
    pub async fn fetch_directory(&self, plan: &NumberPlan) -> Result<Directory, RestError> {
        let users: Vec<RestUser> = self.get("/users").await?;
        let groups: Vec<RestGroup> = self.get("/groups").await?;
        let mut details = Vec::with_capacity(groups.len());
        for g in &groups {
            let d: RestGroupDetail = self.get(&format!("/groups/{}", g.id)).await?;
            details.push(d);
        }
        let numbers: Vec<RestPhoneNumber> = self.get("/phonenumbers").await?;

        let mut user_numbers: HashMap<UserId, (Vec<_>, Vec<_>)> = HashMap::new();
        let mut group_numbers: HashMap<GroupId, (Vec<_>, Vec<_>)> = HashMap::new();
        for n in &numbers {
            let Some(raw) = n.number.as_deref().filter(|s| !s.is_empty()) else {
                continue;
            };
            let kind = n.kind.as_deref().unwrap_or("").to_ascii_uppercase();
            let (internal, normalised) = match kind.as_str() {
                "INTERNAL" => (true, plan.normalise_internal(raw)),
                "EXTERNAL" => (false, plan.normalise(&n.full_external())),
                other => {
                    tracing::debug!(id = ?n.id, kind = other, "PBX phone number of another type ignored");
                    continue;
                }
            };
            let push = |slot: &mut (Vec<_>, Vec<_>)| {
                if internal {
                    slot.0.push(normalised.clone())
                } else {
                    slot.1.push(normalised.clone())
                }
            };
            if let Some(u) = n.assigned_user_account_id {
                push(user_numbers.entry(u).or_default());
            }
            if let Some(g) = n.assigned_group_account_id {
                push(group_numbers.entry(g).or_default());
            }
        }

        let users = users
            .into_iter()
            .map(|u| {
                let (internal, external) = user_numbers.remove(&u.id).unwrap_or_default();
                User {
                    id: u.id,
                    login: u.login,
                    first_name: u.first_name.unwrap_or_default(),
                    family_name: u.family_name.unwrap_or_default(),
                    email: u.email.filter(|e| !e.is_empty()),
                    internal_numbers: internal,
                    external_numbers: external,
                }
            })
            .collect();
        let groups = groups
            .into_iter()
            .zip(details)
            .map(|(g, d)| {
                let (mut internal, mut external) = group_numbers.remove(&g.id).unwrap_or_default();
                if let Some(n) = text(&g.groupinternalnumber) {
                    internal.push(plan.normalise_internal(&n));
                }
                if let Some(n) = text(&g.groupexternalnumber) {
                    external.push(plan.normalise(&n));
                }
                Group {
                    id: g.id,
                    name: g.groupname.or(d.name).unwrap_or_default(),
                    internal_numbers: internal,
                    external_numbers: external,
                    members: d
                        .assignable_users
                        .iter()
                        .filter(|m| m.assigned)
                        .map(|m| m.id)
                        .collect(),
                }
            })
            .collect();
        Ok(Directory::new(
            plan.clone(),
            self.base.clone(),
            users,
            groups,
        )?)
    }
}

async fn decode<T: DeserializeOwned>(
    url: &str,
    method: &'static str,
    resp: reqwest::Response,
) -> Result<T, RestError> {
    if !resp.status().is_success() {
        return Err(status_error(method, url, resp).await);
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|source| RestError::Unreachable {
            url: url.to_string(),
            source,
        })?;
    serde_json::from_slice(&bytes).map_err(|e| RestError::Decode {
        url: url.to_string(),
        detail: e.to_string(),
    })
}

async fn status_error(method: &'static str, url: &str, resp: reqwest::Response) -> RestError {
    let status = resp.status().as_u16();
    let mut body = resp.text().await.unwrap_or_default();
    body.truncate(200);
    RestError::Status {
        method,
        url: url.to_string(),
        status,
        body,
    }
}

/// A JSON string or number as text; null and "" are none.
fn text(v: &Option<serde_json::Value>) -> Option<String> {
    match v {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RestUser {
    id: UserId,
    login: String,
    first_name: Option<String>,
    family_name: Option<String>,
    email: Option<String>,
}

#[derive(Deserialize)]
struct RestGroup {
    id: GroupId,
    groupname: Option<String>,
    groupinternalnumber: Option<serde_json::Value>,
    groupexternalnumber: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RestGroupDetail {
    name: Option<String>,
    #[serde(default)]
    assignable_users: Vec<RestMember>,
}

#[derive(Deserialize)]
struct RestMember {
    id: UserId,
    #[serde(default)]
    assigned: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RestPhoneNumber {
    id: Option<serde_json::Value>,
    number: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    exit_code: Option<String>,
    national_prefix: Option<String>,
    local_prefix: Option<String>,
    assigned_user_account_id: Option<UserId>,
    assigned_group_account_id: Option<GroupId>,
}

impl RestPhoneNumber {
    /// exitCode ("+" or "00") + nationalPrefix (country) + localPrefix (area) + number.
    fn full_external(&self) -> String {
        let number = self.number.as_deref().unwrap_or("");
        match (&self.exit_code, &self.national_prefix) {
            (Some(exit), Some(country)) if !exit.is_empty() && !country.is_empty() => format!(
                "{exit}{country}{}{number}",
                self.local_prefix.as_deref().unwrap_or("")
            ),
            _ => number.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_has_the_documented_shape() {
        let s = login_secret("0001", "abc", "pw");
        let (id, hash) = s.split_once(':').unwrap();
        assert_eq!(id, "0001");
        assert_eq!(hash, sha512_hex(&format!("0001abc{}", sha512_hex("pw"))));
        assert_eq!(hash.len(), 128);
        assert_eq!(
            sha512_hex(""),
            "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
        );
    }
}
