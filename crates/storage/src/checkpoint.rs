//! Small state files next to the segments, written atomically (temp file, fsync, rename) so
//! a crash leaves either the old or the new version, never half of one.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use smallvec::SmallVec;

use crate::error::{IoContext, Result};

pub(crate) const RECOVERY_POINT: &str = "recovery-point-checkpoint";
/// The replica's high watermark, as the broker last saw it (Kafka's
/// replication-offset-checkpoint, one per partition here).
pub(crate) const HIGH_WATERMARK: &str = "high-watermark-checkpoint";
pub(crate) const LOG_START_OFFSET: &str = "log-start-offset-checkpoint";
pub(crate) const LEADER_EPOCHS: &str = "leader-epoch-checkpoint";
pub(crate) const CLEAN_SHUTDOWN: &str = ".clean-shutdown";

const VERSION: &str = "0";

pub(crate) fn write_atomically(dir: &Path, name: &str, contents: &str) -> Result<()> {
    // A queued write of the same file must not land after this one.
    crate::durable::settle_for(dir);
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut f = File::create(&tmp).at(&tmp)?;
    f.write_all(contents.as_bytes()).at(&tmp)?;
    f.sync_all().at(&tmp)?;
    fs::rename(&tmp, &path).at(&path)?;
    sync_dir(dir)
}

/// [`write_atomically`] without its fsyncs, for a file the log can rebuild after a power
/// loss (the leader epoch checkpoint, from the batches recovery checks). A process crash
/// still finds either the old or the new version; the fsync comes with the next one of the
/// log ([`sync_file`]), or the next [`crate::settle`].
pub(crate) fn write_unsynced(dir: &Path, name: &str, contents: &str) -> Result<()> {
    crate::durable::settle_for(dir);
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    fs::write(&tmp, contents).at(&tmp)?;
    fs::rename(&tmp, &path).at(&path)
}

/// fsync of `dir/name` and of `dir`, when the file exists.
pub(crate) fn sync_file(dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    match File::open(&path) {
        Ok(f) => f.sync_all().at(&path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at(&path),
    }
    sync_dir(dir)
}

/// Checkpoint files of many logs made durable together (the periodic recovery point and
/// high watermark checkpoints): every file written, one sync per filesystem, then every
/// rename. Kafka keeps one such file per data directory; here each log has its own, and a
/// pass of two fsyncs per file over tens of thousands of partitions took minutes of disk
/// time. A rename may land after a newer value written meanwhile by the log itself: these
/// files are lower bounds (recovery and the high watermark start from them), so an older
/// value is safe, and the next pass writes the newer one.
#[derive(Default)]
pub struct CheckpointBatch {
    files: Vec<(std::path::PathBuf, &'static str, String)>,
}

impl CheckpointBatch {
    pub(crate) fn push(&mut self, dir: &Path, name: &'static str, contents: String) {
        self.files.push((dir.to_path_buf(), name, contents));
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Writes them all. A log deleted meanwhile is skipped; the first other error is
    /// returned once the rest are done.
    pub fn commit(self) -> Result<()> {
        use std::collections::BTreeSet;
        let mut first_error = None;
        let mut written = Vec::new();
        let mut roots = BTreeSet::new();
        for (dir, name, contents) in self.files {
            let tmp = dir.join(format!("{name}.batch.tmp"));
            match fs::write(&tmp, contents) {
                Ok(()) => {
                    roots.insert(dir.parent().unwrap_or(&dir).to_path_buf());
                    written.push((tmp, dir.join(name)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert(Err::<(), _>(e).at(&tmp).unwrap_err());
                }
            }
        }
        for root in &roots {
            if let Err(e) = crate::durable::sync_filesystem(root) {
                // Not durable: renaming could publish files that a power loss empties.
                for (tmp, _) in &written {
                    let _ = fs::remove_file(tmp);
                }
                return Err(e);
            }
        }
        for (tmp, path) in written {
            match fs::rename(&tmp, &path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert(Err::<(), _>(e).at(&path).unwrap_err());
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// `0\n<value>\n`; `None` when missing or unreadable (the caller falls back safely).
pub(crate) fn read_offset(dir: &Path, name: &str) -> Option<u64> {
    let text = fs::read_to_string(dir.join(name)).ok()?;
    let mut lines = text.lines();
    if lines.next()? != VERSION {
        return None;
    }
    lines.next()?.trim().parse().ok()
}

pub(crate) fn write_offset(dir: &Path, name: &str, value: u64) -> Result<()> {
    write_atomically(dir, name, &offset_file(value))
}

pub(crate) fn offset_file(value: u64) -> String {
    format!("{VERSION}\n{value}\n")
}

/// Leader epoch -> first offset written in that epoch; what replication's
/// OffsetForLeaderEpoch will answer from. Kafka's `leader-epoch-checkpoint` format.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EpochCache {
    /// Most logs have one epoch: kept inline, no allocation of its own.
    entries: SmallVec<[(i32, u64); 1]>,
}

impl EpochCache {
    pub(crate) fn load(dir: &Path) -> EpochCache {
        let Ok(text) = fs::read_to_string(dir.join(LEADER_EPOCHS)) else {
            return EpochCache::default();
        };
        let mut lines = text.lines();
        let mut entries = SmallVec::new();
        if lines.next() == Some(VERSION) && lines.next().is_some() {
            for line in lines {
                let mut parts = line.split_whitespace();
                if let (Some(Ok(e)), Some(Ok(o))) = (
                    parts.next().map(str::parse::<i32>),
                    parts.next().map(str::parse::<u64>),
                ) {
                    entries.push((e, o));
                }
            }
        }
        EpochCache { entries }
    }

    pub(crate) fn save(&self, dir: &Path) -> Result<()> {
        let mut s = format!("{VERSION}\n{}\n", self.entries.len());
        for (e, o) in &self.entries {
            s.push_str(&format!("{e} {o}\n"));
        }
        // Without fsync, as Kafka since KAFKA-15046: at a start at which every partition
        // changes epochs, one fsync each took seconds. Made durable before the recovery
        // point passes the batches it describes (`Shared::advance_recovery_point`), and
        // rebuilt past the recovery point from the batches themselves.
        write_unsynced(dir, LEADER_EPOCHS, &s)
    }

    /// Recovery's rebuild: the entries starting at or after `scan_start`, where recovery
    /// started reading, are replaced by the epochs of the batches it found (in order, each
    /// `(epoch, first offset)`). The first batches may continue an epoch that started
    /// earlier: that one keeps its start.
    pub(crate) fn rebuild_from(&mut self, scan_start: u64, found: &[(i32, u64)]) {
        self.drop_from_end(scan_start);
        for &(epoch, offset) in found {
            if epoch < 0 || self.latest_epoch() == Some(epoch) {
                continue;
            }
            while self
                .entries
                .last()
                .is_some_and(|&(e, o)| e >= epoch || o >= offset)
            {
                self.entries.pop();
            }
            self.entries.push((epoch, offset));
        }
    }

    /// A cache of these `(epoch, start offset)` entries, in memory (a copy to decide on, as
    /// replication's state machines do).
    pub fn from_entries(mut entries: Vec<(i32, u64)>) -> EpochCache {
        entries.sort_unstable();
        EpochCache {
            entries: SmallVec::from_vec(entries),
        }
    }

    pub fn entries(&self) -> &[(i32, u64)] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.0)
    }

    /// Records that `epoch` starts at `offset` (Kafka's `LeaderEpochFileCache.assign`).
    /// Nothing changes for the latest epoch at or after its start. Otherwise entries that
    /// would no longer increase go first, those of `epoch` or newer and those starting at or
    /// after `offset`: a replica that led epoch 5 from offset 0 without writing, then
    /// copied a new leader's batches of epoch 4 from offset 0, must answer for epoch 4 from
    /// its log, not say epoch 5 started at 0 (a consumer at epoch 4 would have been sent
    /// back to offset 0 as if the log had been truncated there).
    pub(crate) fn assign(&mut self, dir: &Path, epoch: i32, offset: u64) -> Result<()> {
        if self.assign_in_memory(epoch, offset) {
            self.save(dir)?;
        }
        Ok(())
    }

    /// [`EpochCache::assign`] without writing the file; whether anything changed.
    pub(crate) fn assign_in_memory(&mut self, epoch: i32, offset: u64) -> bool {
        if epoch < 0 {
            return false;
        }
        if let Some(&(latest, start)) = self.entries.last()
            && latest == epoch
            && offset >= start
        {
            return false;
        }
        let before = self.entries.len();
        while self
            .entries
            .last()
            .is_some_and(|&(e, o)| e >= epoch || o >= offset)
        {
            self.entries.pop();
        }
        if self.entries.len() < before {
            tracing::warn!(
                epoch,
                offset,
                removed = before - self.entries.len(),
                "leader epoch entries that no longer increase removed"
            );
        }
        // Most logs only ever see an epoch or two: a first entry takes 16 bytes, not the
        // default first growth's 64.
        self.entries.push((epoch, offset));
        true
    }

    /// Forgets epochs that start at or after `end` (the log was truncated there).
    pub(crate) fn truncate_from_end(&mut self, dir: &Path, end: u64) -> Result<()> {
        if self.drop_from_end(end) {
            self.save(dir)?;
        }
        Ok(())
    }

    /// [`EpochCache::truncate_from_end`] in memory only; whether anything changed.
    pub(crate) fn drop_from_end(&mut self, end: u64) -> bool {
        let keep = self.entries.partition_point(|e| e.1 < end);
        let changed = keep != self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// The log now starts at `start`: the epoch in force there starts there.
    pub(crate) fn truncate_from_start(&mut self, dir: &Path, start: u64) -> Result<()> {
        if self.drop_before(start) {
            self.save(dir)?;
        }
        Ok(())
    }

    /// [`EpochCache::truncate_from_start`] in memory only; whether anything changed.
    pub(crate) fn drop_before(&mut self, start: u64) -> bool {
        let first_kept = self.entries.partition_point(|e| e.1 <= start);
        if first_kept == 0 {
            return false;
        }
        let epoch = self.entries[first_kept - 1].0;
        if first_kept == 1 && self.entries[0].1 == start {
            return false;
        }
        self.entries.drain(..first_kept);
        self.entries.insert(0, (epoch, start));
        true
    }

    /// Kafka's OffsetForLeaderEpoch answer (`LeaderEpochFileCache.endOffsetFor`): for the
    /// latest epoch, the log end; for an older one, the largest epoch at or below it and
    /// the offset where the next epoch starts; for one older than anything known (its
    /// records were deleted), that epoch and where the first known epoch starts; `(-1, -1)`
    /// (undefined) for a negative epoch, one newer than the latest, or an empty cache.
    pub fn end_offset_for(&self, epoch: i32, log_end: u64) -> (i32, i64) {
        const UNDEFINED: (i32, i64) = (-1, -1);
        if epoch < 0 {
            return UNDEFINED;
        }
        if self.latest_epoch() == Some(epoch) {
            return (epoch, log_end as i64);
        }
        let i = self.entries.partition_point(|e| e.0 <= epoch);
        match (
            i.checked_sub(1).map(|f| self.entries[f]),
            self.entries.get(i),
        ) {
            (_, None) => UNDEFINED,
            (None, Some(higher)) => (epoch, higher.1 as i64),
            (Some(floor), Some(higher)) => (floor.0, higher.1 as i64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_writes_every_log_s_files_and_skips_deleted_logs() {
        let root = tempfile::tempdir().unwrap();
        let (a, b, gone) = (
            root.path().join("a-0"),
            root.path().join("b-0"),
            root.path().join("c-0"),
        );
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        write_offset(&a, RECOVERY_POINT, 1).unwrap();
        let mut batch = CheckpointBatch::default();
        batch.push(&a, RECOVERY_POINT, offset_file(7));
        batch.push(&b, HIGH_WATERMARK, offset_file(9));
        batch.push(&gone, HIGH_WATERMARK, offset_file(3));
        assert_eq!(read_offset(&a, RECOVERY_POINT), Some(1));
        batch.commit().unwrap();
        assert_eq!(read_offset(&a, RECOVERY_POINT), Some(7));
        assert_eq!(read_offset(&b, HIGH_WATERMARK), Some(9));
        assert!(!gone.exists());
        let leftovers: Vec<_> = fs::read_dir(&a)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn epoch_cache_persists_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut c = EpochCache::default();
        c.assign(d, 0, 0).unwrap();
        c.assign(d, 0, 10).unwrap(); // same epoch: no new entry
        c.assign(d, 2, 10).unwrap();
        c.assign(d, 5, 30).unwrap();
        assert_eq!(EpochCache::load(d), c);
        // An older epoch ends where the next one starts; one in a gap answers the epoch
        // below it; the latest ends at the log end; newer or negative: undefined.
        assert_eq!(c.end_offset_for(0, 50), (0, 10));
        assert_eq!(c.end_offset_for(1, 50), (0, 10));
        assert_eq!(c.end_offset_for(3, 50), (2, 30));
        assert_eq!(c.end_offset_for(5, 50), (5, 50));
        assert_eq!(c.end_offset_for(9, 50), (-1, -1));
        assert_eq!(c.end_offset_for(-1, 50), (-1, -1));
        assert_eq!(EpochCache::default().end_offset_for(0, 50), (-1, -1));
        c.truncate_from_end(d, 30).unwrap();
        assert_eq!(c.entries(), &[(0, 0), (2, 10)]);
        c.truncate_from_start(d, 15).unwrap();
        assert_eq!(c.entries(), &[(2, 15)]);
        assert_eq!(EpochCache::load(d), c);
        // Epoch 0's records are gone: it is answered with where the first known epoch starts.
        assert_eq!(c.end_offset_for(0, 50), (0, 15));
    }

    #[test]
    fn an_older_epoch_assigned_later_replaces_the_entries_it_contradicts() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Led epoch 5 from offset 0 without writing; then copied epoch 4's batches from 0.
        let mut c = EpochCache::default();
        c.assign(d, 5, 0).unwrap();
        c.assign(d, 4, 0).unwrap();
        assert_eq!(c.entries(), &[(4, 0)]);
        assert_eq!(c.end_offset_for(4, 30), (4, 30));
        // An entry starting after a later-assigned offset goes too; an older one stays.
        let mut c = EpochCache::from_entries(vec![(0, 0), (5, 100)]);
        c.assign(d, 4, 100).unwrap();
        assert_eq!(c.entries(), &[(0, 0), (4, 100)]);
        c.assign(d, 4, 150).unwrap();
        assert_eq!(c.entries(), &[(0, 0), (4, 100)]);
        c.assign(d, 6, 150).unwrap();
        assert_eq!(c.entries(), &[(0, 0), (4, 100), (6, 150)]);
        assert_eq!(EpochCache::load(d), c);
        assert_eq!(c.end_offset_for(5, 200), (4, 150));
    }

    #[test]
    fn offsets_round_trip_and_garbage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        write_offset(dir.path(), RECOVERY_POINT, 42).unwrap();
        assert_eq!(read_offset(dir.path(), RECOVERY_POINT), Some(42));
        fs::write(dir.path().join(RECOVERY_POINT), "junk").unwrap();
        assert_eq!(read_offset(dir.path(), RECOVERY_POINT), None);
    }
}
