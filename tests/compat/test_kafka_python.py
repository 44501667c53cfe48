"""kafka-python against strom."""

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from conftest import wait_until


def create(bootstrap, topic, partitions, configs=None):
    a = KafkaAdminClient(bootstrap_servers=bootstrap)
    a.create_topics([NewTopic(topic, partitions, 1, topic_configs=configs or {})])
    a.close()


def read_all(bootstrap, topic, partitions, count):
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out = []

    def more():
        for records in c.poll(timeout_ms=200).values():
            out.extend(records)
        return len(out) >= count

    wait_until(f"{count} records", more)
    assert not any(c.poll(timeout_ms=500).values()), "more records than produced"
    c.close()
    return out


@pytest.mark.parametrize("codec", [None, "gzip", "snappy", "lz4", "zstd"])
def test_keys_headers_and_codecs(bootstrap, topic, codec):
    create(bootstrap, topic, 2)
    p = KafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, acks="all")
    sent = []
    for i in range(50):
        md = p.send(topic, key=f"k{i % 3}".encode(), value=f"v{i}".encode(), headers=[("i", str(i).encode())]).get(30)
        sent.append((md.partition, md.offset, i))
    p.close()
    got = read_all(bootstrap, topic, 2, 50)
    by_position = {(r.partition, r.offset): r for r in got}
    for partition, offset, i in sent:
        r = by_position[(partition, offset)]
        assert r.key == f"k{i % 3}".encode()
        assert r.value == f"v{i}".encode()
        assert list(r.headers) == [("i", str(i).encode())]
    for part in (0, 1):
        offsets = sorted(r.offset for r in got if r.partition == part)
        assert offsets == list(range(len(offsets)))


def test_admin_describe_delete_and_groups(bootstrap, topic):
    create(bootstrap, topic, 2, {"retention.ms": "7200000"})
    a = KafkaAdminClient(bootstrap_servers=bootstrap)
    configs = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    retention = configs["topic"][topic]["retention.ms"]
    assert retention["value"] == "7200000"
    assert retention["config_source"] == "DYNAMIC_TOPIC_CONFIG"

    p = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(20):
        p.send(topic, key=str(i).encode(), value=str(i).encode())
    p.flush()
    p.close()
    group = f"kp-{topic}"
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False)
    got = []

    def more():
        for records in c.poll(timeout_ms=200).values():
            got.extend(records)
        return len(got) >= 20

    wait_until("20 records in the group", more)
    c.commit()
    assert sorted(int(r.value) for r in got) == list(range(20))
    listed = {g["group_id"]: g for g in a.list_groups()}
    assert listed[group]["group_state"] == "Stable"
    assert listed[group]["protocol_type"] == "consumer"
    desc = a.describe_groups([group])[group]
    assert desc["group_state"] == "Stable"
    assert len(desc["members"]) == 1
    assigned = desc["members"][0]["member_assignment"]["assigned_partitions"]
    assert sorted(p for a_ in assigned for p in a_["partitions"]) == [0, 1]
    c.close()
    offsets = a.list_group_offsets(group)[group]
    assert sum(o.offset for o in offsets.values()) == 20
    # Resume: nothing left to read.
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False)
    p = KafkaProducer(bootstrap_servers=bootstrap)
    p.send(topic, key=b"new", value=b"20").get(30)
    p.close()
    more_records = []

    def the_new_one():
        for records in c.poll(timeout_ms=200).values():
            more_records.extend(records)
        return more_records

    wait_until("the new record", the_new_one)
    assert [r.value for r in more_records] == [b"20"]
    c.close()
    a.delete_topics([topic])
    a.close()
