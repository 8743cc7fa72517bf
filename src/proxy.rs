//! Starting the proxy: binds the SIP transport, the RTP port pool and the admin
//! API, then runs the router until the process is stopped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::b2bua::plan::Planner;
use crate::b2bua::recording::RecordingSettings;
use crate::b2bua::{router, Core, Stats};
use crate::config::RunConfig;
use crate::db::{Db, Record};
use crate::media::ports::PortPool;
use crate::seal::service::SealService;
use crate::seal::SealedSet;
use crate::sip::Transport;
use crate::spool::{Spool, SpoolConfig};

mod outputs;
use outputs::default_target;
pub use outputs::{notifier_from, resolve_targets, ResolvedTargets};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket could not be bound.
    #[error("{0}")]
    Bind(#[from] std::io::Error),
    /// The TLS certificates could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::sip::tls::TlsError),
    /// The sealing identity could not be opened or created.
    #[error("cannot open the sealing identity: {0}")]
    Seal(#[from] crate::seal::SealError),
    /// The recording policy could not be set up.
    #[error("{0}")]
    Plan(#[from] crate::b2bua::plan::PlanError),
    /// The directory could not be set up.
    #[error("{0}")]
    Directory(#[from] crate::policy::RefreshError),
    /// The group membership state could not be opened.
    #[error("{0}")]
    Membership(#[from] crate::policy::MembershipError),
    /// The protocol database could not be opened.
    #[error("{0}")]
    Db(#[from] crate::db::DbError),
    /// The spool could not be started.
    #[error("{0}")]
    Spool(#[from] crate::spool::SpoolError),
    /// The e-mail notifier could not be set up.
    #[error("{0}")]
    Notify(#[from] crate::notify::NotifyError),
    /// A storage target in the configuration is unusable.
    #[error("{0}")]
    Target(String),
    /// The data directory is held by another running instance, or the name is unusable.
    #[error("{0}")]
    Instance(#[from] crate::instance::InstanceError),
    /// The RTP port range is empty or inverted.
    #[error("RTP port range {0}-{1} is empty; give --rtp-ports LO-HI with LO < HI")]
    Ports(u16, u16),
}

/// Runs the proxy until the process ends.
pub async fn run(cfg: RunConfig) -> Result<(), StartError> {
    let (lo, hi) = cfg.rtp_ports;
    if lo >= hi {
        return Err(StartError::Ports(lo, hi));
    }
    // Held until the process ends: a second process on this data directory
    // would share its spool and chain, and `spool adopt` must see that it runs.
    std::fs::create_dir_all(&cfg.data_dir)?;
    let _instance_lock = crate::instance::InstanceLock::acquire(&cfg.data_dir, &cfg.instance_name)?;
    // Open (or create) the identity first: a wrong keystore password must stop
    // the start before any call is taken.
    let identity =
        crate::seal::Identity::load_or_create(&cfg.data_dir, cfg.keystore_password.clone())?;
    let instance_id = identity.instance_id().to_string();
    let instance_row = crate::instance::InstanceRow {
        name: cfg.instance_name.clone(),
        instance_id: instance_id.clone(),
        cert_pem: identity.certificate_pem(),
        seen_ms: crate::db::now_ms(),
    };
    let tombstones = crate::archive::TombstoneSigner {
        identity: identity.clone(),
        staging: cfg.data_dir.join("tombstones"),
    };
    let transcript_identity = identity.clone();
    let mut sealer = crate::seal::Sealer::new(identity, &cfg.data_dir)?;
    let work = cfg.data_dir.join("work");
    crate::recovery::adopt_sealed_sets(&mut sealer, &work);
    let db = Db::open_at_as(&cfg.database, &cfg.instance_name)?;
    // Other instances sharing the database verify and export this one's sets with it.
    db.write_sync(vec![crate::db::Record::Instance(instance_row)])?;
    let (profile_targets, all_targets, secrets) = resolve_targets(&cfg.policy, &cfg.data_dir)?;
    let notifier = notifier(&cfg)?;
    let failures =
        crate::recorder::failure::FailureReporter::with_sinks(Some(db.clone()), notifier.clone());
    // Retention per profile, once at start and then daily.
    let _retention = tokio::spawn(crate::archive::retention_daily(
        db.clone(),
        crate::archive::local_roots(&cfg.data_dir, &all_targets),
        secrets.clone(),
        cfg.policy.clone(),
        Some(tombstones),
        Some(cfg.data_dir.join(crate::transcribe::STAGING_FOLDER)),
    ));
    let _unrecorded = tokio::spawn(crate::redact::expire_unrecorded_daily(
        db.clone(),
        cfg.unrecorded_retention,
    ));
    // Without a TSA, the chain heads' hashes go to an auditor by mail.
    let head_mail = if cfg.anchor.is_none() && !cfg.anchor_email.is_empty() {
        let smtp_only = crate::policy::PolicyConfig {
            smtp: cfg.policy.smtp.clone(),
            ..Default::default()
        };
        notifier_from(cfg.smtp.clone(), &cfg.anchor_email, &smtp_only)?
    } else {
        None
    };
    let _head_mail_task = head_mail.clone().map(|n| {
        tokio::spawn(crate::anchoring::mail_loop(
            n,
            cfg.data_dir.clone(),
            instance_id.clone(),
        ))
    });
    // Time stamps of the chain heads: each profile's targets, or the default folder.
    let anchoring = cfg.anchor.clone().map(|config| {
        let targets_of: std::collections::HashMap<String, Vec<String>> = cfg
            .policy
            .profiles
            .iter()
            .zip(&profile_targets)
            .map(|(p, t)| (p.name.clone(), t.clone()))
            .collect();
        (
            config,
            targets_of,
            vec![default_target(&cfg.data_dir)],
            secrets.clone(),
        )
    });
    let _anchor_task = anchoring
        .clone()
        .map(|(config, targets_of, fallback, secrets)| {
            tokio::spawn(crate::anchoring::anchor_loop(
                db.clone(),
                cfg.data_dir.clone(),
                config,
                targets_of,
                fallback,
                secrets,
            ))
        });
    let spool = Spool::start(
        SpoolConfig::new(&cfg.data_dir),
        db.clone(),
        secrets,
        notifier.clone(),
    )?;
    spool.add_targets(&all_targets);
    let transcripts = crate::transcribe::start::start_for(
        &cfg,
        transcript_identity,
        db.clone(),
        spool.clone(),
        failures.clone(),
        crate::archive::local_roots(&cfg.data_dir, &all_targets),
    )
    .map(Arc::new);
    let sealed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Test hook, documented in the README: dies like `kill -9` right after a set
    // is sealed and before it is spooled, the state a crash there leaves.
    let crash_after_seal = std::env::var_os("CALLREC_TEST_CRASH_AFTER_SEAL").is_some();
    // The work folder's spare files: each call's journal and disk reserve.
    let spares = Arc::new(crate::recorder::spare::Spares::new(&work));
    let seal = {
        let (spool, db, sealed, spares) =
            (spool.clone(), db.clone(), sealed.clone(), spares.clone());
        let transcripts = transcripts.clone();
        let default_target = default_target(&cfg.data_dir);
        SealService::start(
            sealer,
            Box::new(move |group: Vec<(SealedSet, Vec<String>)>| {
                let mut sets = Vec::with_capacity(group.len());
                for (set, targets) in group {
                    sealed.fetch_add(1, Ordering::Relaxed);
                    if crash_after_seal {
                        tracing::warn!(set = %set.base_name, "CALLREC_TEST_CRASH_AFTER_SEAL: dying before the set is spooled");
                        // SAFETY: raising a signal on our own process has no memory effects.
                        unsafe { libc::raise(libc::SIGKILL) };
                    }
                    db.send(Record::Seal {
                        base_name: set.base_name.clone(),
                        at_ms: crate::db::now_ms(),
                        checksum_sha256: set.checksum_sha256.clone(),
                        files: set.files.len() as u32,
                        chain: set.chain_json(),
                    });
                    let targets = if targets.is_empty() {
                        vec![default_target.clone()]
                    } else {
                        targets
                    };
                    // Links only, before the spool takes the files; the transcript comes later.
                    if let Some(t) = &transcripts {
                        t.on_sealed(&set, &targets);
                    }
                    sets.push((set, targets));
                }
                let group: Vec<(&SealedSet, &[String])> =
                    sets.iter().map(|(s, t)| (s, t.as_slice())).collect();
                let mut spooled = Vec::new();
                for ((set, targets), result) in sets.iter().zip(spool.enqueue_group(&group)) {
                    match result {
                        Ok(dir) => {
                            tracing::info!(set = %set.base_name, "sealed set spooled in {} for {} target(s)", dir.display(), targets.len());
                            spooled.push(set);
                        }
                        Err(e) => {
                            tracing::error!(set = %set.base_name, "cannot spool sealed set; it stays in {}: {e}", set.folder.display())
                        }
                    }
                }
                crate::recorder::journal::Journal::remove_all(
                    spooled
                        .iter()
                        .map(|s| (s.folder.as_path(), s.base_name.as_str())),
                    Some(&spares),
                );
            }),
        )
    };
    let recovered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Before calls are taken, so that only what a crash left is in `work/`; the
    // sealing of what is found happens on the sealing thread.
    let recovery = crate::recovery::Recovery {
        work: work.clone(),
        db: db.clone(),
        failures: failures.clone(),
        recovered: recovered.clone(),
        profile_targets: cfg
            .policy
            .profiles
            .iter()
            .map(|p| p.name.clone())
            .zip(profile_targets.iter().cloned())
            .collect(),
        default_targets: vec![default_target(&cfg.data_dir)],
    };
    let (seal_tx, spool_rx) = (seal.sender(), spool.clone());
    if let Err(e) = tokio::task::spawn_blocking(move || recovery.run(&seal_tx, &spool_rx)).await {
        tracing::error!(
            "recovery of what a crash left in {} failed: {e}",
            work.display()
        );
    }
    let recording = RecordingSettings {
        dir: cfg.data_dir.join("work"),
        db: Some(db.clone()),
        channels: cfg.channels,
        instance_id: instance_id.clone(),
        instance_name: cfg.instance_name.clone(),
        seal: seal.sender(),
        spares,
    };
    // Trusted peers' TCP connections may stay idle (a trunk keeps one open for days).
    // Loaded before anything is bound, so that a bad certificate stops the start.
    let tls = match &cfg.tls {
        Some(t) => Some(crate::sip::tls::TlsContext::load(t.clone())?),
        None => None,
    };
    let (transport, inbound) = Transport::bind_with_tls(
        cfg.listen,
        cfg.tcp.clone(),
        cfg.trust.clone(),
        Default::default(),
        tls.clone(),
    )
    .await?;
    let admin_tls = tls.clone().filter(|_| cfg.admin_tls);
    // Always watched, so that a reload never kills an instance without TLS.
    tokio::spawn(reload_on_sighup(tls));
    let local = transport.local_addr();
    let advertised = if local.ip().is_unspecified() {
        SocketAddr::new(cfg.media_ip, local.port())
    } else {
        local
    };
    let ports = PortPool::new(cfg.media_ip, lo, hi);
    let (directory, refresher) =
        crate::policy::start_directory(cfg.policy.directory.as_ref(), cfg.policy.numbers.clone())
            .await?;
    let pbx_session = directory.clone();
    if let (Some(dir_cfg), Some(notifier)) = (&cfg.policy.directory, notifier) {
        directory.alert_when_stale(
            Duration::from_secs(dir_cfg.alert_after_secs),
            Arc::new(move |source: &str, age: Option<Duration>, error: &str| {
                notifier.directory_stale(source, age, error)
            }),
        );
    }
    let _phone_keys = crate::phone::provision::spawn(&cfg, directory.clone(), db.clone());
    let membership = Arc::new(crate::policy::MembershipStore::open(
        db.clone(),
        &cfg.data_dir,
    )?);
    let _membership_refresh = membership.spawn_refresh(cfg.membership_refresh);
    let planner = Planner::new(
        cfg.policy.profiles.clone(),
        profile_targets,
        directory,
        membership,
        Some(db.clone()),
    )?;
    let transport_stats = transport.stats();
    let core = Arc::new(Core {
        cfg: cfg.clone(),
        transport,
        ports,
        stats: Stats {
            sealed,
            recordings_recovered: recovered,
            transport: transport_stats,
            ..Stats::default()
        },
        recent: Mutex::new(Default::default()),
        live: Mutex::new(Default::default()),
        advertised,
        recording: Some(recording),
        planner: Some(planner),
        draining: AtomicBool::new(false),
        hang_up_all: tokio::sync::watch::channel(false).0,
        db: Some(db.clone()),
        failures: failures.clone(),
    });
    // Completeness of the recordings, daily (the first run once start-up has settled).
    let _reconcile = tokio::spawn(crate::reconcile::daily(
        db.clone(),
        failures,
        cfg.limits.max_call_duration,
        crate::reconcile::SETTLE,
    ));
    if let Some(admin) = cfg.admin_listen {
        let token = match &cfg.admin_token {
            Some(t) => t.clone(),
            None => admin_token_file(&cfg.data_dir)?,
        };
        crate::admin::serve(core.clone(), Some(spool.clone()), admin, token, admin_tls).await?;
    }
    if let Some(phone) = cfg.phone.listen {
        crate::phone::server::serve(core.clone(), phone).await?;
    }
    tracing::info!(
        "callrec listening on {local} (UDP and TCP); PBX {}, trunk {}; media on {} ports {lo}-{hi}",
        cfg.pbx,
        cfg.trunk,
        cfg.media_ip
    );
    if let Some(a) = core.transport.tls_local_addr() {
        tracing::info!("SIP over TLS on {a}");
    }
    let router = tokio::spawn(router::run(core.clone(), inbound));
    wait_for_stop_signal().await;
    drain(&core, cfg.shutdown_grace).await;
    router.abort();
    // No refresh may log in again after the logout.
    if let Some(r) = refresher {
        r.abort();
        let _ = r.await;
    }
    pbx_session.logout().await;
    drop(core);
    // Joins the sealing thread: every queued recording is sealed before we exit.
    drop(seal);
    if !spool.wait_empty(Duration::from_secs(10)).await {
        tracing::warn!(
            "uploads still pending at exit; they stay in the spool and resume at the next start"
        );
    }
    if let Some(n) = &head_mail {
        crate::anchoring::mail_heads(n, &cfg.data_dir, &instance_id).await;
    }
    // The heads as they are at exit, time-stamped once more.
    if let Some((config, targets_of, fallback, secrets)) = &anchoring {
        crate::anchoring::anchor_heads(&db, &cfg.data_dir, config, targets_of, fallback, secrets)
            .await;
    }
    db.flush();
    tracing::info!("callrec stopped; every recording is sealed");
    Ok(())
}

/// Reads `<data-dir>/admin.token`, creating it (mode 0600) with a random token
/// on first start.
fn admin_token_file(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("admin.token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let token = crate::sip::random_token(32);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(&mut opts.open(&path)?, format!("{token}\n").as_bytes())?;
    tracing::warn!(
        "no admin token given: generated one into {} (mode 0600); the /api/ paths need it as a bearer token",
        path.display()
    );
    Ok(token)
}

/// Reloads the TLS certificates on each SIGHUP; connections already open keep
/// theirs, so running calls are not touched. A file that does not load leaves
/// the old certificates in use.
async fn reload_on_sighup(ctx: Option<Arc<crate::sip::tls::TlsContext>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return tracing::warn!("cannot watch SIGHUP: TLS certificates will not be reloaded");
    };
    while hup.recv().await.is_some() {
        let Some(ctx) = &ctx else {
            tracing::info!("SIGHUP: no TLS configured, nothing to reload");
            continue;
        };
        match ctx.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
            Err(e) => tracing::error!(
                "SIGHUP: TLS certificates not reloaded, the old ones stay in use: {e}"
            ),
        }
    }
}

/// Waits for SIGTERM or SIGINT.
async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("cannot watch SIGTERM");
    let mut int = signal(SignalKind::interrupt()).expect("cannot watch SIGINT");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Refuses new calls, lets running calls end within `grace`, then hangs up the
/// rest, and waits until every recording has been handed to the sealer.
async fn drain(core: &Arc<Core>, grace: Duration) {
    core.draining.store(true, Ordering::SeqCst);
    let active = || core.stats.calls_active.load(Ordering::SeqCst);
    tracing::info!(
        calls = active(),
        "refusing new calls; waiting up to {grace:?} for running calls to end"
    );
    let deadline = Instant::now() + grace;
    while active() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if active() > 0 {
        tracing::warn!(
            calls = active(),
            "grace period over: hanging up the remaining calls"
        );
        let _ = core.hang_up_all.send(true);
        let deadline = Instant::now() + Duration::from_secs(5);
        while active() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let pending = || core.stats.recordings_pending.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while pending() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if pending() > 0 {
        tracing::error!(recordings = pending(), "recordings still being finished at exit; their files stay unsealed in the recordings folder");
    }
}

/// The failure-mail notifier, when an SMTP server and at least one address are configured.
fn notifier(cfg: &RunConfig) -> Result<Option<crate::notify::Notifier>, StartError> {
    notifier_from(cfg.smtp.clone(), &cfg.notify_email, &cfg.policy)
}
