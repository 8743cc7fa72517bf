//! Client for a STARFACE PBX's REST API: nonce login (the secret is built for the
//! login type the PBX asks for: `Internal` with SHA-512, `ActiveDirectory` with
//! base64), `authToken` reused until a 401, then one re-login; a replaced token
//! and the last one at shutdown are logged out (`DELETE /login`) so no session
//! stays live on the PBX. Fetches users, groups, group members and phone numbers;
//! `rest_directory` turns them into a `Directory` snapshot.
//! The function key sets are in `function_keys`.

mod function_keys;
pub use function_keys::{FunctionKey, FunctionKeySet, GENERIC_URL};

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};
use tokio::sync::Mutex;

use super::account::UserId;
use super::directory::Directory;
use super::error::RestError;
use super::numbers::NumberPlan;
use super::rest_directory::{
    build, link_mismatches, user_links, Fetched, LogOnce, RestAssignment, RestGroup,
    RestGroupDetail, RestPhoneNumber, RestUser,
};

/// The API version sent in `X-Version` on every request.
pub const API_VERSION: &str = "2";

/// Users whose number links are checked against their own route per refresh
/// (rotating, so every user is checked over a few refreshes; all of them once
/// one disagrees).
pub const LINK_SAMPLE: usize = 4;

/// The login object of `GET/POST /rest/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginObject {
    /// The login type the PBX asks for: `Internal` or `ActiveDirectory`.
    pub login_type: String,
    /// One-time nonce issued by the PBX.
    pub nonce: String,
    /// The secret (see `login_secret`); absent in the GET answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// `sha512` of `data` as lowercase hex.
pub fn sha512_hex(data: &str) -> String {
    hex::encode(Sha512::digest(data.as_bytes()))
}

/// The login secret for the login type the PBX named in `GET /login`: for a user
/// of Active Directory `base64(loginId + nonce + password)`, otherwise (`Internal`)
/// `loginId:sha512hex(loginId + nonce + sha512hex(password))`.
pub fn login_secret(login_type: &str, login_id: &str, nonce: &str, password: &str) -> String {
    if login_type.eq_ignore_ascii_case("ActiveDirectory") {
        return base64::engine::general_purpose::STANDARD
            .encode(format!("{login_id}{nonce}{password}"));
    }
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
    /// Where the next sample of users for the link check starts.
    sample_at: AtomicUsize,
    once: LogOnce,
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
            sample_at: AtomicUsize::new(0),
            once: LogOnce::default(),
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

    /// Log in (nonce, secret) and keep the token; returns it. A token held before
    /// is logged out, so replacing it leaves no live session behind.
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
        login.secret = Some(login_secret(
            &login.login_type,
            &self.login_id,
            &login.nonce,
            &self.password,
        ));
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
        tracing::debug!(base = %self.base, login_type = login.login_type, "PBX REST login succeeded");
        let old = self.token.lock().await.replace(token.token.clone());
        if let Some(old) = old.filter(|o| *o != token.token) {
            self.logout_token(old).await;
        }
        Ok(token.token)
    }

    /// Log out (`DELETE /rest/login`) and forget the token.
    pub async fn logout(&self) -> Result<(), RestError> {
        let Some(token) = self.token.lock().await.take() else {
            return Ok(());
        };
        self.delete_token(token).await
    }

    /// Log out a token that is being replaced; a failure is only logged, since
    /// the new token works either way.
    async fn logout_token(&self, token: String) {
        match self.delete_token(token).await {
            Ok(()) => tracing::debug!(base = %self.base, "replaced PBX REST token logged out"),
            Err(e) => {
                tracing::warn!(base = %self.base, "logging out the replaced PBX REST token failed: {e}")
            }
        }
    }

    async fn delete_token(&self, token: String) -> Result<(), RestError> {
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

    /// `GET path` with the token, decoded; on 401 log in again once and repeat.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, RestError> {
        let resp = self.send_authorized(Method::GET, path, None).await?;
        decode(&self.url(path), "GET", resp).await
    }

    /// `method path` with the token (and a JSON body); on 401 logs in again
    /// once and repeats. A second 401 means the PBX refuses this REST user.
    async fn send_authorized(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response, RestError> {
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
            let mut req = self
                .request(method.clone(), &url)
                .header("authToken", token);
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|source| RestError::Unreachable {
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
                // The refused token is logged out once the new one is there (see `login`).
                relogged = true;
                self.login().await?;
                continue;
            }
            return Ok(resp);
        }
    }

    /// Fetch users, groups (with members) and phone numbers, check the number
    /// links of a sample of users against their own route, and build a snapshot.
    pub async fn fetch_directory(&self, plan: &NumberPlan) -> Result<Directory, RestError> {
        let users: Vec<RestUser> = self.get("/users").await?;
        let groups: Vec<RestGroup> = self.get("/groups").await?;
        let mut details: Vec<RestGroupDetail> = Vec::with_capacity(groups.len());
        for g in &groups {
            details.push(self.get(&format!("/groups/{}", g.id)).await?);
        }
        let numbers: Vec<RestPhoneNumber> = self.get("/phonenumbers").await?;

        let links = user_links(&numbers);
        let mut ids: Vec<UserId> = users.iter().map(|u| u.id).collect();
        ids.sort_unstable();
        let start = self.sample_at.fetch_add(LINK_SAMPLE, Ordering::Relaxed);
        let sample: Vec<UserId> = ids
            .iter()
            .cycle()
            .skip(start % ids.len().max(1))
            .take(LINK_SAMPLE.min(ids.len()))
            .copied()
            .collect();
        let mut per_user = self.user_routes(&sample).await?;
        if !link_mismatches(&links, &per_user).is_empty() {
            // One disagreement means the links cannot be trusted: check everyone.
            let rest: Vec<UserId> = ids
                .iter()
                .filter(|u| !per_user.contains_key(u))
                .copied()
                .collect();
            per_user.extend(self.user_routes(&rest).await?);
        }
        Ok(build(
            Fetched {
                users,
                groups,
                details,
                numbers,
                per_user,
            },
            plan,
            &self.base,
            &self.once,
        )?)
    }

    /// Phone number ids of each user from `/users/{id}/phonenumberconfig/phonenumbers/`.
    /// A route the PBX refuses only skips that check (logged once).
    async fn user_routes(
        &self,
        users: &[UserId],
    ) -> Result<HashMap<UserId, BTreeSet<u64>>, RestError> {
        let mut out = HashMap::new();
        for &u in users {
            let path = format!("/users/{u}/phonenumberconfig/phonenumbers/");
            match self.get::<Vec<RestAssignment>>(&path).await {
                Ok(list) => {
                    let ids = list
                        .iter()
                        .filter(|a| a.account_id == u)
                        .map(|a| a.phone_number_id)
                        .collect();
                    out.insert(u, ids);
                }
                Err(e @ RestError::Status { .. }) => {
                    if self.once.first(format!("user route {u}")) {
                        tracing::warn!(
                            account_id = u,
                            "cannot check the number links of user {u}: {e}"
                        );
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_has_the_documented_shape() {
        let s = login_secret("Internal", "0001", "abc", "pw");
        let (id, hash) = s.split_once(':').unwrap();
        assert_eq!(id, "0001");
        assert_eq!(hash, sha512_hex(&format!("0001abc{}", sha512_hex("pw"))));
        assert_eq!(hash.len(), 128);
        assert_eq!(
            sha512_hex(""),
            "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
        );
        // Active Directory: base64 of login id, nonce and password.
        assert_eq!(
            login_secret("ActiveDirectory", "0001", "abc", "pw"),
            "MDAwMWFiY3B3"
        );
    }
}
