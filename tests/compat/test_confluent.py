"""confluent-kafka (librdkafka) against strom."""

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition, ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
import pytest

from conftest import wait_until


def admin(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap})


def create(bootstrap, topic, partitions, config=None):
    # The client must outlive its futures.
    a = admin(bootstrap)
    a.create_topics([NewTopic(topic, partitions, 1, config=config or {})])[topic].result(30)


def produce(bootstrap, topic, records, **conf):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **conf})
    reports = []

    def report(err, msg):
        reports.append((err, msg.partition() if msg else None, msg.offset() if msg else None))

    for r in records:
        p.produce(topic, on_delivery=report, **r)
        p.poll(0)
    assert p.flush(30) == 0
    assert all(err is None for err, _, _ in reports), reports
    return reports


def consume_assigned(bootstrap, topic, partitions, count):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "compat-reader", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = []

    def more():
        for m in c.consume(num_messages=1000, timeout=0.2):
            assert m.error() is None, m.error()
            out.append(m)
        return len(out) >= count

    wait_until(f"{count} records", more)
    assert c.poll(0.5) is None, "more records than produced"
    c.close()
    return out


def test_admin_create_and_describe_configs(bootstrap, topic):
    create(bootstrap, topic, 3, {"retention.ms": "3600000"})
    a = admin(bootstrap)
    md = a.list_topics(topic, timeout=10)
    assert len(md.topics[topic].partitions) == 3
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = a.describe_configs([res])[res].result(10)
    assert configs["retention.ms"].value == "3600000"
    assert configs["segment.bytes"].value == "1073741824"
    a.delete_topics([topic])[topic].result(10)
    wait_until("deletion", lambda: topic not in a.list_topics(timeout=10).topics)


def test_keys_headers_offsets_and_order(bootstrap, topic):
    create(bootstrap, topic, 3)
    records = [{"key": f"k{i % 7}", "value": f"v{i}", "headers": [("n", str(i).encode())]} for i in range(300)]
    reports = produce(bootstrap, topic, records, acks="all")
    got = consume_assigned(bootstrap, topic, 3, 300)
    by_partition = {}
    for m in got:
        by_partition.setdefault(m.partition(), []).append(m)
    seen = set()
    for p, ms in by_partition.items():
        assert [m.offset() for m in ms] == list(range(len(ms)))
        numbers = [int(m.value().decode()[1:]) for m in ms]
        assert numbers == sorted(numbers), f"partition {p} out of order"
        for m in ms:
            i = int(m.value().decode()[1:])
            assert m.key().decode() == f"k{i % 7}"
            assert m.headers() == [("n", str(i).encode())]
            seen.add(i)
    assert seen == set(range(300))
    assert sorted((p, o) for _, p, o in reports) == sorted((m.partition(), m.offset()) for m in got)


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression_round_trips(bootstrap, topic, codec):
    create(bootstrap, topic, 1)
    produce(bootstrap, topic, [{"value": f"{codec}-{i}-" + "x" * 200} for i in range(100)], **{"compression.type": codec})
    got = consume_assigned(bootstrap, topic, 1, 100)
    assert [m.value().decode() for m in got] == [f"{codec}-{i}-" + "x" * 200 for i in range(100)]


def test_idempotent_producer_exactly_once_in_order(bootstrap, topic):
    create(bootstrap, topic, 2)
    produce(bootstrap, topic, [{"key": str(i % 2), "value": str(i)} for i in range(1000)], **{"enable.idempotence": True})
    got = consume_assigned(bootstrap, topic, 2, 1000)
    values = [int(m.value()) for m in got]
    assert sorted(values) == list(range(1000))
    for key in ("0", "1"):
        mine = [int(m.value()) for m in got if m.key().decode() == key]
        assert mine == sorted(mine)


def test_offsets_for_times_and_delete_records(bootstrap, topic):
    create(bootstrap, topic, 1)
    base = 1_700_000_000_000
    produce(bootstrap, topic, [{"value": str(i), "timestamp": base + i * 1000} for i in range(10)], **{"linger.ms": 0})
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "compat-times"})
    found = c.offsets_for_times([TopicPartition(topic, 0, base + 4500)], 10)
    assert found[0].offset == 5
    assert c.get_watermark_offsets(TopicPartition(topic, 0), 10) == (0, 10)
    a = admin(bootstrap)
    r = a.delete_records([TopicPartition(topic, 0, 6)])
    list(r.values())[0].result(10)
    assert c.get_watermark_offsets(TopicPartition(topic, 0), 10) == (6, 10)
    c.close()


def test_group_join_commit_resume_and_inspection(bootstrap, topic):
    create(bootstrap, topic, 2)
    produce(bootstrap, topic, [{"key": str(i), "value": str(i)} for i in range(40)])
    group = f"g-{topic}"
    conf = {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False}
    c = Consumer(conf)
    c.subscribe([topic])
    first = []

    def read_25():
        m = c.poll(0.2)
        if m is not None and m.error() is None:
            first.append(int(m.value()))
        return len(first) >= 25

    wait_until("25 records in the group", read_25)
    c.commit(asynchronous=False)
    assignment = sorted(tp.partition for tp in c.assignment())
    assert assignment == [0, 1]
    a = admin(bootstrap)
    groups = {g.group_id: g for g in a.list_consumer_groups().result(10).valid}
    assert group in groups
    desc = a.describe_consumer_groups([group])[group].result(10)
    assert len(desc.members) == 1
    assert sorted(tp.partition for tp in desc.members[0].assignment.topic_partitions) == [0, 1]
    c.close()
    offsets = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(10)
    committed = {tp.partition: tp.offset for tp in offsets.topic_partitions}
    assert sum(committed.values()) == len(first), (committed, len(first))
    # Resume: a new member reads exactly the rest.
    c2 = Consumer(conf)
    c2.subscribe([topic])
    rest = []

    def read_rest():
        for m in c2.consume(num_messages=100, timeout=0.2):
            if m.error() is None:
                rest.append(int(m.value()))
        return len(rest) >= 40 - sum(committed.values())

    wait_until("the rest of the records", read_rest)
    assert sorted(first + rest) == list(range(40)), "every record exactly once over the two members"
    c2.close()
