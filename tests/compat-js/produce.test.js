'use strict'
// kafkajs producers against strom: keys and headers, acks, partitioners (compared with strom's
// own CLI), GZIP, idempotence.

const { test } = require('node:test')
const assert = require('node:assert/strict')
const { CompressionTypes, Partitioners } = require('kafkajs')
const h = require('./helper')

const server = h.useServer()
const T = { timeout: 60000 }

async function createTopic(topic, numPartitions) {
  const admin = h.kafka(server).admin()
  await admin.connect()
  try {
    assert.equal(await admin.createTopics({ topics: [{ topic, numPartitions }] }), true)
  } finally {
    await admin.disconnect()
  }
}

async function highWatermarks(topic) {
  const admin = h.kafka(server).admin()
  await admin.connect()
  try {
    const offsets = await admin.fetchTopicOffsets(topic)
    return Object.fromEntries(offsets.map(o => [o.partition, Number(o.high)]))
  } finally {
    await admin.disconnect()
  }
}

async function withProducer(options, fn) {
  const producer = h.kafka(server).producer(options)
  await producer.connect()
  try {
    return await fn(producer)
  } finally {
    await producer.disconnect()
  }
}

// Checks that `got` holds exactly the records `sent` (as {key, value, headers}), each partition
// in send order at offsets 0, 1, ..., and that every key is on a single partition; returns
// the partition of each key.
function assertExact(got, sent, partitions) {
  assert.equal(got.length, sent.length, 'record count')
  const keyPartition = {}
  for (const r of got) {
    if (r.key == null) continue
    if (r.key in keyPartition) assert.equal(r.partition, keyPartition[r.key], `key ${r.key} on two partitions`)
    keyPartition[r.key] = r.partition
  }
  const parts = h.byPartition(got)
  for (const p of Object.keys(parts)) assert.ok(Number(p) >= 0 && Number(p) < partitions, `partition ${p}`)
  for (const [p, rs] of Object.entries(parts)) {
    assert.deepEqual(rs.map(r => r.offset), rs.map((_, i) => i), `offsets of partition ${p}`)
    // Per-partition order is send order.
    const expected = sent.filter(s => s.key != null && keyPartition[s.key] === Number(p))
    assert.deepEqual(rs.map(({ key, value, headers }) => ({ key, value, headers })), expected, `records of partition ${p}`)
  }
  return keyPartition
}

test('keys and headers to 3 partitions with acks -1 and 1, read back exactly', T, async () => {
  const topic = h.unique('keyed')
  await createTopic(topic, 3)
  const keys = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank']
  const sent = []
  for (let i = 0; i < 24; i++) {
    const key = keys[i % keys.length]
    sent.push({ key, value: `v${i}`, headers: { seq: String(i), 'content-type': 'text/plain', who: key } })
  }
  let second
  await withProducer({}, async producer => {
    const first = await producer.send({ topic, acks: -1, messages: sent.slice(0, 12) })
    for (const m of first) {
      assert.equal(m.topicName, topic)
      assert.equal(m.errorCode, 0)
      assert.equal(m.baseOffset, '0')
    }
    second = await producer.send({ topic, acks: 1, messages: sent.slice(12) })
    for (const m of second) assert.equal(m.errorCode, 0)
  })
  const got = await h.readAll(h.kafka(server), topic, sent.length)
  const keyPartition = assertExact(got, sent, 3)
  assert.deepEqual(Object.keys(keyPartition).sort(), keys.slice().sort())
  assert.ok(new Set(Object.values(keyPartition)).size > 1, `all keys on one partition: ${JSON.stringify(keyPartition)}`)
  const hw = await highWatermarks(topic)
  const counts = { 0: 0, 1: 0, 2: 0 }
  for (const r of got) counts[r.partition]++
  assert.deepEqual(hw, counts)
  // The second send's records of each partition follow the first send's ones.
  for (const m of second) {
    const fromFirst = got.filter(r => r.partition === m.partition && Number(r.headers.seq) < 12).length
    assert.equal(m.baseOffset, String(fromFirst), `acks=1 base offset of partition ${m.partition}`)
  }
})

test('acks 0: kafkajs expects no answer; the records arrive all the same', T, async () => {
  const topic = h.unique('acks0')
  await createTopic(topic, 1)
  const sent = Array.from({ length: 10 }, (_, i) => ({ key: `k${i % 2}`, value: `v${i}`, headers: { i: String(i) } }))
  await withProducer({}, async producer => {
    assert.deepEqual(await producer.send({ topic, acks: 0, messages: sent.slice(0, 5) }), [])
    assert.deepEqual(await producer.send({ topic, acks: 0, messages: sent.slice(5) }), [])
  })
  await h.waitFor('10 records stored', async () => (await highWatermarks(topic))[0] === 10)
  const got = await h.readAll(h.kafka(server), topic, 10)
  assert.deepEqual(got.map(({ offset, key, value, headers }) => ({ offset, key, value, headers })),
    sent.map((s, i) => ({ offset: i, ...s })))
})

test('timestamps: CreateTime keeps the producer\'s, LogAppendTime gets the broker\'s', T, async () => {
  const create = h.unique('create-time')
  const append = h.unique('append-time')
  const admin = h.kafka(server).admin()
  await admin.connect()
  try {
    await admin.createTopics({ topics: [
      { topic: create, numPartitions: 1 },
      { topic: append, numPartitions: 1, configEntries: [{ name: 'message.timestamp.type', value: 'LogAppendTime' }] },
    ] })
  } finally {
    await admin.disconnect()
  }
  const old = Date.now() - 3600000
  const messages = [0, 1, 2].map(i => ({ value: `t${i}`, timestamp: String(old + i) }))
  const before = Date.now()
  let meta
  await withProducer({}, async producer => {
    const [c] = await producer.send({ topic: create, messages })
    assert.equal(c.logAppendTime, '-1')
    ;[meta] = await producer.send({ topic: append, messages })
  })
  const after = Date.now()
  const appended = Number(meta.logAppendTime)
  assert.ok(appended >= before - 1000 && appended <= after + 1000, `logAppendTime ${appended} not in [${before}, ${after}]`)
  assert.deepEqual((await h.readAll(h.kafka(server), create, 3)).map(r => [r.offset, r.timestamp]), [[0, old], [1, old + 1], [2, old + 2]])
  assert.deepEqual((await h.readAll(h.kafka(server), append, 3)).map(r => [r.offset, r.timestamp]), [[0, appended], [1, appended], [2, appended]])
})

test('fetch limits smaller than a batch: the consumer still gets every record (KIP-74)', T, async () => {
  const topic = h.unique('big')
  await createTopic(topic, 1)
  const sent = Array.from({ length: 12 }, (_, i) => ({ key: `k${i}`, value: String(i % 10).repeat(5000), headers: {} }))
  await withProducer({}, async producer => {
    await producer.send({ topic, messages: sent.slice(0, 6) })
    await producer.send({ topic, messages: sent.slice(6) })
  })
  const got = await h.readAll(h.kafka(server), topic, 12, { consumer: { maxBytesPerPartition: 1000, maxBytes: 2000 } })
  assert.deepEqual(got.map(({ offset, key, value }) => ({ offset, key, value })), sent.map(({ key, value }, i) => ({ offset: i, key, value })))
})

test('producing to a topic that does not exist creates it (auto.create.topics.enable, num.partitions=1)', T, async () => {
  const topic = h.unique('auto')
  await withProducer({}, async producer => {
    const [m] = await producer.send({ topic, messages: [{ key: 'k', value: 'first' }] })
    assert.deepEqual([m.topicName, m.partition, m.errorCode, m.baseOffset], [topic, 0, 0, '0'])
  })
  assert.deepEqual(await highWatermarks(topic), { 0: 1 })
  const got = await h.readAll(h.kafka(server), topic, 1)
  assert.deepEqual(got.map(r => [r.partition, r.offset, r.key, r.value]), [[0, 0, 'k', 'first']])
})

test('a record without key, with an empty value, and with a repeated header key', T, async () => {
  const topic = h.unique('odd')
  await createTopic(topic, 1)
  await withProducer({}, producer => producer.send({ topic, messages: [
    { value: 'no key' },
    { key: 'k', value: '' },
    { key: 'k2', value: 'null-ish', headers: { h: ['one', 'two'] } },
    { key: 'k3', value: null },
  ] }))
  const got = await h.readAll(h.kafka(server), topic, 4)
  assert.deepEqual(got.map(({ offset, key, value, headers }) => ({ offset, key, value, headers })), [
    { offset: 0, key: null, value: 'no key', headers: {} },
    { offset: 1, key: 'k', value: '', headers: {} },
    { offset: 2, key: 'k2', value: 'null-ish', headers: { h: ['one', 'two'] } },
    { offset: 3, key: 'k3', value: null, headers: {} },
  ])
})

test('partitioners: equal keys on one partition; the Java-compatible murmur2 one places keys where `strom produce` does', T, async () => {
  const keys = Array.from({ length: 40 }, (_, i) => `key-${i}`)
  const sent = keys.flatMap(k => [{ key: k, value: `${k}-a`, headers: {} }, { key: k, value: `${k}-b`, headers: {} }])
  const placement = {}
  for (const [name, createPartitioner] of [
    ['default', undefined],
    ['DefaultPartitioner', Partitioners.DefaultPartitioner],
    ['LegacyPartitioner', Partitioners.LegacyPartitioner],
  ]) {
    const topic = h.unique(`part-${name}`)
    await createTopic(topic, 3)
    await withProducer(createPartitioner ? { createPartitioner } : {}, producer =>
      producer.send({ topic, messages: sent.map(({ key, value }) => ({ key, value })) }))
    const got = await h.readAll(h.kafka(server), topic, sent.length)
    placement[name] = assertExact(got, sent, 3)
    assert.equal(Object.keys(placement[name]).length, keys.length)
  }
  // kafkajs 2's default is the Java-compatible partitioner.
  assert.deepEqual(placement.default, placement.DefaultPartitioner)

  // The same keys through strom's CLI (murmur2, as Kafka's Java client).
  const cliTopic = h.unique('part-cli')
  await createTopic(cliTopic, 3)
  await h.strom(['produce', '--bootstrap-server', server.bootstrap, '--topic', cliTopic, '--key-separator', ':'],
    keys.map(k => `${k}:${k}-cli`).join('\n') + '\n')
  const cli = await h.readAll(h.kafka(server), cliTopic, keys.length)
  const cliPlacement = Object.fromEntries(cli.map(r => [r.key, r.partition]))
  assert.deepEqual(cli.map(r => r.value).sort(), keys.map(k => `${k}-cli`).sort())
  assert.deepEqual(placement.DefaultPartitioner, cliPlacement)
  // 40 keys spread over all 3 partitions, so the comparison says something.
  assert.equal(new Set(Object.values(cliPlacement)).size, 3)
})

test('GZIP round trip, stored as gzip batches', T, async () => {
  const topic = h.unique('gzip')
  await createTopic(topic, 2)
  const sent = Array.from({ length: 50 }, (_, i) => ({
    partition: i % 2, key: `k${i}`, value: `compressible ${'x'.repeat(200)} ${i}`, headers: { i: String(i) },
  }))
  await withProducer({}, producer => producer.send({ topic, compression: CompressionTypes.GZIP, messages: sent }))
  const got = await h.readAll(h.kafka(server), topic, sent.length)
  for (const p of [0, 1]) {
    const rs = got.filter(r => r.partition === p)
    assert.deepEqual(rs.map(({ offset, key, value, headers }) => ({ offset, key, value, headers })),
      sent.filter(s => s.partition === p).map(({ key, value, headers }, i) => ({ offset: i, key, value, headers })))
    const batches = h.storedBatches(server.dataDir, topic, p)
    assert.ok(batches.length >= 1)
    for (const b of batches) {
      assert.equal(b.magic, 2)
      assert.equal(b.codec, 1, `batch at ${b.baseOffset} codec ${b.codec}`)
    }
    assert.equal(batches.reduce((n, b) => n + b.recordCount, 0), 25)
  }
})

test('idempotent producer: every record once, with a producer id and contiguous sequences', T, async () => {
  const topic = h.unique('idem')
  await createTopic(topic, 3)
  const sent = []
  await withProducer({ idempotent: true, maxInFlightRequests: 1 }, async producer => {
    for (let round = 0; round < 5; round++) {
      const messages = Array.from({ length: 9 }, (_, i) => ({ partition: i % 3, key: `r${round}`, value: `${round}-${i}` }))
      sent.push(...messages)
      const meta = await producer.send({ topic, acks: -1, messages })
      assert.deepEqual(meta.map(m => [m.partition, m.errorCode, m.baseOffset]).sort(),
        [[0, 0, String(round * 3)], [1, 0, String(round * 3)], [2, 0, String(round * 3)]])
    }
  })
  const got = await h.readAll(h.kafka(server), topic, sent.length)
  for (const p of [0, 1, 2]) {
    assert.deepEqual(got.filter(r => r.partition === p).map(r => [r.offset, r.key, r.value]),
      sent.filter(s => s.partition === p).map((s, i) => [i, s.key, s.value]))
  }
  assert.deepEqual(await highWatermarks(topic), { 0: 15, 1: 15, 2: 15 })
  const pids = new Set()
  for (const p of [0, 1, 2]) {
    const batches = h.storedBatches(server.dataDir, topic, p)
    assert.equal(batches.length, 5)
    let seq = 0
    for (const b of batches) {
      assert.ok(b.producerId >= 0, `producer id ${b.producerId}`)
      assert.equal(b.producerEpoch, 0)
      assert.equal(b.baseSequence, seq)
      assert.equal(b.transactional, false)
      seq += b.recordCount
      pids.add(b.producerId)
    }
  }
  assert.equal(pids.size, 1)
})
