//! What a new call needs from the recording policy, decided at once when its
//! INVITE arrives: record or not, by which profile and rule, the channel
//! layout and the announcement. The decision reads the last directory
//! snapshot and never waits on the network; every decision is logged.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Direction;
use crate::media::announce::Announcement;
use crate::policy::{self, DirectoryHandle, LegClaim, LegDedup, MembershipStore, Profile};
use crate::vocab::ChannelMode;

/// What to do with one call.
#[derive(Debug, Clone)]
pub struct CallPlan {
    /// Record the call.
    pub record: bool,
    /// Anchor its media (recorded or announced); otherwise SDP passes untouched.
    pub anchor: bool,
    /// Announcement to play to the caller before the callee is called.
    pub announcement: Option<Arc<Announcement>>,
    /// Channel layout of the recording.
    pub channels: ChannelMode,
    /// Profile that took the call.
    pub profile: String,
    /// Rule that matched, or why none did.
    pub rule: String,
    /// The sentence logged and stored for the decision.
    pub reason: String,
    /// Storage target URLs of the profile.
    pub targets: Vec<String>,
    /// For the first leg of an internal call: holds the (caller, callee) pair
    /// while this call lives, so its other leg is not recorded twice.
    pub leg_claim: Option<Arc<LegClaim>>,
    /// What the profile wants when the recording cannot be made.
    pub on_failure: FailurePolicy,
}

/// A profile's answer to "this call cannot be recorded".
#[derive(Debug, Clone, Default)]
pub struct FailurePolicy {
    /// Refuse the call (or end it, once running) rather than let it go unrecorded.
    pub reject: bool,
    /// Played to the caller before such a refusal.
    pub notice: Option<Arc<Announcement>>,
    /// Record even when the announcement could not be played.
    pub record_without_announcement: bool,
}

/// The policy state every call consults: profiles, directory snapshot,
/// logged-out members, the internal-call de-duplicator and loaded announcements.
pub struct Planner {
    profiles: Vec<Profile>,
    directory: Arc<DirectoryHandle>,
    membership: Arc<MembershipStore>,
    dedup: LegDedup,
    announcements: HashMap<PathBuf, Arc<Announcement>>,
    /// Target URLs per profile (names from the config resolved, default applied).
    targets: Vec<Vec<String>>,
    /// Where decisions are stored.
    db: Option<crate::db::Db>,
}

/// Why the policy could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// An announcement file is unusable.
    #[error("{0}")]
    Announcement(#[from] crate::media::announce::AnnounceError),
}

impl Planner {
    /// Loads every announcement the profiles name (a bad file stops the start).
    pub fn new(
        profiles: Vec<Profile>,
        targets: Vec<Vec<String>>,
        directory: Arc<DirectoryHandle>,
        membership: Arc<MembershipStore>,
        db: Option<crate::db::Db>,
    ) -> Result<Planner, PlanError> {
        let mut announcements = HashMap::new();
        for p in &profiles {
            for path in [
                &p.announce_incoming,
                &p.announce_outgoing,
                &p.record_failure_announcement,
            ]
            .into_iter()
            .flatten()
            {
                if !announcements.contains_key(path) {
                    let a = Announcement::load(path)?;
                    info!(file = %path.display(), seconds = a.duration().as_secs_f64(), "announcement loaded");
                    announcements.insert(path.clone(), Arc::new(a));
                }
            }
        }
        if policy::has_no_rules(&profiles) {
            warn!("no recording rule is configured (no --group, --user, --record-all or profile): every call is recorded");
        }
        Ok(Planner {
            profiles,
            directory,
            membership,
            dedup: LegDedup::new(Duration::from_secs(5)),
            announcements,
            targets,
            db,
        })
    }

    /// The membership store (for the admin API's login/logout).
    pub fn membership(&self) -> &Arc<MembershipStore> {
        &self.membership
    }

    /// The directory handle (for the admin API).
    pub fn directory(&self) -> &Arc<DirectoryHandle> {
        &self.directory
    }

    /// Decides for a new call from `caller` (From URI) to `dialled` (Request-URI).
    /// Only a call whose caller identity is `trusted` takes part in the
    /// internal-call de-duplication: anyone else could claim a pair with
    /// forged numbers and so suppress the recording of the real call.
    pub fn plan(
        &self,
        call_id: &str,
        dir: Direction,
        caller: &str,
        dialled: &str,
        trusted: bool,
    ) -> CallPlan {
        let d = self.directory.current();
        let logged_out = self.membership.snapshot();
        let decision = policy::decide(&self.profiles, &d, &logged_out, dir, caller, dialled);
        let (decision, leg_claim) = match trusted {
            true => self.dedup.apply(&d, decision, Instant::now()),
            false => (decision, None),
        };
        let profile = decision.profile.and_then(|i| self.profiles.get(i));
        let announcement = decision
            .announcement
            .as_ref()
            .and_then(|p| self.announcements.get(p).cloned());
        let plan = CallPlan {
            record: decision.record,
            anchor: decision.record || announcement.is_some(),
            announcement,
            channels: profile.map(|p| p.channels).unwrap_or_default(),
            profile: decision.profile_name.clone().unwrap_or_default(),
            rule: format!("{:?}", decision.rule),
            reason: decision.reason.clone(),
            targets: decision
                .profile
                .and_then(|i| self.targets.get(i).cloned())
                .unwrap_or_default(),
            leg_claim: leg_claim.map(Arc::new),
            on_failure: profile
                .map(|p| FailurePolicy {
                    reject: p.on_record_failure == policy::OnRecordFailure::Reject,
                    notice: p
                        .record_failure_announcement
                        .as_ref()
                        .and_then(|f| self.announcements.get(f).cloned()),
                    record_without_announcement: p.record_without_announcement,
                })
                .unwrap_or_default(),
        };
        if let Some(db) = &self.db {
            db.send(crate::db::Record::Decision {
                call_id: call_id.to_string(),
                at_ms: crate::db::now_ms(),
                recorded: plan.record,
                profile: decision.profile_name.clone(),
                reason: format!("{}: {}", plan.rule, plan.reason),
            });
        }
        info!(
            record = plan.record,
            profile = %plan.profile,
            rule = %plan.rule,
            caller = %decision.caller,
            dialled = %decision.dialled,
            "decision: {}",
            plan.reason
        );
        plan
    }
}
