//! The quorum's Raft log on disk: `log` holds frames (an entry, a truncation or a purge),
//! each `[length u32][crc32c u32][kind u8][json]`, fsynced before openraft hears the entries
//! are durable; `vote` and `committed` are small files replaced atomically. On open the
//! frames are replayed; a torn or damaged tail (a crash mid-write) is cut off. A purge
//! (after a snapshot) rewrites the file with what is left, so it never grows without bound.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader, Vote,
};
use tokio::sync::Mutex;

use super::{NodeId, StorageError, TypeConfig, io_error};

const ENTRY: u8 = 1;
const TRUNCATE: u8 = 2;
const PURGE: u8 = 3;

struct Inner {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

/// The log store; clones share it (openraft reads through a clone while it writes).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut payload = vec![kind];
    payload.extend_from_slice(body);
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The frames of `bytes` and where the last whole one ends.
fn frames(bytes: &[u8]) -> (Vec<(u8, &[u8])>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(head) = bytes.get(pos..pos + 8) {
        let len = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
        let crc = u32::from_be_bytes(head[4..].try_into().unwrap());
        let Some(payload) = bytes.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if payload.is_empty() || crc32c::crc32c(payload) != crc {
            break;
        }
        out.push((payload[0], &payload[1..]));
        pos += 8 + len;
    }
    (out, pos)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl LogStore {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("log");
        let mut bytes = Vec::new();
        if path.exists() {
            File::open(&path)?.read_to_end(&mut bytes)?;
        }
        let (frames, end) = frames(&bytes);
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        for (kind, body) in frames {
            match kind {
                ENTRY => {
                    let e: Entry<TypeConfig> =
                        serde_json::from_slice(body).map_err(std::io::Error::other)?;
                    entries.insert(e.log_id.index, e);
                }
                TRUNCATE => {
                    let from: u64 = serde_json::from_slice(body).map_err(std::io::Error::other)?;
                    entries.split_off(&from);
                }
                PURGE => {
                    let upto: LogId<NodeId> =
                        serde_json::from_slice(body).map_err(std::io::Error::other)?;
                    entries = entries.split_off(&(upto.index + 1));
                    last_purged = Some(upto);
                }
                _ => break,
            }
        }
        if end < bytes.len() {
            tracing::warn!(dir = %dir.display(), kept = end, size = bytes.len(), "cutting a torn tail off the metadata log");
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        file.set_len(end as u64)?;
        file.sync_all()?;
        Ok(LogStore {
            inner: Arc::new(Mutex::new(Inner {
                vote: read_json(&dir.join("vote"))?,
                committed: read_json(&dir.join("committed"))?,
                dir: dir.to_path_buf(),
                file,
                entries,
                last_purged,
            })),
        })
    }
}

impl Inner {
    fn append_frames(&mut self, frames: &[u8]) -> std::io::Result<()> {
        self.file.write_all(frames)?;
        self.file.sync_data()
    }

    /// Rewrites the log file with the entries kept (after a purge).
    fn rewrite(&mut self) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        if let Some(p) = &self.last_purged {
            bytes.extend(frame(PURGE, &serde_json::to_vec(p)?));
        }
        for e in self.entries.values() {
            bytes.extend(frame(ENTRY, &serde_json::to_vec(e)?));
        }
        let path = self.dir.join("log");
        write_atomically(&path, &bytes)?;
        self.file = OpenOptions::new().append(true).open(&path)?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let inner = self.inner.lock().await;
        let start = match range.start_bound() {
            Bound::Included(s) => Bound::Included(*s),
            Bound::Excluded(s) => Bound::Excluded(*s),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(s) => Bound::Included(*s),
            Bound::Excluded(s) => Bound::Excluded(*s),
            Bound::Unbounded => Bound::Unbounded,
        };
        Ok(inner
            .entries
            .range((start, end))
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.inner.lock().await;
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().await;
        let bytes = serde_json::to_vec(vote)
            .map_err(|e| io_error(ErrorVerb::Write, ErrorSubject::Vote, e))?;
        write_atomically(&inner.dir.join("vote"), &bytes)
            .map_err(|e| io_error(ErrorVerb::Write, ErrorSubject::Vote, e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.inner.lock().await.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().await;
        let bytes = serde_json::to_vec(&committed)
            .map_err(|e| io_error(ErrorVerb::Write, ErrorSubject::Store, e))?;
        write_atomically(&inner.dir.join("committed"), &bytes)
            .map_err(|e| io_error(ErrorVerb::Write, ErrorSubject::Store, e))?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        Ok(self.inner.lock().await.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.inner.lock().await;
        let mut bytes = Vec::new();
        let mut added = Vec::new();
        for e in entries {
            let body = serde_json::to_vec(&e)
                .map_err(|err| io_error(ErrorVerb::Write, ErrorSubject::Logs, err))?;
            bytes.extend(frame(ENTRY, &body));
            added.push(e);
        }
        let result = inner.append_frames(&bytes);
        let failed = result
            .as_ref()
            .err()
            .map(|e| std::io::Error::new(e.kind(), e.to_string()));
        if result.is_ok() {
            for e in added {
                inner.entries.insert(e.log_id.index, e);
            }
        }
        callback.log_io_completed(result);
        match failed {
            Some(e) => Err(io_error(ErrorVerb::Write, ErrorSubject::Logs, e)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().await;
        let body = serde_json::to_vec(&log_id.index)
            .map_err(|e| io_error(ErrorVerb::Write, ErrorSubject::Logs, e))?;
        inner
            .append_frames(&frame(TRUNCATE, &body))
            .map_err(|e| io_error(ErrorVerb::Write, ErrorSubject::Logs, e))?;
        inner.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().await;
        inner.entries = inner.entries.split_off(&(log_id.index + 1));
        inner.last_purged = Some(log_id);
        inner
            .rewrite()
            .map_err(|e| io_error(ErrorVerb::Write, ErrorSubject::Logs, e))
    }
}
