//! Active group membership: which assigned members are logged out
//! of a group right now. The PBX's REST API knows only assignment; login/logout
//! comes through callrec's admin API and is persisted here in a JSON file in the
//! data dir (atomic replace). The API is kept small so it can move into the database.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::account::{GroupId, UserId};
use super::error::MembershipError;

/// File name of the persisted state inside the data dir.
pub const MEMBERSHIP_FILE: &str = "membership.json";

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

/// The persisted logged-out set; cheap snapshots for decisions, writes go to disk first.
#[derive(Debug)]
pub struct MembershipStore {
    path: PathBuf,
    state: Mutex<Arc<LoggedOut>>,
}

impl MembershipStore {
    /// Open (or start empty) the state in `data_dir/membership.json`.
    pub fn open(data_dir: &Path) -> Result<MembershipStore, MembershipError> {
        let path = data_dir.join(MEMBERSHIP_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| MembershipError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => LoggedOut::new(),
            Err(source) => {
                return Err(MembershipError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        Ok(MembershipStore {
            path,
            state: Mutex::new(Arc::new(state)),
        })
    }

    /// The current state, for `decide` (never blocks on disk).
    pub fn snapshot(&self) -> Arc<LoggedOut> {
        self.lock().clone()
    }

    /// True when `user` is logged out of `group`.
    pub fn is_logged_out(&self, group: GroupId, user: UserId) -> bool {
        self.lock().is_logged_out(group, user)
    }

    /// Log `user` in to `group` (active again) and persist; true if it changed.
    pub fn login(&self, group: GroupId, user: UserId) -> Result<bool, MembershipError> {
        self.update(|s| s.login(group, user), "login", group, user)
    }

    /// Log `user` out of `group` (their outgoing calls stop being recorded) and persist.
    pub fn logout(&self, group: GroupId, user: UserId) -> Result<bool, MembershipError> {
        self.update(|s| s.logout(group, user), "logout", group, user)
    }

    fn update(
        &self,
        change: impl FnOnce(&mut LoggedOut) -> bool,
        what: &'static str,
        group: GroupId,
        user: UserId,
    ) -> Result<bool, MembershipError> {
        let mut guard = self.lock();
        let mut next = LoggedOut::clone(&guard);
        if !change(&mut next) {
            return Ok(false);
        }
        write_atomic(&self.path, &next)?;
        *guard = Arc::new(next);
        tracing::info!(group, user, "group membership {what}");
        Ok(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<LoggedOut>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Write `state` to a temporary file, sync it, rename it over `path`, sync the folder.
fn write_atomic(path: &Path, state: &LoggedOut) -> Result<(), MembershipError> {
    let io = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| MembershipError::Io {
            action,
            path: p,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create folder for", path))?;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(state).expect("a set of integer pairs serialises");
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(&bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("replace", path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = MembershipStore::open(dir.path()).unwrap();
        assert!(!store.is_logged_out(100, 1));
        assert!(store.logout(100, 1).unwrap());
        assert!(!store.logout(100, 1).unwrap());
        let snap = store.snapshot();
        assert!(snap.is_logged_out(100, 1));
        let again = MembershipStore::open(dir.path()).unwrap();
        assert!(again.is_logged_out(100, 1));
        assert!(again.login(100, 1).unwrap());
        assert!(!MembershipStore::open(dir.path())
            .unwrap()
            .is_logged_out(100, 1));
        // The old snapshot is unchanged.
        assert!(snap.is_logged_out(100, 1));
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MEMBERSHIP_FILE), b"{nope").unwrap();
        let err = MembershipStore::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
