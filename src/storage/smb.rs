//! `smb://[domain;]user@host[:port]/share/sub/$Y`: a Windows share over SMB 2/3.
//!
//! Uses libsmbclient through pavao; its calls block, so each upload runs on a
//! blocking thread (pavao serialises libsmbclient calls process-wide). The host is a
//! name or IP only, the domain has its own field (before `;`), the share has no
//! subfolders; the folder below it takes `$Y $M $D $h $m $s` and is created if missing.
//! Deleting a set removes its files (signature first); the folders stay. Fetching a
//! set (for the console) reads each of its files the share holds.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use pavao::{SmbClient, SmbCredentials, SmbDialect, SmbError, SmbMode, SmbOpenOptions, SmbOptions};

use super::{
    expand_template, file_name_of, split_authority, Target, TargetError, TargetSecret, UploadSet,
};

/// An SMB share target. Its `Debug` output hides the password.
#[derive(Clone)]
pub struct SmbTarget {
    url: String,
    domain: Option<String>,
    user: String,
    host: String,
    port: u16,
    share: String,
    template: String,
    password: String,
}

impl std::fmt::Debug for SmbTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmbTarget")
            .field("url", &self.url)
            .field("domain", &self.domain)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl SmbTarget {
    /// Parses `smb://[domain;]user@host[:port]/share/sub` and takes the password from `secret`.
    pub fn from_url(url: &str, secret: TargetSecret) -> Result<SmbTarget, TargetError> {
        let bad = |detail: &str| TargetError::Config {
            target: url.to_string(),
            detail: detail.to_string(),
        };
        let rest = url.strip_prefix("smb://").unwrap_or("");
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("no share in the URL"))?;
        let (domain, authority) = match authority.split_once(';') {
            Some((d, a)) => (Some(d.to_string()).filter(|d| !d.is_empty()), a),
            None => (None, authority),
        };
        let (user, host, port) = split_authority(url, authority, 445)?;
        let (share, sub) = path.split_once('/').unwrap_or((path, ""));
        if share.is_empty() {
            return Err(bad("no share name in the URL (smb://user@host/share/sub)"));
        }
        let password = secret
            .resolved_password()
            .ok_or_else(|| bad("no password configured for this target"))?;
        Ok(SmbTarget {
            url: url.to_string(),
            domain,
            user,
            host,
            port,
            share: share.to_string(),
            template: sub.to_string(),
            password,
        })
    }

    /// The folder below the share for a set, with a leading `/` (`""` = the share's root).
    pub fn folder_for(&self, set: &UploadSet) -> String {
        let f = expand_template(&self.template, set.start);
        let parts: Vec<&str> = f
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!("/{}", parts.join("/"))
        }
    }

    fn errno_error(&self, op: &str, path: &str, e: SmbError, at_login: bool) -> TargetError {
        let target = self.url.clone();
        let path = path.to_string();
        let detail = format!("{e}");
        let errno = match &e {
            SmbError::Io(io) => io.raw_os_error(),
            _ => None,
        };
        const EPERM: i32 = 1;
        const ENOENT: i32 = 2;
        const EACCES: i32 = 13;
        const ENODEV: i32 = 19;
        const ENOSPC: i32 = 28;
        const EROFS: i32 = 30;
        const EDQUOT: i32 = 122;
        const ECONNREFUSED: i32 = 111;
        const EHOSTUNREACH: i32 = 113;
        const ENETUNREACH: i32 = 101;
        const ETIMEDOUT: i32 = 110;
        const ECONNRESET: i32 = 104;
        match errno {
            Some(ECONNREFUSED | EHOSTUNREACH | ENETUNREACH | ETIMEDOUT | ECONNRESET) => {
                TargetError::Unreachable { target, detail }
            }
            Some(EACCES | EPERM) if at_login => TargetError::Auth { target, detail },
            Some(ENOENT | ENODEV) if at_login => TargetError::MissingShare { target, detail },
            Some(EACCES | EPERM | EROFS) => TargetError::Permission {
                target,
                path,
                detail,
            },
            Some(ENOSPC | EDQUOT) => TargetError::NoSpace {
                target,
                path,
                detail,
            },
            _ => TargetError::Io {
                target,
                op: op.to_string(),
                path,
                detail,
            },
        }
    }

    /// Logs in to the share; the first call on it tells apart login, share and network problems.
    fn client(&self) -> Result<SmbClient, TargetError> {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let server = if self.port == 445 {
            format!("smb://{host}")
        } else {
            format!("smb://{host}:{}", self.port)
        };
        let mut creds = SmbCredentials::default()
            .server(server)
            .share(format!("/{}", self.share))
            .username(&self.user)
            .password(&self.password);
        if let Some(d) = &self.domain {
            creds = creds.workgroup(d);
        }
        let options = SmbOptions::default()
            .no_auto_anonymous_login(true)
            .min_protocol(SmbDialect::Smb202)
            .max_protocol(SmbDialect::Smb311);
        let client = SmbClient::new(creds, options).map_err(|e| TargetError::Config {
            target: self.url.clone(),
            detail: format!("libsmbclient: {e}"),
        })?;
        // The first call on the share tells apart login, share and network problems.
        client
            .stat("/")
            .map_err(|e| self.errno_error("open share", "/", e, true))?;
        Ok(client)
    }

    fn delete_blocking(&self, set: &UploadSet) -> Result<(), TargetError> {
        let client = self.client()?;
        let folder = self.folder_for(set);
        for name in set.names_for_deletion(&self.url)? {
            let path = format!("{folder}/{name}");
            if client.stat(path.as_str()).is_err() {
                continue;
            }
            client
                .unlink(path.as_str())
                .map_err(|e| self.errno_error("delete", &path, e, false))?;
            if client.stat(path.as_str()).is_ok() {
                return Err(TargetError::still_there(&self.url, path));
            }
        }
        Ok(())
    }

    /// Copies the files of `set` that the share holds into `into`.
    fn fetch_blocking(&self, set: &UploadSet, into: &Path) -> Result<Vec<PathBuf>, TargetError> {
        let client = self.client()?;
        let folder = self.folder_for(set);
        let mut got = Vec::new();
        for name in set.names_for_deletion(&self.url)? {
            let path = format!("{folder}/{name}");
            if client.stat(path.as_str()).is_err() {
                continue;
            }
            let dest = into.join(&name);
            let local_err = |e: std::io::Error| TargetError::Local {
                target: self.url.clone(),
                path: dest.display().to_string(),
                detail: e.to_string(),
            };
            let mut input = client
                .open_with(path.as_str(), SmbOpenOptions::default().read(true))
                .map_err(|e| self.errno_error("open", &path, e, false))?;
            let mut out = std::fs::File::create(&dest).map_err(local_err)?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = input
                    .read(&mut buf)
                    .map_err(|e| self.errno_error("read", &path, SmbError::Io(e), false))?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n]).map_err(local_err)?;
            }
            out.sync_all().map_err(local_err)?;
            got.push(dest);
        }
        Ok(got)
    }

    fn put_blocking(&self, set: &UploadSet) -> Result<(), TargetError> {
        let client = self.client()?;
        let folder = self.folder_for(set);
        let mut prefix = String::new();
        for part in folder.split('/').filter(|p| !p.is_empty()) {
            prefix.push('/');
            prefix.push_str(part);
            if client.stat(prefix.as_str()).is_ok() {
                continue;
            }
            if let Err(e) = client.mkdir(prefix.as_str(), SmbMode::from(0o755)) {
                if client.stat(prefix.as_str()).is_err() {
                    return Err(self.errno_error("create folder", &prefix, e, false));
                }
            }
        }
        for src in &set.files {
            let name = file_name_of(&self.url, src)?;
            let dest = format!("{folder}/{name}");
            let tmp = format!("{folder}/.{name}.part");
            let local_err = |e: std::io::Error| TargetError::Local {
                target: self.url.clone(),
                path: src.display().to_string(),
                detail: e.to_string(),
            };
            let mut input = std::fs::File::open(src).map_err(local_err)?;
            let local_len = input.metadata().map_err(local_err)?.len();
            {
                let mut out = client
                    .open_with(
                        tmp.as_str(),
                        SmbOpenOptions::default()
                            .create(true)
                            .write(true)
                            .truncate(true),
                    )
                    .map_err(|e| self.errno_error("create", &tmp, e, false))?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = input.read(&mut buf).map_err(local_err)?;
                    if n == 0 {
                        break;
                    }
                    out.write_all(&buf[..n])
                        .map_err(|e| self.errno_error("write", &tmp, SmbError::Io(e), false))?;
                }
                out.flush()
                    .map_err(|e| self.errno_error("write", &tmp, SmbError::Io(e), false))?;
            }
            if client.stat(dest.as_str()).is_ok() {
                client
                    .unlink(dest.as_str())
                    .map_err(|e| self.errno_error("replace", &dest, e, false))?;
            }
            client
                .rename(tmp.as_str(), dest.as_str())
                .map_err(|e| self.errno_error("rename", &dest, e, false))?;
            let remote_len = client
                .stat(dest.as_str())
                .map_err(|e| self.errno_error("stat", &dest, e, false))?
                .size;
            super::confirm_size(&self.url, &dest, remote_len, local_len)?;
            tracing::debug!(target_url = %self.url, file = %dest, bytes = local_len, "smb: file confirmed");
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Target for SmbTarget {
    async fn put(&self, set: &UploadSet) -> Result<(), TargetError> {
        super::on_blocking_pool(self, &self.url, "upload", set, SmbTarget::put_blocking).await
    }

    async fn delete(&self, set: &UploadSet) -> Result<(), TargetError> {
        super::on_blocking_pool(self, &self.url, "delete", set, SmbTarget::delete_blocking).await
    }

    async fn fetch(&self, set: &UploadSet, into: &Path) -> Result<Vec<PathBuf>, TargetError> {
        let into = into.to_path_buf();
        super::on_blocking_pool(self, &self.url, "fetch", set, move |t, s| {
            t.fetch_blocking(s, &into)
        })
        .await
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parts() {
        let secret = TargetSecret {
            password: Some("pw".into()),
            ..Default::default()
        };
        let t = SmbTarget::from_url("smb://CORP;rec@fs1:1445/calls/a/$Y", secret).unwrap();
        assert_eq!(t.domain.as_deref(), Some("CORP"));
        assert_eq!(
            (t.user.as_str(), t.host.as_str(), t.port),
            ("rec", "fs1", 1445)
        );
        assert_eq!(t.share, "calls");
        let set = UploadSet::new("20260301_101502_x", vec![]);
        assert_eq!(t.folder_for(&set), "/a/2026");
    }
}
