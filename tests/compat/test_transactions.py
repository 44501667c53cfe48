"""Transactions with confluent-kafka, kafka-python and aiokafka against strom: commit, abort,
read_committed against read_uncommitted, offsets sent to a transaction, zombie fencing.

What read_committed must not see is proven without waiting for silence: by the last stable
offset (ListOffsets with read_committed) against the high watermark, and by reading up to a
later committed record that lies after the hidden ones in every partition."""

import asyncio
import time
import uuid

import pytest
from confluent_kafka import (Consumer, IsolationLevel, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec


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


def read(c, topic, partitions, count, timeout=30.0, offsets=False):
    """(partition, value), or (partition, offset, value), of the next `count` records, the
    consumer assigned from the start on its first call."""
    if not c.assignment():
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        m = c.poll(0.1)
        if m is not None and not m.error():
            value = m.value().decode()
            out.append((m.partition(), m.offset(), value) if offsets else (m.partition(), value))
    return out


def by_partition(records, partitions):
    """Values of (partition, value) pairs, one list per partition, each in its order."""
    return [[v for q, v in records if q == p] for p in range(partitions)]


def ends(bootstrap, topic, partitions, isolation):
    """The latest offsets by ListOffsets: the last stable offsets with read_committed, the
    high watermarks with read_uncommitted."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in range(partitions)},
                            isolation_level=isolation, request_timeout=30)
    return [fs[TopicPartition(topic, p)].result().offset for p in range(partitions)]


def lso(bootstrap, topic, partitions):
    return ends(bootstrap, topic, partitions, IsolationLevel.READ_COMMITTED)


def hw(bootstrap, topic, partitions):
    return ends(bootstrap, topic, partitions, IsolationLevel.READ_UNCOMMITTED)


def txn_producer(bootstrap, txn_id):
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id, "linger.ms": 5})
    p.init_transactions(30)
    return p


def test_confluent_commit_and_abort(bootstrap, topic):
    create(bootstrap, topic, 3)
    p = txn_producer(bootstrap, f"tx-{topic}")
    rc = consumer(bootstrap, "read_committed")
    ru = consumer(bootstrap, "read_uncommitted")

    # Open: read_uncommitted reads its 4 records per partition; the last stable offset stays
    # at the transaction's start on every partition.
    p.begin_transaction()
    first = [(i % 3, f"first-{i}") for i in range(12)]
    for part, v in first:
        p.produce(topic, v.encode(), partition=part)
    p.flush(30)
    assert by_partition(read(ru, topic, 3, 12), 3) == by_partition(first, 3)
    assert hw(bootstrap, topic, 3) == [4, 4, 4]
    assert lso(bootstrap, topic, 3) == [0, 0, 0], "read_committed may read an open transaction"
    # Committed: every partition stable past its records and the marker at once.
    p.commit_transaction(30)
    assert lso(bootstrap, topic, 3) == [5, 5, 5]
    assert hw(bootstrap, topic, 3) == [5, 5, 5]
    assert by_partition(read(rc, topic, 3, 12), 3) == by_partition(first, 3)

    p.begin_transaction()
    aborted = [(i % 3, f"aborted-{i}") for i in range(6)]
    for part, v in aborted:
        p.produce(topic, v.encode(), partition=part)
    p.flush(30)
    assert lso(bootstrap, topic, 3) == [5, 5, 5]
    p.abort_transaction(30)
    assert lso(bootstrap, topic, 3) == [8, 8, 8]
    assert by_partition(read(ru, topic, 3, 6), 3) == by_partition(aborted, 3)

    # A later commit on every partition: the aborted records come before it in each, so
    # read_committed's next records are these only if it skipped them; nothing lies beyond.
    p.begin_transaction()
    last = [(part, f"last-{part}") for part in range(3)]
    for part, v in last:
        p.produce(topic, v.encode(), partition=part)
    p.commit_transaction(30)
    assert lso(bootstrap, topic, 3) == [10, 10, 10]
    assert hw(bootstrap, topic, 3) == [10, 10, 10]
    assert by_partition(read(rc, topic, 3, 3), 3) == by_partition(last, 3)
    fresh = consumer(bootstrap, "read_committed")
    assert by_partition(read(fresh, topic, 3, 15), 3) == by_partition(first + last, 3)
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
    p.flush(30)
    p.send_offsets_to_transaction([TopicPartition(src, 0, 5)], c.consumer_group_metadata(), 30)
    p.abort_transaction(30)
    assert committed() < 0
    ru = consumer(bootstrap, "read_uncommitted")
    assert read(ru, dst, 1, 1, offsets=True) == [(0, 0, "aborted")]

    p.begin_transaction()
    for v in copied:
        p.produce(dst, v.upper().encode(), partition=0)
    p.send_offsets_to_transaction([TopicPartition(src, 0, 10)], c.consumer_group_metadata(), 30)
    assert committed() < 0, "offsets visible before the commit"
    p.commit_transaction(30)
    assert committed() == 10
    # The aborted record (0, its marker at 1) before the copies (2 to 11, marker at 12):
    # read_committed reads the copies first, and nothing lies beyond them.
    out = consumer(bootstrap, "read_committed")
    assert read(out, dst, 1, 10, offsets=True) == [(0, 2 + i, v.upper()) for i, v in enumerate(copied)]
    assert lso(bootstrap, dst, 1) == hw(bootstrap, dst, 1) == [13]
    for x in (c, peek, ru, out):
        x.close()


def test_confluent_zombie_is_fenced(bootstrap, topic):
    create(bootstrap, topic, 1)
    txn_id = f"tx-{topic}"
    old = txn_producer(bootstrap, txn_id)
    old.begin_transaction()
    old.produce(topic, b"zombie", partition=0)
    old.flush(30)
    new = txn_producer(bootstrap, txn_id)
    # Its open transaction is aborted (marker at 1).
    assert lso(bootstrap, topic, 1) == hw(bootstrap, topic, 1) == [2]
    with pytest.raises(KafkaException) as e:
        old.commit_transaction(30)
    err = e.value.args[0]
    # The coordinator answers the zombie's EndTxn with PRODUCER_FENCED (INVALID_PRODUCER_EPOCH
    # before v2); librdkafka turns both into its own fatal _FENCED (rd_kafka_txn_normalize_err),
    # so that is the one code the application can be given.
    assert err.code() == KafkaError._FENCED, err
    assert err.fatal(), err
    new.begin_transaction()
    new.produce(topic, b"new", partition=0)
    new.commit_transaction(30)
    # Nothing more of the zombie: its record (0), the abort marker (1), the new one's record
    # (2) and commit marker (3), and no more.
    assert lso(bootstrap, topic, 1) == hw(bootstrap, topic, 1) == [4]
    ru = consumer(bootstrap, "read_uncommitted")
    assert read(ru, topic, 1, 2, offsets=True) == [(0, 0, "zombie"), (0, 2, "new")]
    rc = consumer(bootstrap, "read_committed")
    assert read(rc, topic, 1, 1, offsets=True) == [(0, 2, "new")]
    ru.close()
    rc.close()


def test_kafka_python_commit_and_abort(bootstrap, topic):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition as KTP

    create(bootstrap, topic, 2)
    p = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"tx-{topic}")
    p.init_transactions()

    def transaction(prefix, commit):
        """Two records per partition; where each was written, as (partition, offset)."""
        p.begin_transaction()
        futures = [p.send(topic, f"{prefix}-{i}".encode(), partition=i % 2) for i in range(4)]
        p.flush()
        written = [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]
        if commit:
            p.commit_transaction()
        else:
            p.abort_transaction()
        return written

    # Per partition: kept at 0 and 1, commit marker 2; dropped at 3 and 4, abort marker 5;
    # after at 6 and 7, commit marker 8.
    assert transaction("kept", True) == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert transaction("dropped", False) == [(0, 3), (1, 3), (0, 4), (1, 4)]
    assert transaction("after", True) == [(0, 6), (1, 6), (0, 7), (1, 7)]
    p.close()
    assert lso(bootstrap, topic, 2) == hw(bootstrap, topic, 2) == [9, 9]

    def read_all(isolation, count):
        c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation,
                          auto_offset_reset="earliest", enable_auto_commit=False)
        c.assign([KTP(topic, 0), KTP(topic, 1)])
        got = [[], []]
        deadline = time.monotonic() + 30
        while sum(map(len, got)) < count and time.monotonic() < deadline:
            for records in c.poll(timeout_ms=200).values():
                for r in records:
                    got[r.partition].append((r.offset, r.value.decode()))
        c.close()
        return got

    def want(*prefixes_and_offsets):
        return [[(o + k, f"{prefix}-{part + 2 * k}") for prefix, o in prefixes_and_offsets for k in range(2)]
                for part in range(2)]

    # read_uncommitted reads the dropped records too; read_committed skips them to the
    # committed ones after them, which end each partition.
    assert read_all("read_uncommitted", 12) == want(("kept", 0), ("dropped", 3), ("after", 6))
    assert read_all("read_committed", 8) == want(("kept", 0), ("after", 6))


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
                    got.extend((r.offset, r.value.decode()) for r in records)
            # kept at 0 to 2 (marker 3), dropped at 4 (marker 5), after at 6 (marker 7): the
            # committed record after the dropped one is read next, and nothing lies beyond.
            assert got == [(0, "kept-0"), (1, "kept-1"), (2, "kept-2"), (6, "after")]
            assert lso(bootstrap, topic, 1) == hw(bootstrap, topic, 1) == [8]
        finally:
            await c.stop()

    asyncio.run(run())
