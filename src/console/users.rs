//! Console users and their roles, kept in the protocol database's
//! `console_users` table with argon2 password hashes. Written by the
//! `callrec users` command (its own connection: the running proxy only reads
//! this table), read by the console at every login and request.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

use crate::db::{now_ms, Conn, Db, DbError, Location, SqlError};

/// Fewest characters a console password may have.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// What a user may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Search and listen.
    Viewer,
    /// Also export and read the access log.
    Auditor,
    /// Also the operations view (uploads, failures, groups, certificate).
    Admin,
}

impl Role {
    /// The role's name as stored and typed.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = UserError;
    fn from_str(s: &str) -> Result<Role, UserError> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "auditor" => Ok(Role::Auditor),
            "admin" => Ok(Role::Admin),
            other => Err(UserError::Role(other.to_string())),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong managing users.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// Unknown role name.
    #[error("unknown role {0:?}; use viewer, auditor or admin")]
    Role(String),
    /// The password is too short.
    #[error("the password has {0} characters; at least {MIN_PASSWORD_CHARS} are needed")]
    Short(usize),
    /// The user name is not usable.
    #[error("user name {0:?}: use 1 to 64 letters, digits, '.', '-', '_' or '@'")]
    Name(String),
    /// `add` for a user that exists.
    #[error("user {0:?} exists; use `callrec users passwd` to change the password, or remove the user first")]
    Exists(String),
    /// `passwd`/`remove` for a user that does not exist.
    #[error("no console user {0:?}")]
    Missing(String),
    /// Hashing failed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
    /// Reading the password failed.
    #[error("cannot read the password: {0}")]
    Read(#[from] std::io::Error),
    /// The database could not be opened or read.
    #[error("{0}")]
    Db(#[from] DbError),
    /// A write failed.
    #[error("protocol database {path}: {source}")]
    Sql {
        /// The database file (or URL without password).
        path: String,
        /// The engine's error.
        source: SqlError,
    },
}

/// A stored user.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Argon2 PHC string.
    pub hash: String,
}

/// Whether `name` can be a user name: 1 to 64 letters, digits, `.`, `-`, `_` or `@`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'))
}

fn check_name(name: &str) -> Result<(), UserError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(UserError::Name(name.to_string()))
    }
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, UserError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_CHARS {
        return Err(UserError::Short(n));
    }
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

/// Whether `password` matches the stored `hash`.
pub fn password_matches(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// The password typed at a terminal (not echoed) or, for scripts, the first
/// line of standard input without its line ending.
pub fn read_password(prompt: &str) -> Result<String, UserError> {
    use std::io::{BufRead, IsTerminal};
    if std::io::stdin().is_terminal() {
        return Ok(rpassword::prompt_password(prompt)?);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Ok(line)
}

/// A write connection to the database at `db` (migrated by opening it as
/// [`Db`] first; SQLite's waits up to 10 s for the running proxy's writes).
fn open_for_write(db: &Location) -> Result<Conn, UserError> {
    drop(Db::open_at(db)?);
    db.connect().map_err(sql(db))
}

fn sql(db: &Location) -> impl FnOnce(SqlError) -> UserError + '_ {
    move |source| UserError::Sql {
        path: db.shown(),
        source,
    }
}

/// Adds a user; an existing one is left as it is.
pub fn add(db_path: &Location, name: &str, role: Role, password: &str) -> Result<(), UserError> {
    check_name(name)?;
    let hash = hash_password(password)?;
    let conn = open_for_write(db_path)?;
    let n = conn
        .execute(
            "INSERT INTO console_users (name, role, hash, created_ms, changed_ms) VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT DO NOTHING",
            &[&name, &role.as_str(), &hash, &now_ms()],
        )
        .map_err(sql(db_path))?;
    if n == 0 {
        return Err(UserError::Exists(name.to_string()));
    }
    Ok(())
}

/// Sets a new password; the user's sessions end at their next request.
pub fn passwd(db_path: &Location, name: &str, password: &str) -> Result<(), UserError> {
    let hash = hash_password(password)?;
    let conn = open_for_write(db_path)?;
    let n = conn
        .execute(
            "UPDATE console_users SET hash = ?2, changed_ms = ?3 WHERE name = ?1",
            &[&name, &hash, &now_ms()],
        )
        .map_err(sql(db_path))?;
    if n == 0 {
        return Err(UserError::Missing(name.to_string()));
    }
    Ok(())
}

/// Removes a user; her sessions end at their next request.
pub fn remove(db_path: &Location, name: &str) -> Result<(), UserError> {
    let conn = open_for_write(db_path)?;
    let n = conn
        .execute("DELETE FROM console_users WHERE name = ?1", &[&name])
        .map_err(sql(db_path))?;
    if n == 0 {
        return Err(UserError::Missing(name.to_string()));
    }
    Ok(())
}

/// Every user as (name, role), by name.
pub fn list(db: &Db) -> Result<Vec<(String, String)>, UserError> {
    Ok(db.read(|c| {
        c.query("SELECT name, role FROM console_users ORDER BY name", &[])?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect()
    })?)
}

/// One user, if she exists.
pub fn find(db: &Db, name: &str) -> Result<Option<User>, UserError> {
    let row: Option<(String, String, String)> = db.read(|c| {
        c.query_opt(
            "SELECT name, role, hash FROM console_users WHERE name = ?1",
            &[&name],
        )?
        .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .transpose()
    })?;
    Ok(row.and_then(|(name, role, hash)| {
        Some(User {
            role: role.parse().ok()?,
            name,
            hash,
        })
    }))
}

/// Whether any user exists: the console is off until one does.
pub fn any(db: &Db) -> Result<bool, UserError> {
    Ok(db.read(|c| {
        c.query_one("SELECT EXISTS (SELECT 1 FROM console_users)", &[])?
            .get(0)
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_short_passwords_are_refused() {
        let h = hash_password("twelve chars").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(password_matches("twelve chars", &h));
        assert!(!password_matches("twelve charS", &h));
        assert!(matches!(
            hash_password("eleven char"),
            Err(UserError::Short(11))
        ));
    }

    #[test]
    fn users_are_added_changed_and_removed() {
        for engine in crate::db::scratch::ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let scratch = crate::db::scratch::ScratchDb::new(engine, dir.path());
            users_on(&scratch.location);
        }
    }

    fn users_on(path: &Location) {
        add(path, "ann", Role::Auditor, "first password").unwrap();
        assert!(matches!(
            add(path, "ann", Role::Admin, "second password"),
            Err(UserError::Exists(_))
        ));
        assert!(matches!(
            add(path, "../x", Role::Admin, "second password"),
            Err(UserError::Name(_))
        ));
        let db = Db::open_at(path).unwrap();
        let u = find(&db, "ann").unwrap().unwrap();
        assert_eq!(u.role, Role::Auditor);
        assert!(password_matches("first password", &u.hash));
        passwd(path, "ann", "second password").unwrap();
        let u = find(&db, "ann").unwrap().unwrap();
        assert!(password_matches("second password", &u.hash));
        remove(path, "ann").unwrap();
        assert!(find(&db, "ann").unwrap().is_none());
        assert!(!any(&db).unwrap());
        assert!(matches!(remove(path, "ann"), Err(UserError::Missing(_))));
    }
}
