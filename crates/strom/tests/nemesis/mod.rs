//! A nemesis for three combined nodes behind proxies: seeded faults (SIGKILL of a
//! partition's leader, SIGSTOP past the session timeout, a network partition, SIGKILL of
//! the active controller), each healed before the next, printed as they happen.
#![allow(dead_code)]

pub mod proxy;
pub mod workload;

use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster_nodes::{Node, restart, three_nodes_via};
use proxy::Proxies;

/// xorshift64*: the faults a seed gives are the same on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }

    /// A duration between `lo` and `hi` milliseconds.
    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

pub const SESSION_MS: u64 = 2000;

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub proxies: Proxies,
    pub tmp: tempfile::TempDir,
    start: Instant,
    /// Every fault injected, as printed.
    pub log: Vec<String>,
}

impl Cluster {
    pub fn start() -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let proxies = Proxies::default();
        let nodes = three_nodes_via(
            tmp.path(),
            &format!(
                "broker.session.timeout.ms={SESSION_MS}\nbroker.heartbeat.interval.ms=200\n\
                 replica.lag.time.max.ms=2000\nmin.insync.replicas=2\n\
                 transaction.abort.timed.out.transaction.cleanup.interval.ms=500"
            ),
            &|node, port| proxies.front(node, port),
        );
        for (i, n) in nodes.iter().enumerate() {
            proxies.set_pid(i as i32 + 1, n.child.id());
        }
        Cluster {
            nodes,
            proxies,
            tmp,
            start: Instant::now(),
            log: Vec::new(),
        }
    }

    /// Every node's proxied address, for clients that must survive any one node's loss.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(crate::cluster_nodes::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn note(&mut self, what: String) {
        let line = format!("t={:6.1}s {what}", self.start.elapsed().as_secs_f64());
        println!("nemesis: {line}");
        self.log.push(line);
    }

    /// `strom <args> --json --bootstrap-server <every node>`, parsed; None on failure.
    fn json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let bootstrap = self.bootstrap();
        let out = Command::new(crate::cluster_nodes::strom_bin())
            .args(args)
            .args([
                "--json",
                "--request-timeout-ms",
                "5000",
                "--bootstrap-server",
            ])
            .arg(&bootstrap)
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The leader of partition `p` of `topic`, if one is known.
    pub fn leader_of(&self, topic: &str, p: i32) -> Option<i32> {
        let v = self.json(&["topics", "describe", "--topic", topic])?;
        let leader =
            v.as_array()?.first()?["partitions"].as_array()?[p as usize]["leader"].as_i64()? as i32;
        (1..=3).contains(&leader).then_some(leader)
    }

    /// Partitions of any topic, internal ones included, whose ISR is not all three
    /// replicas, as "topic-partition isr"; None when the cluster did not answer.
    pub fn under_replicated(&self) -> Option<Vec<String>> {
        let v = self.json(&["topics", "describe", "--include-internal"])?;
        let mut out = Vec::new();
        for t in v.as_array()? {
            for p in t["partitions"].as_array()? {
                let isr = p["isr"].as_array()?.len();
                if isr < 3 {
                    out.push(format!("{}-{} isr {}", t["name"], p["partition"], p["isr"]));
                }
            }
        }
        Some(out)
    }

    /// The active controller (the metadata quorum's leader).
    pub fn controller(&self) -> Option<i32> {
        let v = self.json(&["cluster", "describe"])?;
        let leader = v["quorum"]["leader"].as_i64()? as i32;
        (1..=3).contains(&leader).then_some(leader)
    }

    fn node(&mut self, id: i32) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    fn kill(&mut self, id: i32) {
        let n = self.node(id);
        n.child.kill().unwrap();
        n.child.wait().unwrap();
    }

    fn restart(&mut self, id: i32) {
        restart(self.node(id));
        let pid = self.node(id).child.id();
        self.proxies.set_pid(id, pid);
    }

    fn signal(&mut self, id: i32, sig: &str) {
        let pid = self.node(id).child.id().to_string();
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// One fault chosen by `rng`, held, then healed.
    pub fn fault(&mut self, rng: &mut Rng, topic: &str, partitions: i32) {
        match rng.below(4) {
            0 => {
                let p = rng.below(partitions as u64) as i32;
                let Some(id) = self.leader_of(topic, p) else {
                    self.note(format!("no leader known for {topic}-{p}: fault skipped"));
                    return;
                };
                let down = rng.ms(500, 3000);
                self.note(format!(
                    "SIGKILL node {id} (leader of {topic}-{p}), restart after {down:?}"
                ));
                self.kill(id);
                std::thread::sleep(down);
                self.restart(id);
            }
            1 => {
                let id = 1 + rng.below(3) as i32;
                let pause = Duration::from_millis(SESSION_MS) + rng.ms(500, 2500);
                self.note(format!("SIGSTOP node {id} for {pause:?}"));
                self.signal(id, "-STOP");
                std::thread::sleep(pause);
                self.signal(id, "-CONT");
            }
            2 => {
                let id = 1 + rng.below(3) as i32;
                let cut = rng.ms(1000, 5000);
                self.note(format!(
                    "network partition: node {id} cut off from the others and clients for {cut:?}"
                ));
                self.proxies.isolate(id);
                std::thread::sleep(cut);
                self.proxies.heal(id);
            }
            _ => {
                let Some(id) = self.controller() else {
                    self.note("no active controller known: fault skipped".into());
                    return;
                };
                let down = rng.ms(500, 3000);
                self.note(format!(
                    "SIGKILL node {id} (the active controller), restart after {down:?}"
                ));
                self.kill(id);
                std::thread::sleep(down);
                self.restart(id);
            }
        }
    }

    /// SIGTERM (a controlled shutdown: leadership moves first) of each node in turn, its
    /// restart, and a wait for every partition's ISR to be whole again before the next.
    pub fn rolling_restart(&mut self) {
        for id in 1..=3 {
            self.note(format!(
                "SIGTERM node {id} (controlled shutdown), then restart"
            ));
            self.signal(id, "-TERM");
            let status = self.node(id).child.wait().unwrap();
            assert!(status.success(), "node {id} stopped with {status}");
            self.restart(id);
            self.await_whole_isrs(&format!("node {id} back in every ISR"));
        }
    }

    /// Waits (90 s at most) until every partition, internal ones too, has all three
    /// replicas in its ISR; the panic names the partitions still short.
    pub fn await_whole_isrs(&self, what: &str) {
        crate::common::wait_until(what, Duration::from_secs(90), || {
            match self.under_replicated() {
                Some(under) if under.is_empty() => Ok(()),
                // The quorum's view too (each voter's log end and lag): a node whose
                // metadata stopped moving shows there.
                other => Err((other, self.json(&["cluster", "describe"]))),
            }
        });
    }

    /// Faults one after another, `gap` apart, for `duration`.
    pub fn run(&mut self, rng: &mut Rng, duration: Duration, topic: &str, partitions: i32) {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            self.fault(rng, topic, partitions);
            // The cluster gets a moment between faults: this is fault pacing, not a wait
            // for a condition.
            std::thread::sleep(rng.ms(1000, 3000));
        }
    }

    /// Whether node `id`'s leader-epoch checkpoint of partition `p` of `topic` tells the
    /// history its batches carry: every epoch that holds records starts where its first
    /// batch is (OffsetForLeaderEpoch answers from it, and a wrong start sends consumers
    /// back as if the log had been truncated). Epochs without records (a leadership that
    /// wrote nothing) may be listed too. `Err` says what differs.
    pub fn epochs_match_batches(&self, id: i32, topic: &str, p: i32) -> Result<(), String> {
        let bytes = self.stored(id, topic, p);
        let mut from_batches: Vec<(i32, i64)> = Vec::new();
        let mut at = 0;
        let mut end = 0;
        while let Ok((h, size)) = strom_storage::batch::check_framing(&bytes[at..]) {
            if from_batches
                .last()
                .is_none_or(|l| l.0 != h.partition_leader_epoch)
            {
                from_batches.push((h.partition_leader_epoch, h.base_offset));
            }
            end = h.last_offset() + 1;
            at += size;
        }
        let path = self
            .tmp
            .path()
            .join(format!("data{id}"))
            .join(format!("{topic}-{p}"))
            .join("leader-epoch-checkpoint");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let entries: Vec<(i32, i64)> = text
            .lines()
            .skip(2)
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
            })
            .collect();
        // The checkpoint's epochs that hold records: those starting before the next one
        // and before the log end.
        let holding: Vec<(i32, i64)> = entries
            .iter()
            .enumerate()
            .filter(|(i, (_, start))| {
                *start < entries.get(i + 1).map_or(end, |n| n.1) && *start < end
            })
            .map(|(_, e)| *e)
            .collect();
        if holding == from_batches {
            Ok(())
        } else {
            Err(format!(
                "node {id} {topic}-{p}: the leader-epoch checkpoint {entries:?} (with records: \
                 {holding:?}) but the batches start epochs at {from_batches:?}"
            ))
        }
    }

    /// The bytes of partition `p` of `topic` in node `id`'s data directory (every segment,
    /// in order).
    pub fn stored(&self, id: i32, topic: &str, p: i32) -> Vec<u8> {
        let dir = self
            .tmp
            .path()
            .join(format!("data{id}"))
            .join(format!("{topic}-{p}"));
        let mut logs: Vec<_> = std::fs::read_dir(dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        logs.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|e| e == "log"));
        logs.sort();
        logs.iter()
            .flat_map(|l| std::fs::read(l).unwrap_or_default())
            .collect()
    }
}
