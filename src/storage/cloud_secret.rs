//! Settings and secrets of the cloud targets (OneDrive, S3, WebDAV), read from the
//! same `[[secrets.target]]` table as the SFTP/SMB secrets:
//! ```toml
//! [[secrets.target]]
//! url = "onedrive://rec@contoso.com/Recordings/$Y/$M"
//! tenant = "contoso.onmicrosoft.com"      # directory (tenant) id or domain
//! client_id = "11111111-2222-3333-4444-555555555555"
//! client_secret_env = "CALLREC_GRAPH_SECRET"  # or client_secret = "…" (app-only)
//! cloud = "global"                        # global | usgov | usgov-dod | china | germany
//!
//! [[secrets.target]]
//! url = "s3://recordings/callrec/$Y"
//! endpoint = "https://s3.eu-central-1.amazonaws.com"
//! region = "eu-central-1"
//! access_key_id = "AKIA…"
//! secret_access_key_env = "CALLREC_S3_SECRET"
//! ```
//! WebDAV uses `password` / `password_env` of the table itself.

use std::path::PathBuf;

use serde::Deserialize;

/// Cloud-target fields of a target's secrets table. Its `Debug` output hides the secrets.
#[derive(Clone, Default, Deserialize)]
pub struct CloudSecret {
    /// OneDrive: `delegated` (signed-in user, `callrec onedrive authorize`) or `app` (client credentials).
    #[serde(default)]
    pub auth: Option<String>,
    /// OneDrive: directory (tenant) id or domain; delegated defaults to `organizations`.
    #[serde(default)]
    pub tenant: Option<String>,
    /// OneDrive: application (client) id of the app registration.
    #[serde(default)]
    pub client_id: Option<String>,
    /// OneDrive: client secret of the app registration.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// OneDrive: name of an environment variable holding the client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// OneDrive: national cloud (`global`, `usgov`, `usgov-dod`, `china`, `germany`).
    #[serde(default)]
    pub cloud: Option<String>,
    /// OneDrive: login host or base URL, overriding the cloud's (e.g. for tests).
    #[serde(default)]
    pub login_host: Option<String>,
    /// OneDrive: Graph host or base URL, overriding the cloud's (e.g. for tests).
    #[serde(default)]
    pub graph_host: Option<String>,
    /// OneDrive delegated: redirect URI registered for the app (default: the native-client URI).
    #[serde(default)]
    pub redirect_uri: Option<String>,
    /// OneDrive: permission scope (default `Files.ReadWrite.All`; `Sites.ReadWrite.All` for sites).
    #[serde(default)]
    pub scope: Option<String>,
    /// OneDrive delegated: token file (default: below the data dir's `onedrive/`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// S3: endpoint URL (default: AWS for the region).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// S3: region (default `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// S3: access key id.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// S3: secret access key.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// S3: name of an environment variable holding the secret access key.
    #[serde(default)]
    pub secret_access_key_env: Option<String>,
}

impl std::fmt::Debug for CloudSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "<hidden>");
        f.debug_struct("CloudSecret")
            .field("auth", &self.auth)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("client_secret", &hidden(&self.client_secret))
            .field("client_secret_env", &self.client_secret_env)
            .field("cloud", &self.cloud)
            .field("login_host", &self.login_host)
            .field("graph_host", &self.graph_host)
            .field("redirect_uri", &self.redirect_uri)
            .field("scope", &self.scope)
            .field("token_file", &self.token_file)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("secret_access_key_env", &self.secret_access_key_env)
            .finish()
    }
}

/// A value given directly or through the environment variable `env`.
fn value_or_env(value: &Option<String>, env: &Option<String>) -> Option<String> {
    if let Some(v) = value {
        return Some(v.clone());
    }
    env.as_ref().and_then(|name| std::env::var(name).ok())
}

impl CloudSecret {
    /// The OneDrive client secret, from `client_secret` or `client_secret_env`.
    pub fn resolved_client_secret(&self) -> Option<String> {
        value_or_env(&self.client_secret, &self.client_secret_env)
    }

    /// The S3 secret access key, from `secret_access_key` or `secret_access_key_env`.
    pub fn resolved_secret_access_key(&self) -> Option<String> {
        value_or_env(&self.secret_access_key, &self.secret_access_key_env)
    }
}

#[cfg(test)]
mod tests {
    use crate::storage::Secrets;

    #[test]
    fn cloud_keys_sit_in_the_target_table_and_debug_hides_them() {
        let v: toml::Value = toml::from_str(
            r#"
            [[target]]
            url = "onedrive://me/Rec"
            client_id = "cid"
            client_secret = "very-secret"
            cloud = "germany"
            [[target]]
            url = "s3://b/p"
            access_key_id = "AK"
            secret_access_key = "sk-secret"
            "#,
        )
        .unwrap();
        let s = Secrets::from_toml(&v).unwrap();
        let o = s.for_target("onedrive://me/Rec");
        assert_eq!(o.cloud.client_id.as_deref(), Some("cid"));
        assert_eq!(
            o.cloud.resolved_client_secret().as_deref(),
            Some("very-secret")
        );
        assert_eq!(o.cloud.cloud.as_deref(), Some("germany"));
        let s3 = s.for_target("s3://b/p");
        assert_eq!(
            s3.cloud.resolved_secret_access_key().as_deref(),
            Some("sk-secret")
        );
        let dbg = format!("{o:?} {s3:?}");
        assert!(
            !dbg.contains("very-secret") && !dbg.contains("sk-secret"),
            "{dbg}"
        );
    }
}
