//! Storage failures (a full disk, a vanished directory, an I/O error) reach the server log at
//! ERROR with the partition, the path and the OS error: the client only sees
//! KAFKA_STORAGE_ERROR. A full disk fails every append, so the lines are rate-limited, with
//! a count of what was left out; and a log directory low on space is warned about at start.

use std::path::Path;
use std::sync::Mutex;

use strom_storage::StorageError;

/// At most one storage error line per this many milliseconds, process-wide.
const INTERVAL_MS: i64 = 5_000;

/// Whether a line may be written now, and how many were left out since the last one.
#[derive(Debug, Default)]
pub struct Limiter {
    last_ms: Option<i64>,
    suppressed: u64,
}

impl Limiter {
    /// `Some(left out since the last line)` when a line may be written at `now_ms`.
    pub fn allow(&mut self, now_ms: i64) -> Option<u64> {
        if self.last_ms.is_some_and(|last| now_ms - last < INTERVAL_MS) {
            self.suppressed += 1;
            return None;
        }
        self.last_ms = Some(now_ms);
        Some(std::mem::take(&mut self.suppressed))
    }
}

static LIMITER: Mutex<Limiter> = Mutex::new(Limiter {
    last_ms: None,
    suppressed: 0,
});

/// Logs a storage failure of partition `topic`-`partition` during `action`, rate-limited.
/// Errors that are the client's (bad records, sizes, offsets) are not storage failures.
pub fn report(topic: &str, partition: i32, action: &str, e: &StorageError) {
    let StorageError::Io { path, source } = e else {
        return;
    };
    let now = strom_storage::clock::now_ms();
    let Some(suppressed) = LIMITER.lock().unwrap().allow(now) else {
        return;
    };
    tracing::error!(
        topic,
        partition,
        path = %path,
        error = %source,
        suppressed,
        "storage failure while {action}: clients get KAFKA_STORAGE_ERROR until it is fixed (is the disk full?)"
    );
}

/// Free and total bytes of the file system holding `dir`.
pub fn space(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let block = st.f_frsize as u64;
    Some((st.f_bavail as u64 * block, st.f_blocks as u64 * block))
}

/// Below this much free space (or 5 % of the file system) a log directory is warned about.
const LOW_SPACE_BYTES: u64 = 1 << 30;

/// Warns when `dir` has little free space left; returns whether it did.
pub fn warn_if_low_on_space(dir: &Path) -> bool {
    let Some((free, total)) = space(dir) else {
        return false;
    };
    let low = free < LOW_SPACE_BYTES || free.saturating_mul(20) < total;
    if low {
        tracing::warn!(
            dir = %dir.display(),
            free_mb = free >> 20,
            total_mb = total >> 20,
            "the log directory is low on free space: appends fail with KAFKA_STORAGE_ERROR once it is full"
        );
    }
    low
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let mut l = Limiter::default();
        assert_eq!(l.allow(1_000), Some(0));
        assert_eq!(l.allow(1_001), None);
        assert_eq!(l.allow(5_999), None);
        assert_eq!(l.allow(6_000), Some(2));
        assert_eq!(l.allow(6_001), None);
        assert_eq!(l.allow(60_000), Some(1));
    }

    #[test]
    fn free_space_is_read_from_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let (free, total) = space(dir.path()).unwrap();
        assert!(total > 0 && free <= total);
        assert!(space(&dir.path().join("missing")).is_none());
    }
}
