//! Producer ids, handed out in blocks so that no two producers ever get the same one.
//!
//! In a cluster the blocks come from the active controller (Kafka's AllocateProducerIds),
//! recorded in the metadata log before use: no two brokers get the same block, and no
//! restart hands one out twice. The next block is asked for when a tenth of the current
//! one is left; if it has not come when the current one runs out, InitProducerId answers
//! a retriable error (COORDINATOR_LOAD_IN_PROGRESS, as Kafka's broker does) rather than
//! wait.
//!
//! A broker without a controller (tests of the broker alone) takes its blocks from a file
//! in the data directory, written before use.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use strom_controller::quorum::active::{BrokerAnswer, BrokerRequest};

use crate::broker::{Broker, write_file_atomically};
use crate::errors::{BrokerError, io};

const FILE: &str = ".producer-id-block";
const BLOCK: i64 = 1000;
/// Bits of a node's own range of file-made ids: brokers of a cluster that predates the
/// controller's blocks did not share ids.
const RANGE_BITS: u32 = 40;

pub(crate) struct ProducerIds {
    file: PathBuf,
    node_id: i32,
    /// The end of the file's last block when this process started: ids below it may have
    /// been handed out before.
    handed_out: i64,
    /// The block in use: the next id, and the end; empty before the first.
    current: Mutex<(i64, i64)>,
    /// The block asked for ahead of need.
    next: Mutex<Option<(i64, i64)>>,
    from_controller: AtomicBool,
    /// Woken when a block should be asked for.
    pub(crate) wanted: tokio::sync::Notify,
}

impl ProducerIds {
    /// What the file says was handed out before; blocks are taken when first needed.
    pub(crate) fn open(dir: &Path, node_id: i32) -> Result<ProducerIds, BrokerError> {
        let file = dir.join(FILE);
        let handed_out = match std::fs::read_to_string(&file) {
            Ok(s) => s.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(format!("reading {}", file.display()))(e)),
        };
        Ok(ProducerIds {
            file,
            node_id,
            handed_out,
            current: Mutex::new((0, 0)),
            next: Mutex::new(None),
            from_controller: AtomicBool::new(false),
            wanted: tokio::sync::Notify::new(),
        })
    }
}

impl ProducerIds {
    /// In a cluster every block comes from the controller, the first one included: until
    /// it arrives, InitProducerId is told to retry rather than given an id from the file.
    pub(crate) fn expect_controller_blocks(&self) {
        self.from_controller.store(true, Ordering::SeqCst);
    }
}

/// The block after `after`, recorded in the file first.
fn file_block(path: &Path, node_id: i32, after: i64) -> Result<(i64, i64), BrokerError> {
    let range = (node_id.max(0) as i64) << RANGE_BITS;
    let start = after.max(range);
    let end = start + BLOCK;
    write_file_atomically(path, &format!("{end}\n"))
        .map_err(io("writing the producer id block"))?;
    Ok((start, end))
}

impl Broker {
    pub fn allocate_producer_id(&self) -> Result<i64, BrokerError> {
        let ids = &self.producer_ids;
        let mut current = ids.current.lock().unwrap();
        let controller = ids.from_controller.load(Ordering::SeqCst);
        if current.0 >= current.1 {
            if !controller {
                let after = current.1.max(ids.handed_out);
                *current = file_block(&ids.file, ids.node_id, after)?;
            } else if let Some(next) = ids.next.lock().unwrap().take() {
                *current = next;
            } else {
                ids.wanted.notify_one();
                return Err(BrokerError::ProducerIdsNotReady);
            }
        }
        let id = current.0;
        current.0 += 1;
        if controller && current.1 - current.0 < BLOCK / 10 && ids.next.lock().unwrap().is_none() {
            ids.wanted.notify_one();
        }
        Ok(id)
    }

    /// Asks the active controller for a block (the first one at join, the next ahead of
    /// need), starting after every id this broker handed out from its file.
    pub(crate) async fn fetch_producer_id_block(&self) -> Result<(), BrokerError> {
        let ids = &self.producer_ids;
        let at_least = ids.handed_out.max(ids.current.lock().unwrap().1);
        let req = BrokerRequest::AllocateProducerIds {
            id: self.config.node_id,
            epoch: self.broker_epoch.load(Ordering::SeqCst),
            at_least,
        };
        let (start, len) = match self.ask_controller(req).await? {
            BrokerAnswer::ProducerIds { start, len } => (start, len),
            other => {
                return Err(BrokerError::MetadataLog(format!(
                    "no producer id block: {other:?}"
                )));
            }
        };
        let block = (start, start + len);
        if ids.from_controller.swap(true, Ordering::SeqCst) {
            *ids.next.lock().unwrap() = Some(block);
        } else {
            *ids.current.lock().unwrap() = block;
        }
        Ok(())
    }
}
