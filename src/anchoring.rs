//! External anchoring of the chain heads: at an interval and at shutdown the
//! head of each profile's chain is time-stamped by an RFC 3161 time-stamping
//! authority; the reply is kept in the database and put as
//! `chain-<profile>-<seq>.tsr` beside the head set on every target of the
//! profile, so that `verify --chain --tsa-ca` finds sets cut off the end.
//! Without a TSA, each chain head's hash can be mailed daily (and at
//! shutdown) to an auditor, who then holds a record outside the instance.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::db::{Conn, Db, Record, SqlError};
use crate::seal::timestamp;
use crate::storage::{open_target, Secrets, UploadSet};

/// Where and how often to anchor.
#[derive(Debug, Clone)]
pub struct AnchorConfig {
    /// The TSA's URL (HTTP POST of `application/timestamp-query`).
    pub tsa_url: String,
    /// Time between two rounds.
    pub interval: Duration,
}

/// One time stamp of a chain head, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorRow {
    /// The profile whose chain it is.
    pub profile: String,
    /// The head's number in the chain.
    pub seq: u64,
    /// SHA-256 of the head set's checksum file (the imprint).
    pub sha256: String,
    /// When it was obtained (ms since epoch).
    pub at_ms: i64,
    /// The TSA's reply (DER `TimeStampResp`), as in the `.tsr` file.
    pub reply: Vec<u8>,
}

/// Inserts an anchor row; called by the database's writer thread.
pub(crate) fn insert(conn: &Conn, a: &AnchorRow) -> Result<(), SqlError> {
    conn.execute(
        "INSERT INTO anchors (profile, seq, sha256, at_ms, reply) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (sha256) DO UPDATE SET at_ms = excluded.at_ms, reply = excluded.reply",
        &[&a.profile, &(a.seq as i64), &a.sha256, &a.at_ms, &a.reply],
    )?;
    Ok(())
}

/// Whether the chain head whose checksum file hashes to `sha256` has a time
/// stamp. Asked by the head's hash, not by profile and number: instances that
/// share one database each keep a chain per profile, and their heads share
/// numbers.
pub(crate) fn is_stamped(conn: &Conn, sha256: &str) -> Result<bool, SqlError> {
    let n: i64 = conn
        .query_one("SELECT COUNT(*) FROM anchors WHERE sha256 = ?1", &[&sha256])?
        .get(0)?;
    Ok(n > 0)
}

/// The file name of the time stamp of number `seq` of `profile`'s chain.
pub fn tsr_name(profile: &str, seq: u64) -> String {
    let safe: String = profile
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("chain-{safe}-{seq}.tsr")
}

/// Asks the TSA for a time stamp of `imprint`; returns its reply (checked for
/// a granted status and a token).
pub async fn stamp(
    client: &reqwest::Client,
    tsa_url: &str,
    imprint: &[u8; 32],
) -> Result<Vec<u8>, timestamp::TimestampError> {
    let bad = |e: String| timestamp::TimestampError(e);
    let query = timestamp::request(imprint, rand::random())?;
    let reply = client
        .post(tsa_url)
        .header("content-type", "application/timestamp-query")
        .body(query)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| bad(format!("{tsa_url}: {e}")))?;
    if !reply.status().is_success() {
        return Err(bad(format!("{tsa_url} answered {}", reply.status())));
    }
    let body = reply
        .bytes()
        .await
        .map_err(|e| bad(format!("{tsa_url}: {e}")))?
        .to_vec();
    timestamp::token_of(&body)?;
    Ok(body)
}

/// One round: every chain head of `data_dir` not stamped yet is stamped, the
/// reply stored and put on each of the profile's targets (`targets_of`; a
/// profile not listed goes to `fallback`). Returns the files put, as
/// "target: name" lines; failures are logged and kept as errors.
pub async fn anchor_heads(
    db: &Db,
    data_dir: &Path,
    config: &AnchorConfig,
    targets_of: &HashMap<String, Vec<String>>,
    fallback: &[String],
    secrets: &Secrets,
) -> Vec<String> {
    let client = reqwest::Client::new();
    let heads = match crate::seal::chain_heads(data_dir) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "anchoring: cannot read the chain heads");
            return vec![];
        }
    };
    let mut done = Vec::new();
    for (profile, head) in heads {
        let Some(seq) = head.link.seq else { continue };
        // Read on a blocking thread: the database may be a remote server.
        let stamped = {
            let (db, sha256) = (db.clone(), head.link.sha256.clone());
            tokio::task::spawn_blocking(move || db.read(|c| is_stamped(c, &sha256)))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(false)
        };
        if stamped {
            continue;
        }
        let mut imprint = [0u8; 32];
        if hex::decode_to_slice(&head.link.sha256, &mut imprint).is_err() {
            continue;
        }
        let reply = match stamp(&client, &config.tsa_url, &imprint).await {
            Ok(r) => r,
            Err(e) => {
                report(
                    db,
                    format!(
                        "anchoring chain {profile} at number {seq}: {e}; tried again next round"
                    ),
                );
                continue;
            }
        };
        let name = tsr_name(&profile, seq);
        let local: PathBuf = data_dir.join("anchors").join(&name);
        let written = std::fs::create_dir_all(data_dir.join("anchors"))
            .and_then(|()| std::fs::write(&local, &reply));
        if let Err(e) = written {
            report(
                db,
                format!("anchoring: cannot write {}: {e}", local.display()),
            );
            continue;
        }
        // The token is kept even when a target cannot take it now.
        let _ = db.write_sync(vec![Record::Anchor(AnchorRow {
            profile: profile.clone(),
            seq,
            sha256: head.link.sha256.clone(),
            at_ms: crate::db::now_ms(),
            reply,
        })]);
        let urls = targets_of
            .get(&profile)
            .filter(|t| !t.is_empty())
            .map_or(fallback, |t| t.as_slice());
        for url in urls {
            // Beside the head set: the same folder its base name's date gives.
            let set = UploadSet::new(&head.base_name, vec![local.clone()]);
            let result = match open_target(url, secrets) {
                Ok(t) => t.put(&set).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => done.push(format!("{url}: {name}")),
                Err(e) => report(db, format!("anchoring: cannot put {name} on {url}: {e}")),
            }
        }
        tracing::info!(profile = %profile, seq, file = %name, "chain head time-stamped");
    }
    done
}

fn report(db: &Db, message: String) {
    tracing::warn!("{message}");
    db.send(Record::Error {
        at_ms: crate::db::now_ms(),
        component: "anchoring".into(),
        message,
    });
}

/// Anchors every `config.interval` for as long as the task runs.
pub async fn anchor_loop(
    db: Db,
    data_dir: PathBuf,
    config: AnchorConfig,
    targets_of: HashMap<String, Vec<String>>,
    fallback: Vec<String>,
    secrets: Secrets,
) {
    let mut tick = tokio::time::interval(config.interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        anchor_heads(&db, &data_dir, &config, &targets_of, &fallback, &secrets).await;
    }
}

/// The text of the chain-head mail: one line per chain, or `None` when nothing is sealed yet.
pub fn heads_text(data_dir: &Path, instance_id: &str) -> Option<String> {
    let heads = crate::seal::chain_heads(data_dir).ok()?;
    if heads.is_empty() {
        return None;
    }
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut text = format!(
        "Chain heads of callrec instance {instance_id} at {now}.\n\
         Keep this mail: a chain found later with a lower last number, or another\n\
         hash at this number, lost sets at its end (see docs/sealed-set.md).\n\n"
    );
    for (profile, h) in heads {
        if let Some(seq) = h.link.seq {
            text.push_str(&format!(
                "chain {instance_id}/{profile}: number {seq}, set id {}, SHA-256 of its checksum file {}\n",
                h.link.id, h.link.sha256
            ));
        }
    }
    Some(text)
}

/// Mails the chain heads to the auditor addresses of `notifier`; errors are logged.
pub async fn mail_heads(notifier: &crate::notify::Notifier, data_dir: &Path, instance_id: &str) {
    let Some(body) = heads_text(data_dir, instance_id) else {
        return;
    };
    let subject = format!("callrec {instance_id}: chain heads");
    if let Err(e) = notifier.send(&subject, &body).await {
        tracing::warn!(error = %e, "anchoring: the chain-head mail was not sent; tried again tomorrow");
    }
}

/// Mails the chain heads daily for as long as the task runs.
pub async fn mail_loop(notifier: crate::notify::Notifier, data_dir: PathBuf, instance_id: String) {
    let mut tick = tokio::time::interval(Duration::from_secs(24 * 3600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        mail_heads(&notifier, &data_dir, &instance_id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::scratch::{ScratchDb, ENGINES};

    fn row(profile: &str, seq: u64, sha256: &str) -> AnchorRow {
        AnchorRow {
            profile: profile.into(),
            seq,
            sha256: sha256.into(),
            at_ms: 1,
            reply: vec![1, 2, 3],
        }
    }

    #[test]
    fn a_second_instances_head_at_the_same_number_is_still_stamped() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let s = ScratchDb::new(engine, dir.path());
            let db = s.open();
            // Instance A's chain "banking" is stamped at number 5.
            db.write_sync(vec![Record::Anchor(row("banking", 5, "aa"))])
                .unwrap();
            // Instance B's chain of the same profile reaches number 5 too: its
            // head is another set and must get its own stamp.
            assert!(db.read(|c| is_stamped(c, "aa")).unwrap());
            assert!(!db.read(|c| is_stamped(c, "bb")).unwrap(), "{engine:?}");
            db.write_sync(vec![Record::Anchor(row("banking", 5, "bb"))])
                .unwrap();
            assert!(db.read(|c| is_stamped(c, "bb")).unwrap());
            assert_eq!(
                db.count("anchors").unwrap(),
                2,
                "{engine:?}: both stamps kept"
            );
        }
    }
}
