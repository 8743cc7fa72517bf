//! Error types of the policy module: each variant says what failed and what to check.

use std::path::PathBuf;

/// Loading a static directory file failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The file could not be read.
    #[error("cannot read directory file {path}: {source} (check --directory and the file's permissions)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML/JSON of the directory format.
    #[error("directory file {path} is not a valid directory: {detail} (see testdata/directory.toml for the format)")]
    Parse { path: PathBuf, detail: String },
    /// The file is well-formed but inconsistent (unknown member, duplicate id).
    #[error("directory {source_name} is inconsistent: {detail}")]
    Invalid { source_name: String, detail: String },
}

/// Talking to the PBX's REST API failed.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// The PBX could not be reached or the connection broke.
    #[error("PBX REST {url} unreachable: {source} (check the directory URL, the PBX's HTTPS port, DNS and firewall)")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The PBX refused the login (HTTP 400): wrong login id or password.
    #[error("PBX REST login refused for login id {login_id:?} (HTTP 400): check login_id and password in the [directory] section of the config file (or CALLREC_DIRECTORY_PASSWORD)")]
    LoginRejected { login_id: String },
    /// The PBX answered with an unexpected HTTP status.
    #[error("PBX REST {method} {url} answered HTTP {status}: {body} (check that the user has REST rights and the PBX speaks API version 2)")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    /// The token was refused again right after a fresh login.
    #[error("PBX REST {url} refuses the fresh authToken (HTTP 401 after re-login): check the REST user's permissions")]
    TokenRefused { url: String },
    /// The PBX's answer could not be decoded.
    #[error("PBX REST {url} answered with unexpected JSON: {detail} (check that the PBX speaks API version 2)")]
    Decode { url: String, detail: String },
    /// The PBX's data is inconsistent.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// Loading the config file (profiles, targets, SMTP, directory) failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error(
        "cannot read config file {path}: {source} (check --config and the file's permissions)"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the config format.
    #[error(
        "config file {path} is invalid: {detail} (see testdata/callrec.toml for a full example)"
    )]
    Parse { path: PathBuf, detail: String },
    /// A value is out of range or refers to something undefined.
    #[error("config file {path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

/// Reading or writing the persisted group login/logout state failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The old state file could not be read or renamed.
    #[error("{action} membership state {path}: {source} (check the data dir's permissions and free disk space)")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state file is not valid JSON.
    #[error("membership state {path} is corrupt: {detail} (fix or remove the file; removing it logs every member in again)")]
    Corrupt { path: PathBuf, detail: String },
    /// The protocol database, which holds the state, failed.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}
