//! The quorum's state machine: committed metadata batches applied to a metadata image. A
//! snapshot is the image's own records (`MetadataImage::to_records`) with openraft's
//! metadata, kept on disk as `snapshot` so that a restart starts from it and the log before
//! it can be purged.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StoredMembership,
};
use strom_metadata::codec;
use strom_metadata::image::MetadataImage;
use tokio::sync::{Mutex, watch};

use super::{NodeId, StorageError, TypeConfig, io_error};

type Meta = SnapshotMeta<NodeId, openraft::BasicNode>;

struct Inner {
    dir: PathBuf,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    /// The metadata of the snapshot kept on disk. Its data (the whole image, about a
    /// hundred bytes per partition) is read back from the file when asked for: only a
    /// follower too far behind for the log needs it.
    snapshot: Option<Meta>,
    snapshots_built: u64,
    /// The last entries applied, oldest first, as (offset after the entry, its records as
    /// `codec` bytes; empty for entries without records): an observer a little behind is
    /// sent these instead of the whole image.
    recent: std::collections::VecDeque<(u64, Vec<u8>)>,
    /// The bytes `recent` holds.
    recent_bytes: usize,
}

/// How much of the latest entries is kept for observers: beyond it, one that fell further
/// behind gets the whole image. 1 MiB of records is about the image of 10,000 partitions
/// (a hundred bytes each): further behind, the entries would cost no less to send than the
/// image; and every restart of a broker adds a record per partition it holds (4 MiB kept up
/// to 400 bytes per partition of a 10,000-partition broker).
const RECENT_ENTRIES: usize = 4096;
const RECENT_BYTES: usize = 1 << 20;

/// What an observer at some offset needs to be current.
pub enum Catchup {
    /// It is current.
    Current,
    /// These entries' records, in order, bring its image to the offset.
    Entries(Vec<Vec<u8>>),
    /// It is too far behind (or ahead, from another history): the whole image.
    Image(Arc<MetadataImage>),
}

impl Inner {
    fn remember(&mut self, offset: u64, mut records: Vec<u8>) {
        // Read from the log store by doubling its vector: up to half of it was spare, kept
        // for as long as the entry is (about 25 bytes per partition created).
        records.shrink_to_fit();
        self.recent_bytes += records.len();
        self.recent.push_back((offset, records));
        while self.recent.len() > RECENT_ENTRIES || self.recent_bytes > RECENT_BYTES {
            match self.recent.pop_front() {
                Some((_, r)) => self.recent_bytes -= r.len(),
                None => break,
            }
        }
    }

    fn forget_recent(&mut self) {
        self.recent.clear();
        self.recent_bytes = 0;
    }
}

/// The state machine; clones share it. Readers watch the image.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<Inner>>,
    image: Arc<watch::Sender<Arc<MetadataImage>>>,
    unsnapshotted: Arc<AtomicU64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: Meta,
    /// `codec`-encoded records of the image.
    data: Vec<u8>,
}

fn decode_image(data: &[u8]) -> Result<MetadataImage, StorageError> {
    let records = codec::decode(data).ok_or_else(|| {
        io_error(
            ErrorVerb::Read,
            ErrorSubject::StateMachine,
            std::io::Error::other("a damaged metadata snapshot"),
        )
    })?;
    Ok(MetadataImage::default().apply(&records).0)
}

impl StateMachine {
    /// Opens the state machine in `dir`, from its snapshot if there is one.
    pub fn open(dir: &Path) -> Result<StateMachine, StorageError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io_error(ErrorVerb::Write, ErrorSubject::StateMachine, e))?;
        let stored = Self::read_stored(dir)?;
        let (image, inner) = match stored {
            Some(s) => (
                MetadataImage {
                    offset: s.meta.last_log_id.map_or(0, |l| l.index + 1),
                    ..decode_image(&s.data)?
                },
                Inner {
                    dir: dir.to_path_buf(),
                    last_applied: s.meta.last_log_id,
                    membership: s.meta.last_membership.clone(),
                    snapshot: Some(s.meta),
                    snapshots_built: 0,
                    recent: Default::default(),
                    recent_bytes: 0,
                },
            ),
            None => (
                MetadataImage::default(),
                Inner {
                    dir: dir.to_path_buf(),
                    last_applied: None,
                    membership: StoredMembership::default(),
                    snapshot: None,
                    snapshots_built: 0,
                    recent: Default::default(),
                    recent_bytes: 0,
                },
            ),
        };
        Ok(StateMachine {
            inner: Arc::new(Mutex::new(inner)),
            image: Arc::new(watch::channel(Arc::new(image)).0),
            unsnapshotted: Arc::default(),
        })
    }

    /// The image as of the last applied entry.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    /// The image with the offset after the last entry it includes (0: none yet), read
    /// together.
    pub async fn applied(&self) -> (u64, Arc<MetadataImage>) {
        let inner = self.inner.lock().await;
        let offset = inner.last_applied.map_or(0, |l| l.index + 1);
        (offset, self.image())
    }

    /// The offset of the image now, and what an observer whose image is at `after` needs
    /// to reach it (the entries in between only if it takes them), read together.
    pub async fn catchup(&self, after: u64, entries_ok: bool) -> (u64, Catchup) {
        let inner = self.inner.lock().await;
        let offset = inner.last_applied.map_or(0, |l| l.index + 1);
        if after == offset {
            return (offset, Catchup::Current);
        }
        // The entry right after `after` must still be here, and nothing may be missing
        // between it and the last one.
        let first = inner.recent.iter().position(|(o, _)| *o == after + 1);
        let contiguous = first.is_some_and(|i| inner.recent.len() - i == (offset - after) as usize);
        match first {
            Some(i) if entries_ok && after < offset && contiguous => (
                offset,
                Catchup::Entries(
                    inner
                        .recent
                        .iter()
                        .skip(i)
                        .map(|(_, r)| r.clone())
                        .collect(),
                ),
            ),
            _ => (offset, Catchup::Image(self.image())),
        }
    }

    /// Follows the image as entries are applied.
    pub fn watch(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.image.subscribe()
    }

    /// Bytes of records applied since the last snapshot (built, installed or loaded): the
    /// quorum builds one when they pass `metadata.log.max.record.bytes.between.snapshots`.
    pub fn unsnapshotted_bytes(&self) -> u64 {
        self.unsnapshotted.load(Ordering::Acquire)
    }

    fn read_stored(dir: &Path) -> Result<Option<StoredSnapshot>, StorageError> {
        match std::fs::read(dir.join("snapshot")) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                io_error(ErrorVerb::Read, ErrorSubject::StateMachine, e)
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(ErrorVerb::Read, ErrorSubject::StateMachine, e)),
        }
    }

    fn save(dir: &Path, meta: &Meta, data: &[u8]) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(&StoredSnapshot {
            meta: meta.clone(),
            data: data.to_vec(),
        })
        .map_err(|e| io_error(ErrorVerb::Write, ErrorSubject::StateMachine, e))?;
        let path = dir.join("snapshot");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &bytes)
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| io_error(ErrorVerb::Write, ErrorSubject::StateMachine, e))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let mut inner = self.inner.lock().await;
        let data = codec::encode(&self.image.borrow().to_records());
        inner.snapshots_built += 1;
        let snapshot_id = match inner.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, inner.snapshots_built),
            None => format!("--{}", inner.snapshots_built),
        };
        let meta = Meta {
            last_log_id: inner.last_applied,
            last_membership: inner.membership.clone(),
            snapshot_id,
        };
        Self::save(&inner.dir, &meta, &data)?;
        inner.snapshot = Some(meta.clone());
        self.unsnapshotted.store(0, Ordering::Release);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, openraft::BasicNode>,
        ),
        StorageError,
    > {
        let inner = self.inner.lock().await;
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.inner.lock().await;
        let mut image = (*self.image.borrow().clone()).clone();
        let mut answers = Vec::new();
        for e in entries {
            inner.last_applied = Some(e.log_id);
            let mut applied = Vec::new();
            match e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => match codec::decode(&batch.0) {
                    Some(records) => {
                        let (next, ignored) = image.apply(&records);
                        for why in ignored {
                            tracing::warn!(
                                index = e.log_id.index,
                                "metadata record ignored: {why}"
                            );
                        }
                        image = next;
                        self.unsnapshotted
                            .fetch_add(batch.0.len() as u64, Ordering::AcqRel);
                        applied = batch.0;
                    }
                    // Every node skips the same committed entry: the images stay equal.
                    None => tracing::error!(
                        index = e.log_id.index,
                        "a metadata log entry cannot be read; skipped"
                    ),
                },
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(e.log_id), m);
                }
            }
            inner.remember(e.log_id.index + 1, applied);
            answers.push(());
        }
        image.offset = inner.last_applied.map_or(0, |l| l.index + 1);
        self.image.send_replace(Arc::new(image));
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let image = MetadataImage {
            offset: meta.last_log_id.map_or(0, |l| l.index + 1),
            ..decode_image(&data)?
        };
        let mut inner = self.inner.lock().await;
        Self::save(&inner.dir, meta, &data)?;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some(meta.clone());
        self.unsnapshotted.store(0, Ordering::Release);
        inner.forget_recent();
        self.image.send_replace(Arc::new(image));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let inner = self.inner.lock().await;
        let Some(meta) = &inner.snapshot else {
            return Ok(None);
        };
        // Written before `snapshot` was set, under this lock: the file is this snapshot.
        let stored = Self::read_stored(&inner.dir)?.ok_or_else(|| {
            io_error(
                ErrorVerb::Read,
                ErrorSubject::StateMachine,
                std::io::Error::other("the metadata snapshot file is gone"),
            )
        })?;
        Ok(Some(Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
