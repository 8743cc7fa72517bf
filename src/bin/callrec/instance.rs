//! Offline commands on the instance's state: where it lives (`StateArgs`),
//! console users, the protocol database check/recovery, OneDrive sign-in,
//! taking over a gone instance's spool.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use callrec::policy::PolicyConfig;

#[derive(Subcommand, Debug)]
pub(crate) enum UsersAction {
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

pub(crate) fn users(action: UsersAction) -> anyhow::Result<()> {
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

#[derive(Subcommand, Debug)]
pub(crate) enum DbAction {
    /// SQLite's full integrity check: exit status 0 when sound, 1 when damaged (with the findings).
    Check(StateArgs),
    /// With callrec stopped: copy what is readable into a fresh file, keep the damaged one beside it, rebuild the upload queue from the spool.
    Recover(StateArgs),
}

/// Returns whether the database is sound (check) or was recovered.
pub(crate) fn db_command(action: DbAction) -> anyhow::Result<bool> {
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

#[derive(Subcommand, Debug)]
pub(crate) enum SpoolAction {
    /// Move the pending sets of a stopped instance (its data directory made reachable here) into this instance's spool; its upload rows become this instance's.
    Adopt {
        /// The gone instance's data directory.
        #[arg(long)]
        from: PathBuf,
        /// The gone instance's name (as in its instance.lock).
        #[arg(long)]
        instance: String,
        /// This instance's name, as `run` uses it.
        #[arg(long, env = "CALLREC_INSTANCE_NAME", default_value_t = callrec::instance::default_name())]
        instance_name: String,
        #[command(flatten)]
        state: StateArgs,
    },
}

/// Returns whether every pending set was adopted.
pub(crate) fn spool(action: SpoolAction) -> anyhow::Result<bool> {
    let SpoolAction::Adopt {
        from,
        instance,
        instance_name,
        state,
    } = action;
    callrec::instance::check_name(&instance_name)?;
    if !state.data_dir.join(callrec::db::DB_FILE_NAME).exists() {
        bail!(
            "no protocol database in {}; give the --data-dir that `callrec run` uses",
            state.data_dir.display()
        );
    }
    let db = callrec::db::Db::open_in_as(&state.data_dir, &instance_name)?;
    let report = callrec::spool::adopt(&from, &instance, &state.data_dir.join("spool"), &db)?;
    for (base, targets) in &report.adopted {
        println!("adopted {base} (waiting for {})", targets.join(", "));
    }
    for (base, why) in &report.left {
        println!("LEFT {base}: {why}");
    }
    println!(
        "{} set(s) adopted from instance {instance}, {} left in {}",
        report.adopted.len(),
        report.left.len(),
        from.display()
    );
    Ok(report.left.is_empty())
}

/// Where an offline subcommand finds the instance's state.
#[derive(Args, Debug)]
pub(crate) struct StateArgs {
    /// Folder for the instance's state (as for `run`).
    #[arg(long, env = "CALLREC_DATA_DIR", default_value = "./callrec-data")]
    pub(crate) data_dir: PathBuf,
    /// The config file `run` uses (number plan, file:// targets).
    #[arg(long, env = "CALLREC_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

impl StateArgs {
    pub(crate) fn policy(&self) -> anyhow::Result<PolicyConfig> {
        match &self.config {
            Some(p) => PolicyConfig::load(p)
                .with_context(|| format!("cannot use config file {}", p.display())),
            None => Ok(PolicyConfig::default()),
        }
    }

    pub(crate) fn db(&self) -> anyhow::Result<callrec::db::Db> {
        if !self.data_dir.join(callrec::db::DB_FILE_NAME).exists() {
            bail!(
                "no protocol database in {}; give the --data-dir that `callrec run` uses",
                self.data_dir.display()
            );
        }
        Ok(callrec::db::Db::open_in(&self.data_dir)?)
    }

    /// Local folders holding delivered sets.
    pub(crate) fn roots(&self) -> anyhow::Result<Vec<PathBuf>> {
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
pub(crate) enum OnedriveAction {
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

pub(crate) fn onedrive(action: OnedriveAction) -> anyhow::Result<()> {
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
