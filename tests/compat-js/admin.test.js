'use strict'
// kafkajs's admin client against strom: topics, partitions, offsets, configs.

const { test } = require('node:test')
const assert = require('node:assert/strict')
const { ConfigResourceTypes } = require('kafkajs')
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

test('createTopics with partitions and configs, fetchTopicMetadata, listTopics, describeConfigs', T, () => withAdmin(async admin => {
  const a = h.unique('admin-a')
  const b = h.unique('admin-b')
  assert.equal(await admin.createTopics({
    topics: [
      { topic: a, numPartitions: 3, replicationFactor: 1, configEntries: [
        { name: 'retention.ms', value: '3600000' },
        { name: 'max.message.bytes', value: '65536' },
      ] },
      { topic: b, numPartitions: 1 },
    ],
  }), true)

  const meta = await admin.fetchTopicMetadata({ topics: [a, b] })
  const byName = Object.fromEntries(meta.topics.map(t => [t.name, t]))
  assert.deepEqual(Object.keys(byName).sort(), [a, b].sort())
  const parts = byName[a].partitions.slice().sort((x, y) => x.partitionId - y.partitionId)
  assert.deepEqual(parts.map(p => p.partitionId), [0, 1, 2])
  for (const p of parts) {
    assert.equal(p.partitionErrorCode, 0)
    // One replica, on whichever broker leads it (node 0 alone, or one of a cluster).
    assert.deepEqual(p.replicas, [p.leader])
    assert.deepEqual(p.isr, [p.leader])
  }
  assert.deepEqual(byName[b].partitions.map(p => p.partitionId), [0])

  const topics = await admin.listTopics()
  assert.ok(topics.includes(a) && topics.includes(b), `listTopics: ${topics}`)

  const described = await admin.describeConfigs({
    includeSynonyms: false,
    resources: [{ type: ConfigResourceTypes.TOPIC, name: a, configNames: ['retention.ms', 'max.message.bytes', 'segment.bytes'] }],
  })
  assert.equal(described.resources.length, 1)
  const res = described.resources[0]
  assert.equal(res.errorCode, 0)
  assert.equal(res.resourceName, a)
  assert.equal(res.resourceType, ConfigResourceTypes.TOPIC)
  const entries = Object.fromEntries(res.configEntries.map(e => [e.configName, e]))
  assert.deepEqual(Object.keys(entries).sort(), ['max.message.bytes', 'retention.ms', 'segment.bytes'])
  assert.equal(entries['retention.ms'].configValue, '3600000')
  assert.equal(entries['retention.ms'].isDefault, false)
  assert.equal(entries['max.message.bytes'].configValue, '65536')
  assert.equal(entries['max.message.bytes'].isDefault, false)
  assert.equal(entries['segment.bytes'].isDefault, true)
  assert.equal(entries['segment.bytes'].configValue, String(1024 * 1024 * 1024))
  // DescribeConfigs v1+ report the source: 1 = DYNAMIC_TOPIC_CONFIG, 5 = DEFAULT_CONFIG.
  assert.equal(entries['retention.ms'].configSource, 1)
  assert.equal(entries['segment.bytes'].configSource, 5)

  const all = await admin.describeConfigs({ includeSynonyms: false, resources: [{ type: ConfigResourceTypes.TOPIC, name: b }] })
  const allNames = all.resources[0].configEntries.map(e => e.configName)
  for (const name of ['retention.ms', 'segment.bytes', 'cleanup.policy', 'max.message.bytes']) {
    assert.ok(allNames.includes(name), `${name} missing from ${allNames}`)
  }
}))

test('describeConfigs of the broker: a value from the server config and a default', T, () => withAdmin(async admin => {
  const { resources } = await admin.describeConfigs({
    includeSynonyms: false,
    resources: [{ type: ConfigResourceTypes.BROKER, name: String(server.brokerId), configNames: ['num.partitions', 'log.segment.bytes'] }],
  })
  assert.equal(resources.length, 1)
  assert.equal(resources[0].errorCode, 0)
  assert.equal(resources[0].resourceType, ConfigResourceTypes.BROKER)
  assert.equal(resources[0].resourceName, String(server.brokerId))
  const entries = Object.fromEntries(resources[0].configEntries.map(e => [e.configName, e]))
  assert.deepEqual(Object.keys(entries).sort(), ['log.segment.bytes', 'num.partitions'])
  // num.partitions=1 is set on the command line (helper.js): STATIC_BROKER_CONFIG (4).
  assert.equal(entries['num.partitions'].configValue, '1')
  assert.equal(entries['num.partitions'].configSource, 4)
  assert.equal(entries['num.partitions'].isDefault, false)
  assert.equal(entries['num.partitions'].readOnly, true)
  assert.equal(entries['log.segment.bytes'].configValue, '1073741824')
  assert.equal(entries['log.segment.bytes'].configSource, 5)
  assert.equal(entries['log.segment.bytes'].isDefault, true)
}))

test('creating an existing topic is TOPIC_ALREADY_EXISTS', T, () => withAdmin(async admin => {
  const t = h.unique('admin-dup')
  assert.equal(await admin.createTopics({ topics: [{ topic: t, numPartitions: 2 }] }), true)
  // kafkajs reports "false" when every topic already existed...
  assert.equal(await admin.createTopics({ topics: [{ topic: t, numPartitions: 2 }] }), false)
  // ...and rejects with the per-topic errors when one of them failed otherwise: here a
  // topic with an invalid config (INVALID_CONFIG, 40) beside the existing one.
  const bad = h.unique('admin-bad')
  const fresh = h.unique('admin-fresh')
  const e = await h.rejection(admin.createTopics({ topics: [
    { topic: t, numPartitions: 5 },
    { topic: bad, numPartitions: 1, configEntries: [{ name: 'retention.ms', value: 'soon' }] },
    { topic: fresh, numPartitions: 1 },
  ] }))
  assert.equal(e.name, 'KafkaJSAggregateError', e.stack)
  const errors = e.errors.map(x => ({ name: x.name, topic: x.topic, type: x.type, code: x.code }))
    .sort((x, y) => x.code - y.code)
  assert.deepEqual(errors, [
    { name: 'KafkaJSCreateTopicError', topic: t, type: 'TOPIC_ALREADY_EXISTS', code: 36 },
    { name: 'KafkaJSCreateTopicError', topic: bad, type: 'INVALID_CONFIG', code: 40 },
  ])
  // The existing topic is unchanged, the invalid one was not created, the third one was.
  const meta = await admin.fetchTopicMetadata({ topics: [t, fresh] })
  const counts = Object.fromEntries(meta.topics.map(x => [x.name, x.partitions.length]))
  assert.deepEqual(counts, { [t]: 2, [fresh]: 1 })
  assert.ok(!(await admin.listTopics()).includes(bad))
}))

test('fetchTopicOffsets and fetchTopicOffsetsByTimestamp', T, () => withAdmin(async admin => {
  const t = h.unique('admin-offsets')
  await admin.createTopics({ topics: [{ topic: t, numPartitions: 2 }] })
  const empty = await admin.fetchTopicOffsets(t)
  assert.deepEqual(empty.sort((x, y) => x.partition - y.partition),
    [{ partition: 0, offset: '0', high: '0', low: '0' }, { partition: 1, offset: '0', high: '0', low: '0' }])

  const producer = h.kafka(server).producer()
  await producer.connect()
  const base = Date.now() - 100000
  try {
    // Explicit timestamps: 5 records at base, base+1000, ... on partition 0; 3 on partition 1.
    await producer.send({ topic: t, messages: [0, 1, 2, 3, 4].map(i => ({ partition: 0, value: `p0-${i}`, timestamp: String(base + i * 1000) })) })
    await producer.send({ topic: t, messages: [0, 1, 2].map(i => ({ partition: 1, value: `p1-${i}`, timestamp: String(base + i * 1000) })) })
  } finally {
    await producer.disconnect()
  }
  const offsets = (await admin.fetchTopicOffsets(t)).sort((x, y) => x.partition - y.partition)
  assert.deepEqual(offsets, [{ partition: 0, offset: '5', high: '5', low: '0' }, { partition: 1, offset: '3', high: '3', low: '0' }])

  const sorted = xs => xs.sort((x, y) => x.partition - y.partition)
  // The first offset whose timestamp is >= the one asked for.
  assert.deepEqual(sorted(await admin.fetchTopicOffsetsByTimestamp(t, base)), [{ partition: 0, offset: '0' }, { partition: 1, offset: '0' }])
  assert.deepEqual(sorted(await admin.fetchTopicOffsetsByTimestamp(t, base + 2000)), [{ partition: 0, offset: '2' }, { partition: 1, offset: '2' }])
  assert.deepEqual(sorted(await admin.fetchTopicOffsetsByTimestamp(t, base + 2500)), [{ partition: 0, offset: '3' }, { partition: 1, offset: '3' }])
  // Past the last timestamp, ListOffsets answers -1 and kafkajs substitutes the high watermark.
  assert.deepEqual(sorted(await admin.fetchTopicOffsetsByTimestamp(t, base + 60000)), [{ partition: 0, offset: '5' }, { partition: 1, offset: '3' }])
}))

test('deleteTopicRecords moves the log start offset; reads and timestamp lookups start there', T, () => withAdmin(async admin => {
  const t = h.unique('admin-delrec')
  await admin.createTopics({ topics: [{ topic: t, numPartitions: 2 }] })
  const producer = h.kafka(server).producer()
  await producer.connect()
  const base = Date.now() - 100000
  try {
    await producer.send({ topic: t, messages: [0, 1, 2, 3, 4, 5].map(i => ({ partition: i % 2, value: `r${i}`, timestamp: String(base + i) })) })
  } finally {
    await producer.disconnect()
  }
  // kafkajs looks the leaders up in the metadata it already has: load the topic's first.
  await admin.fetchTopicMetadata({ topics: [t] })
  await admin.deleteTopicRecords({ topic: t, partitions: [{ partition: 0, offset: '2' }] })
  const offsets = (await admin.fetchTopicOffsets(t)).sort((x, y) => x.partition - y.partition)
  assert.deepEqual(offsets, [{ partition: 0, offset: '3', high: '3', low: '2' }, { partition: 1, offset: '3', high: '3', low: '0' }])
  const byTime = (await admin.fetchTopicOffsetsByTimestamp(t, base)).sort((x, y) => x.partition - y.partition)
  assert.deepEqual(byTime, [{ partition: 0, offset: '2' }, { partition: 1, offset: '0' }])
  const got = await h.readAll(h.kafka(server), t, 4)
  assert.deepEqual(got.map(r => [r.partition, r.offset, r.value, r.timestamp]).sort(),
    [[0, 2, 'r4', base + 4], [1, 0, 'r1', base + 1], [1, 1, 'r3', base + 3], [1, 2, 'r5', base + 5]])
}))

test('createPartitions grows a topic; producing to the new partition works', T, () => withAdmin(async admin => {
  const t = h.unique('admin-grow')
  await admin.createTopics({ topics: [{ topic: t, numPartitions: 2 }] })
  assert.equal(await admin.createPartitions({ topicPartitions: [{ topic: t, count: 5 }] }), undefined)
  // The broker that took the request answers once its metadata shows the new partitions; in a
  // cluster another broker may be asked a moment before it has them, as with Kafka: what
  // follows may ask any of them.
  await h.everyBrokerShows(server, t, 5)
  const meta = await admin.fetchTopicMetadata({ topics: [t] })
  assert.deepEqual(meta.topics[0].partitions.map(p => p.partitionId).sort(), [0, 1, 2, 3, 4])

  // Shrinking is INVALID_PARTITIONS (37).
  const e = await h.rejection(admin.createPartitions({ topicPartitions: [{ topic: t, count: 3 }] }))
  assert.equal(h.protocolError(e).type, 'INVALID_PARTITIONS', e.stack)
  assert.equal(h.protocolError(e).code, 37)

  const producer = h.kafka(server).producer()
  await producer.connect()
  try {
    const [meta4] = await producer.send({ topic: t, messages: [{ partition: 4, value: 'new' }] })
    assert.equal(meta4.partition, 4)
    assert.equal(meta4.errorCode, 0)
    assert.equal(meta4.baseOffset, '0')
  } finally {
    await producer.disconnect()
  }
  const offsets = (await admin.fetchTopicOffsets(t)).sort((x, y) => x.partition - y.partition)
  assert.deepEqual(offsets.map(o => o.high), ['0', '0', '0', '0', '1'])
}))

test('deleteTopics removes topics from listTopics and metadata', T, () => withAdmin(async admin => {
  const t = h.unique('admin-del')
  const keep = h.unique('admin-keep')
  await admin.createTopics({ topics: [{ topic: t, numPartitions: 2 }, { topic: keep, numPartitions: 1 }] })
  assert.ok((await admin.listTopics()).includes(t))
  await admin.deleteTopics({ topics: [t] })
  await h.waitFor(`${t} gone from listTopics`, async () => !(await admin.listTopics()).includes(t))
  const topics = await admin.listTopics()
  assert.ok(topics.includes(keep))
  // Deleting it again is UNKNOWN_TOPIC_OR_PARTITION (3), which kafkajs retries: once here.
  const once = h.kafka(server).admin({ retry: { retries: 0 } })
  await once.connect()
  try {
    const e = await h.rejection(once.deleteTopics({ topics: [t] }))
    assert.equal(h.protocolError(e).type, 'UNKNOWN_TOPIC_OR_PARTITION', e.stack)
    assert.equal(h.protocolError(e).code, 3)
  } finally {
    await once.disconnect()
  }
}))

test('alterPartitionReassignments and listPartitionReassignments: replicas kept, a broker that does not exist refused', T, () => withAdmin(async admin => {
  const t = h.unique('reassign')
  await admin.createTopics({ topics: [{ topic: t, numPartitions: 2 }] })
  const meta = await admin.fetchTopicMetadata({ topics: [t] })
  const parts = meta.topics[0].partitions
  // Each partition onto the replicas it has: accepted, nothing to move.
  await admin.alterPartitionReassignments({
    topics: [{ topic: t, partitionAssignment: parts.map(p => ({ partition: p.partitionId, replicas: p.replicas })) }],
  })
  const listed = await admin.listPartitionReassignments({ topics: [{ topic: t, partitions: [0, 1] }] })
  assert.deepEqual(listed.topics, [])

  // A broker that is not registered: INVALID_REPLICA_ASSIGNMENT for that partition only.
  await assert.rejects(
    admin.alterPartitionReassignments({ topics: [{ topic: t, partitionAssignment: [{ partition: 0, replicas: [999] }] }] }),
    e => {
      assert.equal(e.name, 'KafkaJSAggregateError')
      assert.equal(e.errors.length, 1)
      assert.equal(e.errors[0].type, 'INVALID_REPLICA_ASSIGNMENT')
      assert.equal(e.errors[0].topic, t)
      assert.equal(e.errors[0].partition, 0)
      return true
    },
  )
  const after = await admin.fetchTopicMetadata({ topics: [t] })
  assert.deepEqual(after.topics[0].partitions.map(p => p.replicas), parts.map(p => p.replicas))
}))
