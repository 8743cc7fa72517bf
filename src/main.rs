//! The `callrec` command line: parses flags (each also as `CALLREC_<FLAG>`)
//! and calls into the library. Exit codes: 0 ok, 1 failure found, 2 usage or setup error.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use callrec::config::{Limits, RunConfig};
use callrec::policy::{DirectoryConfig, PolicyConfig, Profile};
use callrec::seal::{Identity, PasswordSource};
use callrec::sip::transport::TcpLimits;

/// SIP call-recording proxy: records calls between a trunk and a PBX and seals the recordings.
#[derive(Parser, Debug)]
#[command(name = "callrec", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy between the trunk and the PBX.
    Run(Box<RunArgs>),
    /// Print the instance's certificate (PEM), or a certificate signing request with --csr.
    Cert(CertArgs),
    /// Verify sealed recording sets (checksums and signature; with --chain the whole chain).
    Verify(VerifyArgs),
    /// Show or retry the uploads waiting in the spool.
    Uploads {
        #[command(subcommand)]
        action: UploadsAction,
    },
    /// Search recordings by party number and time, or export a client's recordings.
    Recordings {
        #[command(subcommand)]
        action: RecordingsAction,
    },
    /// Sign in to OneDrive for Business for a target with delegated sign-in.
    Onedrive {
        #[command(subcommand)]
        action: OnedriveAction,
    },
    /// Delete recordings older than the retention period from the local folders (each deletion is logged in the database).
    Purge(PurgeArgs),
    /// Reconcile the calls decided "record" with their sealed sets and list the recording failures; exit 1 when a set is missing.
    Report(ReportArgs),
    /// List the access log: who searched, exported, played back or held which recordings.
    Audit(AuditArgs),
    /// Legal hold: keep a set, or every set of a number, past its retention period.
    Hold {
        #[command(subcommand)]
        action: HoldAction,
    },
    /// Check the protocol database, or recover what is readable of a damaged one.
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
    /// Users of the web console (the password is read from standard input when it is not a terminal).
    Users {
        #[command(subcommand)]
        action: UsersAction,
    },
}

#[derive(Subcommand, Debug)]
enum UsersAction {
    /// Add a user with a role: viewer (search, listen), auditor (also export, access log) or admin (also operations).
    Add {
        name: String,
        #[arg(long)]
        role: callrec::console::Role,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Set a new password (the user's sessions end).
    Passwd {
        name: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Remove a user (her sessions end).
    Remove {
        name: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// List the users and their roles.
    List(StateArgs),
}

fn users(action: UsersAction) -> anyhow::Result<()> {
    use callrec::console::users;
    let db_file = |s: &StateArgs| s.data_dir.join(callrec::db::DB_FILE_NAME);
    match action {
        UsersAction::Add { name, role, state } => {
            let pw = users::read_password(&format!("Password for {name}: "))?;
            users::add(&db_file(&state), &name, role, &pw)?;
            println!("user {name} added with role {role}");
        }
        UsersAction::Passwd { name, state } => {
            let pw = users::read_password(&format!("New password for {name}: "))?;
            users::passwd(&db_file(&state), &name, &pw)?;
            println!("password of {name} changed");
        }
        UsersAction::Remove { name, state } => {
            users::remove(&db_file(&state), &name)?;
            println!("user {name} removed");
        }
        UsersAction::List(state) => {
            for (name, role) in users::list(&state.db()?)? {
                println!("{name}  {role}");
            }
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// How many days back to look.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// Calls that ended less than this many seconds ago are left out (their set may still be being sealed).
    #[arg(long, default_value_t = 600)]
    settle_secs: u64,
    /// As for `run`: a call without a recorded end is checked once its decision is older than this.
    #[arg(long, env = "CALLREC_MAX_CALL_DURATION", default_value_t = Limits::default().max_call_duration.as_secs())]
    max_call_duration: u64,
    /// SMTP server to mail newly found missing sets to (as for `run`).
    #[arg(long, env = "CALLREC_SMTP")]
    smtp: Option<String>,
    /// Address for that mail (repeatable).
    #[arg(
        long = "notify-email",
        env = "CALLREC_NOTIFY_EMAIL",
        value_delimiter = ','
    )]
    notify_email: Vec<String>,
    #[command(flatten)]
    state: StateArgs,
}

/// Returns whether every recorded call has its set.
fn report(a: ReportArgs) -> anyhow::Result<bool> {
    use callrec::reconcile::{reconcile, Params};
    let db = a.state.db()?;
    let reporter = callrec::recorder::failure::FailureReporter::with_sinks(Some(db.clone()), None);
    let p = Params::last(
        Duration::from_secs(u64::from(a.days) * 86_400),
        Duration::from_secs(a.settle_secs),
        Duration::from_secs(a.max_call_duration),
    );
    let r = reconcile(&db, &reporter, &p)?;
    db.flush();
    print!("{}", r.text(&p));
    let new = r.new_failures();
    let notifier = callrec::proxy::notifier_from(a.smtp, &a.notify_email, &a.state.policy()?)?;
    if let (Some(n), false) = (notifier, new.is_empty()) {
        let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        rt.block_on(n.send_recording_failures(&new))?;
        println!("mail sent about {} newly found missing set(s)", new.len());
    }
    Ok(r.missing.is_empty())
}

#[derive(Args, Debug)]
struct AuditArgs {
    /// Only entries at or after this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long)]
    since: Option<String>,
    /// Only entries of this actor (OS user, API token name or console user).
    #[arg(long)]
    actor: Option<String>,
    /// Print a JSON array instead of one line per entry.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    state: StateArgs,
}

/// What a hold names: one of --set or --number.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct HoldTarget {
    /// A set, by base name (as `recordings search` prints it) or set id.
    #[arg(long)]
    set: Option<String>,
    /// A party's number, in any spelling: every set where it is caller, callee or answered.
    #[arg(long)]
    number: Option<String>,
}

#[derive(Subcommand, Debug)]
enum HoldAction {
    /// Place a hold.
    Add {
        #[command(flatten)]
        target: HoldTarget,
        /// Why (e.g. the case reference); kept with the hold.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Lift a hold.
    Remove {
        #[command(flatten)]
        target: HoldTarget,
        #[command(flatten)]
        state: StateArgs,
    },
    /// One line per active hold.
    List(StateArgs),
}

fn hold(action: HoldAction) -> anyhow::Result<()> {
    use callrec::access_log::AccessAction;
    use callrec::hold::{Hold, HoldChange, HoldKind};
    let (target, reason, state, add) = match action {
        HoldAction::List(state) => {
            let db = state.db()?;
            log_access(&db, AccessAction::Hold, "list", None)?;
            for h in callrec::hold::list(&db)? {
                println!(
                    "{}  {} {}  by {}  {}",
                    fmt_ms(h.at_ms),
                    h.kind.as_str(),
                    h.value,
                    h.actor,
                    h.reason
                );
            }
            return Ok(());
        }
        HoldAction::Add {
            target,
            reason,
            state,
        } => (target, reason, state, true),
        HoldAction::Remove { target, state } => (target, String::new(), state, false),
    };
    let (kind, raw) = match (target.set, target.number) {
        (Some(s), _) => (HoldKind::Set, s),
        (None, Some(n)) => (HoldKind::Number, n),
        (None, None) => bail!("give --set or --number"),
    };
    let plan = state.policy()?.numbers;
    let value = callrec::hold::stored_value(kind, &raw, &plan);
    let db = state.db()?;
    let verb = if add { "add" } else { "remove" };
    log_access(
        &db,
        AccessAction::Hold,
        &value,
        Some(format!("{verb} {} hold: {reason}", kind.as_str())),
    )?;
    let hold = Hold {
        kind,
        value: value.clone(),
        reason,
        actor: callrec::access_log::os_user(),
        at_ms: callrec::db::now_ms(),
    };
    db.write_sync(vec![callrec::db::Record::Hold(HoldChange { hold, add })])?;
    println!("hold {verb}: {} {value}", kind.as_str());
    Ok(())
}

fn audit(a: AuditArgs) -> anyhow::Result<()> {
    let since = a.since.as_deref().map(parse_time).transpose()?;
    let rows = callrec::access_log::list(&a.state.db()?, since, a.actor.as_deref())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for r in &rows {
            println!("{}", r.line());
        }
    }
    Ok(())
}

/// Logs an access by the OS user before anything is shown; an access that
/// cannot be logged is refused.
fn log_access(
    db: &callrec::db::Db,
    action: callrec::access_log::AccessAction,
    subject: &str,
    detail: Option<String>,
) -> anyhow::Result<()> {
    let entry = callrec::access_log::AccessEntry::now(
        callrec::access_log::os_user(),
        action,
        subject,
        detail,
    );
    callrec::access_log::record_sync(db, entry)
        .context("cannot write the access log; nothing is shown")
}

#[derive(Subcommand, Debug)]
enum DbAction {
    /// SQLite's full integrity check: exit status 0 when sound, 1 when damaged (with the findings).
    Check(StateArgs),
    /// With callrec stopped: copy what is readable into a fresh file, keep the damaged one beside it, rebuild the upload queue from the spool.
    Recover(StateArgs),
}

/// Returns whether the database is sound (check) or was recovered.
fn db_command(action: DbAction) -> anyhow::Result<bool> {
    match action {
        DbAction::Check(s) => {
            let r = callrec::db_repair::check(&s.data_dir)?;
            print!("{r}");
            Ok(r.findings.is_empty())
        }
        DbAction::Recover(s) => {
            print!("{}", callrec::db_repair::recover(&s.data_dir)?);
            Ok(true)
        }
    }
}

/// Where an offline subcommand finds the instance's state.
#[derive(Args, Debug)]
struct StateArgs {
    /// Folder for the instance's state (as for `run`).
    #[arg(long, env = "CALLREC_DATA_DIR", default_value = "./callrec-data")]
    data_dir: PathBuf,
    /// The config file `run` uses (number plan, file:// targets).
    #[arg(long, env = "CALLREC_CONFIG")]
    config: Option<PathBuf>,
}

impl StateArgs {
    fn policy(&self) -> anyhow::Result<PolicyConfig> {
        match &self.config {
            Some(p) => PolicyConfig::load(p)
                .with_context(|| format!("cannot use config file {}", p.display())),
            None => Ok(PolicyConfig::default()),
        }
    }

    fn db(&self) -> anyhow::Result<callrec::db::Db> {
        if !self.data_dir.join(callrec::db::DB_FILE_NAME).exists() {
            bail!(
                "no protocol database in {}; give the --data-dir that `callrec run` uses",
                self.data_dir.display()
            );
        }
        Ok(callrec::db::Db::open_in(&self.data_dir)?)
    }

    /// Local folders holding delivered sets.
    fn roots(&self) -> anyhow::Result<Vec<PathBuf>> {
        let policy = self.policy()?;
        let targets: Vec<String> = policy
            .profiles
            .iter()
            .flat_map(|p| p.targets.iter())
            .filter_map(|t| policy.resolve_target(t).map(|t| t.url))
            .collect();
        Ok(callrec::archive::local_roots(&self.data_dir, &targets))
    }
}

#[derive(Subcommand, Debug)]
enum OnedriveAction {
    /// Without --code: print the sign-in link. With --code: exchange the code (or the whole redirect address) for tokens kept in the data dir.
    Authorize {
        /// The code (or redirect address) the browser shows after sign-in.
        #[arg(long)]
        code: Option<String>,
        /// Which onedrive:// target, when the config has several with delegated sign-in.
        #[arg(long)]
        target: Option<String>,
        #[command(flatten)]
        state: StateArgs,
    },
}

fn onedrive(action: OnedriveAction) -> anyhow::Result<()> {
    let OnedriveAction::Authorize {
        code,
        target,
        state,
    } = action;
    let policy = state.policy()?;
    let (_, urls, secrets) = callrec::proxy::resolve_targets(&policy, &state.data_dir)?;
    let candidates =
        callrec::storage::onedrive::delegated_targets(urls.iter().map(String::as_str), &secrets);
    let url = match (target, candidates.as_slice()) {
        (Some(t), _) => t,
        (None, [one]) => one.clone(),
        (None, []) => bail!("no onedrive:// target with delegated sign-in (auth = \"delegated\") in the config file; give --config"),
        (None, many) => bail!("several delegated OneDrive targets: pick one with --target ({})", many.join(", ")),
    };
    std::fs::create_dir_all(&state.data_dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    let outcome = rt.block_on(callrec::storage::onedrive::authorize(
        &state.data_dir,
        &url,
        &secrets,
        code.as_deref(),
    ))?;
    println!("{outcome}");
    Ok(())
}

#[derive(Subcommand, Debug)]
enum UploadsAction {
    /// One line per set and target: state, attempts, last error.
    Status(StateArgs),
    /// Ask the running proxy to retry every pending upload now.
    Retry(StateArgs),
}

#[derive(Args, Debug)]
struct SearchArgs {
    /// Party number (caller or callee), in any spelling.
    #[arg(long)]
    number: String,
    /// Only recordings that started at or after this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long)]
    from: Option<String>,
    /// Only recordings that started before this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long)]
    to: Option<String>,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Subcommand, Debug)]
enum RecordingsAction {
    /// One line per recording set of a party.
    Search(SearchArgs),
    /// Copy a party's sets with the certificate and verify.sh into a folder, verifying each set before and after.
    Export {
        #[command(flatten)]
        search: SearchArgs,
        /// Folder to export into.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
struct PurgeArgs {
    /// Retention period: sets that started longer ago are deleted (e.g. 5y, 7y, 90d).
    #[arg(long)]
    older_than: String,
    /// Only list what would be deleted.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    state: StateArgs,
    #[command(flatten)]
    keystore: KeystoreArgs,
}

/// Milliseconds since the epoch of an RFC 3339 time or a date (local midnight).
fn parse_time(s: &str) -> anyhow::Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .with_context(|| format!("cannot read {s:?} as a time; use RFC 3339 or YYYY-MM-DD"))?;
    let t = d
        .and_hms_opt(0, 0, 0)
        .and_then(|t| t.and_local_timezone(chrono::Local).earliest())
        .with_context(|| format!("{s} does not exist in the local time zone"))?;
    Ok(t.timestamp_millis())
}

/// The rows of a search, after its access is logged (`action` search or export).
fn search_rows(
    a: &SearchArgs,
    action: callrec::access_log::AccessAction,
) -> anyhow::Result<Vec<callrec::db::RecordingRow>> {
    let from = a.from.as_deref().map(parse_time).transpose()?.unwrap_or(0);
    let to =
        a.to.as_deref()
            .map(parse_time)
            .transpose()?
            .unwrap_or(i64::MAX);
    let plan = a.state.policy()?.numbers;
    let db = a.state.db()?;
    let rows = callrec::archive::search(&db, &plan, &a.number, from, to)?;
    if action == callrec::access_log::AccessAction::Search {
        let range = format!("{} set(s), from {:?} to {:?}", rows.len(), a.from, a.to);
        log_access(&db, action, &a.number, Some(range))?;
    }
    Ok(rows)
}

fn fmt_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
}

fn uploads(action: UploadsAction) -> anyhow::Result<()> {
    match action {
        UploadsAction::Status(s) => {
            print!("{}", callrec::spool::status_text(&s.db()?.uploads()?));
        }
        UploadsAction::Retry(s) => {
            callrec::spool::request_retry(&s.data_dir.join("spool"))?;
            println!(
                "retry requested; the running proxy retries every pending upload within a second"
            );
        }
    }
    Ok(())
}

/// Returns whether everything asked for was exported.
fn recordings(action: RecordingsAction) -> anyhow::Result<bool> {
    match action {
        RecordingsAction::Search(a) => {
            for r in search_rows(&a, callrec::access_log::AccessAction::Search)? {
                let answered = r
                    .answered_by
                    .map(|a| format!("  answered by {a}"))
                    .unwrap_or_default();
                println!(
                    "{}  {}  {} -> {}  {}{}{answered}",
                    fmt_ms(r.start_ms),
                    r.base_name,
                    r.caller.unwrap_or_default(),
                    r.callee.unwrap_or_default(),
                    r.profile.unwrap_or_default(),
                    if r.recovered { "  recovered" } else { "" }
                );
            }
            Ok(true)
        }
        RecordingsAction::Export { search, out } => {
            let rows = search_rows(&search, callrec::access_log::AccessAction::Export)?;
            if rows.is_empty() {
                bail!("no recordings of {} in that time range", search.number);
            }
            let cert_path = search.state.data_dir.join("cert.pem");
            let id = std::fs::read_to_string(&cert_path).with_context(|| {
                format!(
                    "cannot read the instance certificate {}; run `callrec cert` once",
                    cert_path.display()
                )
            })?;
            // Logged before anything leaves: which number, which sets, where to.
            let sets: Vec<&str> = rows.iter().map(|r| r.base_name.as_str()).collect();
            log_access(
                &search.state.db()?,
                callrec::access_log::AccessAction::Export,
                &search.number,
                Some(format!("to {}: {}", out.display(), sets.join(" "))),
            )?;
            let report = callrec::archive::export(
                &rows,
                &search.state.roots()?,
                &out,
                &id,
                include_str!("../deploy/verify.sh"),
            )?;
            for b in &report.exported {
                println!("exported {b}");
            }
            for p in &report.problems {
                println!("PROBLEM {p}");
            }
            println!(
                "{} set(s) exported to {} with cert.pem and verify.sh",
                report.exported.len(),
                out.display()
            );
            Ok(report.problems.is_empty())
        }
    }
}

/// Returns whether every deletion succeeded.
fn purge(a: PurgeArgs) -> anyhow::Result<bool> {
    let age = callrec::archive::parse_age(&a.older_than)?;
    let db = a.state.db()?;
    let policy = a.state.policy()?;
    // The same targets and secrets as `run`, so remote copies are deleted too.
    let (_, _, secrets) = callrec::proxy::resolve_targets(&policy, &a.state.data_dir)?;
    // The tombstones are signed by this instance; a data dir without a
    // keystore has sealed nothing, so no identity is created for a purge.
    let tombstones = if a.state.data_dir.join("keystore.p12").exists() {
        Some(callrec::archive::TombstoneSigner {
            identity: Identity::load_or_create(&a.state.data_dir, a.keystore.source())
                .context("cannot open the instance's keystore to sign the tombstones")?,
            staging: a.state.data_dir.join("tombstones"),
        })
    } else {
        None
    };
    let request = callrec::archive::PurgeRequest {
        older_than: age,
        dry_run: a.dry_run,
        reason: format!("retention {}", a.older_than),
        profile: None,
        tombstones,
        plan: policy.numbers.clone(),
    };
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = rt.block_on(callrec::archive::purge_everywhere(
        &db,
        &a.state.roots()?,
        &secrets,
        &request,
    ))?;
    let verb = if a.dry_run { "would delete" } else { "deleted" };
    for line in report.lines(verb) {
        println!("{line}");
    }
    println!("{} set(s) {verb}", report.sets());
    Ok(report.failed.is_empty())
}

/// Where the keystore password comes from (shared by run and cert).
#[derive(Args, Debug)]
struct KeystoreArgs {
    /// File holding the keystore password (the value itself can be given as env CALLREC_KEYSTORE_PASSWORD; without either a random password is generated into the data dir).
    #[arg(long, env = "CALLREC_KEYSTORE_PASSWORD_FILE")]
    keystore_password_file: Option<PathBuf>,
}

impl KeystoreArgs {
    fn source(&self) -> PasswordSource {
        if let Some(f) = &self.keystore_password_file {
            return PasswordSource::File(f.clone());
        }
        match std::env::var("CALLREC_KEYSTORE_PASSWORD") {
            Ok(v) if !v.is_empty() => PasswordSource::Value(v),
            _ => PasswordSource::None,
        }
    }
}

#[derive(Args, Debug)]
struct CertArgs {
    /// Folder for the instance's state (as for `run`).
    #[arg(long, env = "CALLREC_DATA_DIR", default_value = "./callrec-data")]
    data_dir: PathBuf,
    /// Print a PKCS#10 certificate signing request instead of the certificate.
    #[arg(long)]
    csr: bool,
    /// Import a CA-signed certificate for the instance's key (PEM: the certificate, then its CA certificates).
    #[arg(long, conflicts_with = "csr")]
    import: Option<PathBuf>,
    #[command(flatten)]
    keystore: KeystoreArgs,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// Checksum files (.sha256) or folders holding sealed sets.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Certificate (PEM) to check signatures against; default: cert.pem beside the sets or in a parent folder.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Also check that the sets form an unbroken chain (none missing, altered or out of order).
    #[arg(long)]
    chain: bool,
    /// With --chain: the time-stamping authority's certificate (or CA), to check the chain-*.tsr time stamps.
    #[arg(long)]
    tsa_ca: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Address for SIP over UDP and TCP (same port for both).
    #[arg(long, env = "CALLREC_LISTEN", default_value = "0.0.0.0:5060")]
    listen: SocketAddr,
    /// The PBX (HOST:PORT, tcp:// or tls://HOST:PORT, or a sips: URI): requests from its address are outgoing calls and go to the trunk.
    #[arg(long, env = "CALLREC_PBX")]
    pbx: String,
    /// The trunk (HOST:PORT, tcp:// or tls://HOST:PORT, or a sips: URI): outgoing calls are sent here; everything else goes to the PBX.
    #[arg(long, env = "CALLREC_TRUNK")]
    trunk: String,
    /// IP address written into rewritten SDP; relay sockets bind to it (default: the listen address, or 127.0.0.1 if that is 0.0.0.0).
    #[arg(long, env = "CALLREC_MEDIA_IP")]
    media_ip: Option<IpAddr>,
    /// Range of UDP ports for RTP and RTCP, as LO-HI.
    #[arg(long, env = "CALLREC_RTP_PORTS", default_value = "20000-29999")]
    rtp_ports: String,
    /// Folder for the instance's state: instance id, keystore, database, spool.
    #[arg(long, env = "CALLREC_DATA_DIR", default_value = "./callrec-data")]
    data_dir: PathBuf,
    /// Seconds without any RTP in either direction after which a call is hung up on both legs.
    #[arg(long, env = "CALLREC_RTP_TIMEOUT", default_value_t = 60)]
    rtp_timeout: u64,
    /// Media sources accepted: strict (only the address:port each SDP names) or heuristic (also one other source, e.g. behind NAT, when nothing came from that address within 3 s of the offer/answer).
    #[arg(long, env = "CALLREC_MEDIA_LEARNING", default_value = "heuristic")]
    media_learning: callrec::media::latch::LearningMode,
    /// What the PBX leg gets: rtp, srtp (SDES keys) or same (what the other leg offered).
    #[arg(long, env = "CALLREC_PBX_MEDIA", default_value = "same")]
    pbx_media: callrec::media::sdes::LegMedia,
    /// What the trunk leg gets: rtp, srtp (SDES keys) or same (what the other leg offered).
    #[arg(long, env = "CALLREC_TRUNK_MEDIA", default_value = "same")]
    trunk_media: callrec::media::sdes::LegMedia,
    /// Exchange SDES keys also on legs whose SIP is not carried over TLS (the keys are then readable on the wire).
    #[arg(long, env = "CALLREC_ALLOW_SDES_OVER_UDP")]
    allow_sdes_over_udp: bool,
    /// Address that gets an e-mail for every upload attempt in which a file failed, a low spool disk and a directory that cannot be refreshed (repeatable).
    #[arg(
        long = "notify-email",
        env = "CALLREC_NOTIFY_EMAIL",
        value_delimiter = ','
    )]
    notify_email: Vec<String>,
    /// SMTP server for those mails: smtp://host:port, smtp+starttls://host:port or smtps://host:port (user and password in the config file's [smtp] or env CALLREC_SMTP_PASSWORD).
    #[arg(long, env = "CALLREC_SMTP")]
    smtp: Option<String>,
    /// Seconds running calls may go on after SIGTERM (new calls get 503) before they are hung up and their recordings sealed.
    #[arg(long, env = "CALLREC_SHUTDOWN_GRACE", default_value_t = 30)]
    shutdown_grace: u64,
    /// Address of the admin HTTP API (health, metrics); "off" disables it.
    #[arg(long, env = "CALLREC_ADMIN_LISTEN", default_value = "127.0.0.1:8080")]
    admin_listen: String,
    /// TOML file with several recording profiles, number plan, directory, targets, SMTP and secrets (see README); its profiles replace the single-profile flags below.
    #[arg(long, env = "CALLREC_CONFIG")]
    config: Option<PathBuf>,
    /// Record incoming calls to this group number, and outgoing calls of its active members.
    #[arg(long, env = "CALLREC_GROUP")]
    group: Option<String>,
    /// Record calls to and from this user (login or number); repeat for several users.
    #[arg(long = "user", env = "CALLREC_USER", value_delimiter = ',')]
    users: Vec<String>,
    /// Also record incoming calls to the personal number of an active member of the group.
    #[arg(long, env = "CALLREC_RECORD_DIRECT_CALLS")]
    record_direct_calls: bool,
    /// Record every call of the profile regardless of the rules.
    #[arg(long, env = "CALLREC_RECORD_ALL")]
    record_all: bool,
    /// Channel layout of recordings: caller, callee, stereo (left = caller, right = callee) or separate (two mono files).
    #[arg(long, env = "CALLREC_CHANNELS", default_value = "stereo")]
    channels: callrec::vocab::ChannelMode,
    /// WAV file played to callers of recorded incoming calls before the call is put through.
    #[arg(long, env = "CALLREC_ANNOUNCE_INCOMING")]
    announce_incoming: Option<PathBuf>,
    /// WAV file played to internal callers of recorded outgoing calls before the call is put through.
    #[arg(long, env = "CALLREC_ANNOUNCE_OUTGOING")]
    announce_outgoing: Option<PathBuf>,
    /// When a call cannot be recorded: continue (unrecorded, reported) or reject (488 codec/encryption, 480 otherwise).
    #[arg(long, env = "CALLREC_ON_RECORD_FAILURE", default_value = "continue")]
    on_record_failure: callrec::policy::OnRecordFailure,
    /// WAV file played to the caller before a call is refused because it cannot be recorded.
    #[arg(long, env = "CALLREC_RECORD_FAILURE_ANNOUNCEMENT")]
    record_failure_announcement: Option<PathBuf>,
    /// Record even when the announcement could not be played (default: such calls go unrecorded).
    #[arg(long, env = "CALLREC_RECORD_WITHOUT_ANNOUNCEMENT")]
    record_without_announcement: bool,
    /// Storage target URL for recordings (repeatable); default file://<data-dir>/recordings.
    #[arg(long = "target", env = "CALLREC_TARGET", value_delimiter = ',')]
    targets: Vec<String>,
    /// Language of the recordings for speech recognition (e.g. de, en).
    #[arg(long, env = "CALLREC_LANGUAGE", default_value = "de")]
    language: String,
    /// Directory of users and groups: a TOML/JSON file, or the PBX's REST API as https://pbx/rest (credentials in the config file or env CALLREC_DIRECTORY_PASSWORD).
    #[arg(long, env = "CALLREC_DIRECTORY")]
    directory: Option<String>,
    #[command(flatten)]
    keystore: KeystoreArgs,
    #[command(flatten)]
    trust: callrec::sip::trust::TrustArgs,
    #[command(flatten)]
    tls: callrec::sip::tls::TlsArgs,
    /// File holding the bearer token for the admin API's /api/ paths (or the value in env CALLREC_ADMIN_TOKEN); default: generated into <data-dir>/admin.token.
    #[arg(long, env = "CALLREC_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Most m= lines in one SDP (offer or answer); more is refused with 488.
    #[arg(long, env = "CALLREC_MAX_MEDIA_STREAMS", default_value_t = Limits::default().max_media_streams as u16, value_parser = clap::value_parser!(u16).range(1..))]
    max_media_streams: u16,
    /// Most calls in progress at once; further INVITEs get 503 with Retry-After (0: no limit).
    #[arg(long, env = "CALLREC_MAX_CALLS", default_value_t = Limits::default().max_calls)]
    max_calls: usize,
    /// New INVITEs per second from one source address; more get 503 with Retry-After (0: no limit).
    #[arg(long, env = "CALLREC_INVITE_RATE_PER_SOURCE", default_value_t = Limits::default().invite_rate_per_source)]
    invite_rate_per_source: u32,
    /// Exempt trusted peers (trunk, PBX, --trusted-source) from --invite-rate-per-source.
    #[arg(long, env = "CALLREC_RATE_LIMIT_EXEMPT_TRUSTED")]
    rate_limit_exempt_trusted: bool,
    /// Seconds after its INVITE at which a call is hung up on both legs, held or not (at most a year).
    #[arg(long, env = "CALLREC_MAX_CALL_DURATION", default_value_t = Limits::default().max_call_duration.as_secs(), value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    max_call_duration: u64,
    /// Most SIP TCP connections open at once; strangers get 7/8 of them, the rest is kept for the trunk, the PBX and trusted sources.
    #[arg(long, env = "CALLREC_TCP_MAX_CONNECTIONS", default_value_t = TcpLimits::default().max_connections)]
    tcp_max_connections: usize,
    /// Most SIP TCP connections accepted from one source address.
    #[arg(long, env = "CALLREC_TCP_MAX_PER_SOURCE", default_value_t = TcpLimits::default().max_per_source)]
    tcp_max_per_source: usize,
    /// Seconds a TCP peer has to complete a message it has begun (an untrusted one also to send its first message after connecting).
    #[arg(long, env = "CALLREC_TCP_HEADER_TIMEOUT", default_value_t = TcpLimits::default().header_timeout.as_secs())]
    tcp_header_timeout: u64,
    /// Seconds without a complete message after which a TCP connection is closed (not for the trunk, the PBX and trusted sources).
    #[arg(long, env = "CALLREC_TCP_IDLE_TIMEOUT", default_value_t = TcpLimits::default().idle_timeout.as_secs())]
    tcp_idle_timeout: u64,
    /// How long the decisions and events of calls that were not recorded are kept (e.g. 90d, 1y); checked daily.
    #[arg(long, env = "CALLREC_UNRECORDED_RETENTION", default_value = "90d")]
    unrecorded_retention: String,
    /// RFC 3161 time-stamping authority (URL) that time-stamps each chain head; off without it.
    #[arg(long, env = "CALLREC_TSA_URL")]
    tsa_url: Option<String>,
    /// Without --tsa-url: address that gets each chain head's hash daily and at shutdown (repeatable; needs --smtp).
    #[arg(
        long = "anchor-email",
        env = "CALLREC_ANCHOR_EMAIL",
        value_delimiter = ','
    )]
    anchor_email: Vec<String>,
    /// Seconds between two time stamps of the chain heads (also done at shutdown).
    #[arg(long, env = "CALLREC_ANCHOR_INTERVAL", default_value_t = 3600)]
    anchor_interval: u64,
    /// Seconds without a request after which a web console session ends.
    #[arg(long, env = "CALLREC_CONSOLE_IDLE_TIMEOUT", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    console_idle_timeout: u64,
    /// Mark the console's cookies Secure: set this when the console is reached over HTTPS through a reverse proxy.
    #[arg(long, env = "CALLREC_CONSOLE_SECURE_COOKIES")]
    console_secure_cookies: bool,
    /// Serve the admin listener (API and web console) over HTTPS with --tls-cert and --tls-key; the console's cookies are then Secure.
    #[arg(long, env = "CALLREC_ADMIN_TLS")]
    admin_tls: bool,
    /// Header in which a trusted reverse proxy names the console user it authenticated (e.g. X-Remote-User); believed only from --console-trusted-proxy.
    #[arg(
        long,
        env = "CALLREC_CONSOLE_TRUSTED_HEADER",
        requires = "console_trusted_proxy"
    )]
    console_trusted_header: Option<axum::http::HeaderName>,
    /// Address or network (ADDR or ADDR/PREFIX) of a reverse proxy whose --console-trusted-header is believed (repeatable).
    #[arg(long, env = "CALLREC_CONSOLE_TRUSTED_PROXY", value_delimiter = ',', value_parser = parse_net)]
    console_trusted_proxy: Vec<ipnet::IpNet>,
    /// Most megabytes of sets fetched from remote targets for playing kept at once; the least recently used go first, a larger set is refused.
    #[arg(long, env = "CALLREC_CONSOLE_FETCH_MAX_MB", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..))]
    console_fetch_max_mb: u64,
    /// Address (ADDR:PORT) that serves the members' phone recording keys, GET /phone/<token>/recording/{login|logout|toggle}; off unless given.
    #[arg(long, env = "CALLREC_PHONE_LISTEN")]
    phone_listen: Option<SocketAddr>,
    /// Start of the phone links as phones reach them (e.g. http://callrec.example.com:8090); default http://<--phone-listen>.
    #[arg(long, env = "CALLREC_PHONE_BASE_URL")]
    phone_base_url: Option<String>,
    /// Log level: error, warn, info, debug or trace (or a tracing filter such as "callrec=debug").
    #[arg(long, env = "CALLREC_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

fn resolve(what: &str, s: &str) -> anyhow::Result<(SocketAddr, callrec::config::NextHop)> {
    use std::net::ToSocketAddrs;
    let hop: callrec::config::NextHop = s.parse().map_err(|e| anyhow::anyhow!("{what} {e}"))?;
    let addr = (hop.host.as_str(), hop.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {what} address {s:?}; give HOST:PORT"))?
        .next()
        .with_context(|| format!("{what} address {s:?} resolves to nothing"))?;
    Ok((addr, hop))
}

fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    callrec::sip::trust::parse_net(s).map_err(|e| e.to_string())
}

fn parse_ports(s: &str) -> anyhow::Result<(u16, u16)> {
    let (lo, hi) = s
        .split_once('-')
        .with_context(|| format!("--rtp-ports {s:?}: expected LO-HI, e.g. 20000-29999"))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .context("--rtp-ports: LO is not a port number")?;
    let hi: u16 = hi
        .trim()
        .parse()
        .context("--rtp-ports: HI is not a port number")?;
    if lo >= hi || lo < 1024 {
        bail!("--rtp-ports {s:?}: need 1024 <= LO < HI");
    }
    Ok((lo, hi))
}

impl RunArgs {
    /// The profiles: from --config if it defines any, else one from the flags.
    fn policy(&self) -> anyhow::Result<PolicyConfig> {
        let mut policy = match &self.config {
            Some(path) => PolicyConfig::load(path)
                .with_context(|| format!("cannot use config file {}", path.display()))?,
            None => PolicyConfig::default(),
        };
        if policy.profiles.is_empty() {
            policy.profiles.push(Profile {
                name: "default".into(),
                group: self.group.clone(),
                users: self.users.clone(),
                record_direct_calls: self.record_direct_calls,
                record_all: self.record_all,
                channels: self.channels,
                announce_incoming: self.announce_incoming.clone(),
                announce_outgoing: self.announce_outgoing.clone(),
                targets: self.targets.clone(),
                language: self.language.clone(),
                notify_email: None,
                on_record_failure: self.on_record_failure,
                record_failure_announcement: self.record_failure_announcement.clone(),
                record_without_announcement: self.record_without_announcement,
                provision_phone_keys: false,
            });
        }
        if let Some(src) = &self.directory {
            let mut d = policy.directory.take().unwrap_or(DirectoryConfig {
                source: String::new(),
                login_id: None,
                password: None,
                refresh_secs: 300,
                accept_invalid_certs: false,
                alert_after_secs: 3600,
            });
            d.source = src.clone();
            policy.directory = Some(d);
        }
        Ok(policy)
    }

    fn into_config(self) -> anyhow::Result<RunConfig> {
        let policy = self.policy()?;
        let media_ip = self.media_ip.unwrap_or_else(|| {
            if self.listen.ip().is_unspecified() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                self.listen.ip()
            }
        });
        let admin_listen =
            match self.admin_listen.as_str() {
                "off" | "" => None,
                a => Some(a.parse().with_context(|| {
                    format!("--admin-listen {a:?}: expected ADDR:PORT or \"off\"")
                })?),
            };
        let ((pbx, pbx_hop), (trunk, trunk_hop)) = (
            resolve("--pbx", &self.pbx)?,
            resolve("--trunk", &self.trunk)?,
        );
        let t = &self.tls;
        if self.admin_tls && (t.tls_cert.is_none() || t.tls_key.is_none()) {
            bail!("--admin-tls needs --tls-cert and --tls-key");
        }
        // Any TLS flag is loaded (and checked) at start, even if nothing uses it yet.
        let tls_wanted = t.listen_tls.is_some()
            || t.tls_cert.is_some()
            || t.tls_client_cert.is_some()
            || t.tls_ca.is_some()
            || [&pbx_hop, &trunk_hop].iter().any(|h| h.proto.is_secure());
        let tls = tls_wanted.then(|| callrec::sip::tls::TlsSettings {
            files: self.tls.clone(),
            names: vec![(pbx, pbx_hop.host.clone()), (trunk, trunk_hop.host.clone())],
        });
        Ok(RunConfig {
            listen: self.listen,
            pbx,
            trunk,
            trust: self.trust.build(trunk, pbx),
            media_ip,
            rtp_ports: parse_ports(&self.rtp_ports)?,
            data_dir: self.data_dir,
            rtp_timeout: Duration::from_secs(self.rtp_timeout.max(1)),
            media_learning: self.media_learning,
            srtp: callrec::config::SrtpConfig {
                pbx_media: self.pbx_media,
                trunk_media: self.trunk_media,
                allow_sdes_over_udp: self.allow_sdes_over_udp,
            },
            shutdown_grace: Duration::from_secs(self.shutdown_grace),
            smtp: self.smtp.clone(),
            notify_email: self.notify_email.clone(),
            admin_listen,
            admin_token: admin_token(self.admin_token_file.as_deref())?,
            keystore_password: self.keystore.source(),
            channels: self.channels,
            policy,
            limits: callrec::config::Limits {
                max_media_streams: usize::from(self.max_media_streams),
                max_calls: self.max_calls,
                invite_rate_per_source: self.invite_rate_per_source,
                rate_limit_exempt_trusted: self.rate_limit_exempt_trusted,
                max_call_duration: Duration::from_secs(self.max_call_duration),
            },
            tcp: callrec::sip::transport::TcpLimits {
                max_connections: self.tcp_max_connections.max(1),
                max_per_source: self.tcp_max_per_source.max(1),
                header_timeout: Duration::from_secs(self.tcp_header_timeout.max(1)),
                idle_timeout: Duration::from_secs(self.tcp_idle_timeout.max(1)),
                ..Default::default()
            },
            unrecorded_retention: callrec::archive::parse_age(&self.unrecorded_retention)
                .context("--unrecorded-retention")?,
            anchor_email: self.anchor_email.clone(),
            anchor: self
                .tsa_url
                .map(|tsa_url| callrec::anchoring::AnchorConfig {
                    tsa_url,
                    interval: Duration::from_secs(self.anchor_interval.max(1)),
                }),
            pbx_proto: pbx_hop.proto,
            trunk_proto: trunk_hop.proto,
            tls,
            console: callrec::console::ConsoleSettings {
                idle: Duration::from_secs(self.console_idle_timeout),
                secure_cookies: self.console_secure_cookies || self.admin_tls,
                trusted_header: self.console_trusted_header,
                trusted_proxies: self.console_trusted_proxy,
                fetch_max_bytes: self.console_fetch_max_mb.saturating_mul(1024 * 1024),
            },
            admin_tls: self.admin_tls,
            phone: callrec::phone::PhoneSettings {
                listen: self.phone_listen,
                base_url: self.phone_base_url,
            },
        })
    }
}

/// The admin API's token from `--admin-token-file` or env CALLREC_ADMIN_TOKEN
/// (None: generated into the data dir). An empty token would let anyone in
/// who sends an empty one, so it stops the start instead.
fn admin_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let (token, origin) = match file {
        Some(f) => (
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read --admin-token-file {}", f.display()))?,
            format!("--admin-token-file {}", f.display()),
        ),
        None => match std::env::var("CALLREC_ADMIN_TOKEN") {
            Ok(t) => (t, "env CALLREC_ADMIN_TOKEN".to_string()),
            Err(_) => return Ok(None),
        },
    };
    let token = token.trim();
    if token.is_empty() {
        bail!("the admin token in {origin} is empty; put a long random token there (e.g. `openssl rand -hex 32`), or give neither to have one generated into <data-dir>/admin.token");
    }
    Ok(Some(token.to_string()))
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(&args.log_level);
    let cfg = args.into_config()?;
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| {
        format!(
            "cannot create data dir {}; check permissions",
            cfg.data_dir.display()
        )
    })?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = rt.block_on(callrec::proxy::run(cfg));
    // Call tasks still absorbing retransmissions are not waited for.
    rt.shutdown_timeout(Duration::from_secs(2));
    result?;
    Ok(())
}

fn cert(args: CertArgs) -> anyhow::Result<()> {
    if let Some(file) = &args.import {
        let pem = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let id = callrec::seal::import_certificate(&args.data_dir, args.keystore.source(), &pem)?;
        println!(
            "imported; sets sealed from now on carry this certificate and its CA chain (SHA-256 fingerprint {})",
            id.fingerprint_sha256()
        );
        return Ok(());
    }
    let id = Identity::load_or_create(&args.data_dir, args.keystore.source())
        .context("cannot open the instance's keystore")?;
    if args.csr {
        print!("{}", id.csr_pem()?);
    } else {
        print!("{}", id.certificate_pem());
    }
    Ok(())
}

/// Returns whether every set verified.
fn verify(args: VerifyArgs) -> anyhow::Result<bool> {
    let mut problems = Vec::new();
    for p in &args.paths {
        if !p.exists() {
            bail!("{} does not exist", p.display());
        }
        if args.chain {
            let (found, notes) =
                callrec::seal::verify_chain_report(p, args.cert.as_deref(), args.tsa_ca.as_deref());
            problems.extend(found);
            for d in notes.deletions.iter().chain(&notes.stamps) {
                println!("{d}");
            }
            for (chain, (seq, sha)) in &notes.heads {
                println!("chain {chain}: last number {seq}, SHA-256 of its checksum file {sha}");
            }
        } else {
            problems.extend(callrec::seal::verify_set(p, args.cert.as_deref()));
        }
    }
    for p in &problems {
        println!("{p}");
    }
    if problems.is_empty() {
        println!("OK: {} verified", args.paths.len());
    }
    Ok(problems.is_empty())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run(*a),
        Command::Cert(a) => cert(a),
        Command::Verify(a) => match verify(a) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Uploads { action } => uploads(action),
        Command::Recordings { action } => match recordings(action) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Purge(a) => match purge(a) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Onedrive { action } => onedrive(action),
        Command::Audit(a) => audit(a),
        Command::Hold { action } => hold(action),
        Command::Report(a) => match report(a) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Users { action } => users(action),
        Command::Db { action } => match db_command(action) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callrec: {e:#}");
            ExitCode::from(2)
        }
    }
}
