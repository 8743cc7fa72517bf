//! `file:///path/$Y/$M`: a local or mounted (NFS, CIFS) folder.
//!
//! On the spool's own filesystem each file is hard-linked under its name: the
//! sealed file is immutable and already fsynced, so the target's copy is the
//! same inode, written once and never re-read. Anywhere else (NFS, CIFS,
//! another disk) it is copied to `.<name>.part`, fsynced, renamed to its name,
//! and its SHA-256 re-read and compared before it counts. The folder is fsynced
//! at the end. Deleting a set removes its files (signature first); the
//! folders stay.

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use super::{expand_template, file_name_of, sha256_file, Target, TargetError, UploadSet};

/// A folder target.
#[derive(Debug, Clone)]
pub struct FileTarget {
    url: String,
    template: String,
}

impl FileTarget {
    /// Parses `file:///absolute/path/with/$Y/parts`.
    pub fn from_url(url: &str) -> Result<FileTarget, TargetError> {
        let path = url.strip_prefix("file://").unwrap_or("");
        if !path.starts_with('/') {
            return Err(TargetError::Config {
                target: url.to_string(),
                detail: "a file:// target needs an absolute path, e.g. file:///srv/rec/$Y".into(),
            });
        }
        Ok(FileTarget {
            url: url.to_string(),
            template: path.to_string(),
        })
    }

    /// The folder a set with this start time goes to.
    pub fn folder_for(&self, set: &UploadSet) -> PathBuf {
        PathBuf::from(expand_template(&self.template, set.start))
    }

    fn io_error(&self, op: &str, path: &Path, e: std::io::Error) -> TargetError {
        let target = self.url.clone();
        let path = path.display().to_string();
        let detail = e.to_string();
        match e.kind() {
            ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
                TargetError::Permission {
                    target,
                    path,
                    detail,
                }
            }
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => TargetError::NoSpace {
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

    fn put_blocking(&self, set: &UploadSet) -> Result<(), TargetError> {
        let folder = self.folder_for(set);
        if !folder.is_dir() {
            std::fs::create_dir_all(&folder)
                .map_err(|e| self.io_error("create folder", &folder, e))?;
        }
        for src in &set.files {
            let name = file_name_of(&self.url, src)?;
            let dest = folder.join(&name);
            // A hard link is whole the moment it appears: straight under its name.
            // When the name is taken (a retry), or links fail, the ways below.
            if std::fs::hard_link(src, &dest).is_ok() {
                continue;
            }
            let tmp = folder.join(format!(".{name}.part"));
            // A link appears under `.part` first and replaces the name by a rename,
            // so a set is never half-visible under its name either way. Any failure
            // (another filesystem, no hard links, a leftover `.part`) means: copy.
            if std::fs::hard_link(src, &tmp).is_ok() {
                if let Err(e) = std::fs::rename(&tmp, &dest) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(self.io_error("rename", &dest, e));
                }
                // Renaming onto a link of the same file (a retry) leaves `.part` behind.
                let _ = std::fs::remove_file(&tmp);
                continue;
            }
            let local_sum = sha256_file(src).map_err(|e| TargetError::Local {
                target: self.url.clone(),
                path: src.display().to_string(),
                detail: e.to_string(),
            })?;
            let copy = || -> std::io::Result<()> {
                let mut input = std::fs::File::open(src)?;
                let mut out = std::fs::File::create(&tmp)?;
                // A plain read/write loop: every write's error is seen (no splice tricks).
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = input.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    out.write_all(&buf[..n])?;
                }
                out.sync_all()
            };
            if let Err(e) = copy() {
                let _ = std::fs::remove_file(&tmp);
                return Err(self.io_error("write", &tmp, e));
            }
            std::fs::rename(&tmp, &dest).map_err(|e| self.io_error("rename", &dest, e))?;
            let remote_sum = sha256_file(&dest).map_err(|e| self.io_error("re-read", &dest, e))?;
            if remote_sum != local_sum {
                return Err(TargetError::Mismatch {
                    target: self.url.clone(),
                    path: dest.display().to_string(),
                    detail: format!("SHA-256 {remote_sum}, expected {local_sum}"),
                });
            }
        }
        if let Ok(dir) = std::fs::File::open(&folder) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    fn delete_blocking(&self, set: &UploadSet) -> Result<(), TargetError> {
        let folder = self.folder_for(set);
        for name in set.names_for_deletion(&self.url)? {
            let path = folder.join(&name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(self.io_error("delete", &path, e)),
            }
            if path.exists() {
                return Err(TargetError::still_there(
                    &self.url,
                    path.display().to_string(),
                ));
            }
        }
        if let Ok(dir) = std::fs::File::open(&folder) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Target for FileTarget {
    async fn put(&self, set: &UploadSet) -> Result<(), TargetError> {
        super::on_blocking_pool(self, &self.url, "upload", set, FileTarget::put_blocking).await
    }

    async fn delete(&self, set: &UploadSet) -> Result<(), TargetError> {
        super::on_blocking_pool(self, &self.url, "delete", set, FileTarget::delete_blocking).await
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}
