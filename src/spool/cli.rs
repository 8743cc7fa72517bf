//! Command-line side of the spool: the text of `callrec uploads status` and the
//! trigger file `callrec uploads retry` leaves for a running spool.

use std::path::Path;

use super::{io, SpoolError, RETRY_TRIGGER};
use crate::db::UploadState;

/// Asks the spool running on `spool_dir` (in another process) to retry every waiting
/// upload now, without waiting for its back-off: `callrec uploads retry`.
pub fn request_retry(spool_dir: &Path) -> Result<(), SpoolError> {
    let path = spool_dir.join(RETRY_TRIGGER);
    std::fs::write(&path, b"retry\n").map_err(io("write", &path))
}

/// The upload queue as text for `callrec uploads status`: one line per set and target.
pub fn status_text(rows: &[crate::db::UploadRow]) -> String {
    let mut out = String::from("STATE    ATTEMPTS  SET  TARGET  INSTANCE  LAST ERROR\n");
    for r in rows {
        out.push_str(&format!(
            "{:<8} {:>8}  {}  {}  {}  {}\n",
            r.state,
            r.attempts,
            r.base_name,
            r.target,
            r.instance.as_deref().unwrap_or("-"),
            r.last_error.as_deref().unwrap_or("-")
        ));
    }
    let pending = rows
        .iter()
        .filter(|r| r.state == UploadState::Pending)
        .count();
    out.push_str(&format!("{pending} of {} uploads pending\n", rows.len()));
    let lost = rows.iter().filter(|r| r.state == UploadState::Lost).count();
    if lost > 0 {
        out.push_str(&format!(
            "{lost} uploads lost (their files left the spool)\n"
        ));
    }
    out
}
