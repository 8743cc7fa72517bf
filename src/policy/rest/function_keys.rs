//! The PBX's function key sets (`/functionkeysets`), acted on for another
//! user with `actOnBehalfOf` (which needs a REST user with admin rights):
//! list a user's sets and keys, append a key, change or delete one key, and
//! ask the phones using a set to load it again. Request and answer shapes
//! follow the STARFACE REST API (`FunctionKeySet`, `FunctionKey`).

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::{decode, status_error, PbxClient};
use crate::policy::RestError;

/// `FunctionKey.functionKeyType` of a key that calls a URL.
pub const GENERIC_URL: &str = "PHONEGENERICURL";

/// A function key set of a user (`FunctionKeySet`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionKeySet {
    /// The set's id.
    pub id: String,
    /// Ids of its keys, in their order on the phone.
    #[serde(default)]
    pub key_order: Vec<String>,
    /// The set's name.
    #[serde(default)]
    pub name: String,
}

/// One function key (`FunctionKey`). Fields callrec does not use are kept in
/// `other`, so a key written back is the key that was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionKey {
    /// The owner's account id.
    pub account_id: String,
    /// What the key does (e.g. [`GENERIC_URL`]).
    pub function_key_type: String,
    /// The key's id; absent when creating one (the PBX assigns it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The label on the phone.
    pub name: String,
    /// Place in the set; absent when creating one, so it is appended at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
    /// The URL a [`GENERIC_URL`] key calls.
    #[serde(
        rename = "genericURL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub generic_url: Option<String>,
    /// Everything else the PBX sent.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// `s` escaped for a URL query.
fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `actOnBehalfOf=<login>`, escaped for a query.
fn on_behalf(login: &str) -> String {
    format!("actOnBehalfOf={}", escape(login))
}

impl PbxClient {
    /// The function key sets of user `login`.
    pub async fn function_key_sets(&self, login: &str) -> Result<Vec<FunctionKeySet>, RestError> {
        let path = format!("/functionkeysets?{}", on_behalf(login));
        let resp = self.send_authorized(Method::GET, &path, None).await?;
        decode(&self.url(&path), "GET", resp).await
    }

    /// The keys of set `set` of user `login`.
    pub async fn function_keys(
        &self,
        login: &str,
        set: &str,
    ) -> Result<Vec<FunctionKey>, RestError> {
        let path = format!("/functionkeysets/{set}/?{}", on_behalf(login));
        let resp = self.send_authorized(Method::GET, &path, None).await?;
        decode(&self.url(&path), "GET", resp).await
    }

    /// Appends `key` (without position) at the end of set `set`; returns the key as created.
    pub async fn append_function_key(
        &self,
        login: &str,
        set: &str,
        key: &FunctionKey,
    ) -> Result<FunctionKey, RestError> {
        let path = format!("/functionkeysets/{set}/?{}", on_behalf(login));
        let body = serde_json::to_value(key).expect("a function key serialises");
        let resp = self
            .send_authorized(Method::POST, &path, Some(&body))
            .await?;
        decode(&self.url(&path), "POST", resp).await
    }

    /// Writes `key` (same id, same position) back into set `set`.
    pub async fn update_function_key(
        &self,
        login: &str,
        set: &str,
        key: &FunctionKey,
    ) -> Result<(), RestError> {
        let id = key.id.as_deref().unwrap_or_default();
        let path = format!("/functionkeysets/{set}/{id}?{}", on_behalf(login));
        let body = serde_json::to_value(key).expect("a function key serialises");
        let resp = self
            .send_authorized(Method::PUT, &path, Some(&body))
            .await?;
        if !resp.status().is_success() {
            return Err(status_error("PUT", &self.url(&path), resp).await);
        }
        Ok(())
    }

    /// Deletes key `id` from set `set`.
    pub async fn delete_function_key(
        &self,
        login: &str,
        set: &str,
        id: &str,
    ) -> Result<(), RestError> {
        let path = format!("/functionkeysets/{set}/{id}?{}", on_behalf(login));
        let resp = self.send_authorized(Method::DELETE, &path, None).await?;
        if !resp.status().is_success() {
            return Err(status_error("DELETE", &self.url(&path), resp).await);
        }
        Ok(())
    }

    /// Asks every phone using set `set` to load its keys again (the PBX does
    /// not push changed keys by itself); returns the phones reloaded.
    pub async fn reload_phones(&self, login: &str, set: &str) -> Result<Vec<String>, RestError> {
        let path = format!("/functionkeysets/{set}/phones?{}", on_behalf(login));
        let resp = self.send_authorized(Method::GET, &path, None).await?;
        let phones: Vec<String> = decode(&self.url(&path), "GET", resp).await?;
        let mut done = Vec::new();
        for phone in phones {
            let path = format!(
                "/functionkeysets/{set}/phone?phone={}&{}",
                escape(&phone),
                on_behalf(login)
            );
            let resp = self.send_authorized(Method::PUT, &path, None).await?;
            if resp.status().is_success() {
                done.push(phone);
            } else {
                // 400: auto-provisioning off or the phone not provisioned by the PBX; the
                // key arrives with the phone's next provisioning.
                let e = status_error("PUT", &self.url(&path), resp).await;
                let e = crate::phone::keys::redact(&e.to_string());
                tracing::warn!(user = login, phone, error = %e, "PBX did not reload the phone's function keys");
            }
        }
        Ok(done)
    }
}
