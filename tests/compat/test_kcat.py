"""kcat (Debian's, on librdkafka 2.0.2: an old client on purpose) against strom."""

import subprocess

import pytest


def kcat(bootstrap, *args, stdin=None):
    r = subprocess.run(["kcat", "-b", bootstrap, *args], input=stdin, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_keyed_produce_and_consume(bootstrap, topic, codec):
    lines = "".join(f"key{i}:value {i}\n" for i in range(20))
    kcat(bootstrap, "-P", "-t", topic, "-K:", "-z", codec, stdin=lines)
    out = kcat(bootstrap, "-C", "-t", topic, "-e", "-q", "-f", "%k %s %o\n")
    assert out.splitlines() == [f"key{i} value {i} {i}" for i in range(20)]
    meta = kcat(bootstrap, "-L", "-t", topic)
    assert f'topic "{topic}" with 1 partitions' in meta


def test_group_consumer_resumes(bootstrap, topic):
    kcat(bootstrap, "-P", "-t", topic, stdin="a\nb\nc\n")
    group = f"kcat-{topic}"
    first = kcat(bootstrap, "-G", group, topic, "-e", "-q", "-X", "auto.offset.reset=earliest", "-f", "%s\n")
    assert first.splitlines() == ["a", "b", "c"]
    kcat(bootstrap, "-P", "-t", topic, stdin="d\n")
    second = kcat(bootstrap, "-G", group, topic, "-e", "-q", "-X", "auto.offset.reset=earliest", "-f", "%s\n")
    assert second.splitlines() == ["d"]
