//! The quorum's Raft log on disk: `log` holds frames (an entry, a truncation or a purge),
//! each `[length u32][crc32c u32][kind u8][json]`, fsynced before openraft hears the entries
//! are durable; `vote` and `committed` are small files replaced atomically. On open the
//! frames are replayed; a torn or damaged tail (a crash mid-write) is cut off. A purge
//! (after a snapshot) rewrites the file with what is left, so it never grows without bound.
//! Only where each entry lies is kept in memory: entries are read back from the file when
//! asked for (at a start, to apply them; to replicate them), since one entry may hold the
//! records of tens of thousands of partitions.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
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

/// Where an entry's JSON lies in the log file.
#[derive(Clone, Copy)]
struct Stored {
    log_id: LogId<NodeId>,
    pos: u64,
    len: usize,
}

/// An entry's id, read without keeping its payload.
#[derive(serde::Deserialize)]
struct Head {
    log_id: LogId<NodeId>,
}

struct Inner {
    dir: PathBuf,
    file: File,
    /// The file's length: where the next frame goes.
    end: u64,
    entries: BTreeMap<u64, Stored>,
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

/// A frame's kind, its body, and where the body starts in the file.
type Frame<'a> = (u8, &'a [u8], usize);

/// Bytes before a frame's body: length, checksum, kind.
const FRAME_HEAD: usize = 9;

/// The frames of `bytes` (kind, body, the body's position) and where the last whole one
/// ends.
fn frames(bytes: &[u8]) -> (Vec<Frame<'_>>, usize) {
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
        out.push((payload[0], &payload[1..], pos + FRAME_HEAD));
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
        for (kind, body, pos) in frames {
            match kind {
                ENTRY => {
                    let head: Head = serde_json::from_slice(body).map_err(std::io::Error::other)?;
                    let stored = Stored {
                        log_id: head.log_id,
                        pos: pos as u64,
                        len: body.len(),
                    };
                    entries.insert(head.log_id.index, stored);
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
        drop(bytes);
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        file.set_len(end as u64)?;
        file.sync_all()?;
        Ok(LogStore {
            inner: Arc::new(Mutex::new(Inner {
                vote: read_json(&dir.join("vote"))?,
                committed: read_json(&dir.join("committed"))?,
                dir: dir.to_path_buf(),
                file,
                end: end as u64,
                entries,
                last_purged,
            })),
        })
    }
}

impl Inner {
    fn append_frames(&mut self, frames: &[u8]) -> std::io::Result<()> {
        if let Err(e) = self
            .file
            .write_all(frames)
            .and_then(|_| self.file.sync_data())
        {
            // A part may have been written: where the file ends is unknown, and the
            // positions of later entries with it.
            if let Ok(m) = self.file.metadata() {
                self.end = m.len();
            }
            return Err(e);
        }
        self.end += frames.len() as u64;
        Ok(())
    }

    fn body(&self, stored: &Stored) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0; stored.len];
        self.file.read_exact_at(&mut buf, stored.pos)?;
        Ok(buf)
    }

    fn read(&self, stored: &Stored) -> std::io::Result<Entry<TypeConfig>> {
        serde_json::from_slice(&self.body(stored)?).map_err(std::io::Error::other)
    }

    /// Rewrites the log file with the entries kept (after a purge).
    fn rewrite(&mut self) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        if let Some(p) = &self.last_purged {
            bytes.extend(frame(PURGE, &serde_json::to_vec(p)?));
        }
        let mut moved = BTreeMap::new();
        for (index, stored) in &self.entries {
            let body = self.body(stored)?;
            let pos = (bytes.len() + FRAME_HEAD) as u64;
            bytes.extend(frame(ENTRY, &body));
            moved.insert(*index, Stored { pos, ..*stored });
        }
        let path = self.dir.join("log");
        write_atomically(&path, &bytes)?;
        self.file = OpenOptions::new().read(true).append(true).open(&path)?;
        self.end = bytes.len() as u64;
        self.entries = moved;
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
        inner
            .entries
            .range((start, end))
            .map(|(_, stored)| inner.read(stored))
            .collect::<std::io::Result<_>>()
            .map_err(|e| io_error(ErrorVerb::Read, ErrorSubject::Logs, e))
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
            .map(|s| s.log_id)
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
            added.push(Stored {
                log_id: e.log_id,
                pos: inner.end + (bytes.len() + FRAME_HEAD) as u64,
                len: body.len(),
            });
            bytes.extend(frame(ENTRY, &body));
        }
        let result = inner.append_frames(&bytes);
        let failed = result
            .as_ref()
            .err()
            .map(|e| std::io::Error::new(e.kind(), e.to_string()));
        if result.is_ok() {
            for stored in added {
                inner.entries.insert(stored.log_id.index, stored);
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
