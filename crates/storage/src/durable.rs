//! Durability for many logs at once. Closing or opening tens of thousands of partitions one
//! fsync at a time takes minutes (about 0.2 ms each here, and a clean close made ten per
//! partition); instead their writes are made without fsync and queued here, and [`settle`]
//! makes them durable with one `syncfs` per filesystem, in phases that keep the order a
//! crash must respect: file contents before the renames that publish them, everything before
//! the clean-shutdown markers that vouch for it.
//!
//! Until the queue is settled nothing else may be written to those logs: taking a log's
//! writer lock settles first when that log has something queued (an append after a removed
//! clean-shutdown marker that is not yet durable could be followed by a crash that brings
//! the marker back and skips recovery), and so does an immediate checkpoint write (it must
//! not be overtaken by an older queued rename of the same file). SIGKILL before a settle
//! loses only queued renames and markers: the next start recovers, as after any crash.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{IoContext, Result, StorageError};

#[derive(Default)]
struct Pending {
    /// Directories whose filesystems must be synced (one per filesystem is enough; a set of
    /// parents of the logs' directories, usually one per data directory).
    roots: BTreeSet<PathBuf>,
    /// Written temporary files and the names they take once their contents are durable.
    renames: Vec<(PathBuf, PathBuf)>,
    /// Empty files created once everything before them is durable.
    markers: Vec<PathBuf>,
    /// Log directories with a queued rename or marker: opening one settles first.
    dirs: BTreeSet<PathBuf>,
}

static PENDING: Mutex<Option<Pending>> = Mutex::new(None);
static ANY: AtomicBool = AtomicBool::new(false);

fn queue(dir: &Path, f: impl FnOnce(&mut Pending)) {
    let mut guard = PENDING.lock().unwrap();
    let p = guard.get_or_insert_with(Pending::default);
    p.roots.insert(dir.parent().unwrap_or(dir).to_path_buf());
    f(p);
    ANY.store(true, Ordering::Release);
}

/// Writes `dir/name` with `contents` once [`settle`] runs: now to a temporary file, without
/// fsync; renamed over `name` once the temporary file is durable.
pub(crate) fn write_later(dir: &Path, name: &str, contents: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).at(&tmp)?;
    f.write_all(contents).at(&tmp)?;
    let path = dir.join(name);
    queue(dir, |p| {
        p.renames.push((tmp, path));
        p.dirs.insert(dir.to_path_buf());
    });
    Ok(())
}

/// Creates the empty file `dir/name` once everything queued before it is durable.
pub(crate) fn mark_later(dir: &Path, name: &str) {
    let path = dir.join(name);
    queue(dir, |p| {
        p.markers.push(path);
        p.dirs.insert(dir.to_path_buf());
    });
}

/// Something in `dir` was changed without fsync (a removed clean-shutdown marker):
/// [`settle`] syncs it, before anything is written to that log.
pub(crate) fn sync_later(dir: &Path) {
    queue(dir, |p| {
        p.dirs.insert(dir.to_path_buf());
    });
}

/// Whether the log in `dir` has something queued.
pub(crate) fn pending_in(dir: &Path) -> bool {
    ANY.load(Ordering::Acquire)
        && PENDING
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|p| p.dirs.contains(dir))
}

/// Settles the queue if the log in `dir` has something queued, before it is written to or
/// opened again. Other logs' queued writes do not concern it: they wait for the batch's
/// own [`settle`]. A failure is logged (what it concerned is then recovered by the next
/// start, as after a crash).
pub(crate) fn settle_for(dir: &Path) {
    if pending_in(dir)
        && let Err(e) = settle()
    {
        tracing::error!(error = %e, "making queued log writes durable failed");
    }
}

/// Makes every queued write durable, in order: the filesystems synced (temporary files'
/// contents, segment data, removed files), the renames made and synced, then the markers
/// created and synced. Holds the queue meanwhile, so a writer that waited for it finds
/// everything done.
pub fn settle() -> Result<()> {
    let mut guard = PENDING.lock().unwrap();
    let Some(p) = guard.take() else {
        return Ok(());
    };
    ANY.store(false, Ordering::Release);
    let mut first_error = None;
    let sync = |roots: &BTreeSet<PathBuf>, first_error: &mut Option<_>| {
        for root in roots {
            if let Err(e) = sync_filesystem(root)
                && first_error.is_none()
            {
                *first_error = Some(e);
            }
        }
    };
    sync(&p.roots, &mut first_error);
    if let Some(e) = first_error {
        // Not known durable: publishing the files or the markers could vouch for lost data.
        for (tmp, _) in &p.renames {
            let _ = fs::remove_file(tmp);
        }
        return Err(e);
    }
    for (tmp, path) in &p.renames {
        match fs::rename(tmp, path) {
            Ok(()) => {}
            // The log was deleted meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                first_error.get_or_insert(io_error(path, e));
            }
        }
    }
    if !p.renames.is_empty() {
        sync(&p.roots, &mut first_error);
    }
    if first_error.is_none() && !p.markers.is_empty() {
        for m in &p.markers {
            match File::create(m) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert(io_error(m, e));
                }
            }
        }
        sync(&p.roots, &mut first_error);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn io_error(path: &Path, source: io::Error) -> StorageError {
    StorageError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Flushes the whole filesystem holding `dir` (Linux `syncfs`; elsewhere `sync`, which
/// flushes them all). A directory deleted meanwhile needs nothing.
pub(crate) fn sync_filesystem(dir: &Path) -> Result<()> {
    let f = match File::open(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at(dir),
    };
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs only reads the descriptor, which `f` keeps open for the call.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error()).at(dir);
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        drop(f);
        // SAFETY: sync takes no arguments and cannot fail.
        unsafe { libc::sync() };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The queue is process-wide: one test exercises it, start to end.
    #[test]
    fn queued_writes_appear_only_once_settled_and_in_order() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("t-0");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("cp"), "old").unwrap();
        write_later(&dir, "cp", b"new").unwrap();
        mark_later(&dir, "marker");
        assert!(pending_in(&dir));
        assert!(!pending_in(&root.path().join("t-1")));
        assert_eq!(fs::read_to_string(dir.join("cp")).unwrap(), "old");
        assert!(!dir.join("marker").exists());

        settle().unwrap();
        assert_eq!(fs::read_to_string(dir.join("cp")).unwrap(), "new");
        assert!(dir.join("marker").exists());
        assert!(!dir.join("cp.tmp").exists());
        assert!(!pending_in(&dir));

        // A log deleted before the queue settles is no error.
        write_later(&dir, "cp", b"newer").unwrap();
        mark_later(&dir, "marker2");
        fs::remove_dir_all(&dir).unwrap();
        settle().unwrap();
        assert!(!dir.exists());
    }
}
