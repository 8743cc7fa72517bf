//! The personal phone links' tokens: one random token (256 bits from the
//! operating system's CSPRNG) per directory member, in the protocol
//! database's `phone_keys` table. A token is created when it is first needed
//! and kept, because once it is on a phone's key it must not change; only an
//! admin's rotation replaces it. Lookups go by the token's SHA-256, so the
//! index search reveals nothing about the token through its timing.

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::db::{now_ms, Conn, Db, DbError, Record, SqlError};
use crate::policy::UserId;

/// What went wrong reading or writing the tokens.
#[derive(Debug, thiserror::Error)]
pub enum PhoneKeyError {
    /// Reading, or writing through the database's writer thread, failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A new token: 32 random bytes, hex.
fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// How a token appears in logs: a short digest that lets lines be matched up
/// but gives nothing away (the token itself is a credential).
pub fn log_name(token: &str) -> String {
    format!("key#{}", &digest(token)[..8])
}

/// `text` with every token that follows `/phone/` replaced by its log name:
/// for messages that may carry a link (e.g. a PBX's error answer echoing a key).
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("/phone/") {
        let (head, tail) = rest.split_at(at + "/phone/".len());
        out.push_str(head);
        let end = tail
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(tail.len());
        if end > 0 {
            out.push_str(&log_name(&tail[..end]));
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// A change to the `phone_keys` table, written by the database's writer
/// thread (the one writer of the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhoneKeyChange {
    /// A member's first token; an existing one stays (another request may
    /// have created it meanwhile).
    Create {
        user: UserId,
        token: String,
        at_ms: i64,
    },
    /// A member's token is replaced; the old link stops working with the commit.
    Rotate {
        user: UserId,
        token: String,
        at_ms: i64,
    },
    /// The member's link is on her phones under this login (`None`: taken off).
    Provisioned { user: UserId, login: Option<String> },
}

/// Applies a change; called by the database's writer thread.
pub(crate) fn apply(conn: &Conn, c: &PhoneKeyChange) -> Result<(), SqlError> {
    match c {
        PhoneKeyChange::Create { user, token, at_ms } => conn.execute(
            "INSERT INTO phone_keys (user_id, token, token_sha256, created_ms, rotated_ms) VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT DO NOTHING",
            &[&(*user as i64), token, &digest(token), at_ms],
        ),
        PhoneKeyChange::Rotate { user, token, at_ms } => conn.execute(
            "INSERT INTO phone_keys (user_id, token, token_sha256, created_ms, rotated_ms) VALUES (?1, ?2, ?3, ?4, ?4) \
             ON CONFLICT (user_id) DO UPDATE SET token = ?2, token_sha256 = ?3, rotated_ms = ?4",
            &[&(*user as i64), token, &digest(token), at_ms],
        ),
        PhoneKeyChange::Provisioned { user, login } => conn.execute(
            "UPDATE phone_keys SET provisioned_login = ?2 WHERE user_id = ?1",
            &[&(*user as i64), login],
        ),
    }?;
    Ok(())
}

fn write(db: &Db, changes: Vec<PhoneKeyChange>) -> Result<(), PhoneKeyError> {
    Ok(db.write_sync(changes.into_iter().map(Record::PhoneKey).collect())?)
}

/// The tokens of `users`, creating those that do not exist yet.
pub fn ensure(db: &Db, users: &[UserId]) -> Result<Vec<(UserId, String)>, PhoneKeyError> {
    let mut have = all(db)?;
    let missing: Vec<UserId> = users
        .iter()
        .copied()
        .filter(|u| !have.iter().any(|(h, _)| h == u))
        .collect();
    if !missing.is_empty() {
        let at_ms = now_ms();
        write(
            db,
            missing
                .iter()
                .map(|&user| PhoneKeyChange::Create {
                    user,
                    token: new_token(),
                    at_ms,
                })
                .collect(),
        )?;
        tracing::info!(members = missing.len(), "phone key links created");
        have = all(db)?;
    }
    Ok(have
        .into_iter()
        .filter(|(u, _)| users.contains(u))
        .collect())
}

/// Every stored (member, token), by member.
fn all(db: &Db) -> Result<Vec<(UserId, String)>, PhoneKeyError> {
    Ok(db.read(|c| {
        c.query(
            "SELECT user_id, token FROM phone_keys ORDER BY user_id",
            &[],
        )?
        .iter()
        .map(|r| Ok((r.get::<i64>(0)? as UserId, r.get(1)?)))
        .collect()
    })?)
}

/// The member whose token `token` is, if any.
pub fn member_of(db: &Db, token: &str) -> Result<Option<UserId>, PhoneKeyError> {
    let d = digest(token);
    Ok(db
        .read(|c| {
            c.query_opt(
                "SELECT user_id FROM phone_keys WHERE token_sha256 = ?1",
                &[&d],
            )?
            .map(|r| r.get::<i64>(0))
            .transpose()
        })?
        .map(|u| u as UserId))
}

/// Replaces the member's token: the old link stops working with the commit.
pub fn rotate(db: &Db, user: UserId) -> Result<String, PhoneKeyError> {
    let token = new_token();
    write(
        db,
        vec![PhoneKeyChange::Rotate {
            user,
            token: token.clone(),
            at_ms: now_ms(),
        }],
    )?;
    Ok(token)
}

/// Members whose link callrec put on their phones, with the login it used.
pub fn provisioned(db: &Db) -> Result<Vec<(UserId, String)>, PhoneKeyError> {
    Ok(db.read(|c| {
        c.query(
            "SELECT user_id, provisioned_login FROM phone_keys WHERE provisioned_login IS NOT NULL ORDER BY user_id",
            &[],
        )?
        .iter()
        .map(|r| Ok((r.get::<i64>(0)? as UserId, r.get(1)?)))
        .collect()
    })?)
}

/// Records that the member's link is, or is about to be, on her phones under
/// `login` (`None`: taken off), so that it is removed when she leaves.
pub fn set_provisioned(db: &Db, user: UserId, login: Option<&str>) -> Result<(), PhoneKeyError> {
    write(
        db,
        vec![PhoneKeyChange::Provisioned {
            user,
            login: login.map(str::to_string),
        }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_created_once_found_by_value_and_rotated() {
        for engine in crate::db::scratch::ENGINES {
            let dir = tempfile::tempdir().unwrap();
            tokens_on(&crate::db::scratch::ScratchDb::new(engine, dir.path()).open());
        }
    }

    /// Two instances sharing one database: both creating a member's link at
    /// once end up with the same token, a link made through one is found
    /// through the other, and a rotation through one ends it on both.
    #[test]
    fn two_instances_sharing_a_database_agree_on_the_links() {
        for engine in crate::db::scratch::ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let scratch = crate::db::scratch::ScratchDb::new(engine, dir.path());
            let (a, b) = (scratch.open(), scratch.open());
            let (ta, tb) = std::thread::scope(|s| {
                let ha = s.spawn(|| ensure(&a, &[1, 2]).unwrap());
                let hb = s.spawn(|| ensure(&b, &[1, 2]).unwrap());
                (ha.join().unwrap(), hb.join().unwrap())
            });
            assert_eq!(ta, tb, "{engine:?}: both instances hand out the same links");
            assert_eq!(member_of(&b, &ta[0].1).unwrap(), Some(1), "{engine:?}");
            let new = rotate(&a, 1).unwrap();
            assert_eq!(member_of(&b, &ta[0].1).unwrap(), None, "{engine:?}");
            assert_eq!(member_of(&b, &new).unwrap(), Some(1), "{engine:?}");
        }
    }

    fn tokens_on(db: &Db) {
        let db = db.clone();
        let first = ensure(&db, &[1, 2]).unwrap();
        assert_eq!(first.len(), 2);
        assert_ne!(first[0].1, first[1].1);
        assert_eq!(first[0].1.len(), 64);
        assert_eq!(ensure(&db, &[1, 2, 3]).unwrap()[..2], first[..]);
        assert_eq!(member_of(&db, &first[1].1).unwrap(), Some(2));
        assert_eq!(member_of(&db, "nope").unwrap(), None);
        let new = rotate(&db, 2).unwrap();
        assert_eq!(member_of(&db, &first[1].1).unwrap(), None);
        assert_eq!(member_of(&db, &new).unwrap(), Some(2));
        assert!(!log_name(&new).contains(&new[..8]));
        let msg =
            format!("PBX said 400: {{\"genericURL\":\"http://h:1/phone/{new}/recording/toggle\"}}");
        let red = redact(&msg);
        assert!(!red.contains(&new[..8]), "{red}");
        assert!(
            red.contains(&format!("/phone/{}/recording/toggle", log_name(&new))),
            "{red}"
        );
        assert_eq!(redact("no link /phone/"), "no link /phone/");
    }
}
