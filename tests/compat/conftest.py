"""One strom server per pytest session, started and stopped here.

The server gets a free port on 127.0.0.1 and a fresh data directory; its stderr goes to
server.log beside the data (set STROM_LOG=debug in the environment for more). Both are kept,
and their place printed, when a test failed or the server did not stop cleanly.
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


@dataclass
class Server:
    bootstrap: str
    data_dir: str
    log_path: str


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


def start(binary, work):
    """Starts a server; returns (process, server) once it printed "listening on"."""
    port = free_port()
    data = os.path.join(work, "data")
    log_path = os.path.join(work, "server.log")
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [
            binary, "server",
            "--override", f"listeners=PLAINTEXT://127.0.0.1:{port}",
            "--override", f"log.dirs={data}",
            "--override", "num.partitions=1",
            "--override", "group.initial.rebalance.delay.ms=0",
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    log.close()
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
            return proc, None
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"strom server not listening after {START_TIMEOUT} s:\n{tail(log_path)}")
    return proc, Server(f"127.0.0.1:{port}", data, log_path)


@pytest.fixture(scope="session")
def server(request):
    binary = os.environ.get("STROM_BIN") or os.path.join(ROOT, "target", "debug", "strom")
    assert os.access(binary, os.X_OK), f"no strom binary at {binary}: cargo build --ignore-rust-version -p strom"
    work = tempfile.mkdtemp(prefix="strom-compat-")
    # The free port may be taken between our probe and the server's bind: try a few.
    for _ in range(3):
        proc, srv = start(binary, work)
        if srv is not None:
            break
    else:
        raise AssertionError(f"strom server exited with {proc.returncode} before listening (log in {work}):\n"
                             f"{tail(os.path.join(work, 'server.log'))}")

    yield srv

    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    clean = code == 0
    if clean and request.session.testsfailed == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"\nstrom server data and log kept in {work}", file=sys.stderr)
    assert code is not None, f"strom server still running {STOP_TIMEOUT} s after SIGTERM:\n{tail(srv.log_path)}"
    assert clean, f"strom server exited with {code} after SIGTERM:\n{tail(srv.log_path)}"


@pytest.fixture(scope="session")
def bootstrap(server):
    return server.bootstrap


@pytest.fixture(scope="session")
def data_dir(server):
    return server.data_dir


@pytest.fixture
def topic():
    return f"compat-{uuid.uuid4().hex[:12]}"
