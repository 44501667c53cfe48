"""A strom server for the whole session, and helpers shared by the client suites."""

import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import pytest


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="session")
def bootstrap():
    binary = os.environ.get("STROM_BIN", "target/debug/strom")
    port = free_port()
    data = tempfile.mkdtemp(prefix="strom-compat-")
    proc = subprocess.Popen(
        [
            binary, "server",
            "--override", f"listeners=PLAINTEXT://127.0.0.1:{port}",
            "--override", f"log.dirs={data}",
            "--override", "group.initial.rebalance.delay.ms=0",
            "--override", "num.partitions=1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    ready = threading.Event()

    def watch():
        for line in proc.stdout:
            if "listening on" in line:
                ready.set()

    threading.Thread(target=watch, daemon=True).start()
    assert ready.wait(60), "strom server did not start within 60 s"
    yield f"127.0.0.1:{port}"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, "strom server did not shut down cleanly"


@pytest.fixture
def topic():
    return f"compat-{uuid.uuid4().hex[:10]}"


def wait_until(what, predicate, timeout=60.0, interval=0.05):
    """Polls `predicate` until it returns a true value, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
