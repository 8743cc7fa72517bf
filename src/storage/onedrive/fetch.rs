//! Reading a set back from OneDrive, for playing a set only the drive holds: each
//! file's content through Graph (a redirect to a pre-authenticated download URL),
//! streamed into a local file. Files the drive does not hold are skipped.

use std::path::{Path, PathBuf};

use reqwest::{Method, StatusCode};
use tokio::io::AsyncWriteExt;

use super::graph::GraphError;
use super::{transport_detail, OneDriveTarget};
use crate::storage::{TargetError, UploadSet};

impl OneDriveTarget {
    /// Copies the files of `set` that the drive holds into `into`.
    pub(super) async fn fetch_set(
        &self,
        set: &UploadSet,
        into: &Path,
    ) -> Result<Vec<PathBuf>, TargetError> {
        let folder = self.folder_for(set);
        let names = set.names_for_deletion(&self.url)?;
        let paths = set.paths_for_deletion(&self.url, &folder)?;
        let mut got = Vec::new();
        for (name, path) in names.iter().zip(paths) {
            let url = format!("{}/content", self.item_path(&path));
            let mut resp = self
                .graph
                .send(Method::GET, &url, |r| r)
                .await
                .map_err(|e| self.error("read", &path, e))?;
            if resp.status() == StatusCode::NOT_FOUND {
                continue;
            }
            if !resp.status().is_success() {
                return Err(self.error("read", &path, GraphError::from_response(resp).await));
            }
            let dest = into.join(name);
            let local_err = |e: std::io::Error| TargetError::Local {
                target: self.url.clone(),
                path: dest.display().to_string(),
                detail: e.to_string(),
            };
            let mut out = tokio::fs::File::create(&dest).await.map_err(local_err)?;
            while let Some(chunk) = resp.chunk().await.map_err(|e| {
                self.error("read", &path, GraphError::Transport(transport_detail(e)))
            })? {
                out.write_all(&chunk).await.map_err(local_err)?;
            }
            out.sync_all().await.map_err(local_err)?;
            tracing::debug!(target_url = %self.url, path, "onedrive: file fetched");
            got.push(dest);
        }
        Ok(got)
    }
}
