//! Three `strom server` processes in combined mode (broker and controller), formatted with
//! one cluster id and joined into one metadata quorum over their CONTROLLER listeners.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

// Shared with `common`, which some test files load beside this module.
#[allow(clippy::duplicate_mod)]
#[path = "../common/ports.rs"]
mod ports;
pub use ports::free_port;

pub struct Node {
    pub child: Child,
    pub port: u16,
    pub config: std::path::PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The strom binary the nodes run: this build's, or `STROM_TEST_BIN` (a copy, so that a
/// long loop of a test is not changed under it by the next build).
pub fn strom_bin() -> String {
    std::env::var("STROM_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_strom").into())
}

pub fn strom(args: &[&str]) -> std::process::Output {
    Command::new(strom_bin()).args(args).output().unwrap()
}

pub fn ok(args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(strom_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Formats and starts three nodes at once (each waits for its quorum to form).
pub fn three_nodes(tmp: &std::path::Path) -> Vec<Node> {
    three_nodes_with(tmp, "")
}

/// Starts `strom server --config config`; the receiver gets a message once it listens.
fn spawn(config: &std::path::Path) -> (Child, mpsc::Receiver<()>) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(strom_bin());
    cmd.args(["server", "--config", config.to_str().unwrap()])
        .env(
            "STROM_LOG",
            std::env::var("STROM_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A test killed by its harness (a timeout) runs no destructor: its nodes die with it
    // instead of running on, holding ports and cores.
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    // Each node's log lines carry its name: three nodes' logs interleave in a failure's
    // output.
    let name = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{name}] {line}");
        }
    });
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    (child, rx)
}

/// Starts a stopped node again, with its config and data, and waits until it serves.
pub fn restart(n: &mut Node) {
    let (child, rx) = spawn(&n.config);
    n.child = child;
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the node starts again");
}

/// Starts stopped nodes again, all at once (each waits for its quorum to form).
pub fn restart_all(nodes: &mut [Node]) {
    let waits: Vec<_> = nodes
        .iter_mut()
        .map(|n| {
            let (child, rx) = spawn(&n.config);
            n.child = child;
            rx
        })
        .collect();
    for rx in waits {
        rx.recv_timeout(Duration::from_secs(120))
            .expect("every node starts again");
    }
}

/// [`three_nodes`], with `extra` lines in every node's config.
pub fn three_nodes_with(tmp: &std::path::Path, extra: &str) -> Vec<Node> {
    let roles = ["broker,controller"; 3];
    start_cluster(tmp, &roles, extra, None, false)
}

/// [`three_nodes`], each broker with a second listener, INTERNAL, that the brokers use
/// among themselves (`inter.broker.listener.name`); clients use PLAINTEXT.
pub fn three_nodes_with_internal_listener(tmp: &std::path::Path) -> Vec<Node> {
    let roles = ["broker,controller"; 3];
    start_cluster(tmp, &roles, "", None, true)
}

/// [`three_nodes_with`], every listener behind a port that `via(node id, real port)`
/// gives (a proxy the test controls): the nodes advertise it and the voters name it, so
/// every connection, between nodes too, passes through it. `Node::port` is the proxy's.
pub fn three_nodes_via(
    tmp: &std::path::Path,
    extra: &str,
    via: &dyn Fn(i32, u16) -> u16,
) -> Vec<Node> {
    let roles = ["broker,controller"; 3];
    start_cluster(tmp, &roles, extra, Some(via), false)
}

/// Split mode: three controllers (nodes 1-3, no broker listener; their `port` is the
/// CONTROLLER one) and two brokers (nodes 4 and 5) that follow the quorum as observers.
/// Two brokers hold the internal topics' two replicas, as a Kafka operator would set them.
pub fn split_nodes(tmp: &std::path::Path, extra: &str) -> (Vec<Node>, Vec<Node>) {
    let roles = ["controller", "controller", "controller", "broker", "broker"];
    let extra = format!(
        "offsets.topic.replication.factor=2\ntransaction.state.log.replication.factor=2\n{extra}"
    );
    let mut nodes = start_cluster(tmp, &roles, &extra, None, false);
    let brokers = nodes.split_off(3);
    (nodes, brokers)
}

/// Formats and starts one node per entry of `roles` (node ids from 1), the nodes with the
/// controller role making the quorum; returns once all serve.
fn start_cluster(
    tmp: &std::path::Path,
    roles: &[&str],
    extra: &str,
    via: Option<&dyn Fn(i32, u16) -> u16>,
    internal: bool,
) -> Vec<Node> {
    let n = roles.len();
    let brokers: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let internal_ports: Vec<u16> = if internal {
        (0..n).map(|_| free_port()).collect()
    } else {
        Vec::new()
    };
    let controllers: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let seen = |i: usize, port: u16| via.map_or(port, |f| f(i as i32 + 1, port));
    let advertised: Vec<u16> = brokers
        .iter()
        .enumerate()
        .map(|(i, p)| seen(i, *p))
        .collect();
    let voters = controllers
        .iter()
        .enumerate()
        .filter(|(i, _)| roles[*i].contains("controller"))
        .map(|(i, p)| format!("{}@127.0.0.1:{}", i + 1, seen(i, *p)))
        .collect::<Vec<_>>()
        .join(",");
    let cluster = String::from_utf8(strom(&["storage", "random-uuid"]).stdout).unwrap();
    let mut started = Vec::new();
    for (i, role) in roles.iter().enumerate() {
        let config = tmp.join(format!("node{}.properties", i + 1));
        let mut listeners = Vec::new();
        let mut advertise = String::new();
        if role.contains("broker") {
            listeners.push(format!("PLAINTEXT://127.0.0.1:{}", brokers[i]));
            advertise = format!(
                "advertised.listeners=PLAINTEXT://127.0.0.1:{}\n",
                advertised[i]
            );
            if internal {
                listeners.push(format!("INTERNAL://127.0.0.1:{}", internal_ports[i]));
                advertise = format!(
                    "advertised.listeners=PLAINTEXT://127.0.0.1:{},INTERNAL://127.0.0.1:{}\n\
                     inter.broker.listener.name=INTERNAL\n",
                    advertised[i], internal_ports[i]
                );
            }
        }
        if role.contains("controller") {
            listeners.push(format!("CONTROLLER://127.0.0.1:{}", controllers[i]));
        }
        std::fs::write(
            &config,
            format!(
                "node.id={}\nprocess.roles={role}\ncontroller.quorum.voters={voters}\n\
                 controller.listener.names=CONTROLLER\n\
                 listeners={}\n\
                 listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT\n\
                 log.dirs={}\ncontroller.quorum.election.timeout.ms=300\n\
                 offsets.topic.num.partitions=6\ngroup.initial.rebalance.delay.ms=0\n\
                 transaction.state.log.num.partitions=4\n{advertise}{extra}\n",
                i + 1,
                listeners.join(","),
                tmp.join(format!("data{}", i + 1)).display()
            ),
        )
        .unwrap();
        let c = config.to_str().unwrap().to_string();
        ok(&["storage", "format", "-t", cluster.trim(), "-c", &c], "");
        let (child, rx) = spawn(&config);
        let port = if role.contains("broker") {
            advertised[i]
        } else {
            controllers[i]
        };
        started.push((
            Node {
                child,
                port,
                config: config.clone(),
            },
            rx,
        ));
    }
    started
        .into_iter()
        .map(|(node, rx)| {
            rx.recv_timeout(Duration::from_secs(120))
                .expect("every node starts once its quorum forms");
            node
        })
        .collect()
}

/// The partitions of `topic` as `strom topics describe --json` through `bootstrap` shows
/// them (leader, replicas, isr, ...); None when it did not answer.
pub fn describe_partitions(bootstrap: &str, topic: &str) -> Option<Vec<serde_json::Value>> {
    let out = strom(&[
        "topics",
        "describe",
        "--topic",
        topic,
        "--json",
        "--bootstrap-server",
        bootstrap,
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?.first()?["partitions"].as_array().cloned()
}

/// `strom topics create` of `topic` with `partitions` and replication factor `rf`, through
/// node `n`.
pub fn create_topic(n: &Node, topic: &str, partitions: u32, rf: u32) {
    ok(
        &[
            "topics",
            "create",
            "--topic",
            topic,
            "--partitions",
            &partitions.to_string(),
            "--replication-factor",
            &rf.to_string(),
            "--bootstrap-server",
            &bootstrap(n),
        ],
        "",
    );
}

pub fn bootstrap(n: &Node) -> String {
    format!("127.0.0.1:{}", n.port)
}
