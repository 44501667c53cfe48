//! What goes in and out of the group state machine: requests, answers, parked-answer
//! tokens, the states and their settings, and the protocol's error codes.

pub use strom_metadata::errors::{
    COORDINATOR_NOT_AVAILABLE, FENCED_INSTANCE_ID, GROUP_MAX_SIZE_REACHED, ILLEGAL_GENERATION,
    INCONSISTENT_GROUP_PROTOCOL, INVALID_SESSION_TIMEOUT, MEMBER_ID_REQUIRED,
    REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl State {
    /// Kafka's names, as ListGroups and DescribeGroups report them.
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
            State::Dead => "Dead",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct GroupConfig {
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    pub initial_rebalance_delay_ms: u64,
    pub max_size: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_size: i32::MAX as usize,
        }
    }
}

/// Identifies a parked request so its answer reaches the right connection.
pub type Token = u64;

#[derive(Debug, Clone, Default)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Vec<u8>)>,
    /// JoinGroup v4+: a new dynamic member first gets MEMBER_ID_REQUIRED and its id.
    pub require_known_member_id: bool,
    /// Random bytes for a member id this join may hand out: the caller draws them, so the
    /// state machine never reads a clock or a random source.
    pub fresh_id: [u8; 16],
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinResponse {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only the leader gets the members and their subscriptions.
    pub members: Vec<JoinMember>,
    /// A static leader that rejoined without a rebalance must not reassign (v9+).
    pub skip_assignment: bool,
}

impl JoinResponse {
    pub(super) fn error(error: i16, member_id: &str) -> Self {
        JoinResponse {
            error,
            generation: -1,
            member_id: member_id.to_string(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SyncRequest<'a> {
    pub member_id: &'a str,
    pub instance_id: Option<&'a str>,
    pub generation: i32,
    /// SyncGroup v5+: must match the group's, if given.
    pub protocol_type: Option<&'a str>,
    pub protocol_name: Option<&'a str>,
    /// The leader's assignment per member id; empty from followers.
    pub assignments: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncResponse {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Vec<u8>,
}

impl SyncResponse {
    pub(super) fn error(error: i16) -> Self {
        SyncResponse {
            error,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Join(Token, JoinResponse),
    Sync(Token, SyncResponse),
    /// The group's metadata (generation, members, assignments) changed: persist it.
    Changed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    Now(JoinResponse),
    /// The answer comes as an [`Output::Join`] with the token, once the join phase ends.
    Parked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    Now(SyncResponse),
    Parked,
}
