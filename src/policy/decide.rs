//! The recording decision: a pure, synchronous function of
//! the profiles, a directory snapshot, the logged-out set, the direction and the two
//! numbers. It never touches the network or the disk.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::account::UserId;
use super::directory::{Directory, Group};
use super::membership::LoggedOut;
use super::numbers::{Number, NumberRole};
use super::profile::Profile;
use crate::vocab::Direction;

/// Which rule led to the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Incoming call to the profile's group number.
    GroupNumber,
    /// Incoming call to the personal number of a selected user.
    SelectedUserNumber,
    /// Incoming call to the personal number of an active group member.
    DirectCallToActiveMember,
    /// Outgoing call by an active member of the profile's group.
    OutgoingActiveMember,
    /// Outgoing call by a selected user.
    OutgoingSelectedUser,
    /// The profile records every call.
    RecordAll,
    /// No profile has any rule: every call is recorded (the caller logs a WARN).
    NoRulesConfigured,
    /// Rules exist but none matched: not recorded.
    NoRuleMatched,
    /// The other leg of this internal call is already recorded (set by `LegDedup::apply`).
    DuplicateLeg,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Rule::GroupNumber => "group_number",
            Rule::SelectedUserNumber => "selected_user_number",
            Rule::DirectCallToActiveMember => "direct_call_to_active_member",
            Rule::OutgoingActiveMember => "outgoing_active_member",
            Rule::OutgoingSelectedUser => "outgoing_selected_user",
            Rule::RecordAll => "record_all",
            Rule::NoRulesConfigured => "no_rules_configured",
            Rule::NoRuleMatched => "no_rule_matched",
            Rule::DuplicateLeg => "duplicate_leg",
        };
        f.write_str(s)
    }
}

/// The outcome of `decide` for one call (serialises for the protocol database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Record the call.
    pub record: bool,
    /// Index of the profile that took the call (into the slice given to `decide`).
    pub profile: Option<usize>,
    /// Name of that profile.
    pub profile_name: Option<String>,
    /// The rule that matched (or why none did).
    pub rule: Rule,
    /// A sentence for the log and the protocol database.
    pub reason: String,
    /// Announcement to play to the caller before the call is offered to the callee.
    pub announcement: Option<PathBuf>,
    /// The direction the rules were applied in (`Incoming` for an internal call).
    pub judged_as: Direction,
    /// True when both parties are internal (judged by the callee).
    pub internal: bool,
    /// The caller's number, normalised.
    pub caller: Number,
    /// The dialled number, normalised.
    pub dialled: Number,
}

/// True when no profile has any recording rule: then every call is recorded.
pub fn has_no_rules(profiles: &[Profile]) -> bool {
    profiles.iter().all(|p| !p.has_rules())
}

/// Profile entries that the directory cannot resolve (for a WARN after each refresh).
pub fn unresolved_entries(profiles: &[Profile], dir: &Directory) -> Vec<String> {
    let plan = dir.plan();
    let mut out = Vec::new();
    for p in profiles {
        if let Some(g) = p.group.as_deref() {
            if dir.group_by_name_or_number(g).is_none() && !plan.normalise(g).is_dialable() {
                out.push(format!(
                    "profile {:?}: group {g:?} is not in the directory ({}) and is not a number",
                    p.name,
                    dir.source()
                ));
            }
        }
        for u in &p.users {
            if dir.user_by_login_or_number(u).is_none() && !plan.normalise(u).is_dialable() {
                out.push(format!(
                    "profile {:?}: user {u:?} is not in the directory ({}) and is not a number",
                    p.name,
                    dir.source()
                ));
            }
        }
    }
    out
}

/// Decide whether a call is recorded: profiles in order, first match wins.
///
/// `caller` and `dialled` may be bare numbers, `sip:`/`tel:` URIs or name-addrs.
pub fn decide(
    profiles: &[Profile],
    dir: &Directory,
    logged_out: &LoggedOut,
    direction: Direction,
    caller: &str,
    dialled: &str,
) -> Decision {
    let plan = dir.plan();
    let caller = plan.normalise(caller);
    let dialled_role = match direction {
        Direction::Outgoing => NumberRole::DialledOutgoing,
        Direction::Incoming => NumberRole::Plain,
    };
    let dialled = plan.normalise_as(dialled, dialled_role);
    let internal = dir.is_internal(&caller) && dir.is_internal(&dialled);
    let judged_as = if internal {
        Direction::Incoming
    } else {
        direction
    };
    let base = Decision {
        record: false,
        profile: None,
        profile_name: None,
        rule: Rule::NoRuleMatched,
        reason: String::new(),
        announcement: None,
        judged_as,
        internal,
        caller,
        dialled,
    };

    if has_no_rules(profiles) {
        let first = profiles.first();
        return Decision {
            record: true,
            profile: first.map(|_| 0),
            profile_name: first.map(|p| p.name.clone()),
            rule: Rule::NoRulesConfigured,
            reason: "no recording rule is configured (no group, user or record_all): every call is recorded".into(),
            announcement: first.and_then(|p| announcement(p, judged_as)),
            ..base
        };
    }

    let mut notes = Vec::new();
    for (i, p) in profiles.iter().enumerate() {
        let ctx = ProfileView::new(p, dir);
        let hit = match judged_as {
            Direction::Incoming => ctx.incoming(logged_out, &base.dialled, &mut notes),
            Direction::Outgoing => ctx.outgoing(logged_out, &base.caller, &mut notes),
        }
        .or_else(|| {
            p.record_all.then(|| {
                (
                    Rule::RecordAll,
                    "the profile records every call".to_string(),
                )
            })
        });
        if let Some((rule, why)) = hit {
            let prefix = if internal {
                "internal call, judged by the callee: "
            } else {
                ""
            };
            return Decision {
                record: true,
                profile: Some(i),
                profile_name: Some(p.name.clone()),
                rule,
                reason: format!("profile {:?}: {prefix}{why}", p.name),
                announcement: announcement(p, judged_as),
                ..base
            };
        }
    }
    let mut reason = format!(
        "no profile matches {} call from {} to {}",
        if internal {
            "internal"
        } else {
            dir_word(direction)
        },
        base.caller,
        base.dialled
    );
    if !notes.is_empty() {
        reason.push_str(" (");
        reason.push_str(&notes.join("; "));
        reason.push(')');
    }
    Decision { reason, ..base }
}

fn dir_word(d: Direction) -> &'static str {
    match d {
        Direction::Incoming => "incoming",
        Direction::Outgoing => "outgoing",
    }
}

fn announcement(p: &Profile, judged_as: Direction) -> Option<PathBuf> {
    match judged_as {
        Direction::Incoming => p.announce_incoming.clone(),
        Direction::Outgoing => p.announce_outgoing.clone(),
    }
}

/// A profile's group and selected users resolved against one directory snapshot.
struct ProfileView<'a> {
    profile: &'a Profile,
    dir: &'a Directory,
    group: Option<&'a Group>,
    group_numbers: Vec<Number>,
    selected_numbers: Vec<Number>,
    selected_ids: Vec<UserId>,
}

impl<'a> ProfileView<'a> {
    fn new(profile: &'a Profile, dir: &'a Directory) -> ProfileView<'a> {
        let plan = dir.plan();
        let mut group = None;
        let mut group_numbers = Vec::new();
        if let Some(g) = profile.group.as_deref().filter(|g| !g.trim().is_empty()) {
            group = dir.group_by_name_or_number(g);
            if let Some(found) = group {
                group_numbers.extend(found.numbers().cloned());
            }
            let n = plan.normalise(g);
            if n.is_dialable() {
                group_numbers.push(n);
            }
        }
        let mut selected_numbers = Vec::new();
        let mut selected_ids = Vec::new();
        for u in profile.users.iter().filter(|u| !u.trim().is_empty()) {
            if let Some(user) = dir.user_by_login_or_number(u) {
                selected_ids.push(user.id);
                selected_numbers.extend(user.numbers().cloned());
            }
            let n = plan.normalise(u);
            if n.is_dialable() {
                selected_numbers.push(n);
            }
        }
        ProfileView {
            profile,
            dir,
            group,
            group_numbers,
            selected_numbers,
            selected_ids,
        }
    }

    fn group_label(&self) -> String {
        match self.group {
            Some(g) => format!("group {:?}", g.name),
            None => format!(
                "group {}",
                self.profile.group.as_deref().unwrap_or_default()
            ),
        }
    }

    /// The incoming rules (group number, selected users, members' own
    /// numbers) for a call to `dialled`.
    fn incoming(
        &self,
        logged_out: &LoggedOut,
        dialled: &Number,
        notes: &mut Vec<String>,
    ) -> Option<(Rule, String)> {
        if !dialled.is_dialable() {
            return None;
        }
        if self.group_numbers.contains(dialled) {
            return Some((
                Rule::GroupNumber,
                format!("{dialled} is the number of {}", self.group_label()),
            ));
        }
        let callee = self.dir.user_by_number(dialled);
        if self.selected_numbers.contains(dialled)
            || callee.is_some_and(|u| self.selected_ids.contains(&u.id))
        {
            let who = callee.map_or_else(|| dialled.to_string(), |u| u.login.clone());
            return Some((
                Rule::SelectedUserNumber,
                format!("{dialled} is the personal number of selected user {who}"),
            ));
        }
        if let (Some(g), Some(u)) = (self.group, callee) {
            if g.has_member(u.id) {
                if !self.profile.record_direct_calls {
                    notes.push(format!(
                        "profile {:?}: {} is a member of {} but record_direct_calls is off",
                        self.profile.name, u.login, g.name
                    ));
                } else if logged_out.is_logged_out(g.id, u.id) {
                    notes.push(format!(
                        "profile {:?}: {} is logged out of {}",
                        self.profile.name, u.login, g.name
                    ));
                } else {
                    return Some((
                        Rule::DirectCallToActiveMember,
                        format!(
                            "{dialled} is the personal number of {}, an active member of {:?}",
                            u.login, g.name
                        ),
                    ));
                }
            }
        }
        None
    }

    /// The outgoing rules (active group members, selected users) for a call by `caller`.
    fn outgoing(
        &self,
        logged_out: &LoggedOut,
        caller: &Number,
        notes: &mut Vec<String>,
    ) -> Option<(Rule, String)> {
        if !caller.is_dialable() {
            return None;
        }
        let user = self.dir.user_by_number(caller);
        if let (Some(g), Some(u)) = (self.group, user) {
            if g.has_member(u.id) {
                if logged_out.is_logged_out(g.id, u.id) {
                    notes.push(format!(
                        "profile {:?}: {} is logged out of {}",
                        self.profile.name, u.login, g.name
                    ));
                } else {
                    return Some((
                        Rule::OutgoingActiveMember,
                        format!("caller {} is an active member of {:?}", u.login, g.name),
                    ));
                }
            }
        }
        if self.selected_numbers.contains(caller)
            || user.is_some_and(|u| self.selected_ids.contains(&u.id))
        {
            let who = user.map_or_else(|| caller.to_string(), |u| u.login.clone());
            return Some((
                Rule::OutgoingSelectedUser,
                format!("caller {who} is a selected user"),
            ));
        }
        None
    }
}
