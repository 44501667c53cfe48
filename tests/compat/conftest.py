"""One strom server per pytest session, started and stopped here.

The server gets a free port on 127.0.0.1 and a fresh data directory; its stderr goes to
server.log beside the data (set STROM_LOG=debug in the environment for more). Both are kept,
and their place printed, when a test failed or the server did not stop cleanly.

With STROM_COMPAT_CLUSTER=3 the session runs against three nodes in combined mode
(broker and controller each, formatted with one cluster id), and the clients are given the
address of node 2 only: they must follow the metadata to the partitions' leaders on the
other two. Topics get replication factor 3 by default there (`default.replication.factor`),
and the internal topics Kafka's default of 3. Tests marked `single_node` (they check what only one node can answer) are
skipped there.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


CLUSTER = int(os.environ.get("STROM_COMPAT_CLUSTER", "1"))


@dataclass
class Server:
    bootstrap: str
    data_dir: object  # a path, or a cluster's list of paths
    log_path: str


def pytest_configure(config):
    config.addinivalue_line("markers", "single_node: only meaningful against one node")


def pytest_collection_modifyitems(config, items):
    if CLUSTER > 1:
        skip = pytest.mark.skip(reason="checks what only a single node answers")
        for item in items:
            if "single_node" in item.keywords:
                item.add_marker(skip)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, lines=40):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


def await_listening(proc, log_path):
    """Waits until `proc` printed "listening on"; False if it exited first."""
    ready = threading.Event()

    def watch():
        # Keeps reading to the end so that the server never blocks on a full pipe.
        for line in proc.stdout:
            if "listening on" in line:
                ready.set()

    threading.Thread(target=watch, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    while not ready.wait(0.05):
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"strom server not listening after {START_TIMEOUT} s:\n{tail(log_path)}")
    return True


def spawn(binary, args, log_path):
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [binary, "server", *args],
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    log.close()
    return proc


def start(binary, work):
    """Starts a server; returns ([process], server) once it printed "listening on"."""
    port = free_port()
    data = os.path.join(work, "data")
    log_path = os.path.join(work, "server.log")
    proc = spawn(binary, [
        "--override", f"listeners=PLAINTEXT://127.0.0.1:{port}",
        "--override", f"log.dirs={data}",
        "--override", "num.partitions=1",
        "--override", "group.initial.rebalance.delay.ms=0",
        # The compaction tests should not wait the default 15 s for the cleaner to look.
        "--override", "log.cleaner.backoff.ms=100",
    ], log_path)
    if not await_listening(proc, log_path):
        return [proc], None
    return [proc], Server(f"127.0.0.1:{port}", data, log_path)


def start_cluster(binary, work, n):
    """Formats and starts `n` nodes in combined mode; returns (processes, server)."""
    brokers = [free_port() for _ in range(n)]
    controllers = [free_port() for _ in range(n)]
    voters = ",".join(f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(controllers))
    cluster_id = subprocess.run([binary, "storage", "random-uuid"], check=True, capture_output=True,
                                text=True).stdout.strip()
    procs, dirs, logs = [], [], []
    for i in range(n):
        data = os.path.join(work, f"data{i + 1}")
        config = os.path.join(work, f"node{i + 1}.properties")
        with open(config, "w") as f:
            f.write(f"node.id={i + 1}\nprocess.roles=broker,controller\n"
                    f"controller.quorum.voters={voters}\ncontroller.listener.names=CONTROLLER\n"
                    f"listeners=PLAINTEXT://127.0.0.1:{brokers[i]},CONTROLLER://127.0.0.1:{controllers[i]}\n"
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n"
                    f"log.dirs={data}\nnum.partitions=1\ngroup.initial.rebalance.delay.ms=0\n"
                    "controller.quorum.election.timeout.ms=300\n"
                    "log.cleaner.backoff.ms=100\n"
                    # Every topic a client creates without a factor, or auto-creates, has a
                    # replica on every node: the clients meet replication, not one copy.
                    f"default.replication.factor={min(n, 3)}\n")
        subprocess.run([binary, "storage", "format", "-t", cluster_id, "-c", config], check=True,
                       capture_output=True)
        log_path = os.path.join(work, f"server{i + 1}.log")
        procs.append(spawn(binary, ["--config", config], log_path))
        dirs.append(data)
        logs.append(log_path)
    for proc, log_path in zip(procs, logs):
        if not await_listening(proc, log_path):
            for p in procs:
                p.kill()
            return procs, None
    return procs, Server(f"127.0.0.1:{brokers[1]}", dirs, logs[1])


@pytest.fixture(scope="session")
def server(request):
    binary = os.environ.get("STROM_BIN") or os.path.join(ROOT, "target", "debug", "strom")
    assert os.access(binary, os.X_OK), f"no strom binary at {binary}: cargo build --ignore-rust-version -p strom"
    work = tempfile.mkdtemp(prefix="strom-compat-")
    # The free port may be taken between our probe and the server's bind: try a few.
    for _ in range(3):
        procs, srv = start(binary, work) if CLUSTER == 1 else start_cluster(binary, work, CLUSTER)
        if srv is not None:
            break
        for p in procs:
            p.wait()
    else:
        raise AssertionError(f"strom server exited with {procs[0].returncode} before listening (log in {work}):\n"
                             f"{tail(os.path.join(work, 'server.log' if CLUSTER == 1 else 'server1.log'))}")

    yield srv

    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(STOP_TIMEOUT))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            codes.append(None)
    clean = all(c == 0 for c in codes)
    if clean and request.session.testsfailed == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"\nstrom server data and log kept in {work}", file=sys.stderr)
    assert None not in codes, f"strom server still running {STOP_TIMEOUT} s after SIGTERM:\n{tail(srv.log_path)}"
    assert clean, f"strom server exited with {codes} after SIGTERM:\n{tail(srv.log_path)}"


@pytest.fixture(scope="session")
def bootstrap(server):
    return server.bootstrap


@pytest.fixture(scope="session")
def data_dir(server):
    return server.data_dir


@pytest.fixture
def topic():
    return f"compat-{uuid.uuid4().hex[:12]}"
