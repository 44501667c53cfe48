//! The quorum in one process: openraft's own storage suite against our log store and state
//! machine, then three Raft nodes on disk joined by an in-memory network that tests can cut,
//! electing, committing metadata, failing over, restarting and catching up by snapshot.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{BasicNode, Config, RaftNetwork, RaftNetworkFactory, SnapshotPolicy};
use strom_metadata::codec;
use strom_metadata::image::{MetadataImage, Record};

use super::*;

struct DiskBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for DiskBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(&dir.path().join("log")).unwrap();
        let sm = StateMachine::open(&dir.path().join("sm"))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(DiskBuilder).unwrap();
}

/// Nodes by id, and the ones cut off from everybody.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<HashMap<NodeId, Raft>>>,
    cut: Arc<Mutex<HashSet<NodeId>>>,
}

struct Connection {
    router: Router,
    from: NodeId,
    to: NodeId,
}

impl Connection {
    fn target<E: std::error::Error>(&self) -> Result<Raft, RPCError<NodeId, BasicNode, E>> {
        let cut = self.router.cut.lock().unwrap();
        let unreachable =
            || RPCError::Unreachable(Unreachable::new(&std::io::Error::other("cut off")));
        if cut.contains(&self.from) || cut.contains(&self.to) {
            return Err(unreachable());
        }
        self.router
            .nodes
            .lock()
            .unwrap()
            .get(&self.to)
            .cloned()
            .ok_or_else(unreachable)
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.target()?
            .append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.target()?
            .install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.target()?
            .vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }
}

struct Factory {
    router: Router,
    from: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Connection {
        Connection {
            router: self.router.clone(),
            from: self.from,
            to: target,
        }
    }
}

fn config() -> Arc<Config> {
    Arc::new(
        Config {
            cluster_name: "strom-test".into(),
            heartbeat_interval: 50,
            election_timeout_min: 200,
            election_timeout_max: 400,
            // A snapshot every 20 entries: the log before it is purged.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(20),
            max_in_snapshot_log_to_keep: 0,
            ..Default::default()
        }
        .validate()
        .unwrap(),
    )
}

struct Node {
    raft: Raft,
    sm: StateMachine,
}

async fn start(router: &Router, dir: &std::path::Path, id: NodeId) -> Node {
    let dir = dir.join(format!("node-{id}")).join("__cluster_metadata-0");
    let log = LogStore::open(&dir).unwrap();
    let sm = StateMachine::open(&dir).unwrap();
    let network = Factory {
        router: router.clone(),
        from: id,
    };
    let raft = Raft::new(id, config(), network, log, sm.clone())
        .await
        .unwrap();
    router.nodes.lock().unwrap().insert(id, raft.clone());
    Node { raft, sm }
}

fn voters() -> BTreeMap<NodeId, BasicNode> {
    (1..=3)
        .map(|id| (id, BasicNode::new(format!("node-{id}"))))
        .collect()
}

/// Polls `f` every 10 ms until it is some, or panics after 30 s saying what was awaited.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn topic_records(name: &str) -> MetadataBatch {
    MetadataBatch(codec::encode(&[Record::Topic {
        name: name.into(),
        id: [name.len() as u8; 16],
    }]))
}

fn topics(image: &MetadataImage) -> BTreeSet<String> {
    image.topics.keys().cloned().collect()
}

async fn leader_of(nodes: &HashMap<NodeId, Node>) -> NodeId {
    eventually("a leader", || {
        let leaders: BTreeSet<NodeId> = nodes
            .values()
            .filter_map(|n| n.raft.metrics().borrow().current_leader)
            .collect();
        (leaders.len() == 1).then(|| *leaders.iter().next().unwrap())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_commit_fail_over_restart_and_catch_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let mut nodes = HashMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(&router, dir.path(), id).await);
    }
    nodes[&1].raft.initialize(voters()).await.unwrap();
    let leader = leader_of(&nodes).await;

    // Committed records reach every node's image.
    for i in 0..5 {
        nodes[&leader]
            .raft
            .client_write(topic_records(&format!("t{i}")))
            .await
            .unwrap();
    }
    let want: BTreeSet<String> = (0..5).map(|i| format!("t{i}")).collect();
    for n in nodes.values() {
        let sm = n.sm.clone();
        eventually("every image has the topics", || {
            (topics(&sm.image()) == want).then_some(())
        })
        .await;
    }

    // The leader is cut off: the others elect a new one and go on; the old leader commits
    // nothing alone.
    router.cut.lock().unwrap().insert(leader);
    let rest: HashMap<NodeId, Node> = nodes
        .iter()
        .filter(|(id, _)| **id != leader)
        .map(|(id, n)| {
            (
                *id,
                Node {
                    raft: n.raft.clone(),
                    sm: n.sm.clone(),
                },
            )
        })
        .collect();
    let new_leader = eventually("a new leader", || {
        let leaders: BTreeSet<NodeId> = rest
            .values()
            .filter_map(|n| n.raft.metrics().borrow().current_leader)
            .filter(|l| *l != leader)
            .collect();
        (leaders.len() == 1).then(|| *leaders.iter().next().unwrap())
    })
    .await;
    let stale = tokio::time::timeout(
        Duration::from_secs(1),
        nodes[&leader].raft.client_write(topic_records("lost")),
    )
    .await;
    assert!(
        !matches!(stale, Ok(Ok(_))),
        "a leader cut off from the quorum cannot commit"
    );
    for i in 5..40 {
        rest[&new_leader]
            .raft
            .client_write(topic_records(&format!("t{i}")))
            .await
            .unwrap();
    }
    let want: BTreeSet<String> = (0..40).map(|i| format!("t{i}")).collect();

    // The old leader rejoins: it drops its uncommitted entry and catches up.
    router.cut.lock().unwrap().clear();
    for n in nodes.values() {
        let sm = n.sm.clone();
        eventually("every image after the failover", || {
            (topics(&sm.image()) == want).then_some(())
        })
        .await;
    }

    // Snapshots were taken and the log before them purged.
    let snap = eventually("a snapshot on the new leader", || {
        rest[&new_leader].raft.metrics().borrow().snapshot
    })
    .await;
    assert!(snap.index >= 20);
    let purged = eventually("a purge", || {
        rest[&new_leader].raft.metrics().borrow().purged
    })
    .await;
    assert!(purged.index >= 20);

    // A full restart of one node: it comes back with everything from its snapshot and log.
    let restarted = if leader != 1 { 1 } else { 2 };
    nodes[&restarted].raft.shutdown().await.unwrap();
    router.nodes.lock().unwrap().remove(&restarted);
    nodes.remove(&restarted);
    let back = start(&router, dir.path(), restarted).await;
    let sm = back.sm.clone();
    eventually("the restarted node's image", || {
        (topics(&sm.image()) == want).then_some(())
    })
    .await;

    // A node whose whole state is gone (wiped directory) catches up by snapshot, the
    // purged log being no longer there to send.
    back.raft.shutdown().await.unwrap();
    router.nodes.lock().unwrap().remove(&restarted);
    std::fs::remove_dir_all(dir.path().join(format!("node-{restarted}"))).unwrap();
    let fresh = start(&router, dir.path(), restarted).await;
    let sm = fresh.sm.clone();
    eventually("the wiped node's image, from a snapshot", || {
        (topics(&sm.image()) == want).then_some(())
    })
    .await;
    for n in nodes.values() {
        n.raft.shutdown().await.unwrap();
    }
    fresh.raft.shutdown().await.unwrap();
}

/// Three nodes over real TCP on loopback: they elect and commit; the leader's process
/// "dies" (its server stops and its Raft shuts down) and the other two elect a new leader
/// that commits; a bad frame on the listener closes that connection and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_tcp_elect_commit_and_survive_a_dead_leader() {
    use super::network::{TcpNetwork, serve};

    let dir = tempfile::tempdir().unwrap();
    let mut listeners = BTreeMap::new();
    for id in 1..=3u64 {
        listeners.insert(
            id,
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
    }
    let members: BTreeMap<NodeId, BasicNode> = listeners
        .iter()
        .map(|(id, l)| (*id, BasicNode::new(l.local_addr().unwrap().to_string())))
        .collect();
    let mut nodes = HashMap::new();
    let mut servers = HashMap::new();
    for (id, listener) in listeners {
        let dir = dir
            .path()
            .join(format!("node-{id}"))
            .join("__cluster_metadata-0");
        let sm = StateMachine::open(&dir).unwrap();
        let raft = Raft::new(
            id,
            config(),
            TcpNetwork::default(),
            LogStore::open(&dir).unwrap(),
            sm.clone(),
        )
        .await
        .unwrap();
        let controller = std::sync::Arc::new(super::active::ActiveController::new(
            raft.clone(),
            sm.clone(),
            id,
            crate::ControllerConfig::default(),
            std::time::Duration::from_millis(50),
        ));
        servers.insert(
            id,
            tokio::spawn(serve(raft.clone(), controller, "".into(), listener)),
        );
        nodes.insert(id, Node { raft, sm });
    }
    nodes[&1].raft.initialize(members.clone()).await.unwrap();
    let leader = leader_of(&nodes).await;
    for i in 0..3 {
        nodes[&leader]
            .raft
            .client_write(topic_records(&format!("t{i}")))
            .await
            .unwrap();
    }

    // Garbage on a node's listener: the connection closes, the node goes on.
    let victim = members[&(if leader == 1 { 2 } else { 1 })].addr.clone();
    let mut s = tokio::net::TcpStream::connect(&victim).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await
    .expect("closed, not left hanging");
    assert!(matches!(closed, Ok(0) | Err(_)));

    servers.remove(&leader).unwrap().abort();
    nodes[&leader].raft.shutdown().await.unwrap();
    let old = leader;
    nodes.remove(&old);
    let leader = eventually("a new leader", || {
        let leaders: BTreeSet<NodeId> = nodes
            .values()
            .filter_map(|n| n.raft.metrics().borrow().current_leader)
            .filter(|l| *l != old)
            .collect();
        (leaders.len() == 1).then(|| *leaders.iter().next().unwrap())
    })
    .await;
    nodes[&leader]
        .raft
        .client_write(topic_records("after"))
        .await
        .unwrap();
    let want: BTreeSet<String> = ["t0", "t1", "t2", "after"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for n in nodes.values() {
        let sm = n.sm.clone();
        eventually("both images", || {
            (topics(&sm.image()) == want).then_some(())
        })
        .await;
    }
    for n in nodes.values() {
        n.raft.shutdown().await.unwrap();
    }
}

/// The embedded single node: a quorum of one that leads at once, keeps what it committed
/// across restarts, and cuts a torn tail (a crash in the middle of a write) off its log.
#[tokio::test]
async fn a_quorum_of_one_survives_restarts_and_a_torn_log_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("__cluster_metadata-0");
    let q = Quorum::start_alone(3, &path, QuorumConfig::default())
        .await
        .unwrap();
    for name in ["a", "b"] {
        q.commit(&[Record::Topic {
            name: name.into(),
            id: [name.len() as u8; 16],
        }])
        .await
        .unwrap();
    }
    q.shutdown().await;
    drop(q);
    // Half a frame at the end of the log, as a crash mid-write leaves it.
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(path.join("log"))
        .unwrap();
    std::io::Write::write_all(&mut log, &[0, 0, 1, 0, 9, 9]).unwrap();
    drop(log);
    let q = Quorum::start_alone(3, &path, QuorumConfig::default())
        .await
        .unwrap();
    let want: BTreeSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
    assert_eq!(topics(&q.state.image()), want);
    let image = q
        .commit(&[Record::RemoveTopic { name: "a".into() }])
        .await
        .unwrap();
    assert_eq!(topics(&image), ["b".to_string()].into_iter().collect());
    q.shutdown().await;
}

/// `metadata.log.max.record.bytes.between.snapshots`: a few large entries (a start adds one
/// with a record per partition) make a snapshot and purge the log, however few entries;
/// a restart then starts from the snapshot, read back from its file.
#[tokio::test]
async fn records_past_the_byte_limit_make_a_snapshot_and_purge_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("__cluster_metadata-0");
    let config = || QuorumConfig {
        snapshot_bytes: 4_000,
        ..QuorumConfig::default()
    };
    let q = Quorum::start_alone(3, &path, config()).await.unwrap();
    let big = |prefix: &str| -> Vec<Record> {
        (0..100)
            .map(|i| Record::Topic {
                name: format!("{prefix}-{i:03}"),
                id: [i as u8; 16],
            })
            .collect()
    };
    q.commit(&big("a")).await.unwrap();
    assert!(
        q.raft.metrics().borrow().snapshot.is_none(),
        "one entry of ~3 KB"
    );
    q.commit(&big("b")).await.unwrap();
    let snap = eventually("a snapshot by size", || q.raft.metrics().borrow().snapshot).await;
    let purged = eventually("the log purged", || q.raft.metrics().borrow().purged).await;
    assert!(purged.index >= snap.index - 1, "{purged:?} {snap:?}");
    assert_eq!(q.state.unsnapshotted_bytes(), 0);
    q.commit(&[Record::RemoveTopic {
        name: "a-000".into(),
    }])
    .await
    .unwrap();
    q.shutdown().await;
    drop(q);

    let q = Quorum::start_alone(3, &path, config()).await.unwrap();
    let names = topics(&q.state.image());
    assert_eq!(names.len(), 199);
    assert!(names.contains("a-001") && names.contains("b-099") && !names.contains("a-000"));
    // What a follower too far behind is sent: the snapshot's data, from the file.
    let mut sm = q.state.clone();
    let current = openraft::storage::RaftStateMachine::get_current_snapshot(&mut sm)
        .await
        .unwrap()
        .expect("a snapshot");
    assert_eq!(current.meta.last_log_id, Some(snap));
    let records = codec::decode(current.snapshot.get_ref()).unwrap();
    let image = MetadataImage::default().apply(&records).0;
    assert_eq!(topics(&image).len(), 200);
    q.shutdown().await;
}

#[tokio::test]
async fn a_quorum_of_one_describes_itself() {
    let dir = tempfile::tempdir().unwrap();
    let q = Quorum::start_alone(5, &dir.path().join("m"), QuorumConfig::default())
        .await
        .unwrap();
    q.commit(&[Record::Topic {
        name: "a".into(),
        id: [1; 16],
    }])
    .await
    .unwrap();
    let s = q.status();
    assert_eq!(s.leader, Some(5));
    assert!(s.epoch >= 1);
    assert_eq!(s.voters.len(), 1);
    assert_eq!(s.voters[0].id, 5);
    assert_eq!(s.voters[0].log_end_offset, s.high_watermark);
    assert!(s.high_watermark >= 2, "the membership entry and the topic");
    assert!(s.observers.is_empty());
    q.shutdown().await;
}

/// An observer a little behind is sent the entries it misses, which bring its image to the
/// voter's; one that cannot take entries, or comes from another history, gets the image.
#[tokio::test]
async fn observers_catch_up_by_entries_or_by_the_whole_image() {
    use super::observer::FetchRequest;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("__cluster_metadata-0");
    let q = Quorum::start_alone(3, &path, QuorumConfig::default())
        .await
        .unwrap();
    let commit = |name: &'static str| {
        let q = &q;
        async move {
            q.commit(&[Record::Topic {
                name: name.into(),
                id: [name.len() as u8; 16],
            }])
            .await
        }
    };
    commit("a").await.unwrap();
    let fetch = |after: u64, entries_ok: bool| {
        q.controller.serve_fetch(FetchRequest {
            node: 9,
            after,
            max_wait_ms: 0,
            status_only: false,
            entries_ok,
        })
    };
    let apply = |mut image: MetadataImage, entries: &[Vec<u8>]| {
        for e in entries.iter().filter(|e| !e.is_empty()) {
            image = image.apply(&codec::decode(e).unwrap()).0;
        }
        image
    };
    // From nothing: every entry since the start (no snapshot yet).
    let first = fetch(0, true).await;
    assert!(first.image.is_none());
    let at_first = apply(MetadataImage::default(), first.entries.as_ref().unwrap());
    assert_eq!(topics(&at_first), ["a".to_string()].into());

    commit("bb").await.unwrap();
    commit("ccc").await.unwrap();
    let later = fetch(first.offset, true).await;
    let entries = later.entries.unwrap();
    assert_eq!(entries.len() as u64, later.offset - first.offset);
    let caught_up = apply(at_first, &entries);
    assert_eq!(caught_up.to_records(), q.state.image().to_records());

    // Current: nothing to send.
    let current = fetch(later.offset, true).await;
    assert!(current.image.is_none() && current.entries.is_none());
    // An observer that takes no entries, or one ahead of this voter: the whole image.
    for (after, entries_ok) in [(first.offset, false), (later.offset + 5, true)] {
        let whole = fetch(after, entries_ok).await;
        assert!(whole.entries.is_none());
        let image = MetadataImage::default()
            .apply(&codec::decode(&whole.image.unwrap()).unwrap())
            .0;
        assert_eq!(image.to_records(), q.state.image().to_records());
    }
    q.shutdown().await;
}
