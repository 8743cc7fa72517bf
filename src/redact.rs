//! Personal data of purged sets: once a set is deleted everywhere, the rows
//! that name its parties (call events, decision, recording, failures, access
//! log entries about it) are reduced to the deletion record: the set id, the
//! hash of its checksum file, the dates and the reason stay; numbers, names
//! and the base name (which holds the numbers) go. Decisions about calls that
//! were not recorded (and those calls' events) are kept only for a configured
//! period.

use crate::db::{Conn, SqlError};

/// Reduces the rows of set `base_name` and replaces its name by `set_id`;
/// called by the database's writer thread.
pub(crate) fn reduce(conn: &Conn, base_name: &str, set_id: &str) -> Result<(), SqlError> {
    let call_id: Option<String> = conn
        .query_opt(
            "SELECT call_id FROM recordings WHERE base_name = ?1",
            &[&base_name],
        )?
        .map(|r| r.get(0))
        .transpose()?;
    if let Some(cid) = &call_id {
        conn.execute(
            "UPDATE calls SET caller = NULL, callee = NULL, detail = NULL, call_id = ?2 WHERE call_id = ?1",
            &[cid, &set_id],
        )?;
        conn.execute(
            "UPDATE decisions SET reason = 'purged', call_id = ?2 WHERE call_id = ?1",
            &[cid, &set_id],
        )?;
        conn.execute(
            "UPDATE failures SET detail = 'purged', call_id = ?2 WHERE call_id = ?1",
            &[cid, &set_id],
        )?;
    }
    conn.execute(
        "UPDATE recordings SET caller = NULL, callee = NULL, answered_by = NULL, call_id = ?2, base_name = ?2 WHERE base_name = ?1",
        &[&base_name, &set_id],
    )?;
    for table in [
        "seals",
        "uploads",
        "upload_attempts",
        "deletions",
        "failures",
    ] {
        conn.execute(
            &format!("UPDATE {table} SET base_name = ?2 WHERE base_name = ?1"),
            &[&base_name, &set_id],
        )?;
    }
    conn.execute(
        "UPDATE access_log SET subject = ?2 WHERE subject = ?1",
        &[&base_name, &set_id],
    )?;
    conn.execute(
        "UPDATE access_log SET detail = replace(detail, ?1, ?2) WHERE detail <> replace(detail, ?1, '')",
        &[&base_name, &set_id],
    )?;
    Ok(())
}

/// Deletes decision rows of calls that were not recorded, and the events of
/// calls that have no recording, older than `before_ms`; called by the
/// database's writer thread.
pub(crate) fn expire_unrecorded(conn: &Conn, before_ms: i64) -> Result<(), SqlError> {
    let calls = conn.execute(
        "DELETE FROM calls WHERE at_ms < ?1 AND call_id IN \
         (SELECT call_id FROM decisions WHERE recorded = 0 AND at_ms < ?1) \
         AND call_id NOT IN (SELECT call_id FROM recordings)",
        &[&before_ms],
    )?;
    let decisions = conn.execute(
        "DELETE FROM decisions WHERE recorded = 0 AND at_ms < ?1",
        &[&before_ms],
    )?;
    if calls + decisions > 0 {
        tracing::info!(
            calls,
            decisions,
            "rows of unrecorded calls past their period deleted"
        );
    }
    Ok(())
}

/// Applies the period for unrecorded calls now and then daily, for as long as the task runs.
pub async fn expire_unrecorded_daily(db: crate::db::Db, keep: std::time::Duration) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(24 * 3600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        db.send(crate::db::Record::ExpireUnrecorded {
            before_ms: crate::db::now_ms() - keep.as_millis() as i64,
        });
    }
}
