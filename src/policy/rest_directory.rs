//! Turns what a STARFACE answers (users, groups, group details, phone numbers,
//! per-user number assignments) into a `Directory` snapshot. The links between
//! the lists are checked rather than trusted: a user's numbers from `/phonenumbers`
//! are compared with the user's own assignment route, a group's with the group's
//! own numbers; on a disagreement the account's own route wins and an ERROR names
//! the account. Entries that cannot be used (a member the REST user cannot see, a
//! number that cannot be normalised) are logged once and skipped, so one odd entry
//! never costs the whole snapshot.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use serde::Deserialize;

use super::account::{GroupId, UserId};
use super::directory::{Directory, Group, User};
use super::error::DirectoryError;
use super::numbers::{Number, NumberPlan};
use super::rest_numbers::{assemble, NumberParts};

/// `User` of the REST API (fields callrec uses).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RestUser {
    pub id: UserId,
    pub login: String,
    pub first_name: Option<String>,
    pub family_name: Option<String>,
    pub email: Option<String>,
}

/// `GroupListItem` of `GET /groups`.
#[derive(Debug, Deserialize)]
pub(super) struct RestGroup {
    pub id: GroupId,
    pub groupname: Option<String>,
    pub groupinternalnumber: Option<String>,
    pub groupexternalnumber: Option<String>,
}

/// `Group` of `GET /groups/{id}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RestGroupDetail {
    pub name: Option<String>,
    #[serde(default)]
    pub assignable_numbers: Vec<RestAssignableNumber>,
    #[serde(default)]
    pub assignable_users: Vec<RestMember>,
}

/// `AssignableNumber`: a number the group may have, with its country code spelled out.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RestAssignableNumber {
    #[serde(default)]
    pub assigned: bool,
    #[serde(default)]
    pub intern: bool,
    pub country_code: Option<String>,
    pub local_area_code: Option<String>,
    pub extension: Option<String>,
}

/// `AssignableUser`.
#[derive(Debug, Deserialize)]
pub(super) struct RestMember {
    pub id: UserId,
    #[serde(default)]
    pub assigned: bool,
}

/// `PhoneNumber` of `GET /phonenumbers`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RestPhoneNumber {
    pub id: u64,
    pub number: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub exit_code: Option<String>,
    pub national_prefix: Option<String>,
    pub local_prefix: Option<String>,
    pub assigned_user_account_id: Option<UserId>,
    pub assigned_group_account_id: Option<GroupId>,
}

impl RestPhoneNumber {
    fn parts(&self) -> NumberParts<'_> {
        NumberParts {
            exit_code: self.exit_code.as_deref().unwrap_or(""),
            national_prefix: self.national_prefix.as_deref().unwrap_or(""),
            local_prefix: self.local_prefix.as_deref().unwrap_or(""),
            number: &self.number,
        }
    }
}

/// `PhoneNumberAssignment` of `GET /users/{id}/phonenumberconfig/phonenumbers/`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RestAssignment {
    pub account_id: UserId,
    pub phone_number_id: u64,
}

/// Everything one refresh fetched.
pub(super) struct Fetched {
    pub users: Vec<RestUser>,
    pub groups: Vec<RestGroup>,
    pub details: Vec<RestGroupDetail>,
    pub numbers: Vec<RestPhoneNumber>,
    /// Phone number ids per user from the user's own route (the users checked).
    pub per_user: HashMap<UserId, BTreeSet<u64>>,
}

/// Remembers what was already logged, so a refresh every few minutes does not
/// repeat the same complaint.
#[derive(Debug, Default)]
pub(super) struct LogOnce(Mutex<HashSet<String>>);

impl LogOnce {
    /// True the first time `key` is seen.
    pub fn first(&self, key: String) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(key)
    }
}

/// Phone number ids per user as `/phonenumbers` links them (`assignedUserAccountId`).
pub(super) fn user_links(numbers: &[RestPhoneNumber]) -> HashMap<UserId, BTreeSet<u64>> {
    let mut links: HashMap<UserId, BTreeSet<u64>> = HashMap::new();
    for n in numbers {
        if let Some(u) = n.assigned_user_account_id {
            links.entry(u).or_default().insert(n.id);
        }
    }
    links
}

/// The users whose `/phonenumbers` links disagree with their own route.
pub(super) fn link_mismatches(
    links: &HashMap<UserId, BTreeSet<u64>>,
    per_user: &HashMap<UserId, BTreeSet<u64>>,
) -> Vec<UserId> {
    let none = BTreeSet::new();
    let mut bad: Vec<UserId> = per_user
        .iter()
        .filter(|(u, own)| links.get(u).unwrap_or(&none) != *own)
        .map(|(u, _)| *u)
        .collect();
    bad.sort_unstable();
    bad
}

/// A number of the PBX normalised, or `None` (logged once) when it is of a type
/// callrec does not use or cannot be normalised.
fn normalise(n: &RestPhoneNumber, plan: &NumberPlan, once: &LogOnce) -> Option<(bool, Number)> {
    match n.kind.to_ascii_uppercase().as_str() {
        "INTERNAL" if !n.number.trim().is_empty() => {
            Some((true, plan.normalise_internal(&n.number)))
        }
        "EXTERNAL" => match assemble(&n.parts(), plan) {
            Ok(num) => Some((false, num)),
            Err(e) => {
                if once.first(format!("number {} {}", n.id, n.parts())) {
                    tracing::warn!(
                        phone_number_id = n.id,
                        "PBX phone number skipped, {e}: {} (check [numbers] in the config file)",
                        n.parts()
                    );
                }
                None
            }
        },
        other => {
            tracing::debug!(
                phone_number_id = n.id,
                kind = other,
                "PBX phone number of another type ignored"
            );
            None
        }
    }
}

/// The numbers a group's own routes give: the group list item's numbers and the
/// detail's assigned assignable numbers.
fn own_group_numbers(
    g: &RestGroup,
    d: &RestGroupDetail,
    plan: &NumberPlan,
    once: &LogOnce,
) -> BTreeSet<(bool, Number)> {
    let mut own = BTreeSet::new();
    if let Some(n) = g
        .groupinternalnumber
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        own.insert((true, plan.normalise_internal(n)));
    }
    if let Some(n) = g
        .groupexternalnumber
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        own.insert((false, plan.normalise(n)));
    }
    for a in d.assignable_numbers.iter().filter(|a| a.assigned) {
        let ext = a.extension.as_deref().unwrap_or("");
        if a.intern {
            if !ext.trim().is_empty() {
                own.insert((true, plan.normalise_internal(ext)));
            }
            continue;
        }
        // The country code is spelled out here, so it goes where a country code goes.
        let parts = NumberParts {
            exit_code: "",
            national_prefix: a.country_code.as_deref().unwrap_or(""),
            local_prefix: a.local_area_code.as_deref().unwrap_or(""),
            number: ext,
        };
        match assemble(&parts, plan) {
            Ok(n) => {
                own.insert((false, n));
            }
            Err(e) => {
                if once.first(format!("group {} number {parts}", g.id)) {
                    tracing::warn!(group_id = g.id, "PBX group number skipped, {e}: {parts}");
                }
            }
        }
    }
    own
}

/// Build the snapshot from one refresh's answers.
pub(super) fn build(
    f: Fetched,
    plan: &NumberPlan,
    source: &str,
    once: &LogOnce,
) -> Result<Directory, DirectoryError> {
    let normalised: HashMap<u64, (bool, Number)> = f
        .numbers
        .iter()
        .filter_map(|n| normalise(n, plan, once).map(|v| (n.id, v)))
        .collect();

    // Users: the numbers `/phonenumbers` links to them, unless their own route says otherwise.
    let mut links = user_links(&f.numbers);
    for u in link_mismatches(&links, &f.per_user) {
        let login = f
            .users
            .iter()
            .find(|x| x.id == u)
            .map_or("?", |x| x.login.as_str());
        let own = f.per_user[&u].clone();
        tracing::error!(
            account_id = u,
            login,
            phonenumbers_route = ?links.get(&u),
            user_route = ?own,
            "PBX number links disagree: /phonenumbers assigns other numbers to user {u} ({login}) than /users/{u}/phonenumberconfig/phonenumbers/; using the user's own route"
        );
        links.insert(u, own);
    }
    let user_ids: HashSet<UserId> = f.users.iter().map(|u| u.id).collect();
    let users: Vec<User> = f
        .users
        .into_iter()
        .map(|u| {
            let (mut internal, mut external) = (Vec::new(), Vec::new());
            for id in links.get(&u.id).into_iter().flatten() {
                match normalised.get(id) {
                    Some((true, n)) => internal.push(n.clone()),
                    Some((false, n)) => external.push(n.clone()),
                    None => {}
                }
            }
            User {
                id: u.id,
                login: u.login,
                first_name: u.first_name.unwrap_or_default(),
                family_name: u.family_name.unwrap_or_default(),
                email: u.email.filter(|e| !e.is_empty()),
                internal_numbers: internal,
                external_numbers: external,
            }
        })
        .collect();

    // Groups: the numbers `/phonenumbers` links to them, checked against the group's own.
    let mut linked: HashMap<GroupId, BTreeSet<(bool, Number)>> = HashMap::new();
    for n in &f.numbers {
        if let (Some(g), Some(v)) = (n.assigned_group_account_id, normalised.get(&n.id)) {
            linked.entry(g).or_default().insert(v.clone());
        }
    }
    let mut groups = Vec::with_capacity(f.groups.len());
    for (g, d) in f.groups.into_iter().zip(f.details) {
        let name = g.groupname.clone().or(d.name.clone()).unwrap_or_default();
        let own = own_group_numbers(&g, &d, plan, once);
        let from_list = linked.remove(&g.id).unwrap_or_default();
        let numbers = if own.is_empty() {
            from_list
        } else {
            let extra: Vec<String> = from_list
                .difference(&own)
                .map(|(_, n)| n.to_string())
                .collect();
            if !extra.is_empty() && once.first(format!("group {} extra {extra:?}", g.id)) {
                tracing::error!(
                    account_id = g.id,
                    group = name,
                    extra = ?extra,
                    "PBX number links disagree: /phonenumbers assigns numbers to group {} ({name}) that the group itself does not list; using the group's own numbers (check [numbers] in the config file)",
                    g.id
                );
            }
            own
        };
        let (mut internal, mut external) = (Vec::new(), Vec::new());
        for (is_internal, n) in numbers {
            if is_internal {
                internal.push(n)
            } else {
                external.push(n)
            }
        }
        let mut members = Vec::new();
        for m in d.assignable_users.iter().filter(|m| m.assigned) {
            if user_ids.contains(&m.id) {
                members.push(m.id);
            } else if once.first(format!("group {} member {}", g.id, m.id)) {
                tracing::error!(
                    account_id = g.id,
                    group = name,
                    member = m.id,
                    "group {} ({name}) has member {}, whom the REST user cannot see in /users: skipped (give the REST user the right to read all users)",
                    g.id,
                    m.id
                );
            }
        }
        groups.push(Group {
            id: g.id,
            name,
            internal_numbers: internal,
            external_numbers: external,
            members,
        });
    }
    Directory::new(plan.clone(), source.to_string(), users, groups)
}
