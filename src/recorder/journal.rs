//! The recording journal: a small JSON file written and fsynced beside a
//! recording's audio files when the recording starts, and emptied or removed
//! once the set is sealed and in the spool. It holds what the set needs but
//! the audio cannot tell (call ids, parties, profile, direction, channel
//! layout, start, targets), so that a recording left behind by a crash can be
//! finished, sealed and uploaded at the next start.
//!
//! A running call's journal is written in place into a spare file
//! (`.spare-<n>`, see `spare`) that keeps its name: no rename and no folder
//! fsync per call (a spare's name is durable from its creation), and at the
//! end it is only emptied, without an fsync of its own. A crash may
//! therefore leave a spare holding a journal, or, after a power cut, the
//! journal of a set that had already reached the spool; recovery reads both
//! (see `recovery`). `<base>.journal.json` is the name recovery
//! gives a journal it found, and what a recording without spares writes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::metadata::{CallIds, PartyInfo};
use super::spare::Spares;
use super::ChannelMode;
use crate::vocab::Direction;

/// Suffix of a journal file, appended to the set's base name.
pub const JOURNAL_SUFFIX: &str = ".journal.json";
/// Layout version of the journal.
pub const JOURNAL_VERSION: u32 = 1;

/// What a running recording's set needs besides its audio.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// Layout version ([`JOURNAL_VERSION`]).
    pub version: u32,
    /// Base name shared by the set's files.
    pub base_name: String,
    /// Call-IDs of both legs.
    pub call_ids: CallIds,
    /// The calling party.
    pub caller: PartyInfo,
    /// The called party.
    pub callee: PartyInfo,
    /// The dialled number.
    pub dialled_number: String,
    /// Incoming or outgoing.
    pub direction: Direction,
    /// Profile that decided to record.
    pub profile: String,
    /// Rule of that profile that matched.
    pub matched_rule: String,
    /// Channel layout (tells the audio files' names and channel count).
    pub channels: ChannelMode,
    /// Audio file names (no folder), as the recorder creates them.
    pub files: Vec<String>,
    /// When the recording started (ms since the epoch, UTC); time zero of the audio.
    pub start_ms: i64,
    /// The announcement played to the caller, if any.
    pub announcement: Option<String>,
    /// Storage target URLs of the profile.
    pub targets: Vec<String>,
    /// Id of the instance that recorded.
    pub instance_id: String,
    /// Name of the instance that recorded (empty in journals written before names).
    #[serde(default)]
    pub instance_name: String,
}

/// A journal file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file system refused.
    #[error("recording journal {path}: {source} (check that the work folder is writable and has free space)")]
    Io {
        /// The journal file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a journal.
    #[error("recording journal {path} is unreadable: {detail}")]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl Journal {
    /// Where the journal of set `base_name` lives in `dir`.
    pub fn path(dir: &Path, base_name: &str) -> PathBuf {
        dir.join(format!("{base_name}{JOURNAL_SUFFIX}"))
    }

    /// Writes the journal durably (temporary file, fsync, rename, folder fsync),
    /// so that a crash right after the start still finds it whole.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, JournalError> {
        let tmp = dir.join(format!(".{}{JOURNAL_SUFFIX}.tmp", self.base_name));
        let file = std::fs::File::create(&tmp).map_err(|source| JournalError::Io {
            path: tmp.clone(),
            source,
        })?;
        self.write_through(dir, &tmp, file)
    }

    /// Writes the journal durably into a spare file of `spares` (whose folder
    /// is the recording's), which keeps its name: one fsync. Returns the
    /// spare's path.
    pub fn write_using(&self, spares: &Spares) -> Result<PathBuf, JournalError> {
        let taken = spares.take().map_err(|source| JournalError::Io {
            path: spares.dir().to_path_buf(),
            source,
        })?;
        let path = taken.path.clone();
        let err = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        match self.write_into(taken.file).map_err(err) {
            Ok(()) => {
                spares.hold_journal(&self.base_name, path.clone());
                Ok(path)
            }
            Err(e) => {
                spares.give_back(&path);
                Err(e)
            }
        }
    }

    /// Writes the journal as JSON into `file` (empty) and fsyncs it.
    fn write_into(&self, mut file: std::fs::File) -> std::io::Result<()> {
        use std::io::Write;
        let mut text = serde_json::to_vec_pretty(self).expect("a journal serialises");
        text.push(b'\n');
        file.write_all(&text)?;
        file.sync_all()
    }

    /// Writes into `file` (open at `tmp`, empty), fsyncs, renames it to the
    /// journal's name, fsyncs the folder.
    fn write_through(
        &self,
        dir: &Path,
        tmp: &Path,
        file: std::fs::File,
    ) -> Result<PathBuf, JournalError> {
        let path = Journal::path(dir, &self.base_name);
        let err = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        self.write_into(file).map_err(err)?;
        std::fs::rename(tmp, &path).map_err(err)?;
        sync_folder(dir).map_err(err)?;
        Ok(path)
    }

    /// Reads a journal file.
    pub fn read(path: &Path) -> Result<Journal, JournalError> {
        let bytes = std::fs::read(path).map_err(|source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| JournalError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
    }

    /// Removes the journal of set `base_name` in `dir` (the set is sealed and
    /// spooled); a journal already gone is fine.
    pub fn remove(dir: &Path, base_name: &str) {
        Journal::remove_all([(dir, base_name)], None);
    }

    /// Removes the journals of several sets (folder, base name), then fsyncs
    /// each folder once (which also makes the removal of the sets' originals
    /// from it durable). With `spares` (of the journals' folder), a journal
    /// becomes an empty spare file instead of being deleted; one written in
    /// place into a spare is only emptied, without an fsync of the file: a
    /// power cut that brings its content back leaves the journal of a set
    /// already in the spool, which recovery recognises and drops.
    pub fn remove_all<'a>(
        sets: impl IntoIterator<Item = (&'a Path, &'a str)>,
        spares: Option<&Spares>,
    ) {
        let mut folders: Vec<&Path> = Vec::new();
        for (dir, base_name) in sets {
            let path = Journal::path(dir, base_name);
            if let Some(spares) = spares.filter(|s| s.dir() == dir) {
                match spares.release_journal(base_name) {
                    Some(in_place) => spares.give_back(&in_place),
                    None => spares.give_back(&path),
                }
                if !folders.contains(&dir) {
                    folders.push(dir);
                }
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    if !folders.contains(&dir) {
                        folders.push(dir);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(journal = %path.display(), error = %e, "recording journal not removed; the next start finds its set already spooled")
                }
            }
        }
        for dir in folders {
            let _ = sync_folder(dir);
        }
    }

    /// Drops the journal of a recording that never started, and makes that
    /// durable: no audio exists, so a journal a power cut brought back would
    /// be reported as a recording lost.
    pub fn discard(dir: &Path, base_name: &str, spares: &Spares) {
        match spares.release_journal(base_name) {
            Some(in_place) => spares.give_back_durably(&in_place),
            None => Journal::remove_all([(dir, base_name)], Some(spares)),
        }
    }
}

fn sync_folder(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

#[cfg(test)]
impl Journal {
    /// A journal of set `base_name`, for tests.
    pub(crate) fn sample(base_name: &str) -> Journal {
        Journal {
            version: JOURNAL_VERSION,
            base_name: base_name.into(),
            call_ids: CallIds {
                caller_leg: "a@x".into(),
                callee_leg: "b@y".into(),
            },
            caller: PartyInfo {
                name: None,
                number: "1".into(),
                ..Default::default()
            },
            callee: PartyInfo {
                name: Some("Sales".into()),
                number: "2".into(),
                ..Default::default()
            },
            dialled_number: "2".into(),
            direction: Direction::Incoming,
            profile: "p".into(),
            matched_rule: "all".into(),
            channels: ChannelMode::Stereo,
            files: vec![format!("{base_name}.wav")],
            start_ms: 1_772_362_800_000,
            announcement: None,
            targets: vec!["file:///x".into()],
            instance_id: "i".into(),
            instance_name: "rec-a".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trips_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::sample("20260301_110000_in_1_2_abc");
        let path = j.write(dir.path()).unwrap();
        assert_eq!(Journal::read(&path).unwrap(), j);
        Journal::remove(dir.path(), &j.base_name);
        assert!(!path.exists());
        Journal::remove(dir.path(), &j.base_name);
    }

    #[test]
    fn a_journal_is_written_in_place_into_a_spare_and_emptied_at_the_end() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::new(dir.path());
        let first = Journal::sample("20260301_110000_in_1_2_abc");
        let path = first.write_using(&spares).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(super::super::spare::SPARE_PREFIX),
            "{name}"
        );
        assert_eq!(Journal::read(&path).unwrap(), first);
        assert!(
            !Journal::path(dir.path(), &first.base_name).exists(),
            "no file of the journal's own name"
        );
        let inode = std::fs::metadata(&path).unwrap().ino();

        Journal::remove_all([(dir.path(), first.base_name.as_str())], Some(&spares));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "emptied");

        let second = Journal::sample("20260301_110001_in_1_2_def");
        let again = second.write_using(&spares).unwrap();
        assert_eq!(again, path, "the next call's journal reuses the spare");
        assert_eq!(std::fs::metadata(&again).unwrap().ino(), inode);
        assert_eq!(Journal::read(&again).unwrap(), second);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 1, "one file served both calls");
    }

    #[test]
    fn the_journal_of_a_recording_that_never_started_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::new(dir.path());
        let j = Journal::sample("20260301_110000_in_1_2_abc");
        let path = j.write_using(&spares).unwrap();
        Journal::discard(dir.path(), &j.base_name, &spares);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert!(spares.release_journal(&j.base_name).is_none());
        assert_eq!(spares.take().unwrap().path, path, "back in the pool");
    }
}
