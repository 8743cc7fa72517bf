//! Throwaway databases for tests, on either engine: the SQLite file in a
//! data directory, or a fresh PostgreSQL database on the test cluster that
//! `deploy/test.sh` starts (named by env CALLREC_TEST_POSTGRES, a URL without
//! password, and CALLREC_TEST_POSTGRES_PASSWORD_FILE). Each one gets a
//! database of its own, so tests run in parallel; it is dropped with it.

use std::path::{Path, PathBuf};

use super::{Db, Engine, Location, DB_FILE_NAME};

/// One test's database; a PostgreSQL one is dropped on drop.
#[derive(Debug)]
pub struct ScratchDb {
    /// Where it is.
    pub location: Location,
    admin: Option<Location>,
    password_file: Option<PathBuf>,
}

/// Both engines, in the order tests run them.
pub const ENGINES: [Engine; 2] = [Engine::Sqlite, Engine::Postgres];

impl ScratchDb {
    /// A database of `engine`; SQLite's is the file in `data_dir`.
    pub fn new(engine: Engine, data_dir: &Path) -> ScratchDb {
        match engine {
            Engine::Sqlite => ScratchDb {
                location: Location::Sqlite(data_dir.join(DB_FILE_NAME)),
                admin: None,
                password_file: None,
            },
            Engine::Postgres => ScratchDb::postgres(),
        }
    }

    /// A fresh PostgreSQL database on the test cluster; panics, naming
    /// deploy/test.sh, when the cluster is not there.
    pub fn postgres() -> ScratchDb {
        let url = std::env::var("CALLREC_TEST_POSTGRES").unwrap_or_else(|_| {
            panic!("this test needs PostgreSQL: env CALLREC_TEST_POSTGRES is not set; run the tests through deploy/test.sh, which starts a PostgreSQL cluster on loopback for them")
        });
        let password_file = std::env::var_os("CALLREC_TEST_POSTGRES_PASSWORD_FILE")
            .map(PathBuf::from)
            .expect("CALLREC_TEST_POSTGRES_PASSWORD_FILE is not set (deploy/test.sh sets it)");
        let password = std::fs::read_to_string(&password_file)
            .expect("cannot read CALLREC_TEST_POSTGRES_PASSWORD_FILE")
            .trim_end()
            .to_string();
        let admin = Location::postgres(&url, Some(password)).expect("CALLREC_TEST_POSTGRES");
        let name = format!("callrec_test_{:016x}", rand::random::<u64>());
        let conn = admin
            .connect()
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", admin.shown()));
        conn.batch(&format!("CREATE DATABASE {name}"))
            .expect("create the test database");
        ScratchDb {
            location: admin.with_dbname(&name),
            admin: Some(admin),
            password_file: Some(password_file),
        }
    }

    /// Opens it as the proxy does.
    pub fn open(&self) -> Db {
        Db::open_at(&self.location).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The flags that name it on the command line (none for SQLite: the data directory's file).
    pub fn flags(&self) -> Vec<String> {
        match (&self.location, &self.password_file) {
            (Location::Postgres(_), Some(f)) => vec![
                "--database".into(),
                self.location.shown(),
                "--database-password-file".into(),
                f.display().to_string(),
            ],
            _ => vec![],
        }
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if let (Some(admin), Some(name)) = (&self.admin, self.location.dbname()) {
            if let Ok(conn) = admin.connect() {
                // FORCE: a test that failed may leave connections open.
                if let Err(e) = conn.batch(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                {
                    eprintln!("cannot drop test database {name}: {e}");
                }
            }
        }
    }
}
