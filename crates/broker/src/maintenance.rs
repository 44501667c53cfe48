//! The broker's periodic work on every partition (retention, time-based flushes, recovery
//! point checkpoints, producer expiry) and its clean shutdown.

use crate::broker::Broker;

impl Broker {
    /// Deletes the segments each partition's retention no longer keeps.
    pub fn run_retention(&self, now_ms: i64) {
        for p in self.all_partitions() {
            match p.log().apply_retention(now_ms) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(topic = %p.topic, partition = p.index, segments = n, "deleted segments by retention")
                }
                Err(e) => {
                    tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "retention failed")
                }
            }
        }
    }

    /// Forgets the state of producers idle past producer.id.expiration.ms.
    pub fn run_producer_expiration(&self, now_ms: i64) {
        for p in self.all_partitions() {
            let n = p.expire_producers(now_ms, self.config.producer_id_expiration_ms);
            if n > 0 {
                tracing::debug!(topic = %p.topic, partition = p.index, producers = n, "expired idle producers");
            }
        }
    }

    pub fn run_flush(&self, now_ms: i64) {
        // Kafka's default flush.ms is never: most logs have nothing to do here.
        let mut timed = Vec::new();
        self.replicas.for_each(|p| {
            if p.log().flushes_on_time() {
                timed.push(p.clone());
            }
        });
        for p in timed {
            if let Err(e) = p.log().maybe_flush(now_ms) {
                tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "flush failed");
            }
        }
    }

    pub fn run_checkpoint(&self) {
        let mut batch = strom_storage::CheckpointBatch::default();
        for p in self.replicas.all_unordered() {
            p.log().checkpoint_into(&mut batch);
            p.log().high_watermark_into(p.high_watermark(), &mut batch);
        }
        let files = batch.len();
        if let Err(e) = batch.commit() {
            tracing::warn!(files, error = %e, "writing the recovery point and high watermark checkpoints failed");
        }
    }

    /// Clean shutdown of every log: flush, checkpoints, clean-shutdown markers.
    pub fn shutdown(&self) {
        // No replicated batch lands in a log being closed.
        self.fetchers.stop_all();
        for p in self.all_partitions() {
            if let Err(e) = p.close_deferred() {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "closing the log failed");
            }
        }
        // One sync for them all: a partition's own fsyncs (ten for a clean close) took
        // minutes for tens of thousands of partitions.
        if let Err(e) = strom_storage::settle() {
            tracing::error!(error = %e, "making the closed logs durable failed: the next start recovers them");
        }
    }
}
