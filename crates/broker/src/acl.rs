//! Kafka's ACL operations and which of them each resource type supports, for the
//! authorized-operations fields of Metadata, DescribeCluster and DescribeGroups. With no
//! authorizer configured, Kafka reports every operation a resource supports
//! (`AuthHelper.authorizedOperations`); an authorizer will narrow that down.

/// AclOperation codes, as Kafka numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Operation {
    Read = 3,
    Write = 4,
    Create = 5,
    Delete = 6,
    Alter = 7,
    Describe = 8,
    ClusterAction = 9,
    DescribeConfigs = 10,
    AlterConfigs = 11,
    IdempotentWrite = 12,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Topic,
    Group,
    Cluster,
}

/// Kafka's `AclEntry.supportedOperations`.
pub fn supported_operations(resource: Resource) -> &'static [Operation] {
    use Operation::*;
    match resource {
        Resource::Topic => &[
            Read,
            Write,
            Create,
            Describe,
            Delete,
            Alter,
            DescribeConfigs,
            AlterConfigs,
        ],
        Resource::Group => &[Read, Describe, Delete],
        Resource::Cluster => &[
            Create,
            ClusterAction,
            DescribeConfigs,
            AlterConfigs,
            IdempotentWrite,
            Alter,
            Describe,
        ],
    }
}

/// "Not requested" for the authorized-operations fields.
pub const OPERATIONS_OMITTED: i32 = i32::MIN;

/// The authorized-operations bit field (bit n set for operation code n) for a request that
/// asked for it, [`OPERATIONS_OMITTED`] otherwise.
pub fn authorized_operations(requested: bool, resource: Resource) -> i32 {
    if !requested {
        return OPERATIONS_OMITTED;
    }
    supported_operations(resource)
        .iter()
        .fold(0, |bits, op| bits | 1 << (*op as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_authorizer_every_supported_operation_is_reported() {
        let topic = authorized_operations(true, Resource::Topic);
        let cluster = authorized_operations(true, Resource::Cluster);
        let group = authorized_operations(true, Resource::Group);
        // librdkafka's admin test counts 8 for a topic and 7 for the cluster.
        assert_eq!(topic.count_ones(), 8);
        assert_eq!(cluster.count_ones(), 7);
        assert_eq!(group.count_ones(), 3);
        // The values Kafka 3.x/4.x brokers send.
        assert_eq!(topic, 3576);
        assert_eq!(cluster, 8096);
        assert_eq!(group, 328);
        assert_eq!(
            authorized_operations(false, Resource::Topic),
            OPERATIONS_OMITTED
        );
    }
}
