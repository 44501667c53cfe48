"""confluent-kafka (librdkafka) against strom."""

import time
import uuid

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING, Consumer, ConsumerGroupTopicPartitions, KafkaError, KafkaException,
    Producer, TopicPartition, TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME,
)
from confluent_kafka.admin import (
    AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource, NewPartitions,
    NewTopic, OffsetSpec,
)

from strom_compat import CODEC_IDS, assert_stored_with_codec, stored_batches, wait_until

CODECS = ["gzip", "snappy", "lz4", "zstd"]


def admin(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap})


def create(a, topic, partitions, config=None):
    a.create_topics([NewTopic(topic, partitions, 1, config=config or {})])[topic].result(30)


def produce(bootstrap, topic, records, **conf):
    """Produces `records` (dicts of Producer.produce arguments) in order; returns each one's
    (partition, offset) from its delivery report, in the same order."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **conf})
    reports = [None] * len(records)

    def reporter(i):
        def report(err, msg):
            assert err is None, f"record {i}: {err}"
            reports[i] = (msg.partition(), msg.offset())
        return report

    for i, r in enumerate(records):
        p.produce(topic, on_delivery=reporter(i), **r)
        p.poll(0)
    assert p.flush(30) == 0, "records left unacknowledged"
    assert None not in reports
    return reports


def consumer(bootstrap, **conf):
    # librdkafka wants a group.id even for a consumer that only assigns; nothing is committed.
    return Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"compat-assign-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        **conf,
    })


def consume_assigned(bootstrap, topic, partitions, start=OFFSET_BEGINNING, **conf):
    """Reads every partition from `start` to its end (partition EOF); returns {partition: [messages]}."""
    c = consumer(bootstrap, **conf)
    c.assign([TopicPartition(topic, p, start) for p in range(partitions)])
    out = {p: [] for p in range(partitions)}
    at_end = set()

    def more():
        for m in c.consume(num_messages=1000, timeout=0.2):
            if m.error() is not None:
                assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                at_end.add(m.partition())
            else:
                assert m.partition() not in at_end, "record after the end of the partition"
                out[m.partition()].append(m)
        return len(at_end) == partitions

    wait_until(f"the end of {partitions} partitions of {topic}", more)
    c.close()
    return out


def watermarks(bootstrap, topic, partition):
    c = consumer(bootstrap)
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    finally:
        c.close()


def test_admin_create_describe_alter_partitions_and_delete(bootstrap, topic):
    a = admin(bootstrap)
    create(a, topic, 3, {"retention.ms": "3600000"})
    md = a.list_topics(topic, timeout=10)
    assert sorted(md.topics[topic].partitions) == [0, 1, 2]
    # One replica each, on whichever broker leads it (node 0 alone, or one of a cluster).
    assert all(p.leader >= 0 and p.replicas == [p.leader] and p.isrs == [p.leader]
               for p in md.topics[topic].partitions.values())

    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = a.describe_configs([res])[res].result(10)
    assert configs["retention.ms"].value == "3600000"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["cleanup.policy"].value == "delete"
    assert configs["cleanup.policy"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value

    # Unknown topics are refused by name.
    missing = ConfigResource(ConfigResource.Type.TOPIC, f"{topic}-missing")
    with pytest.raises(KafkaException) as e:
        a.describe_configs([missing])[missing].result(10)
    assert e.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART

    # validate_only checks and creates nothing.
    checked = f"{topic}-validated"
    assert a.create_topics([NewTopic(checked, 2, 1)], validate_only=True)[checked].result(10) is None
    assert checked not in a.list_topics(timeout=10).topics

    # The same name again is refused.
    with pytest.raises(KafkaException) as e:
        create(a, topic, 1)
    assert e.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS

    # IncrementalAlterConfigs: set one, delete the other (back to the default).
    alter = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.bytes", "1048576", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
    ])
    a.incremental_alter_configs([alter])[alter].result(10)
    configs = a.describe_configs([res])[res].result(10)
    assert configs["retention.bytes"].value == "1048576"
    assert configs["retention.bytes"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["retention.ms"].value == "604800000"
    assert configs["retention.ms"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value

    a.create_partitions([NewPartitions(topic, 5)])[topic].result(10)
    wait_until("5 partitions", lambda: sorted(a.list_topics(topic, timeout=10).topics[topic].partitions) == [0, 1, 2, 3, 4])

    a.delete_topics([topic])[topic].result(10)
    wait_until("the topic to go", lambda: topic not in a.list_topics(timeout=10).topics)


@pytest.mark.single_node
def test_describe_cluster(bootstrap):
    a = admin(bootstrap)  # the client must outlive its futures
    d = a.describe_cluster().result(10)
    assert [(n.id, n.host, n.port) for n in d.nodes] == [(0, "127.0.0.1", int(bootstrap.rsplit(":", 1)[1]))]
    assert d.controller.id == 0
    assert d.cluster_id


def test_keyed_produce_with_headers_acks_all(bootstrap, topic):
    a = admin(bootstrap)
    create(a, topic, 3)
    n = 300

    def key(i):
        return f"user-{i % 23}".encode()

    def headers(i):
        return [("n", str(i).encode()), ("dup", b"first"), ("dup", b"\x00\xff second"), ("empty", b"")]

    def value(i):
        return None if i % 50 == 7 else f"value-{i}".encode()

    records = [{"key": key(i), "value": value(i), "headers": headers(i)} for i in range(n)]
    reports = produce(bootstrap, topic, records, acks="all")

    # The client's view: one partition per key, offsets 0.. per partition in production order.
    partition_of_key = {}
    for i, (p, _) in enumerate(reports):
        assert partition_of_key.setdefault(key(i), p) == p, f"key {key(i)} in two partitions"
    expected = {p: [i for i in range(n) if reports[i][0] == p] for p in range(3)}
    assert all(expected.values()), "a partition got no key: pick other keys"
    for p, indexes in expected.items():
        assert [reports[i][1] for i in indexes] == list(range(len(indexes))), f"partition {p}"

    # The consumer's view: exactly those records, at those offsets, in that order.
    got = consume_assigned(bootstrap, topic, 3)
    for p, indexes in expected.items():
        assert [(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers()) for m in got[p]] == [
            (topic, p, reports[i][1], key(i), value(i), headers(i)) for i in indexes
        ], f"partition {p}"
        assert all(m.timestamp()[0] == TIMESTAMP_CREATE_TIME for m in got[p])
        assert watermarks(bootstrap, topic, p) == (0, len(indexes))


@pytest.mark.parametrize("acks", ["0", "1"])
def test_produce_acks_0_and_1(bootstrap, topic, acks):
    a = admin(bootstrap)
    create(a, topic, 1)
    if acks == "0":
        # Nothing comes back to an acks=0 producer, not even "unknown topic" from a leader
        # that has not heard of the topic yet: make sure the leader knows it first.
        def known():
            try:
                return watermarks(bootstrap, topic, 0) == (0, 0)
            except KafkaException:
                return False
        wait_until("the leader to know the topic", known)
    produce(bootstrap, topic, [{"key": f"k{i}", "value": f"v{i}"} for i in range(100)], acks=acks)
    if acks == "0":
        # Nothing tells an acks=0 producer that its records arrived: wait for them to be readable.
        wait_until("100 records", lambda: watermarks(bootstrap, topic, 0) == (0, 100))
    got = consume_assigned(bootstrap, topic, 1)[0]
    assert [(m.offset(), m.key(), m.value()) for m in got] == [(i, f"k{i}".encode(), f"v{i}".encode()) for i in range(100)]


@pytest.mark.parametrize("codec", CODECS)
def test_compression_round_trips(bootstrap, data_dir, topic, codec):
    a = admin(bootstrap)
    create(a, topic, 2)
    n = 400
    records = [{"key": f"k{i % 2}", "value": f"{codec}-{i}-" + "x" * (50 + i % 300), "headers": [("i", str(i))]} for i in range(n)]
    reports = produce(bootstrap, topic, records, **{"compression.type": codec, "linger.ms": 50})
    got = consume_assigned(bootstrap, topic, 2)
    for p in (0, 1):
        indexes = [i for i in range(n) if reports[i][0] == p]
        assert [(m.offset(), m.key(), m.value(), m.headers()) for m in got[p]] == [
            (reports[i][1], records[i]["key"].encode(), records[i]["value"].encode(), [("i", str(i).encode())]) for i in indexes
        ]
        assert [reports[i][1] for i in indexes] == list(range(len(indexes)))
    assert_stored_with_codec(data_dir, topic, 2, codec, n)

    # From the middle of a compressed batch: the records before the asked offset are not returned.
    p, batch = next((p, b) for p in (0, 1) for b in stored_batches(data_dir, topic, p)
                    if b.codec != 0 and b.record_count >= 3)
    start = batch.base_offset + 1
    tail = consume_assigned(bootstrap, topic, 2, start=start)[p]
    indexes = [i for i in range(n) if reports[i][0] == p and reports[i][1] >= start]
    assert [(m.offset(), m.value()) for m in tail] == [(reports[i][1], records[i]["value"].encode()) for i in indexes]


@pytest.mark.parametrize("producer_codec", ["none", "zstd"])
@pytest.mark.parametrize("topic_codec", ["uncompressed", "gzip", "snappy", "lz4", "zstd"])
def test_topic_compression_type_recompresses(bootstrap, data_dir, topic, topic_codec, producer_codec):
    """A topic's compression.type: whatever the producer's codec, the stored batches are in the
    topic's, and the records read back exactly."""
    a = admin(bootstrap)
    create(a, topic, 1, {"compression.type": topic_codec})
    n = 150
    records = [{"key": f"k{i}", "value": f"{topic_codec}-{producer_codec}-{i}-" + "z" * (40 + i % 90),
                "headers": [("i", str(i))]} for i in range(n)]
    reports = produce(bootstrap, topic, records, **{"compression.type": producer_codec, "linger.ms": 50})
    assert [r[1] for r in reports] == list(range(n))
    got = consume_assigned(bootstrap, topic, 1)[0]
    assert [(m.offset(), m.key(), m.value(), m.headers()) for m in got] == [
        (i, records[i]["key"].encode(), records[i]["value"].encode(), [("i", str(i).encode())]) for i in range(n)
    ]
    want = "none" if topic_codec == "uncompressed" else topic_codec
    batches = stored_batches(data_dir, topic, 0)
    assert batches and all(b.codec == CODEC_IDS[want] for b in batches), \
        f"stored codecs {[b.codec for b in batches]}, want {want}"


@pytest.mark.parametrize("codec", ["none", "gzip"])
def test_log_append_time(bootstrap, topic, codec):
    a = admin(bootstrap)
    create(a, topic, 1, {"message.timestamp.type": "LogAppendTime"})
    old = 1_600_000_000_000
    before = int(time.time() * 1000) - 1
    produce(bootstrap, topic, [{"value": f"r{i}" * 20, "timestamp": old + i} for i in range(20)],
            **{"compression.type": codec, "linger.ms": 20})
    after = int(time.time() * 1000) + 1
    got = consume_assigned(bootstrap, topic, 1)[0]
    assert [(m.offset(), m.value()) for m in got] == [(i, f"r{i}".encode() * 20) for i in range(20)]
    for m in got:
        kind, ts = m.timestamp()
        assert kind == TIMESTAMP_LOG_APPEND_TIME, f"offset {m.offset()}: timestamp type {kind}"
        assert before <= ts <= after, f"offset {m.offset()}: timestamp {ts} not the broker's append time"


def test_topic_max_message_bytes(bootstrap, topic):
    a = admin(bootstrap)
    create(a, topic, 1, {"max.message.bytes": "2000"})
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "message.timeout.ms": 10000})
    errors = []
    p.produce(topic, value=b"x" * 5000, on_delivery=lambda err, msg: errors.append(err))
    assert p.flush(30) == 0
    assert [e.code() if e else None for e in errors] == [KafkaError.MSG_SIZE_TOO_LARGE]
    # The topic still takes records that fit, from offset 0.
    assert produce(bootstrap, topic, [{"value": b"y" * 1000}], **{"linger.ms": 0}) == [(0, 0)]
    assert [(m.offset(), m.value()) for m in consume_assigned(bootstrap, topic, 1)[0]] == [(0, b"y" * 1000)]


def test_idempotent_producer_exactly_once_in_order(bootstrap, data_dir, topic):
    a = admin(bootstrap)
    create(a, topic, 1)
    n = 1000
    # Small batches and several requests in flight: sequence numbers across many batches.
    reports = produce(bootstrap, topic, [{"key": f"k{i % 10}", "value": str(i)} for i in range(n)], **{
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 0,
        "batch.num.messages": 25,
        "max.in.flight.requests.per.connection": 5,
    })
    assert reports == [(0, i) for i in range(n)]
    got = consume_assigned(bootstrap, topic, 1)[0]
    assert [(m.offset(), m.key(), m.value()) for m in got] == [(i, f"k{i % 10}".encode(), str(i).encode()) for i in range(n)]
    assert watermarks(bootstrap, topic, 0) == (0, n)

    batches = stored_batches(data_dir, topic, 0)
    assert len(batches) > 1
    assert len({(b.producer_id, b.producer_epoch) for b in batches}) == 1
    assert batches[0].producer_id >= 0 and batches[0].producer_epoch >= 0
    # One producer from the start: each batch's first sequence number is its base offset.
    assert [b.base_sequence for b in batches] == [b.base_offset for b in batches]
    assert sum(b.record_count for b in batches) == n


def test_list_offsets_by_timestamp_and_delete_records(bootstrap, topic):
    a = admin(bootstrap)
    create(a, topic, 1)
    base = 1_700_000_000_000
    # Two batches of five: lookups inside a batch and at the boundary.
    for half in (range(0, 5), range(5, 10)):
        produce(bootstrap, topic, [{"value": str(i), "timestamp": base + i * 1000} for i in half], **{"linger.ms": 100})

    c = consumer(bootstrap)
    queries = {base - 1: 0, base: 0, base + 2500: 3, base + 4500: 5, base + 5000: 5, base + 9000: 9, base + 9001: -1}
    # One partition per request: a request naming the same partition twice is invalid.
    found = [c.offsets_for_times([TopicPartition(topic, 0, ts)], 10)[0].offset for ts in queries]
    assert found == list(queries.values())
    assert c.get_watermark_offsets(TopicPartition(topic, 0), 10) == (0, 10)

    tp = TopicPartition(topic, 0)
    specs = {"earliest": OffsetSpec.earliest(), "latest": OffsetSpec.latest(), "max": OffsetSpec.max_timestamp(),
             "at": OffsetSpec.for_timestamp(base + 6500)}
    answers = {name: a.list_offsets({tp: spec})[tp].result(10) for name, spec in specs.items()}
    assert answers["earliest"].offset == 0
    assert answers["latest"].offset == 10
    assert (answers["max"].offset, answers["max"].timestamp) == (9, base + 9000)
    assert (answers["at"].offset, answers["at"].timestamp) == (7, base + 7000)

    got = consume_assigned(bootstrap, topic, 1)[0]
    assert [(m.offset(), m.value(), m.timestamp()) for m in got] == [
        (i, str(i).encode(), (TIMESTAMP_CREATE_TIME, base + i * 1000)) for i in range(10)
    ]

    deleted = a.delete_records([TopicPartition(topic, 0, 6)])
    assert [r.result(10).low_watermark for r in deleted.values()] == [6]
    assert c.get_watermark_offsets(TopicPartition(topic, 0), 10) == (6, 10)
    assert a.list_offsets({tp: OffsetSpec.earliest()})[tp].result(10).offset == 6
    got = consume_assigned(bootstrap, topic, 1)[0]
    assert [(m.offset(), m.value()) for m in got] == [(i, str(i).encode()) for i in range(6, 10)]
    # An offset below the new start is out of range: the consumer resets to the earliest.
    got = consume_assigned(bootstrap, topic, 1, start=2, **{"auto.offset.reset": "earliest"})[0]
    assert [m.offset() for m in got] == [6, 7, 8, 9]
    # Past the high watermark is refused; -1 means the high watermark.
    beyond = a.delete_records([TopicPartition(topic, 0, 11)])
    with pytest.raises(KafkaException) as e:
        list(beyond.values())[0].result(10)
    assert e.value.args[0].code() == KafkaError.OFFSET_OUT_OF_RANGE
    assert c.get_watermark_offsets(TopicPartition(topic, 0), 10) == (6, 10)
    # Deleted records are no longer found by timestamp either.
    found = c.offsets_for_times([TopicPartition(topic, 0, base)], 10)
    assert found[0].offset == 6
    everything = a.delete_records([TopicPartition(topic, 0, -1)])
    assert [r.result(10).low_watermark for r in everything.values()] == [10]
    assert c.get_watermark_offsets(TopicPartition(topic, 0), 10) == (10, 10)
    assert consume_assigned(bootstrap, topic, 1)[0] == []
    c.close()


def test_group_join_commit_resume_and_inspection(bootstrap, topic):
    a = admin(bootstrap)
    create(a, topic, 2)
    reports = produce(bootstrap, topic, [{"key": str(i), "value": str(i)} for i in range(40)])
    group = f"g-{topic}"
    conf = {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False}
    c = Consumer(conf)
    c.subscribe([topic])
    first = []

    def read_25():
        m = c.poll(0.2)
        if m is not None:
            assert m.error() is None, m.error()
            first.append(m)
        return len(first) >= 25

    wait_until("25 records in the group", read_25)
    c.commit(asynchronous=False)
    assert sorted(tp.partition for tp in c.assignment()) == [0, 1]
    groups = {g.group_id: g for g in a.list_consumer_groups().result(10).valid}
    assert group in groups
    desc = a.describe_consumer_groups([group])[group].result(10)
    assert len(desc.members) == 1
    assert sorted(tp.partition for tp in desc.members[0].assignment.topic_partitions) == [0, 1]
    c.close()

    # Committed: per partition, one past the last record read.
    read_to = {0: 0, 1: 0}
    for m in first:
        read_to[m.partition()] = m.offset() + 1
    offsets = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(10)
    committed = {tp.partition: tp.offset for tp in offsets.topic_partitions}
    assert committed == read_to
    assert sum(committed.values()) == len(first)

    # Resume: a new member reads exactly the rest.
    c2 = Consumer(conf)
    c2.subscribe([topic])
    rest = []

    def read_rest():
        for m in c2.consume(num_messages=100, timeout=0.2):
            assert m.error() is None, m.error()
            rest.append(m)
        return len(rest) >= 40 - len(first)

    wait_until("the rest of the records", read_rest)
    c2.close()
    seen = sorted((m.partition(), m.offset(), int(m.value())) for m in first + rest)
    assert seen == sorted((p, o, i) for i, (p, o) in enumerate(reports)), "every record exactly once over the two members"


@pytest.mark.parametrize("codec", ["none", "lz4", "zstd"])
def test_compacted_topic_shows_one_value_per_key(bootstrap, data_dir, topic, codec):
    """cleanup.policy=compact: once the cleaner ran, a consumer reading from the beginning sees
    the latest value of every key at the offset it was written at, deleted keys (tombstones)
    gone after delete.retention.ms, and the batches still in the producer's codec."""
    a = admin(bootstrap)
    # Every batch its own segment (segment.ms=1): all but the last may be cleaned.
    create(a, topic, 1, {"cleanup.policy": "compact", "segment.ms": "1",
                         "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "100"})
    expected = {}
    offset = 0
    for rnd in range(10):
        records = []
        for k in range(30):
            tombstone = rnd == 9 and k < 5
            records.append({"key": f"k{k}", "value": None if tombstone else f"{codec}-{rnd}-{k}" * 3})
            if tombstone:
                expected.pop(f"k{k}", None)
            else:
                expected[f"k{k}"] = (offset, f"{codec}-{rnd}-{k}" * 3)
            offset += 1
        reports = produce(bootstrap, topic, records, **{"compression.type": codec, "linger.ms": 20})
        assert [r[1] for r in reports] == list(range(offset - 30, offset))
    produce(bootstrap, topic, [{"key": "end", "value": "end"}])
    expected["end"] = (offset, "end")

    def compacted():
        got = consume_assigned(bootstrap, topic, 1)[0]
        view = {m.key().decode(): (m.offset(), m.value() and m.value().decode()) for m in got}
        return len(got) == len(expected) and view == expected

    wait_until("the topic compacted to one record per key", compacted, timeout=60)
    if codec != "none":
        batches = [b for b in stored_batches(data_dir, topic, 0) if b.record_count > 1]
        assert batches and all(b.codec == CODEC_IDS[codec] for b in batches), \
            f"stored codecs {[b.codec for b in batches]}"
    described = a.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
    entries = list(described.values())[0].result(10)
    assert entries["cleanup.policy"].value == "compact"


def test_compacted_topic_refuses_records_without_a_key(bootstrap, topic):
    """KIP-467: the batch is refused, the keyless records with INVALID_RECORD and the others
    with librdkafka's _INVALID_DIFFERENT_RECORD; nothing is written."""
    a = admin(bootstrap)
    create(a, topic, 1, {"cleanup.policy": "compact"})
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 200})
    errors = {}

    def reporter(i):
        def report(err, msg):
            errors[i] = err
        return report

    for i in range(6):
        p.produce(topic, key=None if i % 3 == 1 else f"k{i}", value=f"v{i}", on_delivery=reporter(i))
    assert p.flush(30) == 0
    assert sorted(errors) == list(range(6))
    for i, err in errors.items():
        assert err is not None, f"record {i} was acknowledged"
        if i % 3 == 1:
            assert err.code() == KafkaError.INVALID_RECORD, f"record {i}: {err}"
        else:
            assert err.code() == KafkaError._INVALID_DIFFERENT_RECORD, f"record {i}: {err}"
    assert watermarks(bootstrap, topic, 0) == (0, 0)
