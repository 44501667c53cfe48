"""kafka-python against strom."""

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import AlterConfigOp, ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import InvalidRecordError, KafkaError, TopicAlreadyExistsError

from strom_compat import CODEC_IDS, assert_stored_with_codec, stored_batches, wait_until


def create(bootstrap, topic, partitions, configs=None):
    a = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        a.create_topics([NewTopic(topic, partitions, 1, topic_configs=configs or {})])
    finally:
        a.close()


def read_all(bootstrap, topic, partitions, **conf):
    """Reads every partition from the beginning to its end offset (asked before reading):
    returns {partition: [records]}."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **conf)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        ends = c.end_offsets(tps)
        out = {p: [] for p in range(partitions)}

        def more():
            for tp, records in c.poll(timeout_ms=200).items():
                out[tp.partition].extend(records)
            return all(c.position(tp) >= ends[tp] for tp in tps)

        wait_until(f"the end of {topic}", more)
        assert all(c.position(tp) == ends[tp] for tp in tps), "read past the end offsets"
        return out
    finally:
        c.close()


@pytest.mark.parametrize("codec", [None, "gzip", "snappy", "lz4", "zstd"])
def test_keys_headers_and_codecs(bootstrap, data_dir, topic, codec):
    create(bootstrap, topic, 2)
    n = 120

    def key(i):
        return f"k{i % 5}".encode()

    def value(i):
        return f"{codec}-v{i}-".encode() + b"y" * (i % 200)

    def headers(i):
        return [("i", str(i).encode()), ("dup", b"1"), ("dup", b"\x00\x01\x02")]

    p = KafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, acks="all", linger_ms=20)
    futures = [p.send(topic, key=key(i), value=value(i), headers=headers(i)) for i in range(n)]
    p.flush(30)
    sent = [f.get(30) for f in futures]
    p.close()

    partition_of_key = {}
    for i, md in enumerate(sent):
        assert partition_of_key.setdefault(key(i), md.partition) == md.partition
    got = read_all(bootstrap, topic, 2)
    for part in (0, 1):
        indexes = [i for i in range(n) if sent[i].partition == part]
        assert [sent[i].offset for i in indexes] == list(range(len(indexes)))
        assert [(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers)) for r in got[part]] == [
            (topic, part, sent[i].offset, key(i), value(i), headers(i)) for i in indexes
        ], f"partition {part}"
    assert_stored_with_codec(data_dir, topic, 2, codec, n)


@pytest.mark.parametrize("producer_codec", [None, "gzip"])
@pytest.mark.parametrize("topic_codec", ["uncompressed", "snappy", "lz4", "zstd"])
def test_topic_compression_type_recompresses(bootstrap, data_dir, topic, topic_codec, producer_codec):
    """A topic's compression.type: kafka-python's batches are stored in the topic's codec and
    read back exactly."""
    create(bootstrap, topic, 1, {"compression.type": topic_codec})
    n = 80
    p = KafkaProducer(bootstrap_servers=bootstrap, compression_type=producer_codec, acks="all", linger_ms=20)
    futures = [p.send(topic, key=f"k{i}".encode(), value=f"v{i}-".encode() + b"q" * (i % 120)) for i in range(n)]
    p.flush(30)
    assert [f.get(30).offset for f in futures] == list(range(n))
    p.close()
    got = read_all(bootstrap, topic, 1)[0]
    assert [(r.offset, r.key, r.value) for r in got] == [(i, f"k{i}".encode(), f"v{i}-".encode() + b"q" * (i % 120)) for i in range(n)]
    want = 0 if topic_codec == "uncompressed" else CODEC_IDS[topic_codec]
    assert all(b.codec == want for b in stored_batches(data_dir, topic, 0))


@pytest.mark.parametrize("api_version", [(0, 11), (1, 0), (2, 1), (3, 0)], ids=lambda v: ".".join(map(str, v)))
def test_older_request_versions(bootstrap, data_dir, topic, api_version):
    """Pinning the client to an older Kafka makes it use older Produce, Fetch, ListOffsets and
    Metadata versions; records and headers come back the same."""
    create(bootstrap, topic, 1)
    p = KafkaProducer(bootstrap_servers=bootstrap, api_version=api_version, compression_type="gzip", acks="all", linger_ms=20)
    futures = [p.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), headers=[("i", str(i).encode())]) for i in range(30)]
    p.flush(30)
    assert [(f.get(30).partition, f.get(30).offset) for f in futures] == [(0, i) for i in range(30)]
    p.close()
    got = read_all(bootstrap, topic, 1, api_version=api_version)[0]
    assert [(r.offset, r.key, r.value, list(r.headers)) for r in got] == [
        (i, f"k{i}".encode(), f"v{i}".encode(), [("i", str(i).encode())]) for i in range(30)
    ]
    assert_stored_with_codec(data_dir, topic, 1, "gzip", 30)


def test_idempotent_producer(bootstrap, data_dir, topic):
    create(bootstrap, topic, 1)
    p = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5, batch_size=2000)
    futures = [p.send(topic, key=f"k{i % 3}".encode(), value=f"v{i}".encode()) for i in range(300)]
    p.flush(30)
    assert [(f.get(30).partition, f.get(30).offset) for f in futures] == [(0, i) for i in range(300)]
    p.close()
    got = read_all(bootstrap, topic, 1)[0]
    assert [(r.offset, r.key, r.value) for r in got] == [(i, f"k{i % 3}".encode(), f"v{i}".encode()) for i in range(300)]
    batches = stored_batches(data_dir, topic, 0)
    assert len(batches) > 1
    assert len({(b.producer_id, b.producer_epoch) for b in batches}) == 1 and batches[0].producer_id >= 0
    assert [b.base_sequence for b in batches] == [b.base_offset for b in batches]


def test_admin_create_describe_delete(bootstrap, topic):
    create(bootstrap, topic, 2, {"retention.ms": "7200000"})
    a = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        # In a cluster the admin client may ask another broker than the one that answered
        # CreateTopics: its metadata follows within moments, as in Kafka.
        wait_until("the topic listed", lambda: topic in a.list_topics())
        [desc] = a.describe_topics([topic])
        assert desc["error_code"] == 0
        # One replica each, on the broker that leads it (node 0 alone, or one of a cluster).
        assert [(p["error_code"], p["partition_index"], p["replica_nodes"], p["isr_nodes"])
                for p in sorted(desc["partitions"], key=lambda p: p["partition_index"])] == [
            (0, i, [p["leader_id"]], [p["leader_id"]])
            for i, p in enumerate(sorted(desc["partitions"], key=lambda p: p["partition_index"]))]

        resource = ConfigResource(ConfigResourceType.TOPIC, topic)
        # The default filter keeps what was set on the topic: exactly retention.ms.
        modified = a.describe_configs([resource])["topic"][topic]
        assert sorted(modified) == ["retention.ms"]
        assert modified["retention.ms"]["value"] == "7200000"
        assert modified["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
        everything = a.describe_configs([resource], config_filter="all")["topic"][topic]
        assert everything["retention.ms"]["value"] == "7200000"
        assert (everything["cleanup.policy"]["value"], everything["cleanup.policy"]["config_source"]) == ("delete", "DEFAULT_CONFIG")
        assert everything["segment.bytes"]["value"] == "1073741824"

        with pytest.raises(TopicAlreadyExistsError):
            a.create_topics([NewTopic(topic, 1, 1)])

        # AlterConfigs (the whole set: the client re-sends retention.ms), then IncrementalAlterConfigs.
        a.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"segment.ms": "3600000"})], incremental=False)
        a.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={
            "retention.bytes": (AlterConfigOp.SET, "5000000"), "segment.ms": (AlterConfigOp.DELETE, None)})], incremental=True)
        modified = a.describe_configs([resource])["topic"][topic]
        assert {k: (v["value"], v["config_source"]) for k, v in modified.items()} == {
            "retention.ms": ("7200000", "DYNAMIC_TOPIC_CONFIG"),
            "retention.bytes": ("5000000", "DYNAMIC_TOPIC_CONFIG"),
        }

        a.create_partitions({topic: 4})
        [desc] = a.describe_topics([topic])
        assert sorted(p["partition_index"] for p in desc["partitions"]) == [0, 1, 2, 3]

        a.delete_topics([topic])
        wait_until("the topic to go", lambda: topic not in a.list_topics())
    finally:
        a.close()


def test_offsets_for_times_and_delete_records(bootstrap, topic):
    create(bootstrap, topic, 1)
    base = 1_700_000_000_000
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    futures = [p.send(topic, value=str(i).encode(), timestamp_ms=base + i * 1000) for i in range(10)]
    p.flush(30)
    assert [(f.get(30).partition, f.get(30).offset) for f in futures] == [(0, i) for i in range(10)]
    p.close()
    tp = TopicPartition(topic, 0)
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    a = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        assert c.beginning_offsets([tp]) == {tp: 0}
        assert c.end_offsets([tp]) == {tp: 10}
        found = c.offsets_for_times({tp: base + 4500})[tp]
        assert (found.offset, found.timestamp) == (5, base + 5000)
        assert c.offsets_for_times({tp: base + 10_000}) == {tp: None}

        deleted = a.delete_records({tp: 3})
        assert deleted[tp]["low_watermark"] == 3
        assert c.beginning_offsets([tp]) == {tp: 3}
    finally:
        c.close()
        a.close()
    got = read_all(bootstrap, topic, 1)[0]
    assert [(r.offset, r.value, r.timestamp, r.timestamp_type) for r in got] == [
        (i, str(i).encode(), base + i * 1000, 0) for i in range(3, 10)
    ]


def test_batches_larger_than_the_fetch_limits(bootstrap, data_dir, topic):
    """A fetch returns the first batch whole even when it is larger than the partition and
    response limits (KIP-74), or a consumer with small limits would never make progress."""
    create(bootstrap, topic, 1)
    values = [bytes([65 + i % 26]) * 30_000 + str(i).encode() for i in range(20)]
    p = KafkaProducer(bootstrap_servers=bootstrap, batch_size=400_000, linger_ms=50, max_request_size=2_000_000)
    futures = [p.send(topic, value=v) for v in values]
    p.flush(30)
    assert [f.get(30).offset for f in futures] == list(range(20))
    p.close()
    assert max(b.record_count for b in stored_batches(data_dir, topic, 0)) > 1, "no batch over 30 KB"
    got = read_all(bootstrap, topic, 1, max_partition_fetch_bytes=1024, fetch_max_bytes=1024)[0]
    assert [(r.offset, r.value) for r in got] == list(enumerate(values))


def test_group_commit_and_resume(bootstrap, topic):
    create(bootstrap, topic, 2)
    p = KafkaProducer(bootstrap_servers=bootstrap)
    sent = [p.send(topic, key=str(i).encode(), value=str(i).encode()) for i in range(20)]
    p.flush(30)
    sent = [f.get(30) for f in sent]
    p.close()
    group = f"kp-{topic}"
    a = KafkaAdminClient(bootstrap_servers=bootstrap)
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        got = []

        def more():
            for records in c.poll(timeout_ms=200).values():
                got.extend(records)
            return len(got) >= 20

        wait_until("20 records in the group", more)
        c.commit()
        assert sorted((r.partition, r.offset, r.value) for r in got) == sorted(
            (md.partition, md.offset, str(i).encode()) for i, md in enumerate(sent))
        listed = {g["group_id"]: g for g in a.list_groups()}
        assert listed[group]["group_state"] == "Stable"
        assert listed[group]["protocol_type"] == "consumer"
        desc = a.describe_groups([group])[group]
        assert desc["group_state"] == "Stable"
        assert len(desc["members"]) == 1
        assigned = desc["members"][0]["member_assignment"]["assigned_partitions"]
        assert sorted(p for a_ in assigned for p in a_["partitions"]) == [0, 1]
    finally:
        c.close()
    ends = {}
    for md in sent:
        ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
    offsets = a.list_group_offsets(group)[group]
    assert {tp.partition: o.offset for tp, o in offsets.items()} == ends

    # Resume: only what was produced after the commit.
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        p = KafkaProducer(bootstrap_servers=bootstrap)
        md = p.send(topic, key=b"new", value=b"20").get(30)
        p.close()
        more_records = []

        def the_new_one():
            for records in c.poll(timeout_ms=200).values():
                more_records.extend(records)
            return more_records

        wait_until("the new record", the_new_one)
        assert [(r.partition, r.offset, r.key, r.value) for r in more_records] == [(md.partition, md.offset, b"new", b"20")]
    finally:
        c.close()
        a.close()


def test_compacted_topic_read_back_and_keyless_records_refused(bootstrap, topic):
    """cleanup.policy=compact with kafka-python: after the cleaner ran, reading from the
    beginning gives one record per key at its offset (the gaps are skipped); a batch with
    records without a key fails exactly those with INVALID_RECORD (KIP-467) and writes
    nothing."""
    create(bootstrap, topic, 1, {"cleanup.policy": "compact", "segment.ms": "1",
                                 "min.cleanable.dirty.ratio": "0.01"})
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    expected = {}
    for rnd in range(8):
        futures = [p.send(topic, key=f"k{k}".encode(), value=f"r{rnd}-{k}".encode()) for k in range(25)]
        p.flush(30)
        for k, f in enumerate(futures):
            expected[f"k{k}".encode()] = (f.get(30).offset, f"r{rnd}-{k}".encode())
    end = p.send(topic, key=b"end", value=b"end").get(30)
    expected[b"end"] = (end.offset, b"end")

    def compacted():
        got = read_all(bootstrap, topic, 1)[0]
        return len(got) == len(expected) and {r.key: (r.offset, r.value) for r in got} == expected

    wait_until("the topic compacted", compacted, timeout=60)

    futures = [p.send(topic, key=None if i == 1 else b"k", value=b"v") for i in range(3)]
    p.flush(30)
    failures = []
    for f in futures:
        with pytest.raises(KafkaError) as e:
            f.get(30)
        failures.append(e.value)
    p.close()
    assert isinstance(failures[1], InvalidRecordError), failures
    assert "without key" in str(failures[1]), failures[1]
    assert not isinstance(failures[0], InvalidRecordError) and not isinstance(failures[2], InvalidRecordError), failures
    # Nothing of the refused batch was written.
    assert {r.key: (r.offset, r.value) for r in read_all(bootstrap, topic, 1)[0]} == expected
