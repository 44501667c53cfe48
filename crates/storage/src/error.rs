use std::io;

/// Everything that can go wrong in the partition log. The broker maps these to Kafka error
/// codes (`CORRUPT_MESSAGE`, `INVALID_RECORD`, `MESSAGE_TOO_LARGE`, `OFFSET_OUT_OF_RANGE`,
/// `KAFKA_STORAGE_ERROR`, `INVALID_CONFIG`); the storage layer itself knows nothing of the wire.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Bytes that are not a well-formed RecordBatch v2: bad length, bad CRC, truncated.
    #[error("corrupt record batch: {0}")]
    CorruptMessage(String),
    /// A well-formed batch whose contents break a rule: record count, magic, empty input.
    #[error("invalid record batch: {0}")]
    InvalidRecord(String),
    /// Records a batch cannot take (KIP-467): the batch is refused, each bad record named by
    /// its index in the batch.
    #[error("{message}")]
    RecordErrors {
        message: String,
        errors: Vec<(i32, String)>,
    },
    #[error("record batch of {size} bytes exceeds max.message.bytes ({max})")]
    MessageTooLarge { size: usize, max: usize },
    #[error("offset {offset} is out of range: the log holds [{start}, {end})")]
    OffsetOutOfRange { offset: u64, start: u64, end: u64 },
    #[error("invalid value {value:?} for config {key}: {reason}")]
    InvalidConfig {
        key: String,
        value: String,
        reason: String,
    },
    #[error("unknown config {0}")]
    UnknownConfig(String),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Attaches the path to an `io::Error`, because a bare "No such file" is useless to operators.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| StorageError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}
