//! Active group membership: which assigned members are logged out of a group
//! right now. The PBX's REST API knows only assignment; login/logout comes
//! through callrec's admin API, the console and the phone keys, and is kept in
//! the protocol database's `logged_out_members` table, so that every instance
//! sharing that database decides the same way. A change is committed by the
//! database's one writer before the caller answers; decisions read an in-memory
//! snapshot that a background task refreshes from the database every refresh
//! interval (changes made through another instance arrive with it).
//! An old `membership.json` in the data dir is imported once and renamed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::account::{GroupId, UserId};
use super::error::MembershipError;
use crate::db::{now_ms, Conn, Db, Record, SqlError};

/// File name of the state kept in the data dir before it moved into the database.
pub const MEMBERSHIP_FILE: &str = "membership.json";

/// What an imported `membership.json` is renamed to.
pub const IMPORTED_SUFFIX: &str = ".imported";

/// A snapshot of the (group, user) pairs that are logged out; everyone else assigned is active.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedOut {
    logged_out: BTreeSet<(GroupId, UserId)>,
}

impl LoggedOut {
    /// Nobody logged out.
    pub fn new() -> LoggedOut {
        LoggedOut::default()
    }

    /// True when `user` is logged out of `group`.
    pub fn is_logged_out(&self, group: GroupId, user: UserId) -> bool {
        self.logged_out.contains(&(group, user))
    }

    /// Mark `user` logged out of `group`; true if that changed anything.
    pub fn logout(&mut self, group: GroupId, user: UserId) -> bool {
        self.logged_out.insert((group, user))
    }

    /// Mark `user` logged in to `group` again; true if that changed anything.
    pub fn login(&mut self, group: GroupId, user: UserId) -> bool {
        self.logged_out.remove(&(group, user))
    }

    /// The logged-out pairs, sorted.
    pub fn pairs(&self) -> impl Iterator<Item = (GroupId, UserId)> + '_ {
        self.logged_out.iter().copied()
    }
}

/// A change to the `logged_out_members` table, applied by the database's writer thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// The member is logged out of the group (already logged out: unchanged).
    Logout {
        group: GroupId,
        user: UserId,
        at_ms: i64,
    },
    /// The member is logged in again.
    Login { group: GroupId, user: UserId },
}

/// Applies a change; called by the database's writer thread. Each change is
/// one row insert or delete, so instances writing at once lose nothing.
pub(crate) fn apply(conn: &Conn, c: &MembershipChange) -> Result<(), SqlError> {
    match c {
        MembershipChange::Logout { group, user, at_ms } => conn.execute(
            "INSERT INTO logged_out_members (group_id, user_id, at_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT (group_id, user_id) DO NOTHING",
            &[&(*group as i64), &(*user as i64), at_ms],
        ),
        MembershipChange::Login { group, user } => conn.execute(
            "DELETE FROM logged_out_members WHERE group_id = ?1 AND user_id = ?2",
            &[&(*group as i64), &(*user as i64)],
        ),
    }?;
    Ok(())
}

/// The logged-out pairs as the database holds them now.
fn load(db: &Db) -> Result<LoggedOut, MembershipError> {
    let pairs = db.read(|c| {
        c.query("SELECT group_id, user_id FROM logged_out_members", &[])?
            .iter()
            .map(|r| Ok((r.get::<i64>(0)?, r.get::<i64>(1)?)))
            .collect::<Result<Vec<(i64, i64)>, SqlError>>()
    })?;
    let mut out = LoggedOut::new();
    for (g, u) in pairs {
        // Ids come from the directory and fit; a row that does not is not ours.
        if let (Ok(g), Ok(u)) = (GroupId::try_from(g), UserId::try_from(u)) {
            out.logout(g, u);
        }
    }
    Ok(out)
}

/// The cached state and a count of local changes, so that a refresh read that
/// raced with a change does not put the older state back.
#[derive(Debug)]
struct Cached {
    changes: u64,
    state: Arc<LoggedOut>,
}

/// The logged-out set: cheap snapshots for decisions; changes are committed to
/// the database first.
#[derive(Debug)]
pub struct MembershipStore {
    db: Db,
    cached: Mutex<Cached>,
}

impl MembershipStore {
    /// Opens the state in the protocol database. A `membership.json` left in
    /// `data_dir` by an older callrec is imported first and renamed to
    /// `membership.json.imported`, so it is imported only once.
    pub fn open(db: Db, data_dir: &Path) -> Result<MembershipStore, MembershipError> {
        import_file(&db, data_dir)?;
        let state = load(&db)?;
        Ok(MembershipStore {
            db,
            cached: Mutex::new(Cached {
                changes: 0,
                state: Arc::new(state),
            }),
        })
    }

    /// The current state, for `decide` (never waits on the database).
    pub fn snapshot(&self) -> Arc<LoggedOut> {
        self.lock().state.clone()
    }

    /// True when `user` is logged out of `group`.
    pub fn is_logged_out(&self, group: GroupId, user: UserId) -> bool {
        self.lock().state.is_logged_out(group, user)
    }

    /// Log `user` in to `group` (active again), committed before it returns;
    /// true if this instance's view changed.
    pub fn login(&self, group: GroupId, user: UserId) -> Result<bool, MembershipError> {
        let change = MembershipChange::Login { group, user };
        self.update(change, |s| s.login(group, user), "login", group, user)
    }

    /// Log `user` out of `group` (their outgoing calls stop being recorded),
    /// committed before it returns.
    pub fn logout(&self, group: GroupId, user: UserId) -> Result<bool, MembershipError> {
        let at_ms = now_ms();
        let change = MembershipChange::Logout { group, user, at_ms };
        self.update(change, |s| s.logout(group, user), "logout", group, user)
    }

    /// Reads the state from the database and makes it the current one, unless
    /// a local change was made meanwhile (the next refresh brings it then).
    pub fn refresh(&self) -> Result<(), MembershipError> {
        let before = self.lock().changes;
        let fresh = load(&self.db)?;
        let mut c = self.lock();
        if c.changes == before && *c.state != fresh {
            tracing::info!(
                logged_out = fresh.logged_out.len(),
                "group membership changed in the database"
            );
            c.state = Arc::new(fresh);
        }
        Ok(())
    }

    /// Refreshes the state every `every` until the store is dropped.
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<MembershipStore> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                match tokio::task::spawn_blocking(move || store.refresh()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(
                        "group membership not refreshed, the last state stays in use: {e}"
                    ),
                    Err(e) => tracing::warn!("group membership refresh failed: {e}"),
                }
            }
        })
    }

    fn update(
        &self,
        change: MembershipChange,
        local: impl FnOnce(&mut LoggedOut) -> bool,
        what: &'static str,
        group: GroupId,
        user: UserId,
    ) -> Result<bool, MembershipError> {
        // Written even when this instance's view says nothing changes: another
        // instance may have changed the row since the last refresh.
        self.db.write_sync(vec![Record::Membership(change)])?;
        let mut c = self.lock();
        let mut next = LoggedOut::clone(&c.state);
        let changed = local(&mut next);
        c.changes += 1;
        c.state = Arc::new(next);
        tracing::info!(group, user, changed, "group membership {what}");
        Ok(changed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Imports `data_dir/membership.json` into the database and renames it.
fn import_file(db: &Db, data_dir: &Path) -> Result<(), MembershipError> {
    let path = data_dir.join(MEMBERSHIP_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(MembershipError::Io {
                action: "read",
                path,
                source,
            })
        }
    };
    let old: LoggedOut = serde_json::from_slice(&bytes).map_err(|e| MembershipError::Corrupt {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    let at_ms = now_ms();
    let records: Vec<Record> = old
        .pairs()
        .map(|(group, user)| Record::Membership(MembershipChange::Logout { group, user, at_ms }))
        .collect();
    let n = records.len();
    if !records.is_empty() {
        db.write_sync(records)?;
    }
    let done = PathBuf::from(format!("{}{IMPORTED_SUFFIX}", path.display()));
    std::fs::rename(&path, &done).map_err(|source| MembershipError::Io {
        action: "rename",
        path: path.clone(),
        source,
    })?;
    tracing::info!(
        logouts = n,
        from = %path.display(),
        renamed_to = %done.display(),
        "group logouts imported into the protocol database; the file is no longer read"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::scratch::{ScratchDb, ENGINES};

    #[test]
    fn changes_are_in_the_database_and_reach_a_second_store_on_refresh() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let scratch = ScratchDb::new(engine, dir.path());
            // Two instances: each its own data dir and handle, one database.
            let (da, dbb) = (dir.path().join("a"), dir.path().join("b"));
            let a = MembershipStore::open(scratch.open(), &da).unwrap();
            let b = MembershipStore::open(scratch.open(), &dbb).unwrap();
            assert!(!a.is_logged_out(100, 1));
            assert!(a.logout(100, 1).unwrap());
            assert!(!a.logout(100, 1).unwrap());
            let snap = a.snapshot();
            assert!(snap.is_logged_out(100, 1));
            assert!(
                !b.is_logged_out(100, 1),
                "{engine:?}: b has not refreshed yet"
            );
            b.refresh().unwrap();
            assert!(b.is_logged_out(100, 1), "{engine:?}");
            // b logs the member in although a's view still says logged out.
            assert!(b.login(100, 1).unwrap());
            a.refresh().unwrap();
            assert!(!a.is_logged_out(100, 1), "{engine:?}");
            // An old snapshot is unchanged.
            assert!(snap.is_logged_out(100, 1));
            let again = MembershipStore::open(scratch.open(), &da).unwrap();
            assert!(!again.is_logged_out(100, 1), "{engine:?}");
        }
    }

    #[test]
    fn an_old_file_is_imported_once_and_renamed() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(
                dir.path().join(MEMBERSHIP_FILE),
                br#"{"logged_out": [[100, 1], [200, 7]]}"#,
            )
            .unwrap();
            let scratch = ScratchDb::new(engine, dir.path());
            let s = MembershipStore::open(scratch.open(), dir.path()).unwrap();
            assert!(
                s.is_logged_out(100, 1) && s.is_logged_out(200, 7),
                "{engine:?}"
            );
            assert!(!dir.path().join(MEMBERSHIP_FILE).exists());
            assert!(dir
                .path()
                .join(format!("{MEMBERSHIP_FILE}{IMPORTED_SUFFIX}"))
                .exists());
            s.login(100, 1).unwrap();
            // Reopening does not bring the imported logout back.
            let again = MembershipStore::open(scratch.open(), dir.path()).unwrap();
            assert!(!again.is_logged_out(100, 1) && again.is_logged_out(200, 7));
        }
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MEMBERSHIP_FILE), b"{nope").unwrap();
        let db = Db::open_in(dir.path()).unwrap();
        let err = MembershipStore::open(db, dir.path()).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
