//! Which calls are recorded (SPEC R2, DESIGN §1 `policy`): number normalisation,
//! the directory snapshot and its sources (static file, PBX REST), recording
//! profiles from the config file, the persisted group login/logout state, and the
//! pure decision function the call flow asks for every new call.
//!
//! Typical use by the call flow:
//! ```ignore
//! let dir = directory_handle.current();          // Arc<Directory>, never waits
//! let out = membership.snapshot();               // Arc<LoggedOut>
//! let d = policy::decide(&profiles, &dir, &out, Direction::Incoming, from_uri, request_uri);
//! if d.rule == Rule::NoRulesConfigured { tracing::warn!("{}", d.reason) }
//! let record = d.record && (!d.internal || dedup.first_leg(&dir, &d.caller, &d.dialled, Instant::now()));
//! ```

pub mod decide;
pub mod dedup;
pub mod directory;
pub mod error;
pub mod membership;
pub mod numbers;
pub mod profile;
pub mod refresh;
pub mod rest;

pub use decide::{decide, has_no_rules, unresolved_entries, Decision, Direction, Rule};
pub use dedup::LegDedup;
pub use directory::{Directory, Group, GroupId, User, UserId};
pub use error::{ConfigError, DirectoryError, MembershipError, RestError};
pub use membership::{LoggedOut, MembershipStore};
pub use numbers::{Number, NumberPlan, NumberRole};
pub use profile::{Channels, DirectoryConfig, PolicyConfig, Profile, SmtpConfig, TargetConfig};
pub use refresh::{spawn_refresher, DirectoryHandle, DirectorySource, RefreshError, RefreshStatus};
pub use rest::PbxClient;
