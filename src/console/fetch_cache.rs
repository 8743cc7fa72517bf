//! The bounded folder of sets fetched from remote targets for playing: the
//! sets kept and fetches under way together never hold more than the limit;
//! to make room the least recently used sets are deleted, and a fetch that
//! would need more than the whole limit is stopped while it runs, so a huge
//! (or endless) set on a target cannot fill the disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Default)]
struct State {
    /// Kept sets: size and last use.
    sets: HashMap<String, (u64, Instant)>,
    /// Bytes each fetch under way has written so far, by ticket.
    running: HashMap<u64, u64>,
    next_ticket: u64,
}

impl State {
    fn total(&self) -> u64 {
        self.sets.values().map(|(n, _)| n).sum::<u64>() + self.running.values().sum::<u64>()
    }
}

/// Why a fetch may not go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    /// The set alone is larger than the limit.
    #[error("the set has more than {limit_mb} MB, more than the console may fetch from a remote target ({limit_mb} MB, --console-fetch-max-mb); download it from the target directly or raise the limit")]
    TooLarge {
        /// The limit in MB.
        limit_mb: u64,
    },
    /// Other fetches under way take the room it needs.
    #[error("the console's fetch folder is taken by other sets being fetched right now; try again in a moment")]
    Busy,
}

/// Sets kept in the fetch folder, bounded in total size.
pub struct FetchCache {
    dir: PathBuf,
    max: u64,
    state: Mutex<State>,
}

/// Bytes of the files directly in `dir` (a fetched set is one flat folder).
pub fn folder_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

impl FetchCache {
    /// The sets below `dir` (one folder per set id), at most `max` bytes together.
    pub fn new(dir: PathBuf, max: u64) -> FetchCache {
        FetchCache {
            dir,
            max,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fetch cache poisoned")
    }

    /// Whether set `id` is kept; if so, it counts as used now.
    pub fn touch(&self, id: &str) -> bool {
        match self.lock().sets.get_mut(id) {
            Some((_, used)) => {
                *used = Instant::now();
                true
            }
            None => false,
        }
    }

    /// A ticket for a fetch about to start.
    pub fn begin(&self) -> u64 {
        let mut s = self.lock();
        s.next_ticket += 1;
        let t = s.next_ticket;
        s.running.insert(t, 0);
        t
    }

    /// The fetch with `ticket` has written `bytes`: least recently used sets
    /// are deleted until everything fits, or the fetch must stop.
    pub fn grow(&self, ticket: u64, bytes: u64) -> Result<(), Full> {
        if bytes > self.max {
            return Err(Full::TooLarge {
                limit_mb: self.max / (1024 * 1024),
            });
        }
        let mut s = self.lock();
        s.running.insert(ticket, bytes);
        while s.total() > self.max {
            let Some(oldest) = s
                .sets
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| id.clone())
            else {
                return Err(Full::Busy);
            };
            s.sets.remove(&oldest);
            // Deleted under the lock, so that no one counts it as kept meanwhile.
            match std::fs::remove_dir_all(self.dir.join(&oldest)) {
                Ok(()) => {
                    tracing::info!(set = %oldest, "console: fetched set removed to make room (least recently used)")
                }
                Err(e) => {
                    tracing::warn!(set = %oldest, error = %e, "console: cannot remove a fetched set")
                }
            }
        }
        Ok(())
    }

    /// The fetch with `ticket` ended: with `kept`, set `id` of `bytes` is now in the folder.
    pub fn end(&self, ticket: u64, kept: Option<(&str, u64)>) {
        let mut s = self.lock();
        s.running.remove(&ticket);
        if let Some((id, bytes)) = kept {
            s.sets.insert(id.to_string(), (bytes, Instant::now()));
        }
    }

    /// Bytes of the kept sets and fetches under way.
    #[cfg(test)]
    fn total(&self) -> u64 {
        self.lock().total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(dir: &Path, id: &str, bytes: usize) {
        std::fs::create_dir_all(dir.join(id)).unwrap();
        std::fs::write(dir.join(id).join("a.wav"), vec![0u8; bytes]).unwrap();
    }

    #[test]
    fn least_recently_used_sets_make_room_and_too_large_ones_stop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let c = FetchCache::new(dir.clone(), 3 * 1024 * 1024);
        for id in ["a", "b", "c"] {
            let t = c.begin();
            set(&dir, id, 1024 * 1024);
            c.grow(t, folder_size(&dir.join(id))).unwrap();
            c.end(t, Some((id, 1024 * 1024)));
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(c.touch("a"), "a is used again: b is now the oldest");
        let t = c.begin();
        c.grow(t, 1024 * 1024).unwrap();
        assert!(!dir.join("b").exists() && dir.join("a").exists() && dir.join("c").exists());
        assert!(c.total() <= 3 * 1024 * 1024);
        // More than the whole limit: refused, whatever could be deleted.
        let big = c.grow(t, 3 * 1024 * 1024 + 1).unwrap_err();
        assert!(big.to_string().contains("3 MB"), "{big}");
        c.end(t, None);
        // Two fetches under way that together exceed the limit: the second waits.
        let (t1, t2) = (c.begin(), c.begin());
        c.grow(t1, 2 * 1024 * 1024).unwrap();
        assert_eq!(c.grow(t2, 2 * 1024 * 1024), Err(Full::Busy));
        assert!(c.total() <= 3 * 1024 * 1024 + 2 * 1024 * 1024);
    }
}
