//! A protocol database shared by several instances in a test: a PostgreSQL
//! database, or the SQLite file in the first instance's data directory,
//! linked into the others' data directories.

use std::path::Path;

use callrec::db::scratch::ScratchDb;
use callrec::db::Engine;

use super::{callrec_cli, Proxy};

/// The database the instances share: a PostgreSQL database, or the SQLite
/// file in the first instance's data directory.
pub struct Shared {
    pub db: ScratchDb,
    engine: Engine,
}

impl Shared {
    pub fn new(engine: Engine, first_data: &Path) -> Shared {
        Shared {
            db: ScratchDb::new(engine, first_data),
            engine,
        }
    }

    /// With SQLite, links the first instance's database file into `data`
    /// (a second instance's data directory); nothing to do for PostgreSQL.
    pub fn link(&self, data: &Path) {
        if let (Engine::Sqlite, Some(file)) = (self.engine, self.db.location.sqlite_path()) {
            if !file.starts_with(data) && !data.join("callrec.sqlite").exists() {
                std::fs::create_dir_all(data).unwrap();
                std::os::unix::fs::symlink(file, data.join("callrec.sqlite")).unwrap();
            }
        }
    }

    /// Starts instance `name` on `data` with `config` on the shared database.
    pub fn start(&self, name: &str, data: &Path, config: &Path) -> Proxy {
        self.link(data);
        let mut b = Proxy::builder()
            .data_dir(data)
            .arg("--config")
            .arg(config.to_str().unwrap())
            .env("CALLREC_INSTANCE_NAME", name);
        for f in self.db.flags() {
            b = b.arg(&f);
        }
        b.start()
    }

    /// `callrec ARGS` with the flags naming the shared database.
    pub fn cli(&self, args: &[&str]) -> (i32, String) {
        let flags = self.db.flags();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(flags.iter().map(String::as_str));
        callrec_cli(&all)
    }

    /// Rows of `sql` (every column TEXT or NULL, shown as "NULL").
    pub fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        let conn = self.db.location.connect().unwrap();
        conn.query(sql, &[])
            .unwrap()
            .iter()
            .map(|r| {
                (0..r.0.len())
                    .map(|i| {
                        r.get::<Option<String>>(i)
                            .unwrap()
                            .unwrap_or_else(|| "NULL".into())
                    })
                    .collect()
            })
            .collect()
    }
}
