"""Transactions with confluent-kafka, kafka-python and aiokafka against strom: commit, abort,
read_committed against read_uncommitted, offsets sent to a transaction, zombie fencing."""

import asyncio
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create(bootstrap, topic, partitions):
    # The client must outlive the future, or it is destroyed before the answer.
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


def consumer(bootstrap, isolation, group=None):
    return Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group or f"g-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": isolation,
    })


def read(c, topic, partitions, count, timeout=30.0):
    """(partition, value) of records read from the start until `count` arrived; then checks
    that nothing more comes within a short window."""
    if not c.assignment():
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        m = c.poll(0.1)
        if m is not None and not m.error():
            out.append((m.partition(), m.value().decode()))
    extra = c.poll(0.5)
    assert extra is None or extra.error(), f"unexpected record {extra.value()!r}"
    return out


def txn_producer(bootstrap, txn_id):
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id, "linger.ms": 5})
    p.init_transactions(30)
    return p


def test_confluent_commit_and_abort(bootstrap, topic):
    create(bootstrap, topic, 3)
    p = txn_producer(bootstrap, f"tx-{topic}")
    rc = consumer(bootstrap, "read_committed")
    ru = consumer(bootstrap, "read_uncommitted")

    p.begin_transaction()
    first = [(i % 3, f"first-{i}") for i in range(12)]
    for part, v in first:
        p.produce(topic, v.encode(), partition=part)
    p.flush(30)
    assert sorted(read(ru, topic, 3, 12)) == sorted(first)
    assert read(rc, topic, 3, 0, timeout=0) == []
    p.commit_transaction(30)
    got = read(rc, topic, 3, 12)
    assert sorted(got) == sorted(first)
    for part in range(3):
        assert [v for q, v in got if q == part] == [v for q, v in first if q == part]

    p.begin_transaction()
    for i in range(6):
        p.produce(topic, f"aborted-{i}".encode(), partition=i % 3)
    p.flush(30)
    p.abort_transaction(30)
    assert sorted(v for _, v in read(ru, topic, 3, 6)) == sorted(f"aborted-{i}" for i in range(6))

    p.begin_transaction()
    p.produce(topic, b"last", partition=1)
    p.commit_transaction(30)
    assert read(rc, topic, 3, 1) == [(1, "last")]
    fresh = consumer(bootstrap, "read_committed")
    assert sorted(read(fresh, topic, 3, 13)) == sorted(first + [(1, "last")])
    for c in (rc, ru, fresh):
        c.close()


def test_confluent_send_offsets_to_transaction(bootstrap, topic):
    src, dst, group = topic + "-in", topic + "-out", topic + "-copier"
    create(bootstrap, src, 1)
    create(bootstrap, dst, 1)
    seed = Producer({"bootstrap.servers": bootstrap})
    for i in range(10):
        seed.produce(src, f"in-{i}".encode(), partition=0)
    seed.flush(30)

    c = consumer(bootstrap, "read_committed", group)
    c.subscribe([src])
    copied = []
    deadline = time.monotonic() + 30
    while len(copied) < 10 and time.monotonic() < deadline:
        m = c.poll(0.1)
        if m is not None and not m.error():
            copied.append(m.value().decode())
    assert copied == [f"in-{i}" for i in range(10)]
    peek = consumer(bootstrap, "read_uncommitted", group)

    def committed():
        return peek.committed([TopicPartition(src, 0)], timeout=30)[0].offset

    p = txn_producer(bootstrap, f"tx-{topic}")
    p.begin_transaction()
    p.produce(dst, b"aborted", partition=0)
    p.send_offsets_to_transaction([TopicPartition(src, 0, 5)], c.consumer_group_metadata(), 30)
    p.abort_transaction(30)
    assert committed() < 0

    p.begin_transaction()
    for v in copied:
        p.produce(dst, v.upper().encode(), partition=0)
    p.send_offsets_to_transaction([TopicPartition(src, 0, 10)], c.consumer_group_metadata(), 30)
    assert committed() < 0, "offsets visible before the commit"
    p.commit_transaction(30)
    assert committed() == 10
    out = consumer(bootstrap, "read_committed")
    assert read(out, dst, 1, 10) == [(0, v.upper()) for v in copied]
    for x in (c, peek, out):
        x.close()


def test_confluent_zombie_is_fenced(bootstrap, topic):
    create(bootstrap, topic, 1)
    txn_id = f"tx-{topic}"
    old = txn_producer(bootstrap, txn_id)
    old.begin_transaction()
    old.produce(topic, b"zombie", partition=0)
    old.flush(30)
    new = txn_producer(bootstrap, txn_id)
    with pytest.raises(KafkaException) as e:
        old.commit_transaction(30)
    err = e.value.args[0]
    assert err.fatal() or err.txn_requires_abort(), err
    new.begin_transaction()
    new.produce(topic, b"new", partition=0)
    new.commit_transaction(30)
    rc = consumer(bootstrap, "read_committed")
    assert read(rc, topic, 1, 1) == [(0, "new")]
    rc.close()


def test_kafka_python_commit_and_abort(bootstrap, topic):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition as KTP

    create(bootstrap, topic, 2)
    p = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"tx-{topic}")
    p.init_transactions()
    p.begin_transaction()
    for i in range(4):
        p.send(topic, f"kept-{i}".encode(), partition=i % 2)
    p.commit_transaction()
    p.begin_transaction()
    for i in range(4):
        p.send(topic, f"dropped-{i}".encode(), partition=i % 2)
    p.flush()
    p.abort_transaction()
    p.close()

    c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                      auto_offset_reset="earliest", enable_auto_commit=False)
    c.assign([KTP(topic, 0), KTP(topic, 1)])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < 4 and time.monotonic() < deadline:
        for records in c.poll(timeout_ms=200).values():
            got.extend((r.partition, r.value.decode()) for r in records)
    assert sorted(got) == sorted((i % 2, f"kept-{i}") for i in range(4))
    assert not any(c.poll(timeout_ms=500).values())
    c.close()


def test_aiokafka_commit_and_abort(bootstrap, topic):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition as ATP

    create(bootstrap, topic, 1)

    async def run():
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"tx-{topic}")
        await p.start()
        try:
            async with p.transaction():
                for i in range(3):
                    await p.send_and_wait(topic, f"kept-{i}".encode(), partition=0)
            with pytest.raises(RuntimeError):
                async with p.transaction():
                    await p.send_and_wait(topic, b"dropped", partition=0)
                    raise RuntimeError("abort")
            async with p.transaction():
                await p.send_and_wait(topic, b"after", partition=0)
        finally:
            await p.stop()
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                             auto_offset_reset="earliest", enable_auto_commit=False)
        await c.start()
        try:
            c.assign([ATP(topic, 0)])
            got = []
            deadline = time.monotonic() + 30
            while len(got) < 4 and time.monotonic() < deadline:
                for records in (await c.getmany(timeout_ms=200)).values():
                    got.extend(r.value.decode() for r in records)
            assert got == ["kept-0", "kept-1", "kept-2", "after"]
            assert not any((await c.getmany(timeout_ms=500)).values())
        finally:
            await c.stop()

    asyncio.run(run())
