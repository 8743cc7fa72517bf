//! The directory snapshot: users, groups, their numbers and configured
//! memberships, normalised with the number plan and indexed for the decision. A
//! snapshot is immutable; the refresher swaps in a new one (see `refresh`).

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::error::DirectoryError;
use super::membership::LoggedOut;
use super::numbers::{Number, NumberPlan};

use super::account::{GroupId, UserId};

/// A PBX user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Account id (STARFACE `id`).
    pub id: UserId,
    /// Login name.
    pub login: String,
    /// First name.
    pub first_name: String,
    /// Family name.
    pub family_name: String,
    /// E-mail address, if known.
    pub email: Option<String>,
    /// Internal numbers (extensions), normalised and sorted.
    pub internal_numbers: Vec<Number>,
    /// External numbers (personal direct-dial numbers), normalised and sorted.
    pub external_numbers: Vec<Number>,
}

impl User {
    /// Every number of the user, internal first.
    pub fn numbers(&self) -> impl Iterator<Item = &Number> {
        self.internal_numbers.iter().chain(&self.external_numbers)
    }

    /// "First Family" for logs and metadata.
    pub fn display_name(&self) -> String {
        format!("{} {}", self.first_name, self.family_name)
            .trim()
            .to_string()
    }
}

/// A PBX group (hunt group) with its configured (assigned) members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Account id (STARFACE `id`).
    pub id: GroupId,
    /// Group name.
    pub name: String,
    /// Internal group numbers, normalised and sorted.
    pub internal_numbers: Vec<Number>,
    /// External group numbers, normalised and sorted.
    pub external_numbers: Vec<Number>,
    /// Ids of the assigned members, sorted (logged-out state is kept elsewhere).
    pub members: Vec<UserId>,
}

impl Group {
    /// Every number of the group, internal first.
    pub fn numbers(&self) -> impl Iterator<Item = &Number> {
        self.internal_numbers.iter().chain(&self.external_numbers)
    }

    /// True when `user` is an assigned member.
    pub fn has_member(&self, user: UserId) -> bool {
        self.members.binary_search(&user).is_ok()
    }

    /// True when `user` is an assigned member and not logged out (an active member).
    pub fn is_active_member(&self, user: UserId, logged_out: &LoggedOut) -> bool {
        self.has_member(user) && !logged_out.is_logged_out(self.id, user)
    }

    /// The active members: assigned and not logged out.
    pub fn active_members<'a>(
        &'a self,
        logged_out: &'a LoggedOut,
    ) -> impl Iterator<Item = UserId> + 'a {
        self.members
            .iter()
            .copied()
            .filter(move |&u| !logged_out.is_logged_out(self.id, u))
    }
}

/// An immutable snapshot of users and groups, indexed by number.
#[derive(Debug, Clone)]
pub struct Directory {
    plan: NumberPlan,
    users: Vec<User>,
    groups: Vec<Group>,
    user_by_number: HashMap<Number, usize>,
    group_by_number: HashMap<Number, usize>,
    source: String,
}

impl PartialEq for Directory {
    fn eq(&self, other: &Self) -> bool {
        self.plan == other.plan && self.users == other.users && self.groups == other.groups
    }
}

impl Directory {
    /// A directory without users or groups (PBX unreachable, or none configured).
    pub fn empty(plan: NumberPlan) -> Directory {
        Directory {
            plan,
            users: Vec::new(),
            groups: Vec::new(),
            user_by_number: HashMap::new(),
            group_by_number: HashMap::new(),
            source: "empty".into(),
        }
    }

    /// Build a snapshot; sorts by id and numbers, rejects duplicate ids and unknown members.
    pub fn new(
        plan: NumberPlan,
        source: impl Into<String>,
        mut users: Vec<User>,
        mut groups: Vec<Group>,
    ) -> Result<Directory, DirectoryError> {
        let source = source.into();
        let invalid = |detail: String| DirectoryError::Invalid {
            source_name: source.clone(),
            detail,
        };
        users.sort_by_key(|u| u.id);
        groups.sort_by_key(|g| g.id);
        if let Some(w) = users.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(invalid(format!("user id {} appears twice", w[0].id)));
        }
        if let Some(w) = groups.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(invalid(format!("group id {} appears twice", w[0].id)));
        }
        for u in &mut users {
            sort_dedup(&mut u.internal_numbers);
            sort_dedup(&mut u.external_numbers);
        }
        for g in &mut groups {
            sort_dedup(&mut g.internal_numbers);
            sort_dedup(&mut g.external_numbers);
            g.members.sort_unstable();
            g.members.dedup();
            if let Some(m) = g
                .members
                .iter()
                .find(|m| users.binary_search_by_key(*m, |u| u.id).is_err())
            {
                return Err(invalid(format!(
                    "group {} ({}) names member {m}, which is not a user",
                    g.id, g.name
                )));
            }
        }
        let mut user_by_number = HashMap::new();
        for (i, u) in users.iter().enumerate() {
            for n in u.numbers() {
                if let Some(prev) = user_by_number.insert(n.clone(), i) {
                    tracing::warn!(number = %n, first = users[prev].login, second = u.login,
                        "directory: number belongs to two users; the second wins");
                }
            }
        }
        let mut group_by_number = HashMap::new();
        for (i, g) in groups.iter().enumerate() {
            for n in g.numbers() {
                group_by_number.insert(n.clone(), i);
            }
        }
        Ok(Directory {
            plan,
            users,
            groups,
            user_by_number,
            group_by_number,
            source,
        })
    }

    /// Load a static directory file: TOML, or JSON when the name ends in `.json`.
    ///
    /// Format (TOML; JSON has the same keys):
    /// ```toml
    /// [[users]]
    /// id = 1
    /// login = "anna"
    /// first_name = "Anna"
    /// family_name = "Berg"
    /// email = "anna@example.com"      # optional
    /// internal = ["201"]              # extensions (digits of any length)
    /// external = ["+49 30 1234201"]   # any spelling, normalised with [numbers]
    ///
    /// [[groups]]
    /// id = 100
    /// name = "Sales"
    /// internal = ["600"]
    /// external = ["030 1234600"]
    /// members = [1, 2]                # user ids (assigned members)
    /// ```
    pub fn load_file(path: &Path, plan: NumberPlan) -> Result<Directory, DirectoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| DirectoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parse_err = |detail: String| DirectoryError::Parse {
            path: path.to_path_buf(),
            detail,
        };
        let file: DirectoryFile = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| parse_err(e.to_string()))?
        } else {
            toml::from_str(&text).map_err(|e| parse_err(e.to_string()))?
        };
        let norm = |v: &[String]| v.iter().map(|n| plan.normalise(n)).collect::<Vec<_>>();
        let norm_int = |v: &[String]| {
            v.iter()
                .map(|n| plan.normalise_internal(n))
                .collect::<Vec<_>>()
        };
        let users = file
            .users
            .iter()
            .map(|u| User {
                id: u.id,
                login: u.login.clone(),
                first_name: u.first_name.clone(),
                family_name: u.family_name.clone(),
                email: u.email.clone(),
                internal_numbers: norm_int(&u.internal),
                external_numbers: norm(&u.external),
            })
            .collect();
        let groups = file
            .groups
            .iter()
            .map(|g| Group {
                id: g.id,
                name: g.name.clone(),
                internal_numbers: norm_int(&g.internal),
                external_numbers: norm(&g.external),
                members: g.members.clone(),
            })
            .collect();
        Directory::new(plan.clone(), path.display().to_string(), users, groups)
    }

    /// The number plan the snapshot was normalised with.
    pub fn plan(&self) -> &NumberPlan {
        &self.plan
    }

    /// Where the snapshot came from (file path, REST URL, or "empty").
    pub fn source(&self) -> &str {
        &self.source
    }

    /// All users, sorted by id.
    pub fn users(&self) -> &[User] {
        &self.users
    }

    /// All groups, sorted by id.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// True when the snapshot has neither users nor groups.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }

    /// The user with this id.
    pub fn user(&self, id: UserId) -> Option<&User> {
        self.users
            .binary_search_by_key(&id, |u| u.id)
            .ok()
            .map(|i| &self.users[i])
    }

    /// The group with this id.
    pub fn group(&self, id: GroupId) -> Option<&Group> {
        self.groups
            .binary_search_by_key(&id, |g| g.id)
            .ok()
            .map(|i| &self.groups[i])
    }

    /// The user owning this number.
    pub fn user_by_number(&self, n: &Number) -> Option<&User> {
        self.user_by_number.get(n).map(|&i| &self.users[i])
    }

    /// The group owning this number.
    pub fn group_by_number(&self, n: &Number) -> Option<&Group> {
        self.group_by_number.get(n).map(|&i| &self.groups[i])
    }

    /// A user named by login or any spelling of one of their numbers (as in a profile).
    pub fn user_by_login_or_number(&self, key: &str) -> Option<&User> {
        let key = key.trim();
        self.users
            .iter()
            .find(|u| u.login.eq_ignore_ascii_case(key))
            .or_else(|| self.user_by_number(&self.plan.normalise(key)))
    }

    /// A group named by name or any spelling of one of its numbers (as in a profile).
    pub fn group_by_name_or_number(&self, key: &str) -> Option<&Group> {
        let key = key.trim();
        self.groups
            .iter()
            .find(|g| g.name.eq_ignore_ascii_case(key))
            .or_else(|| self.group_by_number(&self.plan.normalise(key)))
    }

    /// A user named by login, any spelling of one of their numbers, or id (in that
    /// order), e.g. from the admin API's URL.
    pub fn find_user(&self, key: &str) -> Option<&User> {
        self.user_by_login_or_number(key)
            .or_else(|| key.trim().parse().ok().and_then(|id| self.user(id)))
    }

    /// A group named by name, any spelling of one of its numbers, or id (in that
    /// order), e.g. from the admin API's URL.
    pub fn find_group(&self, key: &str) -> Option<&Group> {
        self.group_by_name_or_number(key)
            .or_else(|| key.trim().parse().ok().and_then(|id| self.group(id)))
    }

    /// True for a party inside the PBX: an extension, or a number of a known user or group.
    pub fn is_internal(&self, n: &Number) -> bool {
        matches!(n, Number::Extension(_))
            || self.user_by_number.contains_key(n)
            || self.group_by_number.contains_key(n)
    }

    /// A key naming the party behind a number, the same for all its numbers
    /// (`user:ID`, `group:ID`, or the canonical number).
    pub fn party_key(&self, n: &Number) -> String {
        if let Some(u) = self.user_by_number(n) {
            format!("user:{}", u.id)
        } else if let Some(g) = self.group_by_number(n) {
            format!("group:{}", g.id)
        } else {
            n.to_string()
        }
    }
}

fn sort_dedup(v: &mut Vec<Number>) {
    v.retain(Number::is_dialable);
    v.sort();
    v.dedup();
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectoryFile {
    #[serde(default)]
    users: Vec<UserEntry>,
    #[serde(default)]
    groups: Vec<GroupEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    id: UserId,
    login: String,
    #[serde(default)]
    first_name: String,
    #[serde(default)]
    family_name: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    internal: Vec<String>,
    #[serde(default)]
    external: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupEntry {
    id: GroupId,
    name: String,
    #[serde(default)]
    internal: Vec<String>,
    #[serde(default)]
    external: Vec<String>,
    #[serde(default)]
    members: Vec<UserId>,
}
