//! Offline commands on the instance's state: where it lives (`StateArgs`),
//! console users, the protocol database check/recovery, OneDrive sign-in,
//! taking over a gone instance's spool.

use std::path::{Path, PathBuf};

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
    match action {
        UsersAction::Add { name, role, state } => {
            let pw = users::read_password(&format!("Password for {name}: "))?;
            users::add(&state.location()?, &name, role, &pw)?;
            println!("user {name} added with role {role}");
        }
        UsersAction::Passwd { name, state } => {
            let pw = users::read_password(&format!("New password for {name}: "))?;
            users::passwd(&state.location()?, &name, &pw)?;
            println!("password of {name} changed");
        }
        UsersAction::Remove { name, state } => {
            users::remove(&state.location()?, &name)?;
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
    /// SQLite's full integrity check: exit status 0 when sound, 1 when damaged (with the findings); on PostgreSQL: connect and compare the schema version.
    Check(StateArgs),
    /// With callrec stopped: copy what is readable into a fresh file, keep the damaged one beside it, rebuild the upload queue from the spool (SQLite only).
    Recover(StateArgs),
    /// Copy the data directory's SQLite database, every table and row, into an empty PostgreSQL database.
    Migrate {
        /// The PostgreSQL database (postgres://user@host:port/db, no password in it).
        #[arg(long)]
        to: String,
        #[command(flatten)]
        state: StateArgs,
    },
}

/// Returns whether the database is sound (check) or was recovered.
pub(crate) fn db_command(action: DbAction) -> anyhow::Result<bool> {
    match action {
        DbAction::Check(s) if s.database.database.is_some() => {
            let location = s.location()?;
            let conn = location
                .connect()
                .with_context(|| format!("cannot connect to {}", location.shown()))?;
            let found = callrec::db::schema_version(&conn)?;
            let known = callrec::db::MIGRATIONS.len() as i64;
            println!(
                "{}: connected (PostgreSQL); the integrity of its files is the server's own job",
                location.shown()
            );
            println!("schema version {found}, this callrec knows {known}");
            Ok(found == known)
        }
        DbAction::Recover(s) if s.database.database.is_some() => {
            bail!("db recover works on the SQLite file only; PostgreSQL has its own backups and recovery (pg_dump, point-in-time recovery)")
        }
        DbAction::Migrate { to, state } => {
            let from = state.data_dir.join(callrec::db::DB_FILE_NAME);
            let target = callrec::db::Location::postgres(&to, state.database.password()?)?;
            print!("{}", callrec::db::copy_sqlite_into(&from, &target)?);
            println!(
                "copied {} into {}; start callrec with --database {}",
                from.display(),
                target.shown(),
                target.shown()
            );
            Ok(true)
        }
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
    let location = state.location()?;
    if location.sqlite_path().is_some_and(|p| !p.exists()) {
        bail!(
            "no protocol database in {}; give the --data-dir (or --database) that `callrec run` uses",
            state.data_dir.display()
        );
    }
    let db = callrec::db::Db::open_at_as(&location, &instance_name)?;
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
    #[arg(long, env = "CALLREC_DATA_DIR", default_value = "./callrec-data", value_parser = crate::data_dir_path)]
    pub(crate) data_dir: PathBuf,
    /// The config file `run` uses (number plan, file:// targets).
    #[arg(long, env = "CALLREC_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) database: DatabaseArgs,
}

/// Which protocol database: the SQLite file in the data directory, or PostgreSQL.
#[derive(Args, Debug, Clone)]
pub(crate) struct DatabaseArgs {
    /// The protocol database as postgres://user@host:port/db, shared by several instances (default: the SQLite file in the data directory). No password in the URL: see --database-password-file.
    #[arg(long, env = "CALLREC_DATABASE")]
    pub(crate) database: Option<String>,
    /// File whose first line is the PostgreSQL password (else env CALLREC_DATABASE_PASSWORD).
    #[arg(long, env = "CALLREC_DATABASE_PASSWORD_FILE")]
    pub(crate) database_password_file: Option<PathBuf>,
}

impl DatabaseArgs {
    /// The PostgreSQL password, from the file or the environment.
    pub(crate) fn password(&self) -> anyhow::Result<Option<String>> {
        if let Some(f) = &self.database_password_file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read --database-password-file {}", f.display()))?;
            return Ok(Some(text.lines().next().unwrap_or("").to_string()));
        }
        Ok(std::env::var("CALLREC_DATABASE_PASSWORD").ok())
    }

    pub(crate) fn location(&self, data_dir: &Path) -> anyhow::Result<callrec::db::Location> {
        Ok(callrec::db::Location::from_flags(
            self.database.as_deref(),
            data_dir,
            self.password()?,
        )?)
    }
}

impl StateArgs {
    pub(crate) fn policy(&self) -> anyhow::Result<PolicyConfig> {
        match &self.config {
            Some(p) => PolicyConfig::load(p)
                .with_context(|| format!("cannot use config file {}", p.display())),
            None => Ok(PolicyConfig::default()),
        }
    }

    pub(crate) fn location(&self) -> anyhow::Result<callrec::db::Location> {
        self.database.location(&self.data_dir)
    }

    pub(crate) fn db(&self) -> anyhow::Result<callrec::db::Db> {
        let location = self.location()?;
        if location.sqlite_path().is_some_and(|p| !p.exists()) {
            bail!(
                "no protocol database in {}; give the --data-dir (or --database) that `callrec run` uses",
                self.data_dir.display()
            );
        }
        Ok(callrec::db::Db::open_at(&location)?)
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
