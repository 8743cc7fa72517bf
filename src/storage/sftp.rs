//! `sftp://user@host[:port]/dir/$Y-$M`: SFTP over SSH (russh + russh-sftp).
//!
//! The folder is relative to the user's home (`sftp://u@h/.` or `sftp://u@h/` is the
//! home itself, `sftp://u@h//srv/rec` an absolute path). Authentication by password
//! or key from [`TargetSecret`]; the server's host key must be pinned, by a
//! known_hosts file or a SHA-256 fingerprint — an unknown or changed key is refused.
//! Deleting a set removes its files (signature first); the folders stay.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::StatusCode;
use tokio::io::AsyncWriteExt;

use super::{
    expand_template, file_name_of, split_authority, Target, TargetError, TargetSecret, UploadSet,
};

/// Time allowed for connecting and logging in.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// An SFTP target.
#[derive(Debug, Clone)]
pub struct SftpTarget {
    url: String,
    user: String,
    host: String,
    port: u16,
    template: String,
    secret: TargetSecret,
}

/// The SSH client handler: checks the server's host key against the pin.
struct KeyCheck {
    host: String,
    port: u16,
    secret: TargetSecret,
    refused: Arc<Mutex<Option<String>>>,
}

impl KeyCheck {
    fn verdict(&self, key: &russh::keys::PublicKey) -> Result<(), String> {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        if let Some(pin) = &self.secret.host_key_sha256 {
            let pin = pin.trim();
            let pin = pin
                .strip_prefix("SHA256:")
                .unwrap_or(pin)
                .trim_end_matches('=');
            let got = fingerprint.strip_prefix("SHA256:").unwrap_or(&fingerprint);
            return if pin == got {
                Ok(())
            } else {
                Err(format!(
                    "server key {fingerprint} differs from the pinned SHA256:{pin}"
                ))
            };
        }
        if let Some(path) = &self.secret.known_hosts {
            return match russh::keys::check_known_hosts_path(&self.host, self.port, key, path) {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!(
                    "server key {fingerprint} is not in {}",
                    path.display()
                )),
                Err(e) => Err(format!(
                    "{e} (known_hosts {}; key {fingerprint})",
                    path.display()
                )),
            };
        }
        Err(format!(
            "no known_hosts or host_key_sha256 configured; the server offers {fingerprint}"
        ))
    }
}

impl russh::client::Handler for KeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let result = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.verdict(key),
            PublicKeyOrCertificate::Certificate(_) => {
                Err("the server offers a host certificate; pin its plain host key".to_string())
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(why) => {
                *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                Ok(false)
            }
        }
    }
}

impl SftpTarget {
    /// Parses `sftp://user@host[:port]/folder` and takes the secrets for it.
    pub fn from_url(url: &str, secret: TargetSecret) -> Result<SftpTarget, TargetError> {
        let rest = url.strip_prefix("sftp://").unwrap_or("");
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (user, host, port) = split_authority(url, authority, 22)?;
        if secret.resolved_password().is_none() && secret.key_file.is_none() {
            return Err(TargetError::Config {
                target: url.to_string(),
                detail: "no password or key_file configured for this target".into(),
            });
        }
        Ok(SftpTarget {
            url: url.to_string(),
            user,
            host,
            port,
            template: path.to_string(),
            secret,
        })
    }

    /// The remote folder for a set (relative to home unless it starts with `/`).
    pub fn folder_for(&self, set: &UploadSet) -> String {
        let f = expand_template(&self.template, set.start);
        let f = f.trim_end_matches('/');
        if f.is_empty() {
            ".".into()
        } else {
            f.to_string()
        }
    }

    fn err_unreachable(&self, detail: impl ToString) -> TargetError {
        TargetError::Unreachable {
            target: self.url.clone(),
            detail: detail.to_string(),
        }
    }

    async fn connect(&self) -> Result<(russh::client::Handle<KeyCheck>, SftpSession), TargetError> {
        let refused = Arc::new(Mutex::new(None));
        let handler = KeyCheck {
            host: self.host.clone(),
            port: self.port,
            secret: self.secret.clone(),
            refused: refused.clone(),
        };
        let config = Arc::new(russh::client::Config {
            inactivity_timeout: Some(Duration::from_secs(120)),
            ..Default::default()
        });
        let connected = tokio::time::timeout(
            CONNECT_TIMEOUT,
            russh::client::connect(config, (self.host.as_str(), self.port), handler),
        )
        .await
        .map_err(|_| self.err_unreachable("connect timed out"))?;
        let mut handle = match connected {
            Ok(h) => h,
            Err(e) => {
                if let Some(why) = refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    return Err(TargetError::HostKey {
                        target: self.url.clone(),
                        detail: why,
                    });
                }
                return Err(self.err_unreachable(e));
            }
        };
        let auth_err = |detail: String| TargetError::Auth {
            target: self.url.clone(),
            detail,
        };
        let result = if let Some(key_file) = &self.secret.key_file {
            let key = russh::keys::load_secret_key(key_file, self.secret.key_passphrase.as_deref())
                .map_err(|e| TargetError::Config {
                    target: self.url.clone(),
                    detail: format!("cannot load key {}: {e}", key_file.display()),
                })?;
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| self.err_unreachable(e))?
                .flatten();
            handle
                .authenticate_publickey(&self.user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                .await
                .map_err(|e| auth_err(e.to_string()))?
        } else {
            let password = self.secret.resolved_password().unwrap_or_default();
            handle
                .authenticate_password(&self.user, password)
                .await
                .map_err(|e| auth_err(e.to_string()))?
        };
        if !result.success() {
            let how = if self.secret.key_file.is_some() {
                "key"
            } else {
                "password"
            };
            return Err(auth_err(format!(
                "user {} with {how} was not accepted",
                self.user
            )));
        }
        let channel = handle
            .channel_open_session()
            .await
            .map_err(|e| self.err_unreachable(format!("open session: {e}")))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| self.err_unreachable(format!("start sftp subsystem: {e}")))?;
        let sftp = SftpSession::new(channel.into_stream())
            .await
            .map_err(|e| self.err_unreachable(format!("sftp handshake: {e}")))?;
        sftp.set_timeout(60);
        Ok((handle, sftp))
    }

    fn sftp_error(&self, op: &str, path: &str, e: SftpError) -> TargetError {
        let target = self.url.clone();
        let path = path.to_string();
        let detail = e.to_string();
        match &e {
            SftpError::Status(s) if s.status_code == StatusCode::PermissionDenied => {
                TargetError::Permission {
                    target,
                    path,
                    detail,
                }
            }
            SftpError::Status(s) if s.error_message.to_lowercase().contains("space") => {
                TargetError::NoSpace {
                    target,
                    path,
                    detail,
                }
            }
            SftpError::IO(_) | SftpError::Timeout => TargetError::Unreachable { target, detail },
            _ => TargetError::Io {
                target,
                op: op.to_string(),
                path,
                detail,
            },
        }
    }

    async fn make_folders(&self, sftp: &SftpSession, folder: &str) -> Result<(), TargetError> {
        let mut prefix = String::new();
        if folder.starts_with('/') {
            prefix.push('/');
        }
        for part in folder.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if !prefix.is_empty() && !prefix.ends_with('/') {
                prefix.push('/');
            }
            prefix.push_str(part);
            if sftp.try_exists(prefix.as_str()).await.unwrap_or(false) {
                continue;
            }
            if let Err(e) = sftp.create_dir(prefix.as_str()).await {
                if !sftp.try_exists(prefix.as_str()).await.unwrap_or(false) {
                    return Err(self.sftp_error("create folder", &prefix, e));
                }
            }
        }
        Ok(())
    }

    async fn upload(&self, sftp: &SftpSession, set: &UploadSet) -> Result<(), TargetError> {
        let folder = self.folder_for(set);
        self.make_folders(sftp, &folder).await?;
        for src in &set.files {
            let name = file_name_of(&self.url, src)?;
            let dest = format!("{folder}/{name}");
            let tmp = format!("{folder}/.{name}.part");
            let local_err = |e: std::io::Error| TargetError::Local {
                target: self.url.clone(),
                path: src.display().to_string(),
                detail: e.to_string(),
            };
            let mut input = tokio::fs::File::open(src).await.map_err(local_err)?;
            let local_len = input.metadata().await.map_err(local_err)?.len();
            let mut out = sftp
                .create(tmp.as_str())
                .await
                .map_err(|e| self.sftp_error("create", &tmp, e))?;
            let io_to_sftp = |e: std::io::Error| {
                let msg = e.to_string();
                if msg.to_lowercase().contains("permission") {
                    TargetError::Permission {
                        target: self.url.clone(),
                        path: tmp.clone(),
                        detail: msg,
                    }
                } else {
                    TargetError::Io {
                        target: self.url.clone(),
                        op: "write".into(),
                        path: tmp.clone(),
                        detail: msg,
                    }
                }
            };
            tokio::io::copy(&mut input, &mut out)
                .await
                .map_err(io_to_sftp)?;
            out.shutdown().await.map_err(io_to_sftp)?;
            drop(out);
            if sftp.try_exists(dest.as_str()).await.unwrap_or(false) {
                sftp.remove_file(dest.as_str())
                    .await
                    .map_err(|e| self.sftp_error("replace", &dest, e))?;
            }
            sftp.rename(tmp.as_str(), dest.as_str())
                .await
                .map_err(|e| self.sftp_error("rename", &dest, e))?;
            let remote_len = sftp
                .metadata(dest.as_str())
                .await
                .map_err(|e| self.sftp_error("stat", &dest, e))?
                .len();
            super::confirm_size(&self.url, &dest, remote_len, local_len)?;
            tracing::debug!(target_url = %self.url, file = %dest, bytes = local_len, "sftp: file confirmed");
        }
        Ok(())
    }

    async fn download(
        &self,
        sftp: &SftpSession,
        set: &UploadSet,
        into: &Path,
    ) -> Result<Vec<PathBuf>, TargetError> {
        let folder = self.folder_for(set);
        let mut got = Vec::new();
        for name in set.names_for_deletion(&self.url)? {
            let path = format!("{folder}/{name}");
            let exists = sftp
                .try_exists(path.as_str())
                .await
                .map_err(|e| self.sftp_error("look up", &path, e))?;
            if !exists {
                continue;
            }
            let dest = into.join(&name);
            let local_err = |e: std::io::Error| TargetError::Local {
                target: self.url.clone(),
                path: dest.display().to_string(),
                detail: e.to_string(),
            };
            let mut input = sftp
                .open(path.as_str())
                .await
                .map_err(|e| self.sftp_error("open", &path, e))?;
            let mut out = tokio::fs::File::create(&dest).await.map_err(local_err)?;
            tokio::io::copy(&mut input, &mut out)
                .await
                .map_err(|e| TargetError::Io {
                    target: self.url.clone(),
                    op: "read".into(),
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            out.sync_all().await.map_err(local_err)?;
            got.push(dest);
        }
        Ok(got)
    }

    async fn remove(&self, sftp: &SftpSession, set: &UploadSet) -> Result<(), TargetError> {
        let folder = self.folder_for(set);
        for name in set.names_for_deletion(&self.url)? {
            let path = format!("{folder}/{name}");
            let exists = sftp
                .try_exists(path.as_str())
                .await
                .map_err(|e| self.sftp_error("look up", &path, e))?;
            if !exists {
                continue;
            }
            sftp.remove_file(path.as_str())
                .await
                .map_err(|e| self.sftp_error("delete", &path, e))?;
            if sftp.try_exists(path.as_str()).await.unwrap_or(true) {
                return Err(TargetError::still_there(&self.url, path));
            }
            tracing::debug!(target_url = %self.url, file = %path, "sftp: file deleted");
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Target for SftpTarget {
    async fn put(&self, set: &UploadSet) -> Result<(), TargetError> {
        let (handle, sftp) = self.connect().await?;
        let result = self.upload(&sftp, set).await;
        let _ = sftp.close().await;
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, "done", "en")
            .await;
        result
    }

    async fn delete(&self, set: &UploadSet) -> Result<(), TargetError> {
        let (handle, sftp) = self.connect().await?;
        let result = self.remove(&sftp, set).await;
        let _ = sftp.close().await;
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, "done", "en")
            .await;
        result
    }

    async fn fetch(&self, set: &UploadSet, into: &Path) -> Result<Vec<PathBuf>, TargetError> {
        let (handle, sftp) = self.connect().await?;
        let result = self.download(&sftp, set, into).await;
        let _ = sftp.close().await;
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, "done", "en")
            .await;
        result
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> SftpTarget {
        let secret = TargetSecret {
            password: Some("x".into()),
            ..Default::default()
        };
        SftpTarget::from_url(url, secret).unwrap()
    }

    #[test]
    fn folders_relative_to_home() {
        let set = UploadSet::new("20260301_101502_x", vec![]);
        assert_eq!(
            target("sftp://u@h/rec/$Y-$M").folder_for(&set),
            "rec/2026-03"
        );
        assert_eq!(target("sftp://u@h:2222/.").folder_for(&set), ".");
        assert_eq!(target("sftp://u@h").folder_for(&set), ".");
        assert_eq!(target("sftp://u@h//srv/$Y").folder_for(&set), "/srv/2026");
    }

    #[test]
    fn no_secret_is_a_config_error() {
        let e = SftpTarget::from_url("sftp://u@h/x", TargetSecret::default()).unwrap_err();
        assert!(matches!(e, TargetError::Config { .. }));
    }
}
