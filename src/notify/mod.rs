//! E-mail notification of failed uploads, recording failures
//! (`failures`) and a low spool disk, rate-limited.
//!
//! For every upload attempt in which a file failed, a mail names the target, the
//! set, its files and the error. No mail storms: per target at most one mail per
//! interval; failures within the interval are collected and sent as one digest
//! when the interval ends. SMTP URLs: `smtp://host[:port]` (plain, default 25),
//! `smtp+starttls://host[:port]` (STARTTLS required, default 587),
//! `smtps://host[:port]` (implicit TLS, default 465). Credentials come from the
//! config file or env, never from the URL.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

mod failures;

/// Settings for failure mails. Its `Debug` output hides the password.
#[derive(Clone)]
pub struct MailConfig {
    /// `smtp://`, `smtp+starttls://` or `smtps://` URL of the relay (no credentials in it).
    pub smtp_url: String,
    /// SMTP user, if the relay wants a login.
    pub username: Option<String>,
    /// SMTP password (from the config file or env).
    pub password: Option<String>,
    /// Sender address.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// At most one mail per target within this interval; the rest goes into a digest.
    pub interval: Duration,
    /// Extra CA certificate (PEM) to trust for the relay's TLS certificate, e.g. an internal CA.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for MailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailConfig")
            .field("smtp_url", &self.smtp_url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("from", &self.from)
            .field("to", &self.to)
            .field("interval", &self.interval)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl MailConfig {
    /// Settings without SMTP login or extra CA, with a 15-minute interval.
    pub fn new(smtp_url: &str, from: &str, to: &[&str]) -> MailConfig {
        MailConfig {
            smtp_url: smtp_url.to_string(),
            username: None,
            password: None,
            from: from.to_string(),
            to: to.iter().map(|s| s.to_string()).collect(),
            interval: Duration::from_secs(15 * 60),
            ca_file: None,
        }
    }
}

/// One failed upload attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadFailure {
    /// The target (URL without secrets).
    pub target: String,
    /// Base name of the set.
    pub base_name: String,
    /// The files of the set that were not confirmed.
    pub files: Vec<String>,
    /// What failed and what to check.
    pub error: String,
    /// When the attempt ended (RFC 3339).
    pub at: String,
}

/// What went wrong sending a mail.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The SMTP URL or an address is unusable.
    #[error("mail notification: bad configuration: {0}; check --smtp (smtp://, smtp+starttls://, smtps://) and the mail addresses")]
    Config(String),
    /// Sending failed.
    #[error("mail notification via {url} failed: {detail}; check the SMTP server, port, TLS mode and credentials")]
    Send {
        /// The SMTP URL.
        url: String,
        /// The SMTP error.
        detail: String,
    },
}

#[derive(Debug, Default)]
struct TargetState {
    last_sent: Option<Instant>,
    pending: Vec<UploadFailure>,
    digest_scheduled: bool,
}

struct Inner {
    config: MailConfig,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    state: Mutex<HashMap<String, TargetState>>,
    disk_warned: Mutex<Option<Instant>>,
    directory_warned: Mutex<Option<Instant>>,
    recordings: Mutex<failures::Digest>,
}

/// Sends failure mails; cheap to clone. Needs a tokio runtime.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Builds the lettre transport for an SMTP URL.
fn transport(config: &MailConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, NotifyError> {
    let url = config.smtp_url.as_str();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| NotifyError::Config(format!("{url:?} is not a URL")))?;
    let hostport = rest.trim_end_matches('/');
    if hostport.contains('@') {
        return Err(NotifyError::Config(
            "credentials in the SMTP URL; put them in the config file or env".into(),
        ));
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            Some(
                p.parse::<u16>()
                    .map_err(|_| NotifyError::Config(format!("bad port in {url:?}")))?,
            ),
        ),
        None => (hostport.to_string(), None),
    };
    let tls_err =
        |e: lettre::transport::smtp::Error| NotifyError::Config(format!("TLS for {host}: {e}"));
    let tls_params = || -> Result<Option<TlsParameters>, NotifyError> {
        let Some(ca) = &config.ca_file else {
            return Ok(None);
        };
        let pem = std::fs::read(ca)
            .map_err(|e| NotifyError::Config(format!("CA file {}: {e}", ca.display())))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| NotifyError::Config(format!("CA file {}: {e}", ca.display())))?;
        TlsParameters::builder(host.clone())
            .add_root_certificate(cert)
            .build_rustls()
            .map(Some)
            .map_err(tls_err)
    };
    let builder = match scheme {
        "smtp" => {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host).port(port.unwrap_or(25))
        }
        "smtp+starttls" => {
            let b = AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host)
                .map_err(tls_err)?
                .port(port.unwrap_or(587));
            match tls_params()? {
                Some(p) => b.tls(Tls::Required(p)),
                None => b,
            }
        }
        "smtps" => {
            let b = AsyncSmtpTransport::<Tokio1Executor>::relay(&host)
                .map_err(tls_err)?
                .port(port.unwrap_or(465));
            match tls_params()? {
                Some(p) => b.tls(Tls::Wrapper(p)),
                None => b,
            }
        }
        other => {
            return Err(NotifyError::Config(format!(
                "unknown scheme {other:?}; use smtp://, smtp+starttls:// or smtps://"
            )))
        }
    };
    let builder = builder.timeout(Some(Duration::from_secs(30)));
    let builder = match (&config.username, &config.password) {
        (Some(u), Some(p)) => builder.credentials(Credentials::new(u.clone(), p.clone())),
        _ => builder,
    };
    Ok(builder.build())
}

impl Notifier {
    /// Checks the configuration and prepares the SMTP transport (no connection yet).
    pub fn new(config: MailConfig) -> Result<Notifier, NotifyError> {
        let transport = transport(&config)?;
        let parse = |a: &str| {
            a.parse::<Mailbox>()
                .map_err(|e| NotifyError::Config(format!("address {a:?}: {e}")))
        };
        let from = parse(&config.from)?;
        let to = config
            .to
            .iter()
            .map(|a| parse(a))
            .collect::<Result<Vec<_>, _>>()?;
        if to.is_empty() {
            return Err(NotifyError::Config("no recipient".into()));
        }
        Ok(Notifier {
            inner: Arc::new(Inner {
                config,
                transport,
                from,
                to,
                state: Mutex::new(HashMap::new()),
                disk_warned: Mutex::new(None),
                directory_warned: Mutex::new(None),
                recordings: Mutex::default(),
            }),
        })
    }

    /// Sends one mail now and waits for the server's answer.
    pub async fn send(&self, subject: &str, body: &str) -> Result<(), NotifyError> {
        let mut builder = Message::builder()
            .from(self.inner.from.clone())
            .subject(subject);
        for to in &self.inner.to {
            builder = builder.to(to.clone());
        }
        let message = builder
            .body(body.to_string())
            .map_err(|e| NotifyError::Config(e.to_string()))?;
        self.inner
            .transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| NotifyError::Send {
                url: self.inner.config.smtp_url.clone(),
                detail: e.to_string(),
            })
    }

    fn send_in_background(&self, subject: String, body: String) {
        let me = self.clone();
        tokio::spawn(async move {
            match me.send(&subject, &body).await {
                Ok(()) => tracing::info!(%subject, "notification mail sent"),
                Err(e) => tracing::error!(error = %e, %subject, "notification mail not sent"),
            }
        });
    }

    /// Reports a failed upload attempt: mails at once, or collects it for the target's digest.
    pub fn upload_failed(&self, failure: UploadFailure) {
        let target = failure.target.clone();
        let mut state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let entry = state.entry(target.clone()).or_default();
        let interval = self.inner.config.interval;
        let due = entry.last_sent.is_none_or(|t| t.elapsed() >= interval);
        if due && entry.pending.is_empty() {
            entry.last_sent = Some(Instant::now());
            drop(state);
            let subject = format!(
                "callrec: upload to {} failed ({})",
                failure.target, failure.base_name
            );
            self.send_in_background(subject, failure_body(&[failure]));
            return;
        }
        entry.pending.push(failure);
        if entry.digest_scheduled {
            return;
        }
        entry.digest_scheduled = true;
        let wait = entry
            .last_sent
            .map(|t| interval.saturating_sub(t.elapsed()))
            .unwrap_or_default();
        drop(state);
        tracing::debug!(%target, ?wait, "failure mail suppressed; digest scheduled");
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let failures = {
                let mut state = me.inner.state.lock().unwrap_or_else(|p| p.into_inner());
                let entry = state.entry(target.clone()).or_default();
                entry.digest_scheduled = false;
                entry.last_sent = Some(Instant::now());
                std::mem::take(&mut entry.pending)
            };
            if failures.is_empty() {
                return;
            }
            let subject = format!(
                "callrec: {} failed upload attempts to {} (digest)",
                failures.len(),
                target
            );
            me.send_in_background(subject, failure_body(&failures));
        });
    }

    /// True (and noted) when the warning behind `last` may go out again: at
    /// most one per interval.
    fn due(&self, last: &Mutex<Option<Instant>>) -> bool {
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < self.inner.config.interval) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Warns (at most once per interval) that the PBX directory cannot be
    /// refreshed: decisions use a snapshot that is `age` old (`None`: none was
    /// ever fetched, so group and user rules match nobody).
    pub fn directory_stale(&self, source: &str, age: Option<Duration>, error: &str) {
        if !self.due(&self.inner.directory_warned) {
            return;
        }
        let subject = format!("callrec: directory from {source} not refreshed");
        let state = match age {
            Some(a) => format!(
                "Calls are decided on the last good snapshot, {} minutes old: group and user changes made in the PBX since then are not seen.",
                a.as_secs() / 60
            ),
            None => "No snapshot was ever fetched: profiles that name groups or users match no one, so those calls are not recorded.".to_string(),
        };
        let body = format!(
            "callrec cannot refresh its directory from {source}.\n\
             Last error: {error}\n\
             {state}\n\
             Check that the PBX is reachable from this host and that the login in [directory] is valid; \
             /metrics shows callrec_directory_refresh_failures and callrec_directory_snapshot_age_seconds.\n"
        );
        self.send_in_background(subject, body);
    }

    /// Warns (at most once per interval) that the spool's disk is low on space.
    pub fn low_disk(&self, path: &str, free_bytes: u64, threshold_bytes: u64) {
        if !self.due(&self.inner.disk_warned) {
            return;
        }
        let subject = format!("callrec: spool disk low on space ({path})");
        let body = format!(
            "The spool folder {path} has {} MiB free, below the warning threshold of {} MiB.\n\
             Sealed recordings wait there until every target holds them; check the targets \
             (callrec uploads status) and free space.\n",
            free_bytes / (1024 * 1024),
            threshold_bytes / (1024 * 1024)
        );
        self.send_in_background(subject, body);
    }
}

/// The text of a failure mail for one or more failed attempts.
fn failure_body(failures: &[UploadFailure]) -> String {
    let mut body = String::new();
    if failures.len() > 1 {
        body.push_str(&format!(
            "{} upload attempts failed since the last mail about this target.\n\n",
            failures.len()
        ));
    }
    for f in failures {
        body.push_str(&format!(
            "Target: {}\nSet: {}\nTime: {}\nError: {}\nFiles not confirmed:\n",
            f.target, f.base_name, f.at, f.error
        ));
        for file in &f.files {
            body.push_str(&format!("  {file}\n"));
        }
        body.push('\n');
    }
    body.push_str(
        "The set stays in the spool and is retried automatically; `callrec uploads status` shows the queue.\n",
    );
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> MailConfig {
        MailConfig {
            smtp_url: url.into(),
            username: None,
            password: None,
            from: "callrec@example.org".into(),
            to: vec!["ops@example.org".into()],
            interval: Duration::from_secs(60),
            ca_file: None,
        }
    }

    #[test]
    fn smtp_urls() {
        assert!(Notifier::new(config("smtp://127.0.0.1:2525")).is_ok());
        assert!(Notifier::new(config("smtp+starttls://mail.example.org")).is_ok());
        assert!(Notifier::new(config("smtps://mail.example.org:465")).is_ok());
        assert!(Notifier::new(config("http://x")).is_err());
        assert!(Notifier::new(config("smtp://u:p@x")).is_err());
    }

    #[test]
    fn body_names_target_files_and_error() {
        let body = failure_body(&[UploadFailure {
            target: "sftp://rec@h/x".into(),
            base_name: "b".into(),
            files: vec!["b.wav".into()],
            error: "login refused".into(),
            at: "now".into(),
        }]);
        assert!(
            body.contains("sftp://rec@h/x")
                && body.contains("b.wav")
                && body.contains("login refused")
        );
    }
}
