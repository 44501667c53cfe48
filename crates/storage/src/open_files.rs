//! Segment files held open, process-wide, within a budget: a broker with more partitions
//! than its open files limit allows closes the least recently used segment files and opens
//! them again when they are next read or written (Kafka keeps every segment open and asks
//! for a limit that high; here the limit may be lower than the partitions). Unlimited
//! until the server sets a budget.
//!
//! A file in use stays open: a reader holds its own reference, so closing only drops the
//! segment's. A pinned file (a segment the cleaner replaced on disk, which must go on
//! reading its own bytes) is never closed.

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

static BUDGET: AtomicUsize = AtomicUsize::new(usize::MAX);
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// Counts uses; a slot keeps the low 32 bits of its last (8 bytes less in every segment),
/// and ages are taken modulo 2^32: only a file unused for four billion uses of others
/// looks younger than it is.
static CLOCK: AtomicU32 = AtomicU32::new(0);
static SLOTS: Mutex<Vec<Weak<dyn HoldsFile>>> = Mutex::new(Vec::new());

/// What a slot lives in (a segment: the slot is one of its fields rather than an
/// allocation of its own, 64 bytes per partition), held weakly by the budget's registry.
pub(crate) trait HoldsFile: Send + Sync {
    fn slot(&self) -> &FileSlot;
}

/// At most `n` segment files open at once (some more while they are in use).
pub fn set_budget(n: usize) {
    BUDGET.store(n.max(16), Ordering::Relaxed);
}

/// Segment files open now.
pub fn open_now() -> usize {
    OPEN.load(Ordering::Relaxed)
}

/// One segment's file, open or not.
#[derive(Default)]
pub(crate) struct FileSlot {
    file: Mutex<Option<Arc<File>>>,
    last_used: AtomicU32,
    pinned: AtomicBool,
    /// The segment's files were deleted or renamed while closed: opening the path again
    /// could open another segment's file of the same name, so it is not reopened.
    gone: AtomicBool,
}

impl FileSlot {
    /// The open file, or `open()`'s (run under this slot's lock, so that a deletion
    /// ([`FileSlot::retire`]) cannot slip between the check and the open), kept and counted
    /// until closed for the budget.
    pub fn get<H: HoldsFile + 'static>(
        owner: &Arc<H>,
        open: impl FnOnce() -> std::io::Result<File>,
    ) -> std::io::Result<Arc<File>> {
        let this = owner.slot();
        this.last_used
            .store(CLOCK.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        let opened = {
            let mut slot = this.file.lock().unwrap();
            if let Some(f) = slot.as_ref() {
                return Ok(f.clone());
            }
            if this.gone.load(Ordering::Relaxed) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the segment was deleted",
                ));
            }
            let f = Arc::new(open()?);
            *slot = Some(f.clone());
            f
        };
        register(owner);
        Ok(opened)
    }

    /// Keeps `file`, just created, as `owner`'s slot's.
    pub fn keep<H: HoldsFile + 'static>(owner: &Arc<H>, file: Arc<File>) -> Arc<File> {
        {
            let mut slot = owner.slot().file.lock().unwrap();
            if let Some(f) = slot.as_ref() {
                return f.clone();
            }
            *slot = Some(file.clone());
        }
        register(owner);
        file
    }

    /// Never closed for the budget from now on.
    pub fn pin(&self) {
        let _slot = self.file.lock().unwrap();
        self.pinned.store(true, Ordering::Relaxed);
    }

    /// The segment's files are about to be deleted or renamed: an open file stays open
    /// (readers go on reading the old bytes, as from any deleted file), a closed one is
    /// not opened again.
    pub fn retire(&self) {
        let slot = self.file.lock().unwrap();
        if slot.is_some() {
            self.pinned.store(true, Ordering::Relaxed);
        } else {
            self.gone.store(true, Ordering::Relaxed);
        }
    }

    fn close(&self) -> bool {
        let mut slot = self.file.lock().unwrap();
        // Checked under the lock: a pin may have come after the candidates were chosen.
        if self.pinned.load(Ordering::Relaxed) {
            return false;
        }
        if slot.take().is_some() {
            OPEN.fetch_sub(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

impl Drop for FileSlot {
    fn drop(&mut self) {
        if self.file.get_mut().unwrap().take().is_some() {
            OPEN.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Counts a newly opened file, and closes others when over the budget.
fn register<H: HoldsFile + 'static>(owner: &Arc<H>) {
    let open = OPEN.fetch_add(1, Ordering::Relaxed) + 1;
    {
        let mut slots = SLOTS.lock().unwrap();
        slots.push(Arc::downgrade(owner) as Weak<dyn HoldsFile>);
        // Slots of dropped segments go now and then, not only when over the budget.
        if slots.len() > 2 * open + 1024 {
            slots.retain(|w| w.strong_count() > 0);
        }
    }
    if open > BUDGET.load(Ordering::Relaxed) {
        close_least_recently_used();
    }
}

/// Closes the least recently used tenth of the budget (a pass every so many opens, not one
/// per open).
fn close_least_recently_used() {
    let budget = BUDGET.load(Ordering::Relaxed);
    let mut slots = SLOTS.lock().unwrap();
    let mut live: Vec<Arc<dyn HoldsFile>> = Vec::with_capacity(slots.len());
    slots.retain(|w| match w.upgrade() {
        Some(s) if s.slot().file.lock().unwrap().is_some() => {
            live.push(s);
            true
        }
        _ => false,
    });
    let target = budget - budget / 10;
    let excess = OPEN.load(Ordering::Relaxed).saturating_sub(target);
    let mut candidates: Vec<&FileSlot> = live
        .iter()
        .map(|s| s.slot())
        .filter(|s| !s.pinned.load(Ordering::Relaxed))
        .collect();
    let now = CLOCK.load(Ordering::Relaxed);
    // Oldest first.
    candidates.sort_unstable_by_key(|s| {
        std::cmp::Reverse(now.wrapping_sub(s.last_used.load(Ordering::Relaxed)))
    });
    let mut closed = 0;
    for s in candidates {
        if closed >= excess {
            break;
        }
        if s.close() {
            closed += 1;
        }
    }
    slots.retain(|w| {
        w.upgrade()
            .is_some_and(|s| s.slot().file.lock().unwrap().is_some())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    impl HoldsFile for FileSlot {
        fn slot(&self) -> &FileSlot {
            self
        }
    }

    #[test]
    fn beyond_the_budget_the_least_recently_used_files_close_and_reopen_on_use() {
        // The budget is process-wide: this test alone in the storage crate sets it.
        let dir = tempfile::tempdir().unwrap();
        let before = open_now();
        set_budget(20);
        let slots: Vec<Arc<FileSlot>> = (0..40).map(|_| Arc::default()).collect();
        let opens = AtomicUsize::new(0);
        let open = |i: usize| {
            let path = dir.path().join(i.to_string());
            let opens = &opens;
            move || {
                opens.fetch_add(1, Ordering::Relaxed);
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(path)
            }
        };
        slots[0].pin();
        for (i, s) in slots.iter().enumerate() {
            FileSlot::get(s, open(i)).unwrap();
        }
        assert!(open_now() - before <= 20, "{} open", open_now() - before);
        // The pinned one and the latest ones are still open; an early one opens again.
        let opened = opens.load(Ordering::Relaxed);
        FileSlot::get(&slots[0], open(0)).unwrap();
        FileSlot::get(&slots[39], open(39)).unwrap();
        assert_eq!(opens.load(Ordering::Relaxed), opened);
        FileSlot::get(&slots[1], open(1)).unwrap();
        assert_eq!(opens.load(Ordering::Relaxed), opened + 1);
        // A file in use outlives its closing: the reader's reference keeps it.
        let held = FileSlot::get(&slots[2], open(2)).unwrap();
        for (i, s) in slots.iter().enumerate().skip(3) {
            FileSlot::get(s, open(i)).unwrap();
        }
        use std::io::Write;
        (&*held).write_all(b"still open").unwrap();
        // Retired while closed: not opened again (another file may have its name now).
        let closed = slots
            .iter()
            .position(|s| s.file.lock().unwrap().is_none())
            .unwrap();
        slots[closed].retire();
        let e = FileSlot::get(&slots[closed], open(closed)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        // Retired while open: kept open, never closed for the budget.
        slots[39].retire();
        assert!(!slots[39].close());
        drop(slots);
        assert_eq!(open_now(), before);
        set_budget(usize::MAX);
    }
}
