//! Recovery at start: finishes what a crash left in `<data-dir>/work/`.
//!
//! - A recording with its journal (the process died mid-call, or before its
//!   set was sealed) gets valid WAV headers for the whole frames on disk,
//!   metadata from the journal marked `"recovered": true` (end = start + audio
//!   length), a database row, and goes to the sealing service like any other
//!   recording; the failure `recovered_after_crash` is reported.
//! - A set already sealed but not yet in the spool is spooled (after the
//!   chain head has been moved to it, or its signature written, if the crash
//!   came before that, see [`adopt_sealed_sets`]), so the chain on the
//!   targets has no gap.
//! - A journal without its audio is a set delivered before the crash (a
//!   power cut brought the journal back: removed quietly) or a recording
//!   whose audio is gone (reported); while the database cannot tell which,
//!   it stays and `undecided_after_crash` is reported.
//! - A WAV without a journal (written by an older version, or a journal
//!   lost) is repaired if it can be and moved into `work/unrecoverable/` for
//!   the operator, and reported: without its journal nobody can say whose
//!   call it is nor where it must go.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::db::{now_ms, Db, Record};
use crate::recorder::failure::{FailureReason, FailureReporter, RecordingFailure};
use crate::recorder::journal::{Journal, JOURNAL_SUFFIX};
use crate::recorder::metadata::{
    local_offset_at, rfc3339_ms, Announcement, AudioInfo, EndedBy, Metadata, PerParty, Times,
    SCHEMA_VERSION,
};
use crate::recorder::{repair_wav, MediaStats, RecordingOutput, RecordingSpec};
use crate::seal::service::{SealJob, SealSender};
use crate::seal::{sealed_on_disk, Sealer, CHECKSUM_SUFFIX, SIGNATURE_SUFFIX};
use crate::spool::Spool;

/// Folder below `work/` that takes recordings that cannot be finished.
pub const UNRECOVERABLE_DIR: &str = "unrecoverable";

/// How often, and how far apart, recovery asks a failing database.
const DB_TRIES: u32 = 3;
const DB_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// What recovery needs from the proxy.
pub struct Recovery {
    /// The recordings' work folder (`<data-dir>/work`).
    pub work: PathBuf,
    /// The protocol database.
    pub db: Db,
    /// Where recording failures are reported.
    pub failures: FailureReporter,
    /// Counts recovered recordings (`callrec_recordings_recovered_total`).
    pub recovered: Arc<AtomicU64>,
    /// Target URLs per profile name, for sealed sets whose journal is gone.
    pub profile_targets: HashMap<String, Vec<String>>,
    /// Targets when nothing else names one (the local recordings folder).
    pub default_targets: Vec<String>,
}

/// What recovery did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Recordings finished and queued for sealing.
    pub recovered: usize,
    /// Sets sealed before the crash and now spooled.
    pub spooled: usize,
    /// Files moved into `work/unrecoverable/`.
    pub set_aside: usize,
    /// Journals of sets that had reached the spool, removed.
    pub stale_journals: usize,
    /// Journals without audio left in place and reported
    /// (`undecided_after_crash`): the database could not say whether their
    /// sets had been delivered.
    pub undecided: usize,
}

/// What `work/` holds, by base name.
#[derive(Default)]
struct Found {
    sealed: BTreeSet<String>,
    journals: BTreeSet<String>,
    wavs: BTreeMap<String, Vec<PathBuf>>,
}

fn scan(work: &Path) -> std::io::Result<Found> {
    let mut found = Found::default();
    let sig_suffix = format!("{CHECKSUM_SUFFIX}{SIGNATURE_SUFFIX}");
    for entry in std::fs::read_dir(work)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            if name.starts_with(crate::recorder::spare::SPARE_PREFIX) {
                if let Some(base) = journal_in_spare(work, &entry.path()) {
                    found.journals.insert(base);
                }
                continue;
            }
            // A recording's disk reserve and the writability probe: nothing
            // records yet at start, so any left are a crash's leftovers.
            if name.ends_with(".reserve") || name.starts_with(".probe-") {
                let _ = std::fs::remove_file(entry.path());
            }
            continue;
        }
        if let Some(base) = name.strip_suffix(&sig_suffix) {
            found.sealed.insert(base.to_string());
        } else if let Some(base) = name.strip_suffix(JOURNAL_SUFFIX) {
            found.journals.insert(base.to_string());
        } else if let Some(stem) = name.strip_suffix(".wav") {
            let base = stem
                .strip_suffix("_caller")
                .or_else(|| stem.strip_suffix("_callee"))
                .unwrap_or(stem);
            found
                .wavs
                .entry(base.to_string())
                .or_default()
                .push(entry.path());
        }
    }
    Ok(found)
}

/// A spare file left by the last run: empty, or a disk reserve, or cut off
/// while a journal was being written into it (nothing was recorded then: the
/// audio is created only after the journal is durable) is removed; one
/// holding a whole journal gets the journal's own name, so that recovery
/// treats it like any other. Returns that journal's set.
fn journal_in_spare(work: &Path, spare: &Path) -> Option<String> {
    let journal = std::fs::read(spare)
        .ok()
        .and_then(|b| serde_json::from_slice::<Journal>(&b).ok());
    // A base name is one file name; anything else is not a journal of ours.
    let Some(journal) = journal.filter(|j| {
        !j.base_name.is_empty()
            && !j.base_name.contains(['/', '\0'])
            && !j.base_name.starts_with('.')
    }) else {
        let _ = std::fs::remove_file(spare);
        return None;
    };
    let named = Journal::path(work, &journal.base_name);
    if named.exists() {
        // Found under its own name too (a run without spares wrote it).
        let _ = std::fs::remove_file(spare);
        return None;
    }
    match std::fs::rename(spare, &named) {
        Ok(()) => Some(journal.base_name),
        Err(e) => {
            tracing::error!(spare = %spare.display(), "cannot name the recording journal a crash left in a spare file; its set is not recovered now: {e}");
            None
        }
    }
}

/// Before the sealing service starts: finishes what a crash inside a group
/// commit left in `work` (see [`Sealer::resume`]): sets whose chain-head
/// update the crash prevented become the head in chain order, and a set whose
/// signature was cut off is signed, so the next set links to the last one.
pub fn adopt_sealed_sets(sealer: &mut Sealer, work: &Path) {
    if let Err(e) = sealer.resume(work) {
        tracing::error!(work = %work.display(), "cannot finish the sets a crash cut off while sealing: {e}");
    }
}

impl Recovery {
    /// Finishes everything in `work/` (see the module docs). Blocks on file
    /// work; the sealing itself happens on the sealing thread.
    pub fn run(&self, seal: &SealSender, spool: &Spool) -> Summary {
        let mut summary = Summary::default();
        let found = match scan(&self.work) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return summary,
            Err(e) => {
                tracing::error!(work = %self.work.display(), "cannot look for recordings left by a crash: {e}");
                return summary;
            }
        };
        for base in &found.sealed {
            if self.spool_sealed(base, spool) {
                summary.spooled += 1;
            }
        }
        for base in found.journals.difference(&found.sealed) {
            // A journal without its audio: delivered before the crash, or
            // a recording whose audio is gone; only the upload rows tell.
            let delivered = if found.wavs.contains_key(base) {
                Ok(false)
            } else {
                self.reached_spool(base)
            };
            match delivered {
                Ok(true) => {
                    // A power cut undid the journal's removal after its set
                    // had entered the spool: nothing was lost, nothing to report.
                    tracing::info!(set = %base, "removing the journal of a set that had reached the spool before the crash");
                    Journal::remove(&self.work, base);
                    summary.stale_journals += 1;
                    continue;
                }
                Err(e) => {
                    // Reporting a loss nobody can show, or dropping the
                    // journal of one, would both mislead: it waits, and the
                    // operator is told that it does.
                    let call_id = Journal::read(&Journal::path(&self.work, base))
                        .map(|j| j.call_ids.caller_leg)
                        .unwrap_or_else(|_| "unknown".into());
                    let detail = format!("the journal in {} has no audio, and the database cannot say whether the set was delivered before the crash ({e}); the journal stays and is judged at the next start", self.work.display());
                    self.report(FailureReason::UndecidedAfterCrash, &call_id, base, &detail);
                    summary.undecided += 1;
                    continue;
                }
                Ok(false) => {}
            }
            if self.finish(base, seal, spool) {
                summary.recovered += 1;
            } else {
                summary.set_aside += 1;
            }
        }
        for (base, wavs) in &found.wavs {
            if found.journals.contains(base) || found.sealed.contains(base) {
                continue;
            }
            self.set_aside(
                "unknown",
                base,
                wavs,
                "no recording journal beside it (written by an older version, or the journal was lost)",
            );
            summary.set_aside += 1;
        }
        if summary != Summary::default() {
            tracing::warn!(
                recovered = summary.recovered,
                spooled = summary.spooled,
                stale_journals = summary.stale_journals,
                set_aside = summary.set_aside,
                undecided = summary.undecided,
                work = %self.work.display(),
                "recordings left by a crash were handled"
            );
        }
        summary
    }

    /// Whether set `base` entered the spool: its upload rows are committed
    /// only once its folder is in place there. (Rows a power cut took are
    /// back by now: the spool, started first, commits them again from the
    /// folder's entry marker.)
    ///
    /// A failing database is asked again a few times (a moment's outage at
    /// start should not leave a set undecided until the next one).
    fn reached_spool(&self, base: &str) -> Result<bool, crate::db::DbError> {
        let mut tries = 1;
        loop {
            match self.db.uploads_of(base) {
                Ok(rows) => return Ok(!rows.is_empty()),
                Err(e) if tries >= DB_TRIES => return Err(e),
                Err(e) => {
                    tracing::warn!(set = %base, "cannot read the set's upload rows ({e}); asking again");
                    tries += 1;
                    std::thread::sleep(DB_RETRY_AFTER);
                }
            }
        }
    }

    /// A set sealed before the crash: into the spool (or, when it reached the
    /// spool and only its originals were left, the originals removed).
    fn spool_sealed(&self, base: &str, spool: &Spool) -> bool {
        let set = match sealed_on_disk(&self.work, base) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(set = %base, "a set sealed before a crash cannot be read back; it stays in {}: {e}", self.work.display());
                return false;
            }
        };
        let journal = Journal::read(&Journal::path(&self.work, base)).ok();
        if spool.dir().join(base).is_dir() {
            // The spool took the set; only the removal of the originals was cut off.
            for f in &set.files {
                let _ = std::fs::remove_file(f);
            }
            Journal::remove(&self.work, base);
            return true;
        }
        let meta: Option<serde_json::Value> = std::fs::read(self.work.join(format!("{base}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let profile = meta
            .as_ref()
            .and_then(|m| m["profile"].as_str())
            .unwrap_or_default()
            .to_string();
        let targets = journal
            .as_ref()
            .map(|j| j.targets.clone())
            .filter(|t| !t.is_empty())
            .or_else(|| self.profile_targets.get(&profile).cloned())
            .unwrap_or_else(|| self.default_targets.clone());
        if let Some(m) = &meta {
            if !self.db.has_recording(base).unwrap_or(true) {
                self.db.send(recording_row(base, m));
            }
        }
        self.db.send(Record::Seal {
            base_name: base.to_string(),
            at_ms: now_ms(),
            checksum_sha256: set.checksum_sha256.clone(),
            files: set.files.len() as u32,
            chain: set.chain_json(),
        });
        match spool.enqueue(&set, &targets) {
            Ok(dir) => {
                tracing::warn!(set = %base, "a set sealed before a crash was spooled from {} into {}", self.work.display(), dir.display());
                Journal::remove(&self.work, base);
                true
            }
            Err(e) => {
                tracing::error!(set = %base, "cannot spool a set sealed before a crash; it stays in {}: {e}", self.work.display());
                false
            }
        }
    }

    /// A recording cut off by a crash: repaired, described and sent to sealing.
    fn finish(&self, base: &str, seal: &SealSender, spool: &Spool) -> bool {
        let journal_path = Journal::path(&self.work, base);
        let journal = match Journal::read(&journal_path) {
            Ok(j) => j,
            Err(e) => {
                let mut files = vec![journal_path.clone()];
                files.extend(self.files_of(base));
                self.set_aside("unknown", base, &files, &e.to_string());
                return false;
            }
        };
        let paths: Vec<PathBuf> = journal.files.iter().map(|f| self.work.join(f)).collect();
        let mut repaired = Vec::new();
        for p in &paths {
            match repair_wav(
                p,
                RecordingSpec::new(&self.work, base, journal.channels).rf64_threshold,
            ) {
                Ok(r) => repaired.push(r),
                Err(e) => {
                    let mut files = vec![journal_path.clone()];
                    files.extend(self.files_of(base));
                    let detail = format!("audio file {} cannot be repaired: {e}", p.display());
                    self.set_aside(&journal.call_ids.caller_leg, base, &files, &detail);
                    return false;
                }
            }
        }
        let rate = repaired.first().map_or(8000, |r| r.sample_rate);
        let frames = repaired.iter().map(|r| r.frames).min().unwrap_or(0);
        let out = RecordingOutput {
            files: paths.clone(),
            sample_rate: rate,
            channels: journal.channels,
            duration: std::time::Duration::from_nanos(frames * 1_000_000_000 / rate as u64),
            frames,
            rf64: repaired.iter().any(|r| r.rf64),
            caller: MediaStats::default(),
            callee: MediaStats::default(),
            gaps: Vec::new(),
        };
        let start =
            DateTime::<Utc>::from_timestamp_millis(journal.start_ms).unwrap_or_else(Utc::now);
        let end = start + chrono::Duration::from_std(out.duration).unwrap_or_default();
        let detail = format!(
            "callrec stopped during the recording; {} ms of audio up to the crash were sealed at the next start",
            out.duration.as_millis()
        );
        let metadata = self.metadata_for(base, &journal, &out, start, end, &detail);
        // A crash during sealing comes after the recording's row was written.
        if !self.db.has_recording(base).unwrap_or(false) {
            self.db.send(Record::Recording {
                call_id: journal.call_ids.caller_leg.clone(),
                base_name: base.to_string(),
                profile: Some(journal.profile.clone()),
                start_ms: journal.start_ms,
                end_ms: Some(end.timestamp_millis()),
                caller: Some(journal.caller.number.clone()),
                callee: Some(journal.callee.number.clone()),
                answered_by: journal.callee.answered_by.clone(),
            });
        }
        self.db.send(Record::RecordingRecovered {
            base_name: base.to_string(),
        });
        self.recovered.fetch_add(1, Ordering::Relaxed);
        self.report(
            FailureReason::RecoveredAfterCrash,
            &journal.call_ids.caller_leg,
            base,
            &detail,
        );
        let targets = if journal.targets.is_empty() {
            self.default_targets.clone()
        } else {
            journal.targets.clone()
        };
        // The journal may name a target the configuration has dropped since: its
        // upload worker is started here, where the runtime is at hand, not on the
        // sealing thread.
        spool.add_targets(&targets);
        let job = SealJob {
            folder: self.work.clone(),
            base_name: base.to_string(),
            metadata,
            files: paths,
            targets,
        };
        if seal.send(job).is_err() {
            tracing::error!(set = %base, "sealing service is gone; the recovered recording stays in {}", self.work.display());
        }
        true
    }

    /// The metadata of a recovered recording: the one the sealing had already
    /// written when the crash came during sealing, else built from the journal.
    fn metadata_for(
        &self,
        base: &str,
        journal: &Journal,
        out: &RecordingOutput,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        detail: &str,
    ) -> serde_json::Value {
        let written: Option<serde_json::Value> =
            std::fs::read(self.work.join(format!("{base}.json")))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .filter(serde_json::Value::is_object);
        let mut value = written.unwrap_or_else(|| {
            let mut meta = Metadata {
                schema_version: SCHEMA_VERSION,
                recording_id: base.to_string(),
                base_name: base.to_string(),
                call_ids: journal.call_ids.clone(),
                caller: journal.caller.clone(),
                callee: journal.callee.clone(),
                dialled_number: journal.dialled_number.clone(),
                direction: journal.direction,
                profile: journal.profile.clone(),
                matched_rule: journal.matched_rule.clone(),
                times: Times::new(start, Some(start), end, local_offset_at(start), 0),
                // The audio ends at the crash; nothing inside it is missing.
                gaps: Vec::new(),
                // Nobody hung up: callrec's end is the closest.
                ended_by: EndedBy::Proxy,
                announcement: Announcement {
                    played: journal.announcement.is_some(),
                    file: journal.announcement.clone(),
                },
                audio: AudioInfo::from_output(out),
                codecs: PerParty {
                    caller: Vec::new(),
                    callee: Vec::new(),
                },
                media: PerParty {
                    caller: MediaStats::default(),
                    callee: MediaStats::default(),
                },
                instance_id: journal.instance_id.clone(),
                instance_name: journal.instance_name.clone(),
                software_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            meta.set_recording_output(out);
            meta.to_json_value()
        });
        if let Some(obj) = value.as_object_mut() {
            // The sealer writes a fresh link to the current head.
            obj.remove("previous");
            obj.insert("recovered".into(), true.into());
            obj.insert(
                "recovery".into(),
                serde_json::json!({
                    "reason": FailureReason::RecoveredAfterCrash.as_str(),
                    "recovered_at": rfc3339_ms(Utc::now()),
                    "detail": detail,
                }),
            );
        }
        value
    }

    /// Every file of set `base` in `work/` but hidden ones.
    fn files_of(&self, base: &str) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(&self.work) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(base)
                    && n[base.len()..].starts_with(['.', '_'])
                    && !n.ends_with(JOURNAL_SUFFIX)
            })
            .map(|e| e.path())
            .collect()
    }

    /// Moves `files` into `work/unrecoverable/` (WAVs repaired first when
    /// possible) and reports it.
    fn set_aside(&self, call_id: &str, base: &str, files: &[PathBuf], why: &str) {
        let dest = self.work.join(UNRECOVERABLE_DIR);
        if let Err(e) = std::fs::create_dir_all(&dest) {
            tracing::error!(set = %base, "cannot create {}: {e}; the files stay in {}", dest.display(), self.work.display());
            return;
        }
        for f in files {
            if f.extension().is_some_and(|x| x == "wav") {
                // Playable at least, for whoever takes it over.
                let _ = repair_wav(f, u32::MAX as u64);
            }
            if let Some(name) = f.file_name() {
                if let Err(e) = std::fs::rename(f, dest.join(name)) {
                    tracing::error!(file = %f.display(), "cannot move into {}: {e}", dest.display());
                }
            }
        }
        let detail = format!(
            "a recording left by a crash cannot be finished ({why}); its files are in {} for the operator",
            dest.display()
        );
        self.report(FailureReason::RecoveredAfterCrash, call_id, base, &detail);
    }

    fn report(&self, reason: FailureReason, call_id: &str, base: &str, detail: &str) {
        self.failures.report(RecordingFailure {
            call_id: call_id.to_string(),
            set: Some(base.to_string()),
            reason,
            detail: detail.to_string(),
            at_ms: now_ms(),
        });
    }
}

/// A recordings row for a sealed set, from its metadata.
fn recording_row(base: &str, m: &serde_json::Value) -> Record {
    let ms = |key: &str| {
        m["times"][key]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
    };
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    Record::Recording {
        call_id: text(&m["call_ids"]["caller_leg"]).unwrap_or_default(),
        base_name: base.to_string(),
        profile: text(&m["profile"]),
        start_ms: ms("start").unwrap_or_else(now_ms),
        end_ms: ms("end"),
        caller: text(&m["caller"]["number"]),
        callee: text(&m["callee"]["number"]),
        answered_by: text(&m["callee"]["answered_by"]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spares_left_by_a_crash_are_removed_unless_they_hold_a_whole_journal() {
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        let journal = Journal::sample("20260301_110000_in_1_2_abc");
        let whole = serde_json::to_vec_pretty(&journal).unwrap();
        std::fs::write(w.join(".spare-0"), &whole).unwrap();
        // Cut off while the next call's journal was being written.
        std::fs::write(w.join(".spare-1"), &whole[..whole.len() / 2]).unwrap();
        // A disk reserve, and an emptied spare.
        std::fs::write(w.join(".spare-2"), vec![0u8; 65536]).unwrap();
        std::fs::write(w.join(".spare-3"), b"").unwrap();
        // A journal naming a path, not a set.
        let mut odd = Journal::sample("../elsewhere");
        odd.files.clear();
        std::fs::write(w.join(".spare-4"), serde_json::to_vec(&odd).unwrap()).unwrap();

        let found = scan(w).unwrap();
        assert_eq!(
            found.journals.iter().collect::<Vec<_>>(),
            vec![&journal.base_name]
        );
        let left: BTreeSet<String> = std::fs::read_dir(w)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            left,
            BTreeSet::from([format!("{}.journal.json", journal.base_name)]),
            "the whole journal under its own name, nothing else"
        );
        assert_eq!(
            Journal::read(&Journal::path(w, &journal.base_name)).unwrap(),
            journal
        );
    }
}
