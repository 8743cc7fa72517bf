//! Temporary folders for tests, made by `tempfile`: each is removed when its
//! owner is dropped, also when the test fails, so a run leaves nothing in /tmp.
//! Set CALLREC_TEST_KEEP=1 to keep the folders of a failing test for a look.

use std::path::{Path, PathBuf};
use std::thread;

/// A fresh folder `callrec-PREFIX-XXXXXX` under the system temp dir, removed on
/// drop (kept only when the test fails and CALLREC_TEST_KEEP is set).
#[derive(Debug)]
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    pub fn new(prefix: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("callrec-{prefix}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("create a temporary folder for {prefix}: {e}"));
        let path = dir.path().to_path_buf();
        TestDir {
            dir: Some(dir),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let keep = thread::panicking() && std::env::var_os("CALLREC_TEST_KEEP").is_some();
        if let (true, Some(dir)) = (keep, self.dir.take()) {
            eprintln!("test files kept in {}", dir.keep().display());
        }
    }
}
