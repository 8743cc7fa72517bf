//! Which calls are recorded: number normalisation,
//! the directory snapshot and its sources (static file, PBX REST), recording
//! profiles from the config file, the group login/logout state (in the protocol database), and the
//! pure decision function the call flow asks for every new call.
//!
//! Typical use by the call flow:
//! ```ignore
//! // at start
//! let cfg = PolicyConfig::load(path)?;                       // or profiles from flags
//! let (directory, _task) = policy::refresh::start(cfg.directory.as_ref(), cfg.numbers.clone()).await?;
//! let membership = MembershipStore::open(db.clone(), &data_dir)?;   // the protocol database
//! let dedup = LegDedup::new(Duration::from_secs(5));
//! if has_no_rules(&cfg.profiles) { tracing::warn!("no recording rule: every call is recorded") }
//! // per call
//! let dir = directory.current();                             // Arc<Directory>, never waits
//! let out = membership.snapshot();                           // Arc<LoggedOut>
//! let d = policy::decide(&cfg.profiles, &dir, &out, Direction::Incoming, from_uri, request_uri);
//! let (d, claim) = dedup.apply(&dir, d, Instant::now());     // second leg of an internal call: not recorded;
//!                                                            // keep `claim` until the call ends
//! tracing::info!(record = d.record, profile = ?d.profile_name, rule = %d.rule, "{}", d.reason);
//! ```

mod account;
pub mod age;
pub mod decide;
pub mod dedup;
pub mod directory;
pub mod error;
pub mod membership;
pub mod numbers;
pub mod profile;
pub mod refresh;
pub mod rest;
mod rest_directory;
pub mod rest_numbers;

pub use account::{GroupId, UserId};
pub use age::{parse_age, AgeError};
pub use decide::{decide, has_no_rules, unresolved_entries, Decision, Rule};
pub use dedup::{LegClaim, LegDedup};
pub use directory::{Directory, Group, User};
pub use error::{ConfigError, DirectoryError, MembershipError, RestError};
pub use membership::{LoggedOut, MembershipStore};
pub use numbers::{Number, NumberPlan, NumberRole};
pub use profile::{
    DirectoryConfig, OnRecordFailure, PolicyConfig, Profile, SmtpConfig, TargetConfig,
};
pub use refresh::{
    spawn_refresher, start as start_directory, DirectoryHandle, DirectorySource, RefreshError,
    RefreshStatus, StaleAlert,
};
pub use rest::PbxClient;
