//! The writer thread: takes [`Record`]s from a channel and inserts them in
//! batches, one transaction per batch; synchronous groups get a savepoint each
//! and hear whether they were committed.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::{params, Connection};

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

fn write(tx: &Connection, r: &Record) -> rusqlite::Result<()> {
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
                params![call_id, at_ms, event, direction, caller, callee, detail],
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
                params![call_id, base_name, reason, detail, at_ms],
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
                params![call_id, at_ms, recorded, profile, reason],
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
                "INSERT INTO recordings (call_id, base_name, profile, start_ms, end_ms, caller, callee, answered_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![call_id, base_name, profile, start_ms, end_ms, caller, callee, answered_by],
            )?;
        }
        Record::RecordingRecovered { base_name } => {
            tx.execute(
                "UPDATE recordings SET recovered = 1 WHERE base_name = ?1",
                params![base_name],
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
                "INSERT OR REPLACE INTO seals (base_name, at_ms, checksum_sha256, files, chain) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![base_name, at_ms, checksum_sha256, files, chain],
            )?;
        }
        Record::UploadQueued {
            base_name,
            target,
            at_ms,
        } => {
            // Queuing again (e.g. a set re-created under the same name) makes it pending again.
            tx.execute(
                "INSERT INTO uploads (base_name, target, queued_ms, state) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT(base_name, target) DO UPDATE SET state = ?4, next_ms = NULL, done_ms = NULL WHERE state != ?4",
                params![base_name, target, at_ms, UploadState::Pending],
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
                params![base_name, target, started_ms, ended_ms, error.is_none(), files, *bytes as i64, error],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO uploads (base_name, target, queued_ms, state) VALUES (?1, ?2, ?3, ?4)",
                params![base_name, target, started_ms, UploadState::Pending],
            )?;
            let state = if error.is_none() {
                UploadState::Done
            } else {
                UploadState::Pending
            };
            let done_ms = error.is_none().then_some(*ended_ms);
            tx.execute(
                "UPDATE uploads SET attempts = attempts + 1, state = ?3, last_error = ?4, done_ms = ?5, next_ms = ?6 WHERE base_name = ?1 AND target = ?2",
                params![base_name, target, state, error, done_ms, next_ms],
            )?;
        }
        Record::UploadLost {
            base_name,
            target,
            reason,
        } => {
            tx.execute(
                "UPDATE uploads SET state = ?4, last_error = ?3, next_ms = NULL WHERE base_name = ?1 AND target = ?2 AND state = ?5",
                params![base_name, target, reason, UploadState::Lost, UploadState::Pending],
            )?;
        }
        Record::Error {
            at_ms,
            component,
            message,
        } => {
            tx.execute(
                "INSERT INTO errors (at_ms, component, message) VALUES (?1, ?2, ?3)",
                params![at_ms, component, message],
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
                params![base_name, target, at_ms, reason, checksum_sha256],
            )?;
            // The target no longer holds the set.
            tx.execute(
                "UPDATE uploads SET state = ?3, next_ms = NULL WHERE base_name = ?1 AND target = ?2 AND state = ?4",
                params![base_name, target, UploadState::Deleted, UploadState::Done],
            )?;
        }
        Record::Access(entry) => crate::access_log::insert(tx, entry)?,
        Record::Anchor(row) => crate::anchoring::insert(tx, row)?,
        Record::Hold(change) => crate::hold::apply(tx, change)?,
        Record::PhoneKey(change) => crate::phone::keys::apply(tx, change)?,
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

pub(super) fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Msg>, path: PathBuf) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut flushes = Vec::new();
        // Replies to synchronous writes, sent once the batch's fate is known.
        let mut replies: Vec<(SyncReply, Result<(), String>)> = Vec::new();
        let result = (|| -> rusqlite::Result<()> {
            let mut tx = conn.transaction()?;
            for m in &batch {
                match m {
                    Msg::Write(r) => {
                        if let Err(e) = write(&tx, r) {
                            tracing::error!(path = %path.display(), record = ?r, error = %e, "protocol database: record not written");
                        }
                    }
                    Msg::WriteSync(records, reply) => {
                        // All of them or none: a savepoint per synchronous group.
                        let outcome = (|| -> rusqlite::Result<()> {
                            let sp = tx.savepoint()?;
                            for r in records {
                                write(&sp, r)?;
                            }
                            sp.commit()
                        })();
                        replies.push((reply.clone(), outcome.map_err(|e| e.to_string())));
                    }
                    Msg::Flush(done) => flushes.push(done.clone()),
                }
            }
            tx.commit()
        })();
        if let Err(e) = &result {
            tracing::error!(path = %path.display(), error = %e, records = batch.len(), "protocol database: batch not committed; check disk space and the file");
        }
        match &result {
            Ok(()) => {
                for (reply, outcome) in replies {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                // Nothing of the batch is committed: every synchronous writer hears so.
                for m in &batch {
                    if let Msg::WriteSync(_, reply) = m {
                        let _ = reply.send(Err(format!("commit failed: {e}")));
                    }
                }
            }
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}
