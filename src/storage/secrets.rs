//! Secrets for storage targets (passwords, keys, pinned host keys), from the config file or env.
//!
//! Config file shape (TOML), one table per target URL exactly as configured:
//! ```toml
//! [[secrets.target]]
//! url = "sftp://rec@backup.example/recordings/$Y-$M"
//! password_env = "CALLREC_SFTP_PASSWORD"   # or password = "…"
//! key_file = "/etc/callrec/id_ed25519"     # optional, instead of a password
//! known_hosts = "/etc/callrec/known_hosts"  # or host_key_sha256 = "SHA256:…"
//! ```
//! OneDrive, S3 and WebDAV targets take further keys in the same table (client id and
//! secret, access keys, endpoints): see [`CloudSecret`].

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::cloud_secret::CloudSecret;

/// Secrets of one target. Its `Debug` output hides the password and passphrase.
#[derive(Clone, Default, Deserialize)]
pub struct TargetSecret {
    /// The target URL these secrets belong to.
    #[serde(default)]
    pub url: String,
    /// Password (SFTP, SMB).
    #[serde(default)]
    pub password: Option<String>,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Private key file (SFTP; OpenSSH format).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Passphrase of the private key file.
    #[serde(default)]
    pub key_passphrase: Option<String>,
    /// known_hosts file with the server's pinned host key (SFTP).
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// Pinned host key fingerprint, e.g. `SHA256:abc…` as `ssh-keygen -lf` prints it (SFTP).
    #[serde(default)]
    pub host_key_sha256: Option<String>,
    /// OneDrive, S3 and WebDAV settings and secrets (keys in the same table).
    #[serde(flatten)]
    pub cloud: CloudSecret,
}

impl std::fmt::Debug for TargetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "<hidden>");
        f.debug_struct("TargetSecret")
            .field("url", &self.url)
            .field("password", &hidden(&self.password))
            .field("password_env", &self.password_env)
            .field("key_file", &self.key_file)
            .field("key_passphrase", &hidden(&self.key_passphrase))
            .field("known_hosts", &self.known_hosts)
            .field("host_key_sha256", &self.host_key_sha256)
            .field("cloud", &self.cloud)
            .finish()
    }
}

impl TargetSecret {
    /// The password, from `password` or the variable named by `password_env`.
    pub fn resolved_password(&self) -> Option<String> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        self.password_env
            .as_ref()
            .and_then(|name| std::env::var(name).ok())
    }
}

/// Secrets of every target, keyed by target URL.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    targets: HashMap<String, TargetSecret>,
    data_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
struct SecretsFile {
    #[serde(default)]
    target: Vec<TargetSecret>,
}

impl Secrets {
    /// No secrets.
    pub fn new() -> Secrets {
        Secrets::default()
    }

    /// Reads the `[secrets]` table of a parsed config file (`[[secrets.target]]` entries).
    pub fn from_toml(secrets_table: &toml::Value) -> Result<Secrets, String> {
        let file: SecretsFile = secrets_table
            .clone()
            .try_into()
            .map_err(|e| format!("[secrets] in the config file: {e}"))?;
        let mut s = Secrets::new();
        for t in file.target {
            s.insert(t.url.clone(), t);
        }
        Ok(s)
    }

    /// Sets the data directory, where OneDrive's delegated sign-in keeps its token.
    pub fn set_data_dir(&mut self, dir: impl Into<PathBuf>) {
        self.data_dir = Some(dir.into());
    }

    /// The data directory, when set with [`Secrets::set_data_dir`].
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self.data_dir.as_deref()
    }

    /// Adds or replaces the secrets of the target `url`.
    pub fn insert(&mut self, url: impl Into<String>, secret: TargetSecret) {
        let url = url.into();
        let mut secret = secret;
        secret.url = url.clone();
        self.targets.insert(url, secret);
    }

    /// The secrets of `url` (empty when none are configured).
    pub fn for_target(&self, url: &str) -> TargetSecret {
        self.targets
            .get(url)
            .cloned()
            .unwrap_or_else(|| TargetSecret {
                url: url.to_string(),
                ..TargetSecret::default()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_from_toml() {
        let v: toml::Value = toml::from_str(
            r#"
            [[target]]
            url = "sftp://a@b/x"
            password = "pw"
            host_key_sha256 = "SHA256:abc"
            "#,
        )
        .unwrap();
        let s = Secrets::from_toml(&v).unwrap();
        let t = s.for_target("sftp://a@b/x");
        assert_eq!(t.resolved_password().as_deref(), Some("pw"));
        assert_eq!(t.host_key_sha256.as_deref(), Some("SHA256:abc"));
        assert!(s.for_target("smb://other").password.is_none());
        assert!(
            !format!("{t:?}").contains("pw\""),
            "Debug hides the password"
        );
    }
}
