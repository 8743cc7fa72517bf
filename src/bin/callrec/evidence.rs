//! `callrec cert` and `callrec verify`: the instance's certificate (print,
//! CSR, import) and the verification of sealed sets and chains.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use callrec::seal::{Identity, PasswordSource};

/// Where the keystore password comes from (shared by run and cert).
#[derive(Args, Debug)]
pub(crate) struct KeystoreArgs {
    /// File holding the keystore password (the value itself can be given as env CALLREC_KEYSTORE_PASSWORD; without either a random password is generated into the data dir).
    #[arg(long, env = "CALLREC_KEYSTORE_PASSWORD_FILE")]
    pub(crate) keystore_password_file: Option<PathBuf>,
}

impl KeystoreArgs {
    pub(crate) fn source(&self) -> PasswordSource {
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
pub(crate) struct CertArgs {
    /// Folder for the instance's state (as for `run`).
    #[arg(long, env = "CALLREC_DATA_DIR", default_value = "./callrec-data", value_parser = crate::data_dir_path)]
    pub(crate) data_dir: PathBuf,
    /// Print a PKCS#10 certificate signing request instead of the certificate.
    #[arg(long)]
    pub(crate) csr: bool,
    /// Import a CA-signed certificate for the instance's key (PEM: the certificate, then its CA certificates).
    #[arg(long, conflicts_with = "csr")]
    pub(crate) import: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) keystore: KeystoreArgs,
}

#[derive(Args, Debug)]
pub(crate) struct VerifyArgs {
    /// Checksum files (.sha256) or folders holding sealed sets.
    #[arg(required = true)]
    pub(crate) paths: Vec<PathBuf>,
    /// Certificate (PEM) to check signatures against; default: cert.pem beside the sets or in a parent folder.
    #[arg(long)]
    pub(crate) cert: Option<PathBuf>,
    /// Also check that the sets form an unbroken chain (none missing, altered or out of order).
    #[arg(long)]
    pub(crate) chain: bool,
    /// With --chain: the time-stamping authority's certificate (or CA), to check the chain-*.tsr time stamps.
    #[arg(long)]
    pub(crate) tsa_ca: Option<PathBuf>,
    /// With --chain: only the chains of this instance (its name or id), when several instances' sets share the folder; give its certificate with --cert.
    #[arg(long, requires = "chain")]
    pub(crate) instance: Option<String>,
}

pub(crate) fn cert(args: CertArgs) -> anyhow::Result<()> {
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
pub(crate) fn verify(args: VerifyArgs) -> anyhow::Result<bool> {
    let mut problems = Vec::new();
    for p in &args.paths {
        if !p.exists() {
            bail!("{} does not exist", p.display());
        }
        if args.chain {
            let (found, notes) = callrec::seal::verify_chain_report_of(
                p,
                args.cert.as_deref(),
                args.tsa_ca.as_deref(),
                args.instance.as_deref(),
            );
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
