//! Background refresh of the directory: a tokio task fetches from the
//! source on an interval and swaps in a new snapshot only when a fetch fully
//! succeeds; on error it keeps the last good one and logs what to check. Decisions
//! read the current snapshot through `DirectoryHandle::current`, which never waits
//! on the network. When refreshes keep failing, an alert hook (the mail
//! notifier, wired by the proxy) hears of it once the snapshot is old enough.
//! At shutdown `DirectoryHandle::logout` ends the PBX session.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use super::directory::Directory;
use super::error::{DirectoryError, RestError};
use super::numbers::NumberPlan;
use super::profile::DirectoryConfig;
use super::rest::PbxClient;

/// Timeout for one HTTP request to the PBX.
pub const REST_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the logout at shutdown may take.
pub const LOGOUT_TIMEOUT: Duration = Duration::from_secs(3);

/// A refresh failed (the last good snapshot stays in use).
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The static file could not be loaded.
    #[error(transparent)]
    File(#[from] DirectoryError),
    /// The PBX REST API failed.
    #[error(transparent)]
    Rest(#[from] RestError),
    /// The REST source has no password.
    #[error("[directory] source {source_url} needs a password: set password in the config file or CALLREC_DIRECTORY_PASSWORD")]
    NoPassword { source_url: String },
}

/// Where directory snapshots come from.
#[derive(Debug, Clone)]
pub enum DirectorySource {
    /// A static TOML/JSON file, re-read on every refresh.
    File(PathBuf),
    /// The PBX's REST API.
    Rest(Arc<PbxClient>),
}

impl DirectorySource {
    /// The source named in `[directory]` (a file path or a REST URL).
    pub fn from_config(cfg: &DirectoryConfig) -> Result<DirectorySource, RefreshError> {
        if !cfg.is_rest() {
            return Ok(DirectorySource::File(PathBuf::from(&cfg.source)));
        }
        let password = cfg.password().ok_or_else(|| RefreshError::NoPassword {
            source_url: cfg.source.clone(),
        })?;
        let client = PbxClient::new(
            &cfg.source,
            cfg.login_id.as_deref().unwrap_or(""),
            &password,
            cfg.accept_invalid_certs,
            REST_TIMEOUT,
        )?;
        Ok(DirectorySource::Rest(Arc::new(client)))
    }

    /// Fetch one complete snapshot.
    pub async fn fetch(&self, plan: &NumberPlan) -> Result<Directory, RefreshError> {
        match self {
            DirectorySource::File(path) => {
                let path = path.clone();
                let plan = plan.clone();
                tokio::task::spawn_blocking(move || Directory::load_file(&path, plan))
                    .await
                    .expect("directory file loader panicked")
                    .map_err(RefreshError::from)
            }
            DirectorySource::Rest(client) => Ok(client.fetch_directory(plan).await?),
        }
    }

    /// A short name for logs.
    pub fn describe(&self) -> String {
        match self {
            DirectorySource::File(p) => p.display().to_string(),
            DirectorySource::Rest(c) => c.base().to_string(),
        }
    }
}

/// How the last refreshes went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshStatus {
    /// Number of snapshots swapped in so far.
    pub generation: u64,
    /// When the current snapshot was fetched (none: still the initial one).
    pub last_success: Option<SystemTime>,
    /// The last error, cleared by the next success.
    pub last_error: Option<String>,
    /// Failed refreshes since the last success.
    pub consecutive_failures: u64,
}

/// Called after a failed refresh once the snapshot in use is older than the
/// alert threshold: (source, how old it is or `None` if never fetched, the error).
pub type StaleAlert = Arc<dyn Fn(&str, Option<Duration>, &str) + Send + Sync>;

/// The current directory snapshot, shared by all calls.
pub struct DirectoryHandle {
    current: RwLock<Arc<Directory>>,
    status: RwLock<RefreshStatus>,
    created: SystemTime,
    stale_alert: RwLock<Option<(Duration, StaleAlert)>>,
    /// The PBX session started by `start`, logged out at shutdown.
    session: RwLock<Option<Arc<PbxClient>>>,
}

impl std::fmt::Debug for DirectoryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryHandle")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl DirectoryHandle {
    /// A handle holding `initial` (usually `Directory::empty`).
    pub fn new(initial: Directory) -> Arc<DirectoryHandle> {
        Arc::new(DirectoryHandle {
            current: RwLock::new(Arc::new(initial)),
            status: RwLock::new(RefreshStatus::default()),
            created: SystemTime::now(),
            stale_alert: RwLock::new(None),
            session: RwLock::new(None),
        })
    }

    /// The PBX session of a REST source, shared with other REST users (the
    /// phone key provisioning), so one token is kept and logged out at shutdown.
    pub fn session(&self) -> Option<Arc<PbxClient>> {
        self.session
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Log out of the PBX's REST API (`DELETE /login`), if a REST source was
    /// started; for shutdown, after the refresher has stopped, so the token does
    /// not stay live on the PBX. A failure is logged: shutdown goes on.
    pub async fn logout(&self) {
        let client = self
            .session
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(client) = client {
            // A PBX that stopped answering must not hold up the shutdown.
            match tokio::time::timeout(LOGOUT_TIMEOUT, client.logout()).await {
                Ok(Ok(())) => {
                    tracing::info!(source = %client.base(), "logged out of the PBX REST API")
                }
                Ok(Err(e)) => {
                    tracing::warn!(source = %client.base(), "PBX REST logout failed: {e}")
                }
                Err(_) => tracing::warn!(
                    source = %client.base(),
                    "PBX REST logout gave no answer within {}s; the token expires on the PBX",
                    LOGOUT_TIMEOUT.as_secs()
                ),
            }
        }
    }

    /// Calls `alert` after every failed refresh once the snapshot in use (or,
    /// before the first success, the handle) is older than `after`; the callee
    /// decides how often to pass it on (the mail notifier sends one per interval).
    pub fn alert_when_stale(&self, after: Duration, alert: StaleAlert) {
        *self.stale_alert.write().unwrap_or_else(|p| p.into_inner()) = Some((after, alert));
    }

    /// The current snapshot (a pointer copy under a short read lock).
    pub fn current(&self) -> Arc<Directory> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Swap in a new snapshot.
    pub fn replace(&self, dir: Directory) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(dir);
        let mut st = self.status.write().unwrap_or_else(|p| p.into_inner());
        st.generation += 1;
        st.last_success = Some(SystemTime::now());
        st.last_error = None;
        st.consecutive_failures = 0;
    }

    fn record_failure(&self, err: &RefreshError) -> RefreshStatus {
        let mut st = self.status.write().unwrap_or_else(|p| p.into_inner());
        st.last_error = Some(err.to_string());
        st.consecutive_failures += 1;
        st.clone()
    }

    /// How the refreshes went so far.
    pub fn status(&self) -> RefreshStatus {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Fetch once from `source`; swap in the result on success, keep the old one on error.
    pub async fn refresh_once(
        &self,
        source: &DirectorySource,
        plan: &NumberPlan,
    ) -> Result<(), RefreshError> {
        match source.fetch(plan).await {
            Ok(dir) => {
                tracing::info!(
                    source = %source.describe(),
                    users = dir.users().len(),
                    groups = dir.groups().len(),
                    "directory refreshed"
                );
                self.replace(dir);
                Ok(())
            }
            Err(e) => {
                let st = self.record_failure(&e);
                let kept = self.current();
                let age = st.last_success.and_then(|t| t.elapsed().ok()).map_or_else(
                    || "never fetched".to_string(),
                    |a| format!("{}s old", a.as_secs()),
                );
                tracing::error!(
                    source = %source.describe(),
                    failures = st.consecutive_failures,
                    kept_users = kept.users().len(),
                    kept_groups = kept.groups().len(),
                    snapshot_age = %age,
                    "directory refresh failed, keeping the last good snapshot: {e}"
                );
                let alert = self
                    .stale_alert
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if let Some((after, alert)) = alert {
                    let since = st.last_success.unwrap_or(self.created);
                    let stale_for = since.elapsed().unwrap_or_default();
                    if stale_for >= after {
                        let age = st.last_success.map(|_| stale_for);
                        alert(&source.describe(), age, &e.to_string());
                    }
                }
                Err(e)
            }
        }
    }
}

/// Set up the directory for `callrec run`: no source → an empty snapshot and no task;
/// a static file → loaded now (a broken file is a setup error) and re-read every
/// `refresh_secs`; a REST URL → an empty snapshot now and a refresher that fetches
/// at once in the background (an unreachable PBX only logs an error).
pub async fn start(
    cfg: Option<&DirectoryConfig>,
    plan: NumberPlan,
) -> Result<(Arc<DirectoryHandle>, Option<tokio::task::JoinHandle<()>>), RefreshError> {
    let handle = DirectoryHandle::new(Directory::empty(plan.clone()));
    let Some(cfg) = cfg else {
        tracing::info!("no directory configured: profiles match plain numbers only");
        return Ok((handle, None));
    };
    let source = DirectorySource::from_config(cfg)?;
    if let DirectorySource::Rest(client) = &source {
        *handle.session.write().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
    }
    let interval = Duration::from_secs(cfg.refresh_secs.max(1));
    let mut tick_now = true;
    if let DirectorySource::File(_) = source {
        handle.refresh_once(&source, &plan).await?;
        tick_now = false;
    }
    let task = spawn_refresher_inner(handle.clone(), source, plan, interval, tick_now);
    Ok((handle, Some(task)))
}

/// Start the background refresher: fetch at once, then every `interval`, forever.
pub fn spawn_refresher(
    handle: Arc<DirectoryHandle>,
    source: DirectorySource,
    plan: NumberPlan,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    spawn_refresher_inner(handle, source, plan, interval, true)
}

fn spawn_refresher_inner(
    handle: Arc<DirectoryHandle>,
    source: DirectorySource,
    plan: NumberPlan,
    interval: Duration,
    fetch_now: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = if fetch_now {
            tokio::time::Instant::now()
        } else {
            tokio::time::Instant::now() + interval
        };
        let mut tick = tokio::time::interval_at(start, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // The error is logged inside; the old snapshot stays.
            let _ = handle.refresh_once(&source, &plan).await;
        }
    })
}
