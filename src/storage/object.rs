//! `s3://bucket/prefix/$Y` (S3-compatible object storage) and `webdav://[user@]host[:port]/path/$Y`
//! (`webdavs://` for HTTPS) through opendal.
//!
//! Endpoint, region and keys (S3) or the password (WebDAV) come from the target's
//! secrets table, never from the URL. A file already on the target with the local
//! size and SHA-256 (read back) counts as delivered and is not sent again; anything
//! else is (re)written — an S3 PUT replaces atomically, a WebDAV PUT replaces a
//! partial leftover — and the size on the target is read back before the file counts. Files go in the
//! set's order, so the signature file is last. Deleting a set removes its objects
//! (signature first; a missing one counts as deleted) and checks they are gone.
//! Fetching a set (for the console) reads each of its files the target holds.

use std::path::{Path, PathBuf};

use opendal::{ErrorKind, Operator};

use super::{expand_template, Placement, Target, TargetError, TargetSecret, UploadSet};

/// Part size of S3 multipart uploads (and read size for both kinds).
const PART: usize = 8 * 1024 * 1024;

/// Which protocol a target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    S3,
    WebDav,
}

/// An S3 bucket or a WebDAV folder.
#[derive(Debug, Clone)]
pub struct ObjectTarget {
    url: String,
    kind: Kind,
    op: Operator,
    template: String,
}

impl ObjectTarget {
    /// Opens `s3://…`, `webdav://…` or `webdavs://…` with its secrets.
    pub fn from_url(url: &str, secret: TargetSecret) -> Result<ObjectTarget, TargetError> {
        let bad = |detail: String| TargetError::Config {
            target: url.to_string(),
            detail,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("no scheme".into()))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let template = path.trim_matches('/').to_string();
        if template.split('/').any(|s| s == ".." || s == ".") {
            return Err(bad("the path must not contain . or .. segments".into()));
        }
        let c = &secret.cloud;
        let (kind, op) = match scheme {
            "s3" => {
                if authority.is_empty() || authority.contains(['@', ':']) {
                    return Err(bad("s3:// needs a bucket name (s3://bucket/prefix); the endpoint and keys go into the config file's secrets".into()));
                }
                let key_id = c
                    .access_key_id
                    .clone()
                    .ok_or_else(|| bad("no access_key_id in the target's secrets".into()))?;
                let secret_key = c.resolved_secret_access_key().ok_or_else(|| {
                    bad("no secret_access_key or secret_access_key_env (set) in the target's secrets".into())
                })?;
                let region = c.region.clone().unwrap_or_else(|| "us-east-1".into());
                let mut b = opendal::services::S3::default()
                    .bucket(authority)
                    .root("/")
                    .region(&region)
                    .access_key_id(&key_id)
                    .secret_access_key(&secret_key)
                    .disable_config_load()
                    .disable_ec2_metadata();
                if let Some(ep) = &c.endpoint {
                    b = b.endpoint(ep);
                }
                let op = Operator::new(b)
                    .map_err(|e| bad(format!("S3 settings: {e}")))?
                    .finish();
                (Kind::S3, op)
            }
            "webdav" | "webdavs" => {
                let (user, hostport) = match authority.rsplit_once('@') {
                    Some((u, h)) => (Some(u), h),
                    None => (None, authority),
                };
                if user.is_some_and(|u| u.contains(':')) {
                    return Err(bad("the URL contains a password; put it in the config file's secrets (password or password_env) instead".into()));
                }
                if hostport.is_empty() {
                    return Err(bad("webdav:// needs a host".into()));
                }
                let http = if scheme == "webdavs" { "https" } else { "http" };
                let mut b = opendal::services::Webdav::default()
                    .endpoint(&format!("{http}://{hostport}"))
                    .root("/");
                if let Some(u) = user {
                    let pw = secret.resolved_password().ok_or_else(|| {
                        bad(format!("no password or password_env (set) for WebDAV user {u} in the target's secrets"))
                    })?;
                    b = b.username(u).password(&pw);
                }
                let op = Operator::new(b)
                    .map_err(|e| bad(format!("WebDAV settings: {e}")))?
                    .finish();
                (Kind::WebDav, op)
            }
            other => return Err(bad(format!("not an object-storage scheme: {other}"))),
        };
        Ok(ObjectTarget {
            url: url.to_string(),
            kind,
            op,
            template,
        })
    }

    /// The folder (key prefix) a set goes to, without leading or trailing slash.
    pub fn folder_for(&self, set: &UploadSet) -> String {
        expand_template(&self.template, set.start)
            .split('/')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("/")
    }

    fn error(&self, op: &str, path: &str, e: opendal::Error) -> TargetError {
        let target = self.url.clone();
        let path = path.to_string();
        let detail = e.to_string();
        let lower = detail.to_ascii_lowercase();
        // opendal reports some refusals (WebDAV 401) as unexpected; the status tells.
        let refused = e.kind() == ErrorKind::PermissionDenied
            || lower.contains("status: 401")
            || lower.contains("status: 403");
        match e.kind() {
            _ if refused => TargetError::Auth {
                target,
                detail: match self.kind {
                    Kind::S3 => format!("{detail}; check access_key_id / secret_access_key and the key's rights on the bucket"),
                    Kind::WebDav => format!("{detail}; check the user in the URL and password / password_env"),
                },
            },
            _ if lower.contains("nosuchbucket") => TargetError::MissingShare {
                target,
                detail: format!("{detail}; the bucket must exist"),
            },
            ErrorKind::ConfigInvalid => TargetError::Config { target, detail },
            _ if lower.contains("error sending request") || lower.contains("connect") => {
                TargetError::Unreachable { target, detail }
            }
            _ if lower.contains("insufficient storage") || lower.contains("quota") => {
                TargetError::NoSpace { target, path, detail }
            }
            _ => TargetError::Io {
                target,
                op: op.to_string(),
                path,
                detail,
            },
        }
    }

    /// The size of `path` on the target, or `None` when it is not there.
    async fn remote_size(&self, path: &str) -> Result<Option<u64>, TargetError> {
        match self.op.stat(path).await {
            Ok(m) => Ok(Some(m.content_length())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error("stat", path, e)),
        }
    }

    /// Whether `path` on the target has the local file's SHA-256 (read back in parts).
    async fn same_content(&self, path: &str, local: &Path, size: u64) -> Result<bool, TargetError> {
        use sha2::{Digest, Sha256};
        let reader = self
            .op
            .reader(path)
            .await
            .map_err(|e| self.error("read back", path, e))?;
        let mut h = Sha256::new();
        let mut at = 0u64;
        while at < size {
            let end = (at + PART as u64).min(size);
            let buf = reader
                .read(at..end)
                .await
                .map_err(|e| self.error("read back", path, e))?;
            for chunk in buf {
                h.update(&chunk);
            }
            at = end;
        }
        let local_sum = super::sha256_file(local).map_err(|e| TargetError::Local {
            target: self.url.clone(),
            path: local.display().to_string(),
            detail: e.to_string(),
        })?;
        Ok(hex::encode(h.finalize()) == local_sum)
    }

    /// Copies `path` (of `size` bytes on the target) into the local file `dest`, in parts.
    async fn download(&self, path: &str, size: u64, dest: &Path) -> Result<(), TargetError> {
        use tokio::io::AsyncWriteExt;
        let local_err = |e: std::io::Error| TargetError::Local {
            target: self.url.clone(),
            path: dest.display().to_string(),
            detail: e.to_string(),
        };
        let reader = self
            .op
            .reader(path)
            .await
            .map_err(|e| self.error("read", path, e))?;
        let mut out = tokio::fs::File::create(dest).await.map_err(local_err)?;
        let mut at = 0u64;
        while at < size {
            let end = (at + PART as u64).min(size);
            let buf = reader
                .read(at..end)
                .await
                .map_err(|e| self.error("read", path, e))?;
            for chunk in buf {
                out.write_all(&chunk).await.map_err(local_err)?;
            }
            at = end;
        }
        out.sync_all().await.map_err(local_err)
    }

    async fn upload(&self, path: &str, local: &Path, size: u64) -> Result<(), TargetError> {
        let local_err = |e: std::io::Error| TargetError::Local {
            target: self.url.clone(),
            path: local.display().to_string(),
            detail: e.to_string(),
        };
        match self.kind {
            Kind::WebDav => {
                // opendal's WebDAV writer sends one PUT; give it the whole file.
                let bytes = tokio::fs::read(local).await.map_err(local_err)?;
                self.op
                    .write(path, bytes)
                    .await
                    .map_err(|e| self.error("write", path, e))?;
            }
            Kind::S3 => {
                use tokio::io::AsyncReadExt;
                let mut f = tokio::fs::File::open(local).await.map_err(local_err)?;
                let mut w = self
                    .op
                    .writer_with(path)
                    .chunk(PART)
                    .await
                    .map_err(|e| self.error("write", path, e))?;
                let mut left = size;
                while left > 0 {
                    let mut buf = vec![0u8; (left as usize).min(PART)];
                    f.read_exact(&mut buf).await.map_err(local_err)?;
                    left -= buf.len() as u64;
                    w.write(buf)
                        .await
                        .map_err(|e| self.error("write", path, e))?;
                }
                w.close().await.map_err(|e| self.error("write", path, e))?;
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Target for ObjectTarget {
    async fn put(&self, set: &UploadSet) -> Result<(), TargetError> {
        let folder = self.folder_for(set);
        if self.kind == Kind::WebDav && !folder.is_empty() {
            let dir = format!("{folder}/");
            self.op
                .create_dir(&dir)
                .await
                .map_err(|e| self.error("create folder", &dir, e))?;
        }
        for Placement {
            local,
            remote: path,
            size,
        } in set.placements(&self.url, &folder)?
        {
            let local = local.as_path();
            if self.remote_size(&path).await? == Some(size) {
                if self.same_content(&path, local, size).await? {
                    tracing::info!(target_url = %self.url, path, size, "object storage: identical file already there; counted as delivered");
                    continue;
                }
                tracing::warn!(target_url = %self.url, path, size, "object storage: a file of this name and size with other content is there; replacing it");
            }
            self.upload(&path, local, size).await?;
            match self.remote_size(&path).await? {
                Some(s) if s == size => {
                    tracing::debug!(target_url = %self.url, path, size, "object storage: file delivered")
                }
                found => {
                    return Err(TargetError::Mismatch {
                        target: self.url.clone(),
                        path,
                        detail: format!("size on the target {found:?}, local {size}"),
                    })
                }
            }
        }
        Ok(())
    }

    async fn delete(&self, set: &UploadSet) -> Result<(), TargetError> {
        let folder = self.folder_for(set);
        for path in set.paths_for_deletion(&self.url, &folder)? {
            if self.remote_size(&path).await?.is_none() {
                continue;
            }
            self.op
                .delete(&path)
                .await
                .map_err(|e| self.error("delete", &path, e))?;
            if self.remote_size(&path).await?.is_some() {
                return Err(TargetError::still_there(&self.url, path));
            }
            tracing::debug!(target_url = %self.url, path, "object storage: file deleted");
        }
        Ok(())
    }

    async fn fetch(&self, set: &UploadSet, into: &Path) -> Result<Vec<PathBuf>, TargetError> {
        let folder = self.folder_for(set);
        let names = set.names_for_deletion(&self.url)?;
        let paths = set.paths_for_deletion(&self.url, &folder)?;
        let mut got = Vec::new();
        for (name, path) in names.iter().zip(paths) {
            let Some(size) = self.remote_size(&path).await? else {
                continue;
            };
            let dest = into.join(name);
            self.download(&path, size, &dest).await?;
            got.push(dest);
        }
        Ok(got)
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_never_carry_secrets_and_s3_needs_keys() {
        let pw = TargetSecret {
            password: Some("pw".into()),
            ..Default::default()
        };
        assert!(ObjectTarget::from_url("webdav://u:pw@h/x", pw.clone()).is_err());
        assert!(ObjectTarget::from_url("webdav://u@h:8080/x/$Y", pw).is_ok());
        assert!(ObjectTarget::from_url("webdav://u@h/x", TargetSecret::default()).is_err());
        assert!(ObjectTarget::from_url("s3://bucket/p", TargetSecret::default()).is_err());
        let mut keys = TargetSecret::default();
        keys.cloud.access_key_id = Some("AK".into());
        keys.cloud.secret_access_key = Some("SK".into());
        keys.cloud.endpoint = Some("http://127.0.0.1:9".into());
        let t = ObjectTarget::from_url("s3://bucket/p/$Y/", keys).unwrap();
        assert_eq!(t.template, "p/$Y");
        assert!(!format!("{t:?}").contains("SK\""), "Debug hides the key");
    }
}
