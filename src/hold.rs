//! Legal hold: sets kept past their retention period because a court, an
//! authority or a dispute needs them. A hold names one set (by base name or
//! set id) or one party's number (every set where it is caller, callee or the
//! one who answered); retention and `purge` skip held sets and log the skip.

use crate::db::{Conn, Db, DbError, RecordingRow, SqlError};
use crate::policy::NumberPlan;

/// What a hold names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldKind {
    /// One set, by base name or set id.
    Set,
    /// Every set of a party, by number (stored normalised).
    Number,
}

impl HoldKind {
    /// The word stored and shown: "set" or "number".
    pub fn as_str(self) -> &'static str {
        match self {
            HoldKind::Set => "set",
            HoldKind::Number => "number",
        }
    }
}

/// One active hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hold {
    /// Set or number.
    pub kind: HoldKind,
    /// The set's name or id, or the normalised number.
    pub value: String,
    /// Why (e.g. a case reference).
    pub reason: String,
    /// Who placed it.
    pub actor: String,
    /// When (ms since epoch).
    pub at_ms: i64,
}

/// A hold to place or lift; written by the database's writer thread.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldChange {
    /// The hold (for a removal only kind and value count).
    pub hold: Hold,
    /// True to place it, false to lift it.
    pub add: bool,
}

/// The stored value of a hold on `value` of `kind`: numbers are normalised
/// with `plan`, so any spelling names the same party.
pub fn stored_value(kind: HoldKind, value: &str, plan: &NumberPlan) -> String {
    match kind {
        HoldKind::Set => value.trim().to_string(),
        HoldKind::Number => plan.normalise(value).to_string(),
    }
}

/// Places or lifts a hold; called by the database's writer thread.
pub(crate) fn apply(conn: &Conn, c: &HoldChange) -> Result<(), SqlError> {
    let h = &c.hold;
    if c.add {
        conn.execute(
            "INSERT INTO holds (kind, value, reason, actor, at_ms) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (kind, value) DO UPDATE SET reason = excluded.reason, actor = excluded.actor, at_ms = excluded.at_ms",
            &[&h.kind.as_str(), &h.value, &h.reason, &h.actor, &h.at_ms],
        )?;
    } else {
        conn.execute(
            "DELETE FROM holds WHERE kind = ?1 AND value = ?2",
            &[&h.kind.as_str(), &h.value],
        )?;
    }
    Ok(())
}

/// Every active hold, oldest first.
pub fn list(db: &Db) -> Result<Vec<Hold>, DbError> {
    db.read(|c| {
        c.query(
            "SELECT kind, value, reason, actor, at_ms FROM holds ORDER BY at_ms, value",
            &[],
        )?
        .iter()
        .map(|r| {
            let kind: String = r.get(0)?;
            Ok(Hold {
                kind: if kind == "set" {
                    HoldKind::Set
                } else {
                    HoldKind::Number
                },
                value: r.get(1)?,
                reason: r.get(2)?,
                actor: r.get(3)?,
                at_ms: r.get(4)?,
            })
        })
        .collect()
    })
}

/// The hold that keeps `row` (with set id `set_id`, when known), if any.
pub fn holding<'a>(
    holds: &'a [Hold],
    row: &RecordingRow,
    set_id: Option<&str>,
    plan: &NumberPlan,
) -> Option<&'a Hold> {
    holds.iter().find(|h| match h.kind {
        HoldKind::Set => h.value == row.base_name || Some(h.value.as_str()) == set_id,
        HoldKind::Number => [&row.caller, &row.callee, &row.answered_by]
            .into_iter()
            .flatten()
            .any(|n| plan.normalise(n).to_string() == h.value),
    })
}
