//! Recording profiles ("module configurations") and the config file that
//! defines several of them together with targets, SMTP, the number plan and the
//! directory source.
//!
//! # Config file format (TOML, `--config FILE`)
//!
//! ```toml
//! answered_by_header = "auto"     # who answered, from the callee's 200: auto (P-Asserted-
//!                                 # Identity, then Remote-Party-ID, then the Contact user),
//!                                 # p-asserted-identity, remote-party-id or contact; at the
//!                                 # top, before any [section]
//!
//! [numbers]                       # dialling plan for normalisation; all optional
//! country_code = "49"             # default 49
//! area_code = "30"                # for local numbers without prefix; default none
//! international_prefix = "00"     # default 00
//! national_prefix = "0"           # default 0
//! exit_code = "0"                 # outside-line digit of the PBX; default none
//! max_extension_len = 4           # up to this many digits = internal extension; default 4
//!
//! [directory]                     # optional; without it profiles use plain numbers
//! source = "https://pbx.example.com/rest"   # or a path to a TOML/JSON file
//! login_id = "0001"               # REST login id of the PBX user
//! password = "…"                  # or env CALLREC_DIRECTORY_PASSWORD
//! refresh_secs = 300              # default 300
//! accept_invalid_certs = false    # PBX with a self-signed certificate; default false
//! alert_after_secs = 3600         # mail when refreshes have failed this long; default 3600
//!
//! [smtp]                          # optional, for failure notifications
//! url = "smtp+starttls://mail.example.com:587"
//! from = "callrec@example.com"
//! user = "callrec"                # optional
//! password = "…"                  # optional, or env CALLREC_SMTP_PASSWORD
//!
//! [targets.archive]               # named storage target; keys besides `url` are
//! url = "sftp://rec@nas.example.com/recordings/$Y-$M"   # options/secrets for it
//! password = "…"
//!
//! [[profiles]]                    # evaluated in this order, first match wins
//! name = "sales"                  # unique
//! group = "600"                   # group number or group name; optional
//! users = ["201", "anna"]         # selected users: number or login; optional
//! record_direct_calls = true      # calls to a member's own number; default false
//! record_all = false              # record every call; default false
//! channels = "stereo"             # caller | callee | stereo | separate; default stereo
//! announce_incoming = "/etc/callrec/incoming.wav"   # optional
//! announce_outgoing = "/etc/callrec/beep.wav"       # optional
//! targets = ["archive", "file:///var/lib/callrec/recordings/$Y/$M"]  # names or URLs
//! language = "de"                 # speech recognition; default de
//! transcribe = false              # transcribe each sealed set in the background, in
//!                                 # `language` (needs --transcribe-model); default false
//! notify_email = "ops@example.com"  # optional
//! retention = "5y"                # optional: sets older than this are deleted daily
//!                                 # from every target holding them (5y, 90d, 12h …)
//! on_record_failure = "continue"  # continue | reject: refuse calls that cannot be
//!                                 # recorded (488 codec/encryption, 480 otherwise)
//! record_failure_announcement = "/etc/callrec/cannot-record.wav"  # optional, played
//!                                 # to the caller before such a refusal
//! record_without_announcement = false  # record even when the announcement cannot
//!                                 # be played; default false (connected unrecorded)
//! provision_phone_keys = false    # put each group member's phone link on her phone
//!                                 # (PBX REST user with admin rights); default false
//! ```
//!
//! `retention` is kept in [`PolicyConfig::retention`] (profile name → period), not in
//! [`Profile`], so code that builds profiles by hand need not know it.
//!
//! A full example is in `testdata/callrec.toml`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;
use super::numbers::NumberPlan;
use crate::vocab::ChannelMode;

/// What happens to a call of a recording profile whose recording cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRecordFailure {
    /// The call goes on unrecorded; the failure is reported.
    #[default]
    Continue,
    /// The call is refused (or, once running, ended): it must not go unrecorded.
    Reject,
}

impl FromStr for OnRecordFailure {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "continue" => Ok(OnRecordFailure::Continue),
            "reject" => Ok(OnRecordFailure::Reject),
            other => Err(format!(
                "unknown on_record_failure {other:?}: use continue or reject"
            )),
        }
    }
}

/// One recording profile: which calls it records and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Profile {
    /// Unique name, used in logs, metadata and the database.
    pub name: String,
    /// The recorded group: a group number (works without a directory) or a group name.
    pub group: Option<String>,
    /// Selected users: a number (works without a directory) or a login.
    pub users: Vec<String>,
    /// Also record incoming calls to the personal number of an active group member.
    pub record_direct_calls: bool,
    /// Record every call.
    pub record_all: bool,
    /// Channel layout of the recording.
    pub channels: ChannelMode,
    /// Announcement played to the caller of a recorded incoming call.
    pub announce_incoming: Option<PathBuf>,
    /// Announcement played to the caller of a recorded outgoing call.
    pub announce_outgoing: Option<PathBuf>,
    /// Storage targets: names from `[targets]` or target URLs.
    pub targets: Vec<String>,
    /// Language for speech recognition.
    pub language: String,
    /// Where failed uploads are reported.
    pub notify_email: Option<String>,
    /// Whether a call that cannot be recorded is refused or goes on unrecorded.
    pub on_record_failure: OnRecordFailure,
    /// Played to the caller before a call is refused because it cannot be recorded.
    pub record_failure_announcement: Option<PathBuf>,
    /// Record even when the profile's announcement could not be played.
    pub record_without_announcement: bool,
    /// Put each group member's phone link on her phone as a URL function key
    /// through the PBX's REST API (needs a REST user with admin rights).
    pub provision_phone_keys: bool,
    /// Transcribe each sealed set in the background, in `language`.
    pub transcribe: bool,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            name: "default".into(),
            group: None,
            users: Vec::new(),
            record_direct_calls: false,
            record_all: false,
            channels: ChannelMode::Stereo,
            announce_incoming: None,
            announce_outgoing: None,
            targets: Vec::new(),
            language: "de".into(),
            notify_email: None,
            on_record_failure: OnRecordFailure::Continue,
            record_failure_announcement: None,
            record_without_announcement: false,
            provision_phone_keys: false,
            transcribe: false,
        }
    }
}

impl Profile {
    /// True when the profile has at least one recording rule (group, users or record_all).
    pub fn has_rules(&self) -> bool {
        self.record_all
            || self.group.as_deref().is_some_and(|g| !g.trim().is_empty())
            || self.users.iter().any(|u| !u.trim().is_empty())
    }
}

/// Where the directory comes from and how to log in (config section `[directory]`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// A path to a static TOML/JSON file, or the PBX REST base URL (`https://pbx/rest`).
    pub source: String,
    /// REST login id.
    #[serde(default)]
    pub login_id: Option<String>,
    /// REST password (falls back to env `CALLREC_DIRECTORY_PASSWORD`).
    #[serde(default)]
    pub password: Option<String>,
    /// Seconds between refreshes.
    #[serde(default = "default_refresh_secs")]
    pub refresh_secs: u64,
    /// Accept a self-signed PBX certificate.
    #[serde(default)]
    pub accept_invalid_certs: bool,
    /// Mail (when `[smtp]` is set) once the snapshot is this many seconds old
    /// because refreshes fail: group changes in the PBX are not seen meanwhile.
    #[serde(default = "default_alert_after_secs")]
    pub alert_after_secs: u64,
}

fn default_refresh_secs() -> u64 {
    300
}

fn default_alert_after_secs() -> u64 {
    3600
}

impl fmt::Debug for DirectoryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectoryConfig")
            .field("source", &self.source)
            .field("login_id", &self.login_id)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("refresh_secs", &self.refresh_secs)
            .field("accept_invalid_certs", &self.accept_invalid_certs)
            .field("alert_after_secs", &self.alert_after_secs)
            .finish()
    }
}

impl DirectoryConfig {
    /// True when `source` is a REST URL rather than a file.
    pub fn is_rest(&self) -> bool {
        self.source.starts_with("https://") || self.source.starts_with("http://")
    }

    /// The REST password: from the file, else from env `CALLREC_DIRECTORY_PASSWORD`.
    pub fn password(&self) -> Option<String> {
        self.password
            .clone()
            .or_else(|| std::env::var("CALLREC_DIRECTORY_PASSWORD").ok())
    }
}

/// SMTP settings for notifications (config section `[smtp]`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// `smtp://`, `smtp+starttls://` or `smtps://` URL with host and port.
    pub url: String,
    /// Sender address.
    pub from: String,
    /// Login user, if the server wants one.
    #[serde(default)]
    pub user: Option<String>,
    /// Login password (falls back to env `CALLREC_SMTP_PASSWORD`).
    #[serde(default)]
    pub password: Option<String>,
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("url", &self.url)
            .field("from", &self.from)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A named storage target: its URL plus kind-specific options and secrets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetConfig {
    /// Target URL (`file://`, `sftp://`, `smb://`, `onedrive://`, `s3://`, `webdav://`).
    pub url: String,
    /// Everything else (password, domain, key_file, tenant_id, client_id, client_secret, …).
    #[serde(flatten)]
    pub options: BTreeMap<String, String>,
}

impl fmt::Debug for TargetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetConfig")
            .field("url", &self.url)
            .field("option_keys", &self.options.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The whole config file (see the module docs for the format).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Which header of the callee's 200 names who answered (`answered_by_header`, top level).
    pub answered_by_header: crate::b2bua::answered::AnsweredByHeader,
    /// Dialling plan.
    pub numbers: NumberPlan,
    /// Directory source, if any.
    pub directory: Option<DirectoryConfig>,
    /// SMTP for notifications, if any.
    pub smtp: Option<SmtpConfig>,
    /// Named storage targets.
    pub targets: BTreeMap<String, TargetConfig>,
    /// Recording profiles in evaluation order.
    pub profiles: Vec<Profile>,
    /// Retention period per profile name (a profile's `retention` key, e.g. "5y").
    #[serde(skip)]
    pub retention: BTreeMap<String, String>,
}

/// Takes the `retention` key out of every `[[profiles]]` table of a parsed config,
/// keyed by the profile's name, so the strict [`Profile`] parse does not see it.
fn take_retention(table: &mut toml::Table) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let Some(toml::Value::Array(profiles)) = table.get_mut("profiles") else {
        return Ok(out);
    };
    for (i, p) in profiles.iter_mut().enumerate() {
        let Some(p) = p.as_table_mut() else {
            continue;
        };
        let Some(v) = p.remove("retention") else {
            continue;
        };
        let name = p
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("default")
            .to_string();
        let period = v.as_str().ok_or_else(|| {
            format!(
                "profile #{} ({name}): retention must be a string such as \"5y\"",
                i + 1
            )
        })?;
        super::age::parse_age(period)
            .map_err(|e| format!("profile #{} ({name}): retention: {e}", i + 1))?;
        out.insert(name, period.to_string());
    }
    Ok(out)
}

impl PolicyConfig {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<PolicyConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = PolicyConfig::parse(&text, path)?;
        tracing::info!(
            path = %path.display(),
            profiles = cfg.profiles.len(),
            targets = cfg.targets.len(),
            directory = cfg.directory.as_ref().map(|d| d.source.as_str()).unwrap_or("none"),
            "config loaded"
        );
        Ok(cfg)
    }

    /// Parse and validate config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<PolicyConfig, ConfigError> {
        let parse_err = |detail: String| ConfigError::Parse {
            path: path.to_path_buf(),
            detail,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        let retention = take_retention(&mut table).map_err(|detail| ConfigError::Invalid {
            path: path.to_path_buf(),
            detail,
        })?;
        let mut cfg: PolicyConfig = if retention.is_empty() {
            // From the text itself, so errors keep their line numbers.
            toml::from_str(text).map_err(|e| parse_err(e.to_string()))?
        } else {
            PolicyConfig::deserialize(toml::Value::Table(table))
                .map_err(|e| parse_err(e.to_string()))?
        };
        cfg.retention = retention;
        cfg.validate().map_err(|detail| ConfigError::Invalid {
            path: path.to_path_buf(),
            detail,
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let mut names = HashSet::new();
        for (i, p) in self.profiles.iter().enumerate() {
            if p.name.trim().is_empty() {
                return Err(format!("profile #{} has an empty name", i + 1));
            }
            if !names.insert(p.name.as_str()) {
                return Err(format!("profile name {:?} is used twice", p.name));
            }
            for t in &p.targets {
                if !t.contains("://") && !self.targets.contains_key(t) {
                    return Err(format!(
                        "profile {:?} names target {t:?}, which is neither a URL nor defined under [targets.{t}]",
                        p.name
                    ));
                }
            }
        }
        for (name, t) in &self.targets {
            if !t.url.contains("://") {
                return Err(format!("target {name:?}: url {:?} has no scheme", t.url));
            }
        }
        if let Some(d) = &self.directory {
            if d.refresh_secs == 0 {
                return Err("[directory] refresh_secs must be at least 1".into());
            }
            if d.is_rest() && d.login_id.as_deref().unwrap_or("").is_empty() {
                return Err("[directory] a REST source needs login_id".into());
            }
        }
        if self.numbers.country_code.is_empty()
            || !self
                .numbers
                .country_code
                .bytes()
                .all(|b| b.is_ascii_digit())
        {
            return Err("[numbers] country_code must be digits, e.g. \"49\"".into());
        }
        Ok(())
    }

    /// The URL and options of a profile's target entry (a name or a URL).
    pub fn resolve_target(&self, entry: &str) -> Option<TargetConfig> {
        if let Some(t) = self.targets.get(entry) {
            return Some(t.clone());
        }
        entry.contains("://").then(|| TargetConfig {
            url: entry.to_string(),
            options: BTreeMap::new(),
        })
    }
}
