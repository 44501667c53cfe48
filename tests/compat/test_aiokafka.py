"""aiokafka against strom."""

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from strom_compat import assert_stored_with_codec, stored_batches


def key(i):
    return f"k{i % 4}".encode()


def value(i):
    return f"v{i}-".encode() + b"z" * (i % 100)


def headers(i):
    return [("i", str(i).encode()), ("h", b"x"), ("h", b"")]


async def produce(bootstrap, topic, n, codec=None, **conf):
    """Sends n records without waiting for each; returns each one's (partition, offset)."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, acks="all", linger_ms=20, **conf)
    await p.start()
    try:
        futures = [await p.send(topic, key=key(i), value=value(i), headers=headers(i)) for i in range(n)]
        return [(md.partition, md.offset) for md in await asyncio.gather(*futures)]
    finally:
        await p.stop()


async def read_to_end(consumer, tp, timeout=30):
    """Reads `tp` from its current position to the end offset asked before reading."""
    end = (await consumer.end_offsets([tp]))[tp]
    got = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await consumer.position(tp) < end:
        assert loop.time() < deadline, f"read {len(got)} records, position {await consumer.position(tp)} of {end}"
        for records in (await consumer.getmany(tp, timeout_ms=200)).values():
            got.extend(records)
    assert await consumer.position(tp) == end
    return got


@pytest.mark.parametrize("codec", [None, "gzip", "snappy", "lz4", "zstd"])
def test_produce_consume_keys_headers(bootstrap, data_dir, topic, codec):
    n = 200

    async def run():
        sent = await produce(bootstrap, topic, n, codec)  # the topic is created on first use
        assert sent == [(0, i) for i in range(n)]
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        await c.start()
        try:
            tp = TopicPartition(topic, 0)
            c.assign([tp])
            await c.seek_to_beginning(tp)
            got = await read_to_end(c, tp)
        finally:
            await c.stop()
        assert [(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers)) for r in got] == [
            (topic, 0, i, key(i), value(i), headers(i)) for i in range(n)
        ]

    asyncio.run(run())
    assert_stored_with_codec(data_dir, topic, 1, codec, n)


def test_idempotent_producer(bootstrap, data_dir, topic):
    n = 300

    async def run():
        sent = await produce(bootstrap, topic, n, enable_idempotence=True, max_batch_size=2000)
        assert sent == [(0, i) for i in range(n)]
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        await c.start()
        try:
            tp = TopicPartition(topic, 0)
            c.assign([tp])
            await c.seek_to_beginning(tp)
            got = await read_to_end(c, tp)
        finally:
            await c.stop()
        assert [(r.offset, r.key, r.value) for r in got] == [(i, key(i), value(i)) for i in range(n)]

    asyncio.run(run())
    batches = stored_batches(data_dir, topic, 0)
    assert len(batches) > 1
    assert len({(b.producer_id, b.producer_epoch) for b in batches}) == 1 and batches[0].producer_id >= 0
    assert [b.base_sequence for b in batches] == [b.base_offset for b in batches]


def test_group_commit_and_resume(bootstrap, topic):
    group = f"aio-{topic}"
    tp = TopicPartition(topic, 0)

    async def member():
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                             enable_auto_commit=False)
        await c.start()
        return c

    async def drain(c, count, timeout=30):
        got = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(got) < count:
            assert loop.time() < deadline, f"only {len(got)} of {count} records"
            for records in (await c.getmany(timeout_ms=200)).values():
                got.extend(records)
        return got

    async def run():
        await produce(bootstrap, topic, 10)
        c = await member()
        try:
            first = await drain(c, 10)
            await c.commit()
            assert await c.committed(tp) == 10
        finally:
            await c.stop()
        assert [(r.offset, r.value) for r in first] == [(i, value(i)) for i in range(10)]
        await produce(bootstrap, topic, 3)
        c = await member()
        try:
            rest = await drain(c, 3)
            assert await c.position(tp) == 13
        finally:
            await c.stop()
        # The second member starts at the committed offset: k0..k2 again, at offsets 10..12.
        assert [(r.offset, r.key, r.value) for r in rest] == [(10 + i, key(i), value(i)) for i in range(3)]

    asyncio.run(run())
