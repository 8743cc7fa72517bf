//! Where the protocol database lives: the SQLite file in the data directory
//! (the default, one box) or a PostgreSQL server named by a
//! `postgres://user@host:port/db` URL (several instances sharing one truth).
//! The PostgreSQL password never travels in the URL, so it shows neither in
//! `ps` nor in a log line: it comes from a file or the environment.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::sql::{off_runtime, Conn, Engine, SqlError};
use super::{DbError, DB_FILE_NAME};

/// Where the protocol database is.
#[derive(Clone)]
pub enum Location {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(Box<PgTarget>),
}

/// A PostgreSQL database and how to log in (the password stays inside).
#[derive(Clone)]
pub struct PgTarget {
    config: postgres::Config,
    shown: String,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password: only the shown form.
        write!(f, "Location({})", self.shown())
    }
}

impl Location {
    /// The database the flags name: `database` (a `postgres://` URL) if given,
    /// else the SQLite file in `data_dir`. `password` is PostgreSQL's.
    pub fn from_flags(
        database: Option<&str>,
        data_dir: &Path,
        password: Option<String>,
    ) -> Result<Location, DbError> {
        match database.map(str::trim).filter(|d| !d.is_empty()) {
            None => Ok(Location::Sqlite(data_dir.join(DB_FILE_NAME))),
            Some(url) => Location::postgres(url, password),
        }
    }

    /// A PostgreSQL URL (`postgres://user@host:port/db`); a password inside
    /// it is refused, since a URL ends up in process lists and logs.
    pub fn postgres(url: &str, password: Option<String>) -> Result<Location, DbError> {
        let bad = |detail: String| DbError::Location { detail };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad(format!(
                "--database {url:?}: give a postgres://user@host:port/database URL (without it, the SQLite file in the data directory is used)"
            )));
        }
        let mut config = postgres::Config::from_str(url)
            .map_err(|e| bad(format!("--database: cannot read the URL: {e}")))?;
        if config.get_password().is_some() {
            return Err(bad(
                "--database: the URL holds a password, which would show in process lists and logs; give it with --database-password-file or env CALLREC_DATABASE_PASSWORD".into(),
            ));
        }
        if let Some(pw) = password {
            config.password(pw);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        config.application_name("callrec");
        let shown = shown_url(&config);
        Ok(Location::Postgres(Box::new(PgTarget { config, shown })))
    }

    /// Which engine.
    pub fn engine(&self) -> Engine {
        match self {
            Location::Sqlite(_) => Engine::Sqlite,
            Location::Postgres(_) => Engine::Postgres,
        }
    }

    /// How it is named in messages: the file's path, or the URL without password.
    pub fn shown(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres(t) => t.shown.clone(),
        }
    }

    /// The SQLite file, when it is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Location::Sqlite(p) => Some(p),
            Location::Postgres(_) => None,
        }
    }

    /// A new connection (SQLite: read-write, WAL, waiting up to 10 s for the file's lock).
    pub fn connect(&self) -> Result<Conn, SqlError> {
        match self {
            Location::Sqlite(p) => Ok(Conn::sqlite(super::schema::open_sqlite(p)?)),
            Location::Postgres(t) => {
                let config = t.config.clone();
                let client = off_runtime(move || config.connect(tls_connector()))?;
                Ok(Conn::postgres(client))
            }
        }
    }

    /// This location with the database name replaced (PostgreSQL only; for
    /// creating and dropping databases, e.g. in tests and `db migrate`).
    pub fn with_dbname(&self, name: &str) -> Location {
        match self {
            Location::Sqlite(p) => Location::Sqlite(p.clone()),
            Location::Postgres(t) => {
                let mut config = t.config.clone();
                config.dbname(name);
                let shown = shown_url(&config);
                Location::Postgres(Box::new(PgTarget { config, shown }))
            }
        }
    }

    /// The database name (PostgreSQL), if any.
    pub fn dbname(&self) -> Option<&str> {
        match self {
            Location::Sqlite(_) => None,
            Location::Postgres(t) => t.config.get_dbname(),
        }
    }
}

/// TLS when the server offers it (`sslmode=prefer`, the default), required
/// with `?sslmode=require`; the server's certificate is checked against the
/// system's CAs.
fn tls_connector() -> postgres_openssl::MakeTlsConnector {
    let builder = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())
        .expect("OpenSSL cannot make a TLS client context");
    postgres_openssl::MakeTlsConnector::new(builder.build())
}

fn shown_url(c: &postgres::Config) -> String {
    let host = c
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        c.get_user().unwrap_or(""),
        c.get_dbname().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_a_password_are_refused_and_the_shown_form_has_none() {
        let err = Location::postgres("postgres://u:secret@127.0.0.1:5/db", None).unwrap_err();
        assert!(
            err.to_string().contains("--database-password-file"),
            "{err}"
        );
        assert!(!err.to_string().contains("secret"), "{err}");
        let l = Location::postgres("postgres://u@127.0.0.1:5/db", Some("pw1".into())).unwrap();
        assert_eq!(l.shown(), "postgres://u@127.0.0.1:5/db");
        assert!(!format!("{l:?}").contains("pw1"));
        assert!(Location::postgres("mysql://u@h/db", None).is_err());
        let s = Location::from_flags(None, Path::new("/d"), None).unwrap();
        assert_eq!(s.sqlite_path(), Some(Path::new("/d/callrec.sqlite")));
    }
}
