"""Cluster figures for a three-node strom cluster in combined mode (broker and controller on
each node), all on this machine, in one run (see measure-cluster.sh, which runs this):

- metadata propagation: CreateTopics acknowledged by node 1, until the topic is in the
  Metadata of every broker (median of 20 topics);
- controller failover: SIGKILL of the quorum leader, until a topic creation through another
  node is acknowledged (median of 5; the killed node is restarted between rounds);
- broker fencing: SIGSTOP of a broker that does not lead the quorum, until the others'
  Metadata no longer offers it to clients (default broker.session.timeout.ms, 9 s);
- idle RSS of each node after start-up and one topic;
- replication (a topic with replication factor 3): produce latency p50/p99 with acks=all at
  10,000 records/s (librdkafka defaults, linger.ms 5), and the time from SIGKILL of a
  partition's leader to the first write acknowledged (acks=all) by its new leader (median
  of 5; the killed node is restarted and back in the ISR between rounds).
"""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

STROM = os.environ["STROM"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, i, config, port, log):
        self.i, self.config, self.port, self.log = i, config, port, log
        self.proc = None

    def start(self):
        out = open(self.log + ".out", "w")
        self.proc = subprocess.Popen([STROM, "server", "--config", self.config], stdout=out,
                                     stderr=open(self.log, "a"))

    def wait_listening(self, after=0):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with open(self.log + ".out") as f:
                if "listening on" in f.read():
                    return
            time.sleep(0.02)
        raise SystemExit(f"node {self.i} did not start")

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])


def cluster(work):
    brokers = [free_port() for _ in range(3)]
    controllers = [free_port() for _ in range(3)]
    voters = ",".join(f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(controllers))
    cid = subprocess.run([STROM, "storage", "random-uuid"], capture_output=True, text=True,
                         check=True).stdout.strip()
    nodes = []
    for i in range(3):
        config = os.path.join(work, f"node{i + 1}.properties")
        with open(config, "w") as f:
            f.write(f"node.id={i + 1}\nprocess.roles=broker,controller\n"
                    f"controller.quorum.voters={voters}\ncontroller.listener.names=CONTROLLER\n"
                    f"listeners=PLAINTEXT://127.0.0.1:{brokers[i]},CONTROLLER://127.0.0.1:{controllers[i]}\n"
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n"
                    f"log.dirs={work}/data{i + 1}\n")
        subprocess.run([STROM, "storage", "format", "-t", cid, "-c", config], check=True,
                       capture_output=True)
        nodes.append(Node(i + 1, config, brokers[i], os.path.join(work, f"node{i + 1}.log")))
    for n in nodes:
        n.start()
    for n in nodes:
        n.wait_listening()
    return nodes


def quorum_leader(node):
    out = subprocess.run([STROM, "cluster", "describe", "--json", "--bootstrap-server", node.bootstrap],
                         capture_output=True, text=True)
    try:
        return json.loads(out.stdout)["quorum"]["leader"]
    except (ValueError, KeyError, TypeError):
        return None


def wait(what, predicate, timeout=60, interval=0.001):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def partition_state(admin, topic):
    """(leader, isr) of partition 0 of `topic`, as `admin`'s cluster says."""
    try:
        p = admin.list_topics(topic, timeout=5).topics[topic].partitions[0]
        return p.leader, list(p.isrs)
    except Exception:  # noqa: BLE001 - a node may be down: the caller asks again
        return None, []


def replication(nodes, admins):
    bootstrap = ",".join(n.bootstrap for n in nodes)
    admins[0].create_topics([NewTopic("rep", 1, 3)])["rep"].result(30)
    wait("rep in sync", lambda: len(partition_state(admins[0], "rep")[1]) == 3, interval=0.05)

    # Latency at 10,000 records/s for 5 s, acks=all.
    sent = {}
    latencies = []

    def delivered(err, msg):
        if err is None:
            latencies.append(time.monotonic() - sent[msg.value()])

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    # Warm-up, not measured: the followers' fetchers start and settle, the producer learns
    # the leader.
    for i in range(2_000):
        p.produce("rep", b"warm-up", partition=0)
        p.poll(0)
    p.flush(60)
    start = time.monotonic()
    for i in range(50_000):
        due = start + i / 10_000
        while time.monotonic() < due:
            p.poll(0)
        v = b"%08d" % i
        sent[v] = time.monotonic()
        p.produce("rep", v, partition=0, on_delivery=delivered)
    p.flush(60)
    latencies.sort()
    pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731

    # SIGKILL of the leader -> the first write acknowledged by the new one.
    failovers = []
    for k in range(5):
        leader = wait("a leader for rep", lambda: partition_state(admins[0], "rep")[0] or None)
        victim = nodes[leader - 1]
        others = [a for i, a in enumerate(admins) if i != leader - 1]
        p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                      "linger.ms": 0})
        p.produce("rep", b"warm-up", partition=0)
        p.flush(30)
        acked = []
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        killed = time.monotonic()
        p.produce("rep", b"after-%d" % k, partition=0,
                  on_delivery=lambda err, msg: acked.append((err, time.monotonic())))
        p.flush(60)
        if not acked or acked[0][0] is not None:
            raise SystemExit(f"the write after the kill failed: {acked}")
        failovers.append(acked[0][1] - killed)
        open(victim.log + ".out", "w").close()
        victim.start()
        victim.wait_listening()
        admins[victim.i - 1] = AdminClient({"bootstrap.servers": victim.bootstrap})
        wait("the restarted node back in the ISR",
             lambda: len(partition_state(others[0], "rep")[1]) == 3, timeout=120, interval=0.05)
    return pct(0.5), pct(0.99), len(latencies), failovers


def brokers_seen(admin):
    """The broker ids in `admin`'s Metadata; None when no answer came (librdkafka may have
    asked the paused broker)."""
    try:
        return set(admin.list_topics(timeout=2).brokers)
    except Exception:  # noqa: BLE001 - asked again
        return None


def main():
    work = tempfile.mkdtemp(prefix="strom-measure-cluster-")
    nodes = cluster(work)
    admins = [AdminClient({"bootstrap.servers": n.bootstrap}) for n in nodes]
    try:
        # Idle RSS, once a topic exists (the nodes have settled).
        admins[0].create_topics([NewTopic("idle", 3, 1)])["idle"].result(30)
        time.sleep(2)  # measurement, not synchronisation: let the allocator settle
        rss = [n.rss_kib() for n in nodes]

        # Metadata propagation.
        delays = []
        for k in range(20):
            t = f"prop-{k}"
            admins[0].create_topics([NewTopic(t, 1, 1)])[t].result(30)
            acked = time.monotonic()
            for a in admins[1:]:
                wait("the topic everywhere", lambda: t in a.list_topics(t, timeout=5).topics
                     and a.list_topics(t, timeout=5).topics[t].error is None)
            delays.append(time.monotonic() - acked)

        # Controller failover: SIGKILL of the quorum leader.
        failovers = []
        for k in range(5):
            leader = wait("a quorum leader", lambda: quorum_leader(nodes[0]) or quorum_leader(nodes[1]))
            victim = nodes[leader - 1]
            other = admins[leader % 3]
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait()
            killed = time.monotonic()
            t = f"failover-{k}"

            # One request, sent at once: the broker retries its commit through the election
            # and answers as soon as the new leader committed it.
            other.create_topics([NewTopic(t, 1, 1)], request_timeout=30)[t].result(35)
            failovers.append(time.monotonic() - killed)
            open(victim.log + ".out", "w").close()
            victim.start()
            victim.wait_listening()
            admins[victim.i - 1] = AdminClient({"bootstrap.servers": victim.bootstrap})

        # Broker fencing: SIGSTOP of a broker that does not lead the quorum.
        leader = wait("a quorum leader", lambda: quorum_leader(nodes[0]))
        victim = next(n for n in nodes if n.i != leader)
        watcher = admins[leader - 1]
        victim.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        wait("the paused broker to leave Metadata",
             lambda: (seen := brokers_seen(watcher)) is not None and victim.i not in seen,
             interval=0.05)
        fenced = time.monotonic() - stopped
        victim.proc.send_signal(signal.SIGCONT)
        wait("the broker back in Metadata",
             lambda: victim.i in (brokers_seen(watcher) or set()), interval=0.05)
        back = time.monotonic() - stopped - fenced

        p50, p99, count, leader_failovers = replication(nodes, admins)

        ms = lambda s: f"{s * 1000:.0f} ms"  # noqa: E731
        print("three nodes in combined mode, release build, this machine, one run:")
        print(f"metadata propagation (CreateTopics acked by node 1 -> in Metadata of nodes 2 and 3): "
              f"median {ms(statistics.median(delays))}, max {ms(max(delays))} over {len(delays)} topics")
        print(f"controller failover (SIGKILL of the quorum leader -> a creation acknowledged): "
              f"median {ms(statistics.median(failovers))} of {len(failovers)}: "
              f"{', '.join(ms(f) for f in failovers)}")
        print(f"broker fencing (SIGSTOP -> gone from the others' Metadata, session timeout 9 s): "
              f"{ms(fenced)}; after SIGCONT it is back in {ms(back)}")
        print(f"idle RSS per node: {', '.join(f'{r / 1024:.1f} MiB' for r in rss)}")
        print(f"replication factor 3, acks=all, 10,000 records/s: latency p50 {p50 * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms over {count} records")
        print(f"leader failover (SIGKILL of a partition's leader -> first acks=all write acknowledged, "
              f"session timeout 9 s): median {ms(statistics.median(leader_failovers))} of "
              f"{len(leader_failovers)}: {', '.join(ms(f) for f in leader_failovers)}")
    finally:
        for n in nodes:
            if n.proc and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGCONT)
                n.proc.kill()
                n.proc.wait()


if __name__ == "__main__":
    sys.exit(main())
