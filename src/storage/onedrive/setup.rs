//! What a `onedrive://` URL and its secrets mean: the drive, the folder, the
//! national cloud's hosts, the sign-in configuration and the HTTP client.

use super::*;

/// Redirect URI used by default for the delegated sign-in (a native/public client):
/// `https://<the cloud's login host>/common/oauth2/nativeclient`.
pub fn native_client_redirect(login_host: &str) -> String {
    format!("https://{login_host}/common/oauth2/nativeclient")
}
/// How often an idle delegated target renews its refresh token.
pub const KEEP_ALIVE_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Login and Graph hosts of a Microsoft cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloudHosts {
    /// Login (Entra ID) host.
    pub login: &'static str,
    /// Microsoft Graph host.
    pub graph: &'static str,
}

/// The hosts of a cloud by name: `global`, `usgov` (GCC High), `usgov-dod`, `china`
/// (21Vianet), `germany` (the old Microsoft Cloud Deutschland).
pub fn cloud_hosts(name: &str) -> Option<CloudHosts> {
    let (login, graph) = match name.to_ascii_lowercase().as_str() {
        "" | "global" | "public" | "worldwide" => {
            ("login.microsoftonline.com", "graph.microsoft.com")
        }
        "usgov" | "us-gov" | "gcchigh" => ("login.microsoftonline.us", "graph.microsoft.us"),
        "usgov-dod" | "dod" => ("login.microsoftonline.us", "dod-graph.microsoft.us"),
        "china" | "cn" => ("login.chinacloudapi.cn", "microsoftgraph.chinacloudapi.cn"),
        "germany" | "de" => ("login.microsoftonline.de", "graph.microsoft.de"),
        _ => return None,
    };
    Some(CloudHosts { login, graph })
}

/// `host` → `https://host`; a full base URL is kept (without a trailing slash).
pub(super) fn base_url(host: &str) -> String {
    let h = host.trim_end_matches('/');
    if h.starts_with("http://") || h.starts_with("https://") {
        h.to_string()
    } else {
        format!("https://{h}")
    }
}

/// The drive a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drive {
    /// The signed-in user's drive.
    Me,
    /// A user's drive by user principal name or id.
    User(String),
    /// A SharePoint site's default library by site id.
    Site(String),
    /// A drive by id.
    Id(String),
}

impl Drive {
    /// The Graph path of the drive, e.g. `/users/rec%40contoso.com/drive`.
    pub fn graph_path(&self) -> String {
        match self {
            Drive::Me => "/me/drive".into(),
            Drive::User(u) => format!("/users/{}/drive", encode_segment(u)),
            Drive::Site(s) => format!("/sites/{}/drive", encode_segment(s)),
            Drive::Id(d) => format!("/drives/{}", encode_segment(d)),
        }
    }
}

/// Splits `onedrive://DRIVE/folder/…` into the drive and the folder template.
pub fn parse_url(url: &str) -> Result<(Drive, String), String> {
    let rest = url
        .strip_prefix("onedrive://")
        .ok_or("not an onedrive:// URL")?;
    let (authority, folder) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains(':')
        && !authority.starts_with("site:")
        && !authority.starts_with("drive:")
    {
        return Err(
            "the URL must not carry a password or port; secrets go into the config file".into(),
        );
    }
    let drive = if authority.is_empty() || authority.eq_ignore_ascii_case("me") {
        Drive::Me
    } else if let Some(s) = authority.strip_prefix("site:") {
        Drive::Site(s.to_string())
    } else if let Some(d) = authority.strip_prefix("drive:") {
        Drive::Id(d.to_string())
    } else {
        Drive::User(authority.to_string())
    };
    let folder = folder.trim_matches('/').to_string();
    if folder.split('/').any(|s| s == ".." || s == ".") {
        return Err("the folder must not contain . or .. segments".into());
    }
    Ok((drive, folder))
}

/// Percent-encodes one path segment for a Graph URL (RFC 3986 unreserved characters stay).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a `/`-separated path, segment by segment.
pub(super) fn encode_path(p: &str) -> String {
    p.split('/')
        .filter(|s| !s.is_empty())
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// Where the delegated token of `url` is kept: the secrets' `token_file`, else
/// `<data_dir>/onedrive/<first 16 hex of SHA-256(url)>.token.json`.
pub fn token_file_for(
    data_dir: Option<&Path>,
    url: &str,
    secret: &TargetSecret,
) -> Option<PathBuf> {
    if let Some(f) = &secret.cloud.token_file {
        return Some(f.clone());
    }
    use sha2::{Digest, Sha256};
    let h = hex::encode(Sha256::digest(url.as_bytes()));
    data_dir.map(|d| d.join("onedrive").join(format!("{}.token.json", &h[..16])))
}

/// The sign-in settings of a target from its secrets.
pub fn oauth_config(
    url: &str,
    drive: &Drive,
    secret: &TargetSecret,
    data_dir: Option<&Path>,
) -> Result<OAuthConfig, String> {
    let c = &secret.cloud;
    let cloud_name = c.cloud.clone().unwrap_or_default();
    let hosts = cloud_hosts(&cloud_name).ok_or_else(|| {
        format!("unknown cloud {cloud_name:?}; use global, usgov, usgov-dod, china or germany")
    })?;
    let client_id =
        c.client_id.clone().filter(|s| !s.is_empty()).ok_or(
            "no client_id (the app registration's application id) in the target's secrets",
        )?;
    let client_secret = c.resolved_client_secret();
    if c.client_secret_env.is_some() && client_secret.is_none() {
        return Err(format!(
            "client_secret_env names {:?}, which is not set",
            c.client_secret_env.as_deref().unwrap_or("")
        ));
    }
    let flow = match c.auth.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("app") | Some("app-only") | Some("client_credentials") => Flow::AppOnly,
        Some("delegated") | Some("user") => Flow::Delegated,
        Some(other) => return Err(format!("auth = {other:?}; use \"app\" or \"delegated\"")),
        None if *drive == Drive::Me || client_secret.is_none() => Flow::Delegated,
        None => Flow::AppOnly,
    };
    let tenant = match (&c.tenant, flow) {
        (Some(t), _) if !t.is_empty() => t.clone(),
        (_, Flow::Delegated) => "organizations".into(),
        (_, Flow::AppOnly) => {
            return Err("app-only sign-in needs tenant (the directory id or domain)".into())
        }
    };
    if flow == Flow::AppOnly {
        if client_secret.is_none() {
            return Err("app-only sign-in needs client_secret or client_secret_env".into());
        }
        if *drive == Drive::Me {
            return Err("app-only sign-in has no \"me\": name the user (onedrive://user@domain/…) or the site (onedrive://site:ID/…)".into());
        }
    }
    let token_file = match flow {
        Flow::Delegated => Some(token_file_for(data_dir, url, secret).ok_or(
            "delegated sign-in keeps its token in the data dir, which was not passed to the storage targets (Secrets::set_data_dir), and no token_file is set",
        )?),
        Flow::AppOnly => None,
    };
    let graph_resource = format!("https://{}", hosts.graph);
    Ok(OAuthConfig {
        login_base: base_url(c.login_host.as_deref().unwrap_or(hosts.login)),
        graph_base: base_url(c.graph_host.as_deref().unwrap_or(hosts.graph)),
        graph_resource,
        tenant,
        client_id,
        client_secret,
        redirect_uri: c
            .redirect_uri
            .clone()
            .unwrap_or_else(|| native_client_redirect(hosts.login)),
        permission: c
            .scope
            .clone()
            .unwrap_or_else(|| "Files.ReadWrite.All".to_string()),
        flow,
        token_file,
    })
}

/// Builds an HTTP client for Graph and the login host.
pub(super) fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        .user_agent(concat!("callrec/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// The text of a transport error with its causes, without the URL (upload URLs carry a
/// pre-authenticated token).
pub fn transport_detail(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drives_and_folders_from_urls() {
        assert_eq!(
            parse_url("onedrive://me/Rec/$Y").unwrap(),
            (Drive::Me, "Rec/$Y".into())
        );
        assert_eq!(parse_url("onedrive:///Rec").unwrap().0, Drive::Me);
        let (d, f) = parse_url("onedrive://rec@contoso.com/A B/$Y-$M/").unwrap();
        assert_eq!(d, Drive::User("rec@contoso.com".into()));
        assert_eq!(f, "A B/$Y-$M");
        assert_eq!(d.graph_path(), "/users/rec%40contoso.com/drive");
        assert_eq!(
            parse_url("onedrive://site:contoso.sharepoint.com,1,2/x")
                .unwrap()
                .0
                .graph_path(),
            "/sites/contoso.sharepoint.com%2C1%2C2/drive"
        );
        assert_eq!(
            parse_url("onedrive://drive:b!x/y").unwrap().0,
            Drive::Id("b!x".into())
        );
        assert!(parse_url("onedrive://u:pw@host/x").is_err());
        assert!(parse_url("onedrive://me/../x").is_err());
    }

    #[test]
    fn national_clouds() {
        assert_eq!(
            cloud_hosts("global").unwrap().login,
            "login.microsoftonline.com"
        );
        let de = cloud_hosts("germany").unwrap();
        assert_eq!(
            (de.login, de.graph),
            ("login.microsoftonline.de", "graph.microsoft.de")
        );
        assert_eq!(cloud_hosts("usgov").unwrap().graph, "graph.microsoft.us");
        assert_eq!(
            cloud_hosts("china").unwrap().login,
            "login.chinacloudapi.cn"
        );
        assert!(cloud_hosts("mars").is_none());
    }
}
