//! Opening a log: find the segments, and after an unclean shutdown check every batch written
//! since the last flush (CRC, framing, offsets), cutting a torn or corrupt tail.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use crate::checkpoint::{self, EpochCache};
use crate::config::LogConfig;
use crate::error::{IoContext, Result};
use crate::segment::Segment;
use crate::segment_map::SegmentMap;

pub(crate) struct Opened {
    pub segments: SegmentMap,
    pub start_offset: u64,
    pub end_offset: u64,
    pub recovery_point: u64,
    /// Whether the recovery point file holds `recovery_point` (a clean shutdown does not
    /// write it: its marker makes it moot, and the next checkpoint pass writes it).
    pub recovery_point_written: bool,
    /// After an unclean shutdown: the base of the first segment recovery had to check.
    pub recovered_from: Option<u64>,
    pub rolling_base_ms: Option<i64>,
    pub epochs: EpochCache,
}

fn parse_base(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

pub(crate) fn open(dir: &Arc<Path>, config: &LogConfig) -> Result<Opened> {
    fs::create_dir_all(dir).at(dir)?;
    crate::compact::recover_swaps(dir)?;
    let mut logs = BTreeMap::new();
    let mut index_files = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") || name.ends_with(".deleted") {
            let _ = fs::remove_file(entry.path());
        } else if let Some(base) = parse_base(&name, "log") {
            let size = entry.metadata().at(&entry.path())?.len();
            logs.insert(base, size);
        } else if let Some(base) = parse_base(&name, "index")
            .or_else(|| parse_base(&name, "timeindex"))
            .or_else(|| parse_base(&name, "txnindex"))
        {
            index_files.push((base, entry.path()));
        }
    }
    // An index without its log is left over from a deletion that did not finish.
    for (base, path) in index_files {
        if !logs.contains_key(&base) {
            let _ = fs::remove_file(path);
        }
    }

    let clean = dir.join(checkpoint::CLEAN_SHUTDOWN).exists();
    let saved_start = checkpoint::read_offset(dir, checkpoint::LOG_START_OFFSET);
    let mut segments = SegmentMap::default();
    if logs.is_empty() {
        let base = saved_start.unwrap_or(0);
        segments.insert(Segment::create(dir, base)?);
    }
    for (&base, &size) in &logs {
        let seg = Segment::existing(dir, base, size);
        seg.set_interval(config.index_interval_bytes);
        segments.insert(Arc::new(seg));
    }

    let recovery_point = if clean {
        u64::MAX
    } else {
        checkpoint::read_offset(dir, checkpoint::RECOVERY_POINT).unwrap_or(0)
    };
    let recovered_from =
        (!clean && !logs.is_empty()).then(|| first_unsafe(&segments, recovery_point));
    let mut found_epochs = None;
    if recovered_from.is_some() {
        found_epochs = Some(recover(dir, &mut segments, recovery_point)?);
    }

    let last = segments.last().unwrap().clone();
    let end_offset = last.next_offset_unkept()?;
    let first_base = segments.first().unwrap().base_offset;
    let start_offset = saved_start
        .unwrap_or(first_base)
        .max(first_base)
        .min(end_offset);
    // The cut to the log's bounds is made in memory only: every open makes the same cut
    // from the same file, and the next write of the file writes the result. (An empty
    // log's latest epoch starts at its end and is cut at every open: writing that took a
    // rename per partition.)
    let cut = |mut epochs: EpochCache| {
        epochs.drop_from_end(end_offset);
        epochs.drop_before(start_offset);
        epochs
    };
    let loaded = EpochCache::load(dir);
    let mut epochs = loaded.clone();
    // Its last writes may not have reached the disk (it is written without fsync): what
    // recovery read says what they were.
    if let Some((scan_start, found)) = found_epochs {
        epochs.rebuild_from(scan_start, &found);
    }
    let epochs = cut(epochs);
    if epochs != cut(loaded) {
        epochs.save(dir)?;
    }
    let rolling_base_ms = match last.read_header(0)? {
        Some(h) if last.size() > 0 => Some(h.max_timestamp.min(crate::log::now_ms())),
        _ => None,
    };

    // Both made durable by one sync for all the logs opened (`crate::durable`), before
    // anything is written to them.
    if clean {
        fs::remove_file(dir.join(checkpoint::CLEAN_SHUTDOWN)).at(dir)?;
        crate::durable::sync_later(dir);
    } else if !logs.is_empty() {
        // What recovery kept was read back from the files, but may still sit only in the page
        // cache after a process crash: durable before the recovery point says recovered.
        let first_recovered = first_unsafe(&segments, recovery_point);
        for seg in segments.from(first_recovered) {
            seg.persist_indexes()?;
        }
        if recovery_point != end_offset {
            crate::durable::write_later(
                dir,
                checkpoint::RECOVERY_POINT,
                checkpoint::offset_file(end_offset).as_bytes(),
            )?;
        }
    }
    Ok(Opened {
        segments,
        start_offset,
        end_offset,
        recovery_point: end_offset,
        recovery_point_written: !clean,
        recovered_from,
        rolling_base_ms,
        epochs,
    })
}

/// Scans the segments that may hold batches at or after `recovery_point`. The first damage
/// found ends the log: the segment is cut there and every later segment is deleted.
/// Returns the offset where the check started and the epochs of the batches kept from
/// there (see `ScanOutcome::epochs`).
fn recover(
    dir: &Path,
    segments: &mut SegmentMap,
    recovery_point: u64,
) -> Result<(u64, Vec<(i32, u64)>)> {
    let mut found_epochs: Vec<(i32, u64)> = Vec::new();
    let mut scan_start = None;
    let first = first_unsafe(segments, recovery_point);
    let bases: Vec<u64> = segments.from(first).iter().map(|s| s.base_offset).collect();
    let mut damaged_at: Option<u64> = None;
    for (i, base) in bases.iter().enumerate() {
        let seg = segments.get(*base).expect("listed above").clone();
        if damaged_at.is_some() {
            tracing::warn!(segment = %seg.log_path().display(), "deleting segment after damage");
            segments.remove(*base);
            seg.delete_files()?;
            continue;
        }
        // Batches below the recovery point were fsynced and need no check; the index that
        // was fsynced with them says where the unchecked part starts.
        let (from, expected) = if *base <= recovery_point && i == 0 {
            let rel = (recovery_point - base).min(u32::MAX as u64) as u32;
            match crate::index::OffsetIndex::load(&index_path(dir, *base), seg.size()) {
                Some(idx) => match idx.floor_entry(rel) {
                    Some((key, pos)) => (pos as u64, base + key as u64),
                    None => (0, *base),
                },
                None => (0, *base),
            }
        } else {
            (0, *base)
        };
        scan_start.get_or_insert(expected);
        let outcome = seg.scan_valid(from, expected)?;
        for &(epoch, offset) in &outcome.epochs {
            if offset < outcome.next_offset && found_epochs.last().map(|e| e.0) != Some(epoch) {
                found_epochs.push((epoch, offset));
            }
        }
        if let Some(why) = &outcome.damage {
            tracing::warn!(segment = %seg.log_path().display(), valid_bytes = outcome.valid_bytes,
                "{why}; truncating the log at offset {}", outcome.next_offset);
            damaged_at = Some(outcome.next_offset);
        }
        if outcome.valid_bytes == 0 && i > 0 && damaged_at.is_some() {
            segments.remove(*base);
            seg.delete_files()?;
            continue;
        }
        seg.reset_after_recovery(outcome.valid_bytes)?;
        // A segment must continue where the previous one ended; otherwise what follows is
        // not part of this log.
        if damaged_at.is_none()
            && let Some(next) = segments.from(base + 1).first()
            && next.base_offset != outcome.next_offset
        {
            tracing::warn!(segment = %next.log_path().display(),
                "segment does not start where the previous one ends ({}); dropping the rest",
                outcome.next_offset);
            damaged_at = Some(outcome.next_offset);
        }
    }
    Ok((scan_start.unwrap_or(recovery_point), found_epochs))
}

/// Base offset of the segment holding `recovery_point`: recovery starts there.
fn first_unsafe(segments: &SegmentMap, recovery_point: u64) -> u64 {
    segments
        .at_or_before(recovery_point)
        .or(segments.first())
        .unwrap()
        .base_offset
}

fn index_path(dir: &Path, base: u64) -> std::path::PathBuf {
    dir.join(crate::segment::file_name(base, "index"))
}
