"""kcat (Debian 12's, on librdkafka 2.0.2: an old client on purpose) against strom."""

import json
import os
import re
import subprocess

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from strom_compat import assert_stored_with_codec


def kcat(bootstrap, *args, stdin=None):
    r = subprocess.run(["kcat", "-b", bootstrap, *args], input=stdin, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"kcat {' '.join(args)} exited with {r.returncode}: {r.stderr}"
    return r.stdout


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_keyed_produce_and_consume(bootstrap, data_dir, topic, codec):
    n = 200
    lines = "".join(f"key{i % 9}:value {i} {codec}{'-' * (20 + i % 50)}\n" for i in range(n))
    # -X linger.ms: let several lines share a batch, so that the codec compresses batches.
    kcat(bootstrap, "-P", "-t", topic, "-K:", "-z", codec, "-X", "linger.ms=50", stdin=lines)
    out = kcat(bootstrap, "-C", "-t", topic, "-e", "-q", "-f", "%k %s %o\n")
    assert out.splitlines() == [f"key{i % 9} value {i} {codec}{'-' * (20 + i % 50)} {i}" for i in range(n)]
    assert_stored_with_codec(data_dir, topic, 1, codec, n)

    meta = kcat(bootstrap, "-L", "-t", topic)
    # One replica alone; on a cluster, one per node (default.replication.factor), all in sync
    # and the leader among them.
    m = re.search(rf'  topic "{topic}" with 1 partitions:\n    partition 0, leader (\d+), replicas: ([\d,]+), isrs: ([\d,]+)\n', meta)
    assert m, meta
    leader, replicas, isrs = m.group(1), m.group(2).split(","), m.group(3).split(",")
    assert len(replicas) == min(int(os.environ.get("STROM_COMPAT_CLUSTER", "1")), 3), meta
    assert leader in replicas and sorted(isrs) == sorted(replicas), meta
    assert re.search(rf"  broker \d+ at {bootstrap}( \(controller\))?\n", meta), meta


def test_metadata_json_lists_topics_and_partitions(bootstrap, topic):
    a = AdminClient({"bootstrap.servers": bootstrap})
    a.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
    meta = json.loads(kcat(bootstrap, "-L", "-J"))
    ids = [b["id"] for b in meta["brokers"]]
    assert {"id": meta["controllerid"], "name": bootstrap} in meta["brokers"] or meta["controllerid"] in ids
    assert bootstrap in [b["name"] for b in meta["brokers"]]
    [mine] = [t for t in meta["topics"] if t["topic"] == topic]
    leaders = [p["leader"] for p in mine["partitions"]]
    assert all(leader in ids for leader in leaders)
    assert mine == {"topic": topic, "partitions": [
        {"partition": p, "leader": leaders[p], "replicas": [{"id": leaders[p]}], "isrs": [{"id": leaders[p]}]}
        for p in range(3)
    ]}


def test_partitions_headers_and_offsets(bootstrap, topic):
    a = AdminClient({"bootstrap.servers": bootstrap})
    a.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
    for p in range(3):
        lines = "".join(f"k{p}-{i}:v{p}-{i}\n" for i in range(5 + p))
        kcat(bootstrap, "-P", "-t", topic, "-p", str(p), "-K:", "-H", f"part={p}", "-H", "dup=a", "-H", "dup=b", stdin=lines)
    for p in range(3):
        out = kcat(bootstrap, "-C", "-t", topic, "-p", str(p), "-e", "-q", "-f", "%p|%o|%k|%s|%h\n")
        assert out.splitlines() == [f"{p}|{i}|k{p}-{i}|v{p}-{i}|part={p},dup=a,dup=b" for i in range(5 + p)]
    # From an offset, and a count.
    out = kcat(bootstrap, "-C", "-t", topic, "-p", "2", "-o", "3", "-c", "2", "-q", "-f", "%o %s\n")
    assert out.splitlines() == ["3 v2-3", "4 v2-4"]
    # The last two of each partition (a negative offset counts back from the end).
    out = kcat(bootstrap, "-C", "-t", topic, "-p", "1", "-o", "-2", "-e", "-q", "-f", "%o %s\n")
    assert out.splitlines() == ["4 v1-4", "5 v1-5"]


def test_group_consumer_resumes(bootstrap, topic):
    kcat(bootstrap, "-P", "-t", topic, stdin="a\nb\nc\n")
    group = f"kcat-{topic}"
    first = kcat(bootstrap, "-G", group, topic, "-e", "-q", "-X", "auto.offset.reset=earliest", "-f", "%o %s\n")
    assert first.splitlines() == ["0 a", "1 b", "2 c"]
    kcat(bootstrap, "-P", "-t", topic, stdin="d\n")
    second = kcat(bootstrap, "-G", group, topic, "-e", "-q", "-X", "auto.offset.reset=earliest", "-f", "%o %s\n")
    assert second.splitlines() == ["3 d"]
