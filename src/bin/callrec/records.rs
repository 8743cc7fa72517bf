//! Offline commands on the recordings: search and export, uploads, purge,
//! the failure report, the access log and legal holds. Each access is logged
//! before anything is shown.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use callrec::config::Limits;
use callrec::seal::Identity;

use crate::evidence::KeystoreArgs;
use crate::instance::StateArgs;

#[derive(Args, Debug)]
pub(crate) struct ReportArgs {
    /// How many days back to look.
    #[arg(long, default_value_t = 7)]
    pub(crate) days: u32,
    /// Calls that ended less than this many seconds ago are left out (their set may still be being sealed).
    #[arg(long, default_value_t = 600)]
    pub(crate) settle_secs: u64,
    /// As for `run`: a call without a recorded end is checked once its decision is older than this.
    #[arg(long, env = "CALLREC_MAX_CALL_DURATION", default_value_t = Limits::default().max_call_duration.as_secs())]
    pub(crate) max_call_duration: u64,
    /// SMTP server to mail newly found missing sets to (as for `run`).
    #[arg(long, env = "CALLREC_SMTP")]
    pub(crate) smtp: Option<String>,
    /// Address for that mail (repeatable).
    #[arg(
        long = "notify-email",
        env = "CALLREC_NOTIFY_EMAIL",
        value_delimiter = ','
    )]
    pub(crate) notify_email: Vec<String>,
    #[command(flatten)]
    pub(crate) state: StateArgs,
}

/// Returns whether every recorded call has its set.
pub(crate) fn report(a: ReportArgs) -> anyhow::Result<bool> {
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
pub(crate) struct AuditArgs {
    /// Only entries at or after this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Only entries of this actor (OS user, API token name or console user).
    #[arg(long)]
    pub(crate) actor: Option<String>,
    /// Print a JSON array instead of one line per entry.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) state: StateArgs,
}

/// What a hold names: one of --set or --number.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub(crate) struct HoldTarget {
    /// A set, by base name (as `recordings search` prints it) or set id.
    #[arg(long)]
    pub(crate) set: Option<String>,
    /// A party's number, in any spelling: every set where it is caller, callee or answered.
    #[arg(long)]
    pub(crate) number: Option<String>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum HoldAction {
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

pub(crate) fn hold(action: HoldAction) -> anyhow::Result<()> {
    use callrec::access_log::AccessAction;
    use callrec::hold::{Hold, HoldChange, HoldKind};
    let (target, reason, state, add) = match action {
        HoldAction::List(state) => {
            let db = state.db()?;
            log_access(&db, AccessAction::Hold, "list", None)?;
            for h in callrec::hold::list(&db)? {
                println!(
                    "{}  {} {}  by {}  {}",
                    callrec::archive::local_time(h.at_ms),
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

pub(crate) fn audit(a: AuditArgs) -> anyhow::Result<()> {
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
pub(crate) fn log_access(
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
pub(crate) enum UploadsAction {
    /// One line per set and target: state, attempts, last error.
    Status(StateArgs),
    /// Ask the running proxy to retry every pending upload now.
    Retry(StateArgs),
}

#[derive(Args, Debug)]
pub(crate) struct SearchArgs {
    /// Party number (caller or callee), in any spelling.
    #[arg(long, required_unless_present = "text")]
    pub(crate) number: Option<String>,
    /// Words that the set's transcript must all contain (any case), e.g. "Aktien".
    #[arg(long)]
    pub(crate) text: Option<String>,
    /// Only recordings that started at or after this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// Only recordings that started before this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// Only sets sealed by this instance (default: every instance sharing the database).
    #[arg(long)]
    pub(crate) instance: Option<String>,
    #[command(flatten)]
    pub(crate) state: StateArgs,
}

#[derive(Subcommand, Debug)]
pub(crate) enum RecordingsAction {
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
pub(crate) struct PurgeArgs {
    /// Retention period: sets that started longer ago are deleted (e.g. 5y, 7y, 90d).
    #[arg(long)]
    pub(crate) older_than: String,
    /// Only list what would be deleted.
    #[arg(long)]
    pub(crate) dry_run: bool,
    #[command(flatten)]
    pub(crate) state: StateArgs,
    #[command(flatten)]
    pub(crate) keystore: KeystoreArgs,
}

/// Milliseconds since the epoch of an RFC 3339 time or a date (local midnight).
pub(crate) fn parse_time(s: &str) -> anyhow::Result<i64> {
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
pub(crate) fn search_rows(
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
    let mut rows = match &a.number {
        Some(n) => callrec::archive::search(&db, &plan, n, from, to)?,
        None => db.recordings(from, to)?,
    };
    if let Some(text) = &a.text {
        let hits = callrec::transcribe::search::sets_with_words(&db, text)?;
        rows.retain(|r| hits.contains(&r.base_name));
    }
    if let Some(i) = &a.instance {
        rows.retain(|r| r.instance.as_deref() == Some(i.as_str()));
    }
    if action == callrec::access_log::AccessAction::Search {
        let range = format!("{} set(s), from {:?} to {:?}", rows.len(), a.from, a.to);
        log_access(&db, action, &a.subject(), Some(range))?;
    }
    Ok(rows)
}

impl SearchArgs {
    /// What was searched for, as the access log and messages name it.
    pub(crate) fn subject(&self) -> String {
        let text = self.text.as_ref().map(|t| format!("words {t:?}"));
        [self.number.clone(), text]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

pub(crate) fn uploads(action: UploadsAction) -> anyhow::Result<()> {
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
pub(crate) fn recordings(action: RecordingsAction) -> anyhow::Result<bool> {
    match action {
        RecordingsAction::Search(a) => {
            for r in search_rows(&a, callrec::access_log::AccessAction::Search)? {
                let answered = r
                    .answered_by
                    .map(|a| format!("  answered by {a}"))
                    .unwrap_or_default();
                println!(
                    "{}  {}  {}  {} -> {}  {}{}{answered}",
                    callrec::archive::local_time(r.start_ms),
                    r.instance.as_deref().unwrap_or("-"),
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
                bail!("no recordings of {} in that time range", search.subject());
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
                &search.subject(),
                Some(format!("to {}: {}", out.display(), sets.join(" "))),
            )?;
            // Sets of other instances sharing the database verify against their certificates.
            let others = callrec::instance::known(&search.state.db()?)?
                .into_iter()
                .filter(|i| i.cert_pem != id)
                .map(|i| (i.name, i.cert_pem))
                .collect();
            let report = callrec::archive::export_with(
                &rows,
                &search.state.roots()?,
                &out,
                &id,
                &others,
                include_str!("../../../deploy/verify.sh"),
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
pub(crate) fn purge(a: PurgeArgs) -> anyhow::Result<bool> {
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
        transcript_staging: Some(a.state.data_dir.join(callrec::transcribe::STAGING_FOLDER)),
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
