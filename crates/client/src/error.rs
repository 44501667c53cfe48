#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach any bootstrap server ({0}); is a broker running there?")]
    Unreachable(String),
    #[error("i/o error talking to {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from {0} in time")]
    Timeout(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{addr} does not support {api} (api key {key})")]
    Unsupported {
        addr: String,
        api: &'static str,
        key: i16,
    },
    /// A Kafka error code from the broker, with its name and message.
    #[error("{name} ({code}){}", message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kafka {
        code: i16,
        name: &'static str,
        message: Option<String>,
    },
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl From<krabka_protocol::ProtocolError> for ClientError {
    fn from(e: krabka_protocol::ProtocolError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

/// Kafka's name for an error code, as the Java client prints it.
pub fn error_name(code: i16) -> &'static str {
    match code {
        -1 => "UNKNOWN_SERVER_ERROR",
        0 => "NONE",
        1 => "OFFSET_OUT_OF_RANGE",
        2 => "CORRUPT_MESSAGE",
        3 => "UNKNOWN_TOPIC_OR_PARTITION",
        5 => "LEADER_NOT_AVAILABLE",
        6 => "NOT_LEADER_OR_FOLLOWER",
        7 => "REQUEST_TIMED_OUT",
        10 => "MESSAGE_TOO_LARGE",
        15 => "COORDINATOR_NOT_AVAILABLE",
        16 => "NOT_COORDINATOR",
        17 => "INVALID_TOPIC_EXCEPTION",
        19 => "NOT_ENOUGH_REPLICAS",
        22 => "ILLEGAL_GENERATION",
        25 => "UNKNOWN_MEMBER_ID",
        27 => "REBALANCE_IN_PROGRESS",
        35 => "UNSUPPORTED_VERSION",
        36 => "TOPIC_ALREADY_EXISTS",
        37 => "INVALID_PARTITIONS",
        38 => "INVALID_REPLICATION_FACTOR",
        39 => "INVALID_REPLICA_ASSIGNMENT",
        40 => "INVALID_CONFIG",
        42 => "INVALID_REQUEST",
        45 => "OUT_OF_ORDER_SEQUENCE_NUMBER",
        47 => "INVALID_PRODUCER_EPOCH",
        48 => "INVALID_TXN_STATE",
        49 => "INVALID_PRODUCER_ID_MAPPING",
        50 => "INVALID_TRANSACTION_TIMEOUT",
        51 => "CONCURRENT_TRANSACTIONS",
        52 => "TRANSACTION_COORDINATOR_FENCED",
        53 => "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
        56 => "KAFKA_STORAGE_ERROR",
        68 => "NON_EMPTY_GROUP",
        69 => "GROUP_ID_NOT_FOUND",
        79 => "MEMBER_ID_REQUIRED",
        80 => "PREFERRED_LEADER_NOT_AVAILABLE",
        83 => "ELIGIBLE_LEADERS_NOT_AVAILABLE",
        84 => "ELECTION_NOT_NEEDED",
        85 => "NO_REASSIGNMENT_IN_PROGRESS",
        86 => "GROUP_SUBSCRIBED_TO_TOPIC",
        87 => "INVALID_RECORD",
        90 => "PRODUCER_FENCED",
        100 => "UNKNOWN_TOPIC_ID",
        105 => "TRANSACTIONAL_ID_NOT_FOUND",
        _ => "UNKNOWN_ERROR_CODE",
    }
}

/// `Ok` for code 0, the Kafka error otherwise.
pub fn check(code: i16, message: Option<String>) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    Err(ClientError::Kafka {
        code,
        name: error_name(code),
        message,
    })
}
