//! Delegated sign-in for `callrec onedrive authorize`: the consent link, the pasted
//! code (with PKCE) exchanged for tokens, kept in the token file.

use super::*;

/// Why `callrec onedrive authorize` failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    /// The target or its settings are unusable for a delegated sign-in.
    #[error("onedrive target {target}: {detail}; check the target URL and its [[secrets.target]] entry (client_id, tenant, redirect_uri)")]
    Config {
        /// The target URL.
        target: String,
        /// What is wrong.
        detail: String,
    },
    /// `--code` was given without a link having been made first.
    #[error("no authorization in progress for {target} ({path}: {detail}); run `callrec onedrive authorize` first and open the link it prints")]
    NotStarted {
        /// The target URL.
        target: String,
        /// The pending-authorization file.
        path: String,
        /// Why it could not be read.
        detail: String,
    },
    /// The identity platform refused the code, or storing the token failed.
    #[error("onedrive target {target}: {source}; a code works only once and for a few minutes: run `callrec onedrive authorize` again for a new link")]
    Token {
        /// The target URL.
        target: String,
        /// The underlying failure.
        source: TokenError,
    },
    /// A local file could not be written.
    #[error("writing {path} failed: {detail}; check the data dir's permissions")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        detail: String,
    },
}

/// What [`authorize`] did; its `Display` is the text for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeOutcome {
    /// The link to open; the code from the page it leads to goes to `--code`.
    Link {
        /// The authorization URL.
        url: String,
    },
    /// The code was exchanged; the refresh token is in `token_file`.
    SignedIn {
        /// Where the token is kept (mode 0600).
        token_file: PathBuf,
    },
}

impl std::fmt::Display for AuthorizeOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthorizeOutcome::Link { url } => write!(
                f,
                "Open this link in a browser and sign in with the account whose drive receives the recordings:\n\n{url}\n\n\
                 After the sign-in the browser shows an address containing code=…; copy the code \
                 (or the whole address) and run:\n  callrec onedrive authorize --code CODE"
            ),
            AuthorizeOutcome::SignedIn { token_file } => write!(
                f,
                "Signed in. The refresh token is kept in {} (mode 0600) and renewed automatically.",
                token_file.display()
            ),
        }
    }
}

/// The `onedrive://` URLs among `urls` that sign in delegated (and so need
/// `callrec onedrive authorize`), judged by their secrets; for the CLI to pick the
/// target when the user names none.
pub fn delegated_targets<'a>(
    urls: impl IntoIterator<Item = &'a str>,
    secrets: &Secrets,
) -> Vec<String> {
    urls.into_iter()
        .filter(|u| u.starts_with("onedrive://"))
        .filter(|u| {
            parse_url(u).is_ok_and(|(drive, _)| {
                let secret = secrets.for_target(u);
                oauth_config(u, &drive, &secret, Some(Path::new("/")))
                    .is_ok_and(|c| c.flow == Flow::Delegated)
            })
        })
        .map(str::to_string)
        .collect()
}

/// Starts a delegated sign-in (`code = None`: returns the link to open) or finishes it
/// (`code = Some(code or the whole redirect address)`: exchanges the code and stores the
/// refresh token with mode 0600). `data_dir` is callrec's data dir; `target_url` the
/// `onedrive://` target as configured, whose secrets hold client id, tenant and cloud.
pub async fn authorize(
    data_dir: &Path,
    target_url: &str,
    secrets: &Secrets,
    code: Option<&str>,
) -> Result<AuthorizeOutcome, AuthorizeError> {
    let cfg_err = |detail: String| AuthorizeError::Config {
        target: target_url.to_string(),
        detail,
    };
    let (drive, _) = parse_url(target_url).map_err(cfg_err)?;
    let secret = secrets.for_target(target_url);
    let mut cfg = oauth_config(target_url, &drive, &secret, Some(data_dir)).map_err(cfg_err)?;
    if cfg.flow != Flow::Delegated {
        return Err(cfg_err(
            "the target signs in app-only (client credentials); authorize is for delegated sign-in (set auth = \"delegated\")".into(),
        ));
    }
    let token_file = cfg
        .token_file
        .clone()
        .ok_or_else(|| cfg_err("no token file".into()))?;
    let pending = token_file.with_extension("pending.json");
    match code {
        None => {
            use rand::RngCore;
            let mut raw = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut raw);
            let verifier = base64url(&raw);
            let mut st = [0u8; 12];
            rand::thread_rng().fill_bytes(&mut st);
            let state = base64url(&st);
            let challenge = {
                use sha2::{Digest, Sha256};
                base64url(&Sha256::digest(verifier.as_bytes()))
            };
            let p = Pending {
                code_verifier: verifier,
                state: state.clone(),
                created_at: token::now_unix(),
            };
            token::write_private_json(&pending, &p).map_err(|e| AuthorizeError::Io {
                path: pending.display().to_string(),
                detail: e.to_string(),
            })?;
            let query = [
                ("client_id", cfg.client_id.as_str()),
                ("response_type", "code"),
                ("redirect_uri", cfg.redirect_uri.as_str()),
                ("response_mode", "query"),
                ("scope", &cfg.scope()),
                ("state", &state),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ]
            .iter()
            .map(|(k, v)| format!("{k}={}", encode_segment(v)))
            .collect::<Vec<_>>()
            .join("&");
            tracing::info!(target_url, "onedrive: authorization link made");
            Ok(AuthorizeOutcome::Link {
                url: format!("{}?{query}", cfg.authorize_url()),
            })
        }
        Some(pasted) => {
            let not_started = |detail: String| AuthorizeError::NotStarted {
                target: target_url.to_string(),
                path: pending.display().to_string(),
                detail,
            };
            let bytes = std::fs::read(&pending).map_err(|e| not_started(e.to_string()))?;
            let p: Pending = serde_json::from_slice(&bytes)
                .map_err(|e| not_started(format!("unreadable: {e}")))?;
            let (code, state) = extract_code(pasted);
            if state.as_ref().is_some_and(|s| *s != p.state) {
                return Err(not_started(
                    "the pasted address belongs to another authorization link (state differs)"
                        .into(),
                ));
            }
            let verifier = p.code_verifier;
            let http = http_client().map_err(cfg_err)?;
            let scope = cfg.scope();
            let secret_value = cfg.client_secret.take();
            let mut form = vec![
                ("grant_type", "authorization_code"),
                ("client_id", cfg.client_id.as_str()),
                ("code", code.as_str()),
                ("redirect_uri", cfg.redirect_uri.as_str()),
                ("code_verifier", verifier.as_str()),
                ("scope", scope.as_str()),
            ];
            if let Some(s) = &secret_value {
                form.push(("client_secret", s.as_str()));
            }
            let tok = token::request_token(&http, &cfg, &form)
                .await
                .map_err(|source| AuthorizeError::Token {
                    target: target_url.to_string(),
                    source,
                })?;
            if tok.refresh_token.is_none() {
                return Err(AuthorizeError::Token {
                    target: target_url.to_string(),
                    source: TokenError::Protocol {
                        endpoint: cfg.token_url(),
                        detail: "no refresh token returned; the scope offline_access must be allowed for the app".into(),
                    },
                });
            }
            token::save_token(&token_file, &tok).map_err(|source| AuthorizeError::Token {
                target: target_url.to_string(),
                source,
            })?;
            let _ = std::fs::remove_file(&pending);
            tracing::info!(target_url, token_file = %token_file.display(), "onedrive: signed in (delegated)");
            Ok(AuthorizeOutcome::SignedIn { token_file })
        }
    }
}

/// A started delegated sign-in: the PKCE verifier and the state of the link.
#[derive(serde::Serialize, Deserialize)]
pub(super) struct Pending {
    code_verifier: String,
    state: String,
    created_at: i64,
}

/// The code (and state, if given) from what the user pasted: the code itself or the
/// whole redirect address.
pub(super) fn extract_code(pasted: &str) -> (String, Option<String>) {
    let s = pasted.trim();
    let Some(q) = s
        .split_once('?')
        .map(|(_, q)| q)
        .or_else(|| s.contains("code=").then_some(s))
    else {
        return (s.to_string(), None);
    };
    let mut code = None;
    let mut state = None;
    for pair in q.split(['&', '#']) {
        if let Some(v) = pair.strip_prefix("code=") {
            code = Some(percent_decode(v));
        } else if let Some(v) = pair.strip_prefix("state=") {
            state = Some(percent_decode(v));
        }
    }
    (code.unwrap_or_else(|| s.to_string()), state)
}

pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or(""), 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

pub(super) fn base64url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delegated_targets_are_told_apart() {
        let mut secrets = Secrets::new();
        let mut d = TargetSecret::default();
        d.cloud.client_id = Some("c".into());
        secrets.insert("onedrive://me/a", d.clone());
        let mut app = d.clone();
        app.cloud.client_secret = Some("s".into());
        app.cloud.tenant = Some("t".into());
        secrets.insert("onedrive://u@x/b", app);
        let urls = [
            "onedrive://me/a",
            "onedrive://u@x/b",
            "s3://b/c",
            "file:///x",
        ];
        assert_eq!(delegated_targets(urls, &secrets), ["onedrive://me/a"]);
    }

    #[test]
    fn codes_are_taken_from_pasted_addresses() {
        assert_eq!(extract_code("  abc-123 "), ("abc-123".into(), None));
        assert_eq!(
            extract_code("https://login.microsoftonline.com/common/oauth2/nativeclient?code=0.AX%2Fy&state=s&session_state=t"),
            ("0.AX/y".into(), Some("s".into()))
        );
    }
}
