//! Who a delegated sign-in belongs to: the owner of the signed-in user's own
//! drive (`GET /me/drive`), which the drive permissions the sign-in asks for
//! already allow reading. Shown to the admin after the sign-in, so that a
//! sign-in with the wrong account is noticed at once.

use super::graph::{Graph, GraphError};
use super::*;

/// The signed-in account of the delegated `target_url`, as "Name <email>",
/// read with the stored token (renewed if needed).
pub async fn signed_in_as(
    data_dir: &Path,
    target_url: &str,
    secrets: &Secrets,
) -> Result<String, AuthorizeError> {
    let cfg_err = |detail: String| AuthorizeError::Config {
        target: target_url.to_string(),
        detail,
    };
    let (drive, _) = parse_url(target_url).map_err(cfg_err)?;
    let cfg = oauth_config(
        target_url,
        &drive,
        &secrets.for_target(target_url),
        Some(data_dir),
    )
    .map_err(cfg_err)?;
    let http = http_client().map_err(cfg_err)?;
    let base = format!("{}/v1.0", cfg.graph_base);
    let graph = Graph::new(http.clone(), base, Arc::new(TokenSource::new(cfg, http)));
    let graph_err = |e: GraphError| cfg_err(format!("reading the signed-in account: {e}"));
    let resp = graph
        .send(Method::GET, "/me/drive?$select=owner", |r| r)
        .await
        .map_err(graph_err)?;
    if !resp.status().is_success() {
        return Err(graph_err(GraphError::from_response(resp).await));
    }
    let drive: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| cfg_err(format!("reading the signed-in account: {e}")))?;
    let user = &drive["owner"]["user"];
    let name = user["displayName"].as_str().unwrap_or("").trim();
    let email = user["email"].as_str().unwrap_or("").trim();
    Ok(match (name, email) {
        ("", "") => user["id"]
            .as_str()
            .unwrap_or("(unnamed account)")
            .to_string(),
        (n, "") => n.to_string(),
        ("", e) => e.to_string(),
        (n, e) => format!("{n} <{e}>"),
    })
}
