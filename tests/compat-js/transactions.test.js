'use strict'
// kafkajs transactions against strom: commit and abort seen by read_committed and
// read_uncommitted consumers, offsets sent to a transaction, zombie fencing.
//
// kafkajs 2.2.4 speaks InitProducerId v1, AddPartitionsToTxn v1, AddOffsetsToTxn v1, EndTxn v1,
// TxnOffsetCommit v1 and Produce v7; it does not know error code 90 (PRODUCER_FENCED), which
// Kafka never sends to those versions: a fenced producer gets INVALID_PRODUCER_EPOCH (47).

const { test } = require('node:test')
const assert = require('node:assert/strict')
const h = require('./helper')

const server = h.useServer()
const T = { timeout: 60000 }

async function withAdmin(fn) {
  const admin = h.kafka(server).admin()
  await admin.connect()
  try {
    return await fn(admin)
  } finally {
    await admin.disconnect()
  }
}

async function createTopic(topic, numPartitions) {
  await withAdmin(admin => admin.createTopics({ topics: [{ topic, numPartitions }] }))
}

// High watermarks as kafkajs's admin reads them: ListOffsets v2+ with READ_COMMITTED, that is
// the last stable offsets.
async function stableOffsets(topic) {
  return withAdmin(async admin =>
    Object.fromEntries((await admin.fetchTopicOffsets(topic)).map(o => [o.partition, Number(o.high)])))
}

async function committedOffsets(groupId, topic) {
  return withAdmin(async admin => {
    const [res] = await admin.fetchOffsets({ groupId, topics: [topic] })
    return Object.fromEntries(res.partitions.map(p => [p.partition, p.offset]))
  })
}

// A transactional producer; kafkajs sends InitProducerId with the transactional id at its first
// transaction() only (connect() gets an idempotent producer id).
async function txnProducer(transactionalId) {
  const producer = h.kafka(server).producer({ transactionalId, idempotent: true, maxInFlightRequests: 1 })
  await producer.connect()
  return producer
}

// Reads `topic` from the beginning with a fresh group until `done(records)`.
async function read(topic, done, { readUncommitted = false } = {}) {
  const consumer = h.kafka(server).consumer({ groupId: h.unique('txn-reader'), readUncommitted, ...h.FAST_GROUP })
  await consumer.connect()
  try {
    await consumer.subscribe({ topics: [topic], fromBeginning: true })
    return await h.collect(consumer, done, { what: `records of ${topic} (readUncommitted ${readUncommitted})` })
  } finally {
    await consumer.disconnect()
  }
}

const until = n => got => got.length >= n
const sentinels = partitions => got => partitions.every(p => got.some(r => r.partition === p && r.value.startsWith('sentinel')))
const shape = records => records.map(r => [r.partition, r.offset, r.key, r.value]).sort((a, b) => a[0] - b[0] || a[1] - b[1])

test('commit across 2 partitions is read by read_committed; abort is hidden from it and seen with readUncommitted', T, async () => {
  const topic = h.unique('txn')
  await createTopic(topic, 2)
  const producer = await txnProducer(h.unique('tx-commit'))
  try {
    const txn = await producer.transaction()
    await txn.send({ topic, messages: [0, 1, 2].map(i => ({ partition: 0, key: 'a', value: `c0-${i}`, headers: { n: String(i) } })) })
    await txn.send({ topic, messages: [0, 1].map(i => ({ partition: 1, key: 'b', value: `c1-${i}` })) })
    // While open, the last stable offset stays at the transaction's first offset.
    assert.deepEqual(await stableOffsets(topic), { 0: 0, 1: 0 })
    // read_uncommitted already sees the records.
    const open = await read(topic, until(5), { readUncommitted: true })
    assert.equal(open.length, 5)
    await txn.commit()
    // One commit marker per partition after the records.
    assert.deepEqual(await stableOffsets(topic), { 0: 4, 1: 3 })

    const committed = await read(topic, until(5))
    assert.deepEqual(shape(committed), [
      [0, 0, 'a', 'c0-0'], [0, 1, 'a', 'c0-1'], [0, 2, 'a', 'c0-2'], [1, 0, 'b', 'c1-0'], [1, 1, 'b', 'c1-1'],
    ])
    assert.deepEqual(committed.filter(r => r.partition === 0).map(r => r.headers), [{ n: '0' }, { n: '1' }, { n: '2' }])

    const aborted = await producer.transaction()
    await aborted.send({ topic, messages: [0, 1, 2].map(i => ({ partition: i % 2, key: 'x', value: `aborted-${i}` })) })
    await aborted.abort()
    // After the abort marker, a committed sentinel per partition bounds what read_committed sees.
    const last = await producer.transaction()
    await last.send({ topic, messages: [{ partition: 0, value: 'sentinel-0' }, { partition: 1, value: 'sentinel-1' }] })
    await last.commit()
    // p0: c0-0..2 at 0-2, marker 3, aborted-0/2 at 4-5, marker 6, sentinel 7, marker 8.
    // p1: c1-0..1 at 0-1, marker 2, aborted-1 at 3, marker 4, sentinel 5, marker 6.
    assert.deepEqual(await stableOffsets(topic), { 0: 9, 1: 7 })

    const rc = await read(topic, sentinels([0, 1]))
    assert.deepEqual(shape(rc), [
      [0, 0, 'a', 'c0-0'], [0, 1, 'a', 'c0-1'], [0, 2, 'a', 'c0-2'], [0, 7, null, 'sentinel-0'],
      [1, 0, 'b', 'c1-0'], [1, 1, 'b', 'c1-1'], [1, 5, null, 'sentinel-1'],
    ])
    const ru = await read(topic, sentinels([0, 1]), { readUncommitted: true })
    assert.deepEqual(shape(ru), [
      [0, 0, 'a', 'c0-0'], [0, 1, 'a', 'c0-1'], [0, 2, 'a', 'c0-2'], [0, 4, 'x', 'aborted-0'], [0, 5, 'x', 'aborted-2'],
      [0, 7, null, 'sentinel-0'],
      [1, 0, 'b', 'c1-0'], [1, 1, 'b', 'c1-1'], [1, 3, 'x', 'aborted-1'], [1, 5, null, 'sentinel-1'],
    ])

    // The batches really are transactional, with markers as control batches.
    const p1 = h.storedBatches(server.dataDir, topic, 1)
    assert.deepEqual(p1.map(b => [b.baseOffset, b.transactional, b.control]), [
      [0, true, false], [2, true, true], [3, true, false], [4, true, true], [5, true, false], [6, true, true],
    ])
  } finally {
    await producer.disconnect()
  }
})

test('sendOffsets commits the group offsets with the transaction, and not on abort', T, async () => {
  const input = h.unique('txn-in')
  const output = h.unique('txn-out')
  const group = h.unique('txn-group')
  await createTopic(input, 2)
  await createTopic(output, 1)
  const producer = await txnProducer(h.unique('tx-offsets'))
  try {
    const offsets = parts => [{ topic: input, partitions: parts.map(([partition, offset]) => ({ partition, offset: String(offset) })) }]

    const txn = await producer.transaction()
    await txn.send({ topic: output, messages: [{ value: 'copied-1' }] })
    await txn.sendOffsets({ consumerGroupId: group, topics: offsets([[0, 5], [1, 3]]) })
    // Held aside until the commit marker.
    assert.deepEqual(await committedOffsets(group, input), { 0: '-1', 1: '-1' })
    await txn.commit()
    assert.deepEqual(await committedOffsets(group, input), { 0: '5', 1: '3' })

    const aborted = await producer.transaction()
    await aborted.send({ topic: output, messages: [{ value: 'never' }] })
    await aborted.sendOffsets({ consumerGroupId: group, topics: offsets([[0, 9], [1, 9]]) })
    await aborted.abort()
    assert.deepEqual(await committedOffsets(group, input), { 0: '5', 1: '3' })

    // Offsets alone (no records) make a transaction too.
    const only = await producer.transaction()
    await only.sendOffsets({ consumerGroupId: group, topics: offsets([[1, 4]]) })
    await only.commit()
    assert.deepEqual(await committedOffsets(group, input), { 0: '5', 1: '4' })

    const copied = await read(output, until(1))
    assert.deepEqual(shape(copied), [[0, 0, null, 'copied-1']])
    // copied-1, marker, never, marker: nothing after the abort is visible.
    assert.deepEqual(await stableOffsets(output), { 0: 4 })
  } finally {
    await producer.disconnect()
  }
})

test('a second producer with the same transactionalId fences the first: INVALID_PRODUCER_EPOCH', T, async () => {
  const topic = h.unique('txn-fence')
  await createTopic(topic, 2)
  const id = h.unique('tx-fence')
  const zombie = await txnProducer(id)
  let fresh
  try {
    const txn = await zombie.transaction()
    await txn.send({ topic, messages: [{ partition: 0, value: 'zombie-0' }] })

    // InitProducerId for the same id bumps the epoch and aborts the zombie's transaction
    // (kafkajs sends it with the first transaction(), not at connect()).
    fresh = await txnProducer(id)
    const ok = await fresh.transaction()

    const errors = {}
    // A partition new to the transaction: AddPartitionsToTxn v1 with the old epoch.
    errors.addPartitions = await h.rejection(txn.send({ topic, messages: [{ partition: 1, value: 'zombie-1' }] }))
    // A partition already in it: Produce v7 with the old epoch.
    errors.produce = await h.rejection(txn.send({ topic, messages: [{ partition: 0, value: 'zombie-2' }] }))
    // EndTxn v1 with the old epoch.
    errors.endTxn = await h.rejection(txn.commit())
    for (const [what, e] of Object.entries(errors)) {
      const pe = h.protocolError(e)
      assert.equal(pe.name, 'KafkaJSProtocolError', `${what}: ${e.stack}`)
      assert.equal(pe.type, 'INVALID_PRODUCER_EPOCH', `${what}: ${e.stack}`)
      assert.equal(pe.code, 47)
      assert.equal(pe.retriable, false)
    }

    await ok.send({ topic, messages: [{ partition: 0, value: 'fresh-0' }, { partition: 1, value: 'fresh-1' }] })
    await ok.commit()

    const rc = await read(topic, until(2))
    assert.deepEqual(shape(rc), [[0, 2, null, 'fresh-0'], [1, 0, null, 'fresh-1']])
    // The zombie's one record, aborted when it was fenced, is there for read_uncommitted only.
    const ru = await read(topic, until(3), { readUncommitted: true })
    assert.deepEqual(shape(ru), [[0, 0, null, 'zombie-0'], [0, 2, null, 'fresh-0'], [1, 0, null, 'fresh-1']])
  } finally {
    await zombie.disconnect()
    if (fresh) await fresh.disconnect()
  }
})
