"""aiokafka against strom."""

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


async def produce(bootstrap, topic, n, codec=None):
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, acks="all")
    await p.start()
    try:
        out = []
        for i in range(n):
            md = await p.send_and_wait(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), headers=[("h", b"x")])
            out.append((md.partition, md.offset))
        return out
    finally:
        await p.stop()


async def drain(consumer, count, timeout=60):
    got = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(got) < count:
        assert loop.time() < deadline, f"only {len(got)} of {count} records"
        for records in (await consumer.getmany(timeout_ms=200)).values():
            got.extend(records)
    return got


def test_produce_consume_with_gzip(bootstrap, topic):
    async def run():
        sent = await produce(bootstrap, topic, 30, "gzip")
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await c.start()
        try:
            tp = TopicPartition(topic, 0)
            c.assign([tp])
            await c.seek_to_beginning(tp)
            got = await drain(c, 30)
        finally:
            await c.stop()
        assert [(r.offset, r.key, r.value, list(r.headers)) for r in got] == [
            (i, f"k{i}".encode(), f"v{i}".encode(), [("h", b"x")]) for i in range(30)
        ]
        assert sent == [(0, i) for i in range(30)]

    asyncio.run(run())


def test_group_commit_and_resume(bootstrap, topic):
    group = f"aio-{topic}"

    async def member():
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False)
        await c.start()
        return c

    async def run():
        await produce(bootstrap, topic, 10)
        c = await member()
        try:
            first = await drain(c, 10)
            await c.commit()
        finally:
            await c.stop()
        assert [r.value for r in first] == [f"v{i}".encode() for i in range(10)]
        await produce(bootstrap, topic, 3)
        c = await member()
        try:
            rest = await drain(c, 3)
        finally:
            await c.stop()
        # The second member starts after the committed offset: k0..k2 again, at offsets 10..12.
        assert [(r.offset, r.key) for r in rest] == [(10 + i, f"k{i}".encode()) for i in range(3)]

    asyncio.run(run())
