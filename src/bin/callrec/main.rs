//! The `callrec` command line: parses flags (each also as `CALLREC_<FLAG>`)
//! and calls into the library. Exit codes: 0 ok, 1 failure found, 2 usage or setup error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod evidence;
mod instance;
mod records;
mod run;

use evidence::*;
use instance::*;
use records::*;
use run::*;

/// SIP call-recording proxy: records calls between a trunk and a PBX and seals the recordings.
/// The data folder as an absolute path: every path below it (work folder,
/// recordings, spool) is then absolute, whatever the working directory.
pub(crate) fn data_dir_path(value: &str) -> Result<std::path::PathBuf, String> {
    if value.is_empty() {
        return Err("the data folder must not be empty".into());
    }
    std::path::absolute(value).map_err(|e| format!("cannot make {value} an absolute path: {e}"))
}

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
    /// Take over the pending uploads of an instance that is gone for good.
    Spool {
        #[command(subcommand)]
        action: SpoolAction,
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
        Command::Spool { action } => match spool(action) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
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
