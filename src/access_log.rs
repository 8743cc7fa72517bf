//! The access log: who looked at which recordings. Every search, export,
//! playback, verification and legal-hold change is one row in the protocol
//! database's `access_log` table (written by the database's single writer),
//! and `callrec audit` lists them for the people who answer to auditors.

use crate::db::{Conn, Db, DbError, Record, SqlError};

/// What was done with the recordings; stored as a stable lowercase word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessAction {
    /// Recordings were searched (subject: the number).
    Search,
    /// A recording was played back (subject: the set id).
    Playback,
    /// Sets were exported for a client (subject: the number).
    Export,
    /// Sets were verified (subject: the paths or set ids).
    Verify,
    /// A legal hold was added, removed or listed (subject: set id or number).
    Hold,
    /// The access log itself was read (subject: the filter).
    Audit,
    /// What is recorded or how it is stored was changed: a member's
    /// recording switched on or off in a group (subject: the member), a
    /// storage target signed in (subject: the target).
    Configure,
    /// A member's personal phone link was rotated (subject: the member's login).
    #[serde(rename = "phone-key")]
    PhoneKey,
}

impl AccessAction {
    /// Every action, for parsing and help texts.
    pub const ALL: [AccessAction; 8] = [
        AccessAction::Search,
        AccessAction::Playback,
        AccessAction::Export,
        AccessAction::Verify,
        AccessAction::Hold,
        AccessAction::Audit,
        AccessAction::Configure,
        AccessAction::PhoneKey,
    ];

    /// The word stored in the table; never changes for an existing action,
    /// since old rows are read back by it.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessAction::Search => "search",
            AccessAction::Playback => "playback",
            AccessAction::Export => "export",
            AccessAction::Verify => "verify",
            AccessAction::Hold => "hold",
            AccessAction::Audit => "audit",
            AccessAction::Configure => "configure",
            AccessAction::PhoneKey => "phone-key",
        }
    }
}

impl std::fmt::Display for AccessAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AccessAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        AccessAction::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown access action {s:?}"))
    }
}

/// One access, as written and as read back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccessEntry {
    /// Row id (0 until written).
    pub id: i64,
    /// When (ms since epoch).
    pub at_ms: i64,
    /// Who: the OS user of a CLI command, the API token's name, or a console user.
    pub actor: String,
    /// What was done.
    pub action: AccessAction,
    /// On what: the number searched, the set id, …
    pub subject: String,
    /// More, e.g. which sets an export handed over.
    pub detail: Option<String>,
}

impl AccessEntry {
    /// An entry stamped now.
    pub fn now(
        actor: impl Into<String>,
        action: AccessAction,
        subject: impl Into<String>,
        detail: Option<String>,
    ) -> AccessEntry {
        AccessEntry {
            id: 0,
            at_ms: crate::db::now_ms(),
            actor: actor.into(),
            action,
            subject: subject.into(),
            detail,
        }
    }

    /// A member's recording switched on (`login`) or off in `groups` by
    /// `actor` through `via`; written after the switch, before the answer.
    pub fn membership(
        actor: impl Into<String>,
        member: &str,
        groups: &str,
        login: bool,
        via: &str,
    ) -> AccessEntry {
        let state = if login { "on" } else { "off" };
        AccessEntry::now(
            actor,
            AccessAction::Configure,
            format!("member {member}"),
            Some(format!("recording {state} in {groups} ({via})")),
        )
    }

    /// One line for `callrec audit`.
    pub fn line(&self) -> String {
        let at = chrono::DateTime::from_timestamp_millis(self.at_ms)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap_or_default();
        let detail = self
            .detail
            .as_deref()
            .map(|d| format!("  {d}"))
            .unwrap_or_default();
        format!(
            "{at}  {}  {}  {}{detail}",
            self.actor, self.action, self.subject
        )
    }
}

/// Queues an entry from async code (the admin API, the console): never blocks.
pub fn record(db: &Db, entry: AccessEntry) {
    db.send(Record::Access(entry));
}

/// Writes an entry and waits for the commit (the CLI): a command whose access
/// cannot be logged must not show anything, so callers stop on the error.
pub fn record_sync(db: &Db, entry: AccessEntry) -> Result<(), DbError> {
    db.write_sync(vec![Record::Access(entry)])
}

/// The user running this process, by its effective uid (not `$USER`, which
/// the caller sets at will).
pub fn os_user() -> String {
    // SAFETY: geteuid has no preconditions; getpwuid_r writes only into the
    // buffers given, and the name is copied out before they go.
    unsafe {
        let uid = libc::geteuid();
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found);
        if rc == 0 && !found.is_null() && !pw.pw_name.is_null() {
            let name = std::ffi::CStr::from_ptr(pw.pw_name).to_string_lossy();
            return name.into_owned();
        }
        format!("uid {uid}")
    }
}

/// Inserts one entry; called by the database's writer thread.
pub(crate) fn insert(conn: &Conn, e: &AccessEntry) -> Result<(), SqlError> {
    conn.execute(
        "INSERT INTO access_log (at_ms, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        &[&e.at_ms, &e.actor, &e.action.as_str(), &e.subject, &e.detail],
    )?;
    Ok(())
}

/// Entries at or after `since_ms`, of `actor` if given (exact match), oldest first.
pub fn list(
    db: &Db,
    since_ms: Option<i64>,
    actor: Option<&str>,
) -> Result<Vec<AccessEntry>, DbError> {
    // Two statements rather than "?2 IS NULL OR actor = ?2": PostgreSQL
    // cannot type a parameter that is only compared with NULL.
    let since = since_ms.unwrap_or(i64::MIN);
    db.read(|conn| {
        let rows = match actor {
            Some(a) => conn.query(
                "SELECT id, at_ms, actor, action, subject, detail FROM access_log \
                 WHERE at_ms >= ?1 AND actor = ?2 ORDER BY at_ms, id",
                &[&since, &a],
            )?,
            None => conn.query(
                "SELECT id, at_ms, actor, action, subject, detail FROM access_log \
                 WHERE at_ms >= ?1 ORDER BY at_ms, id",
                &[&since],
            )?,
        };
        rows.iter()
            .map(|r| {
                let action: String = r.get(3)?;
                Ok(AccessEntry {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    actor: r.get(2)?,
                    action: action
                        .parse()
                        .map_err(|detail| SqlError::Column { column: 3, detail })?,
                    subject: r.get(4)?,
                    detail: r.get(5)?,
                })
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_filter() {
        for engine in crate::db::scratch::ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let scratch = crate::db::scratch::ScratchDb::new(engine, dir.path());
            round_trip(&scratch.open());
        }
    }

    fn round_trip(db: &Db) {
        let db = db.clone();
        let mut a = AccessEntry::now("alice", AccessAction::Search, "+4930123", None);
        a.at_ms = 1_000;
        record_sync(&db, a).unwrap();
        let mut b = AccessEntry::now(
            "api:admin",
            AccessAction::Export,
            "+4930123",
            Some("sets: x".into()),
        );
        b.at_ms = 2_000;
        record(&db, b);
        db.flush();
        let all = list(&db, None, None).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].action, AccessAction::Search);
        assert_eq!(all[1].detail.as_deref(), Some("sets: x"));
        assert_eq!(list(&db, Some(1_500), None).unwrap().len(), 1);
        assert_eq!(list(&db, None, Some("alice")).unwrap().len(), 1);
        assert!(all[1]
            .line()
            .contains("api:admin  export  +4930123  sets: x"));
        for a in AccessAction::ALL {
            assert_eq!(a.as_str().parse::<AccessAction>().unwrap(), a);
        }
        assert!(!os_user().is_empty());
    }
}
