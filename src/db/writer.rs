//! The writer thread: takes [`Record`]s from a channel and inserts them in
//! batches, one transaction per batch; each record (and each synchronous
//! group) gets a savepoint, so one failing record loses only itself, and
//! synchronous writers hear whether theirs were committed.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::sql::{Conn, SqlError};

use super::{Record, UploadState};

/// Reply to a synchronous write: `Err` carries what failed.
pub(super) type SyncReply = mpsc::Sender<Result<(), String>>;

pub(super) enum Msg {
    Write(Record),
    WriteSync(Vec<Record>, SyncReply),
    Flush(mpsc::Sender<()>),
}

#[derive(Debug)]
pub(super) struct WriterGuard {
    pub(super) thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        // The channel's last sender is gone by now; the writer drains and ends.
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Write(r) => write!(f, "Write({r:?})"),
            Msg::WriteSync(r, _) => write!(f, "WriteSync({r:?})"),
            Msg::Flush(_) => write!(f, "Flush"),
        }
    }
}

/// Writes one record; `me` is the instance the rows of recordings and uploads name.
fn write(tx: &Conn, r: &Record, me: &str) -> Result<(), SqlError> {
    match r {
        Record::Call {
            call_id,
            at_ms,
            event,
            direction,
            caller,
            callee,
            detail,
        } => {
            tx.execute(
                "INSERT INTO calls (call_id, at_ms, event, direction, caller, callee, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                &[&call_id, &at_ms, &event, &direction, &caller, &callee, &detail],
            )?;
        }
        Record::Failure {
            call_id,
            base_name,
            reason,
            detail,
            at_ms,
        } => {
            tx.execute(
                "INSERT INTO failures (call_id, base_name, reason, detail, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[&call_id, &base_name, &reason, &detail, &at_ms],
            )?;
        }
        Record::Decision {
            call_id,
            at_ms,
            recorded,
            profile,
            reason,
        } => {
            tx.execute(
                "INSERT INTO decisions (call_id, at_ms, recorded, profile, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[&call_id, &at_ms, &recorded, &profile, &reason],
            )?;
        }
        Record::Recording {
            call_id,
            base_name,
            profile,
            start_ms,
            end_ms,
            caller,
            callee,
            answered_by,
        } => {
            tx.execute(
                "INSERT INTO recordings (call_id, base_name, profile, start_ms, end_ms, caller, callee, answered_by, instance) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                &[&call_id, &base_name, &profile, &start_ms, &end_ms, &caller, &callee, &answered_by, &me],
            )?;
        }
        Record::RecordingRecovered { base_name } => {
            tx.execute(
                "UPDATE recordings SET recovered = 1 WHERE base_name = ?1",
                &[&base_name],
            )?;
        }
        Record::Seal {
            base_name,
            at_ms,
            checksum_sha256,
            files,
            chain,
        } => {
            tx.execute(
                "INSERT INTO seals (base_name, at_ms, checksum_sha256, files, chain) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (base_name) DO UPDATE SET at_ms = excluded.at_ms, checksum_sha256 = excluded.checksum_sha256, files = excluded.files, chain = excluded.chain",
                &[&base_name, &at_ms, &checksum_sha256, &files, &chain],
            )?;
        }
        Record::UploadQueued {
            base_name,
            target,
            at_ms,
        } => {
            // Queuing again (e.g. a set re-created under the same name) makes it
            // pending again, for the instance whose spool now holds the files.
            tx.execute(
                "INSERT INTO uploads (base_name, target, queued_ms, state, instance) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT(base_name, target) DO UPDATE SET state = ?4, next_ms = NULL, done_ms = NULL, instance = ?5 \
                 WHERE uploads.state <> ?4 OR uploads.instance IS NULL OR uploads.instance <> ?5",
                &[&base_name, &target, &at_ms, &UploadState::Pending, &me],
            )?;
        }
        Record::UploadAttempt {
            base_name,
            target,
            started_ms,
            ended_ms,
            files,
            bytes,
            error,
            next_ms,
        } => {
            tx.execute(
                "INSERT INTO upload_attempts (base_name, target, started_ms, ended_ms, ok, files, bytes, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                &[&base_name, &target, &started_ms, &ended_ms, &error.is_none(), &files, &(*bytes as i64), &error],
            )?;
            tx.execute(
                "INSERT INTO uploads (base_name, target, queued_ms, state, instance) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                &[&base_name, &target, &started_ms, &UploadState::Pending, &me],
            )?;
            let state = if error.is_none() {
                UploadState::Done
            } else {
                UploadState::Pending
            };
            let done_ms = error.is_none().then_some(*ended_ms);
            tx.execute(
                "UPDATE uploads SET attempts = attempts + 1, state = ?3, last_error = ?4, done_ms = ?5, next_ms = ?6 WHERE base_name = ?1 AND target = ?2",
                &[&base_name, &target, &state, &error, &done_ms, &next_ms],
            )?;
        }
        Record::UploadLost {
            base_name,
            target,
            reason,
        } => {
            tx.execute(
                "UPDATE uploads SET state = ?4, last_error = ?3, next_ms = NULL WHERE base_name = ?1 AND target = ?2 AND state = ?5 AND instance = ?6",
                &[&base_name, &target, &reason, &UploadState::Lost, &UploadState::Pending, &me],
            )?;
        }
        Record::UploadsClaimed => {
            tx.execute(
                "UPDATE uploads SET instance = ?1 WHERE instance IS NULL",
                &[&me],
            )?;
        }
        Record::UploadAdopted { base_name, from } => {
            tx.execute(
                "UPDATE uploads SET instance = ?1 WHERE base_name = ?2 AND instance = ?3 AND state = ?4",
                &[&me, &base_name, &from, &UploadState::Pending],
            )?;
        }
        Record::Error {
            at_ms,
            component,
            message,
        } => {
            tx.execute(
                "INSERT INTO errors (at_ms, component, message) VALUES (?1, ?2, ?3)",
                &[&at_ms, &component, &message],
            )?;
        }
        Record::Deletion {
            base_name,
            target,
            at_ms,
            reason,
            checksum_sha256,
        } => {
            tx.execute(
                "INSERT INTO deletions (base_name, target, at_ms, reason, checksum_sha256) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[&base_name, &target, &at_ms, &reason, &checksum_sha256],
            )?;
            // The target no longer holds the set.
            tx.execute(
                "UPDATE uploads SET state = ?3, next_ms = NULL WHERE base_name = ?1 AND target = ?2 AND state = ?4",
                &[&base_name, &target, &UploadState::Deleted, &UploadState::Done],
            )?;
        }
        Record::Access(entry) => crate::access_log::insert(tx, entry)?,
        Record::Instance(row) => crate::instance::upsert(tx, row)?,
        Record::Anchor(row) => crate::anchoring::insert(tx, row)?,
        Record::Hold(change) => crate::hold::apply(tx, change)?,
        Record::PhoneKey(change) => crate::phone::keys::apply(tx, change)?,
        Record::Membership(change) => crate::policy::membership::apply(tx, change)?,
        Record::Reduce { base_name, set_id } => {
            crate::redact::reduce(tx, base_name, set_id)?;
            // A transcript holds what was said: its words go with the set.
            let forget = crate::transcribe::queue::QueueChange::Forget {
                base_name: base_name.clone(),
            };
            crate::transcribe::queue::apply(tx, &forget)?;
        }
        Record::Transcript(c) => crate::transcribe::queue::apply(tx, c)?,
        Record::ExpireUnrecorded { before_ms } => crate::redact::expire_unrecorded(tx, *before_ms)?,
    }
    Ok(())
}

/// A synchronous writer and what to tell it.
type Reply = (SyncReply, Result<(), String>);

/// Writes one batch in one transaction; the replies to its synchronous
/// groups, sent by the caller once the commit's fate is known. First without
/// savepoints (one statement per record: a round trip each on PostgreSQL);
/// only when something in it fails, the batch is rolled back and written
/// again with a savepoint per record and group, so that a refused record or
/// group loses only itself.
fn run_batch(
    conn: &Conn,
    batch: &[Msg],
    path: &std::path::Path,
    me: &str,
) -> (Result<(), SqlError>, Vec<Reply>) {
    let fast = conn.batch("BEGIN").and_then(|()| {
        for m in batch {
            match m {
                Msg::Write(r) => write(conn, r, me)?,
                Msg::WriteSync(records, _) => {
                    records.iter().try_for_each(|r| write(conn, r, me))?
                }
                Msg::Flush(_) => {}
            }
        }
        conn.batch("COMMIT")
    });
    if fast.is_ok() {
        let replies = batch
            .iter()
            .filter_map(|m| match m {
                Msg::WriteSync(_, reply) => Some((reply.clone(), Ok(()))),
                _ => None,
            })
            .collect();
        return (Ok(()), replies);
    }
    let _ = conn.batch("ROLLBACK");
    if conn.is_broken() {
        return (fast, Vec::new());
    }
    let mut replies = Vec::new();
    let result = conn.batch("BEGIN").and_then(|()| {
        for m in batch {
            match m {
                Msg::Write(r) => {
                    if let Err(e) = conn.savepoint(|c| write(c, r, me)) {
                        tracing::error!(path = %path.display(), record = ?r, error = %e, "protocol database: record not written");
                    }
                }
                Msg::WriteSync(records, reply) => {
                    // All of them or none.
                    let outcome = conn.savepoint(|c| records.iter().try_for_each(|r| write(c, r, me)));
                    replies.push((reply.clone(), outcome.map_err(|e| e.to_string())));
                }
                Msg::Flush(_) => {}
            }
        }
        conn.batch("COMMIT")
    });
    if result.is_err() {
        let _ = conn.batch("ROLLBACK");
    }
    (result, replies)
}

pub(super) fn writer_loop(
    mut conn: Conn,
    rx: mpsc::Receiver<Msg>,
    path: PathBuf,
    location: super::Location,
    me: String,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let (mut result, mut replies) = run_batch(&conn, &batch, &path, &me);
        if result.is_err() && conn.is_broken() {
            // The server went away (restart, network): one new connection,
            // and the batch once more, so that no record is lost to it.
            match location.connect() {
                Ok(c) => {
                    tracing::warn!(path = %path.display(), "protocol database: reconnected after the connection broke");
                    conn = c;
                    (result, replies) = run_batch(&conn, &batch, &path, &me);
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "protocol database: cannot reconnect")
                }
            }
        }
        match &result {
            Ok(()) => {
                for (reply, outcome) in replies {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, records = batch.len(), "protocol database: batch not committed; check disk space and the database");
                // Nothing of the batch is committed: every synchronous writer hears so.
                for m in &batch {
                    if let Msg::WriteSync(_, reply) = m {
                        let _ = reply.send(Err(format!("commit failed: {e}")));
                    }
                }
            }
        }
        for m in &batch {
            if let Msg::Flush(done) = m {
                let _ = done.send(());
            }
        }
    }
}
