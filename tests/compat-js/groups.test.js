'use strict'
// kafkajs consumer groups against strom: partitions split between members, commits and
// resuming, publish-subscribe across groups, the group admin calls, seek.

const { test } = require('node:test')
const assert = require('node:assert/strict')
const { AssignerProtocol } = require('kafkajs')
const h = require('./helper')

const server = h.useServer()
const T = { timeout: 90000 }

async function withAdmin(fn) {
  const admin = h.kafka(server).admin()
  await admin.connect()
  try {
    return await fn(admin)
  } finally {
    await admin.disconnect()
  }
}

async function committed(admin, groupId, topic) {
  const [res] = await admin.fetchOffsets({ groupId, topics: [topic] })
  assert.equal(res.topic, topic)
  return Object.fromEntries(res.partitions.map(p => [p.partition, p.offset]))
}

// A consumer whose records and latest assignment (from GROUP_JOIN) are kept.
// `autoCommit` belongs to consumer.run(), not to the consumer: given to the consumer, kafkajs
// ignored it and committed what the members had read (10) over the test's own commits (6), a
// race the three-node cluster lost every time.
function member(client, groupId, options = {}) {
  const { autoCommit = true, ...consumerOptions } = options
  const consumer = client.consumer({ groupId, ...h.FAST_GROUP, ...consumerOptions })
  const m = { consumer, records: [], assignment: null, memberId: null }
  consumer.on(consumer.events.GROUP_JOIN, e => {
    m.memberId = e.payload.memberId
    m.assignment = e.payload.memberAssignment
  })
  m.start = async topic => {
    await consumer.connect()
    await consumer.subscribe({ topics: [topic], fromBeginning: true })
    await consumer.run({
      autoCommit,
      eachMessage: async ({ topic: t, partition, message }) => { m.records.push(h.record(t, partition, message)) },
    })
  }
  m.partitions = topic => ((m.assignment || {})[topic] || []).slice().sort()
  return m
}

async function produce(topic, perPartition, partitions) {
  const producer = h.kafka(server).producer()
  await producer.connect()
  try {
    const messages = []
    for (let i = 0; i < perPartition; i++) {
      for (let p = 0; p < partitions; p++) messages.push({ partition: p, key: `p${p}`, value: `p${p}-${i}` })
    }
    await producer.send({ topic, acks: -1, messages })
  } finally {
    await producer.disconnect()
  }
}

function pv(records) {
  return records.map(r => `${r.partition}/${r.offset}=${r.value}`).sort()
}

function expected(partitions, from) {
  const out = []
  for (let p = 0; p < partitions; p++) {
    for (let i = from[p] ?? from; i < 10; i++) out.push(`${p}/${i}=p${p}-${i}`)
  }
  return out.sort()
}

test('two members split 4 partitions, commit, a new member resumes; a second group reads everything; describe, list, reset, set, delete', T, () => withAdmin(async admin => {
  const topic = h.unique('groups')
  const group = h.unique('g')
  const other = h.unique('g2')
  await admin.createTopics({ topics: [{ topic, numPartitions: 4 }] })
  const client = h.kafka(server)

  // Two members, autoCommit off: the test commits.
  const a = member(client, group, { autoCommit: false })
  const b = member(client, group, { autoCommit: false })
  try {
    await a.start(topic)
    await b.start(topic)
    await h.waitFor('both members with 2 disjoint partitions each', () => {
      const pa = a.partitions(topic)
      const pb = b.partitions(topic)
      return pa.length === 2 && pb.length === 2 && [...pa, ...pb].sort().join() === '0,1,2,3'
    })
    assert.notEqual(a.memberId, b.memberId)

    await produce(topic, 10, 4)
    await h.waitFor('40 records across both members', () => a.records.length + b.records.length >= 40)
    // Every record once across both members; each partition read by its owner only, in order.
    assert.deepEqual(pv([...a.records, ...b.records]), expected(4, 0))
    for (const m of [a, b]) {
      assert.deepEqual([...new Set(m.records.map(r => r.partition))].sort(), m.partitions(topic))
      for (const [p, rs] of Object.entries(h.byPartition(m.records))) {
        assert.deepEqual(rs.map(r => r.offset), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], `order of partition ${p}`)
      }
    }

    // Each member commits offset 6 for its partitions: the next member starts there.
    for (const m of [a, b]) {
      await m.consumer.commitOffsets(m.partitions(topic).map(partition => ({ topic, partition, offset: '6' })))
    }
    assert.deepEqual(await committed(admin, group, topic), { 0: '6', 1: '6', 2: '6', 3: '6' })

    const [desc] = (await admin.describeGroups([group])).groups
    assert.equal(desc.groupId, group)
    assert.equal(desc.errorCode, 0)
    assert.equal(desc.state, 'Stable')
    assert.equal(desc.protocolType, 'consumer')
    assert.equal(desc.protocol, 'RoundRobinAssigner')
    assert.deepEqual(desc.members.map(x => x.memberId).sort(), [a.memberId, b.memberId].sort())
    for (const x of desc.members) {
      assert.equal(x.clientId, 'strom-compat-js')
      // The assignment the leader sent in SyncGroup, as kafkajs encoded it.
      const { assignment } = AssignerProtocol.MemberAssignment.decode(x.memberAssignment)
      const owner = x.memberId === a.memberId ? a : b
      assert.deepEqual({ ...assignment, [topic]: assignment[topic].slice().sort() }, { [topic]: owner.partitions(topic) })
    }

    // Offsets of a group with members cannot be reset from outside.
    const running = await h.rejection(admin.resetOffsets({ groupId: group, topic, earliest: true }))
    assert.equal(running.message, 'The consumer group must have no running instances, current state: Stable')

    // A member's group cannot be deleted: NON_EMPTY_GROUP (68).
    const e = await h.rejection(admin.deleteGroups([group]))
    assert.equal(e.name, 'KafkaJSDeleteGroupsError', e.stack)
    assert.deepEqual(e.groups.map(g => [g.groupId, g.errorCode, g.error.type]), [[group, 68, 'NON_EMPTY_GROUP']])
  } finally {
    await a.consumer.disconnect()
    await b.consumer.disconnect()
  }
  await h.waitFor(`${group} empty`, async () => (await admin.describeGroups([group])).groups[0].state === 'Empty')
  assert.deepEqual((await admin.describeGroups([group])).groups[0].members, [])

  // A new member of the same group resumes from the committed offsets; kafkajs commits what it
  // read (autoCommit) by the time it stopped.
  const c = member(client, group)
  try {
    await c.start(topic)
    await h.waitFor('16 records from the committed offsets', () => c.records.length >= 16)
    assert.deepEqual(pv(c.records), expected(4, 6))
    assert.deepEqual(c.partitions(topic), [0, 1, 2, 3])
    const [desc] = (await admin.describeGroups([group])).groups
    assert.equal(desc.state, 'Stable')
    assert.deepEqual(desc.members.map(x => x.memberId), [c.memberId])
  } finally {
    await c.consumer.disconnect()
  }
  await h.waitFor('offsets 10 committed by the resumed member',
    async () => Object.values(await committed(admin, group, topic)).every(o => o === '10'))

  // Publish-subscribe: another group reads everything again.
  const all = await h.readAll(client, topic, 40, { groupId: other })
  assert.deepEqual(pv(all), expected(4, 0))
  await h.waitFor(`${other} empty`, async () => (await admin.describeGroups([other])).groups[0].state === 'Empty')

  const { groups } = await admin.listGroups()
  const listed = Object.fromEntries(groups.map(g => [g.groupId, g.protocolType]))
  assert.equal(listed[group], 'consumer')
  assert.equal(listed[other], 'consumer')

  // resetOffsets to the earliest: kafkajs commits the special offset -2 (EARLIEST), which
  // fetchOffsets with resolveOffsets turns into the log start offsets (and commits those).
  await admin.resetOffsets({ groupId: group, topic, earliest: true })
  assert.deepEqual(await committed(admin, group, topic), { 0: '-2', 1: '-2', 2: '-2', 3: '-2' })
  const [resolved] = await admin.fetchOffsets({ groupId: group, topics: [topic], resolveOffsets: true })
  assert.deepEqual(resolved.partitions.map(p => [p.partition, p.offset]).sort(), [[0, '0'], [1, '0'], [2, '0'], [3, '0']])
  assert.deepEqual(await committed(admin, group, topic), { 0: '0', 1: '0', 2: '0', 3: '0' })

  // setOffsets, then a member reads exactly from there.
  await admin.setOffsets({ groupId: group, topic, partitions: [
    { partition: 0, offset: '8' }, { partition: 1, offset: '9' }, { partition: 2, offset: '10' }, { partition: 3, offset: '7' },
  ] })
  assert.deepEqual(await committed(admin, group, topic), { 0: '8', 1: '9', 2: '10', 3: '7' })
  const d = await h.readAll(client, topic, 6, { groupId: group })
  assert.deepEqual(pv(d), expected(4, { 0: 8, 1: 9, 2: 10, 3: 7 }))
  await h.waitFor(`${group} empty`, async () => (await admin.describeGroups([group])).groups[0].state === 'Empty')

  // Deleting the empty groups; they are gone from listGroups, their offsets with them.
  const deleted = await admin.deleteGroups([group, other])
  assert.deepEqual(deleted.map(r => [r.groupId, r.errorCode]).sort(), [[group, 0], [other, 0]].sort())
  const after = (await admin.listGroups()).groups.map(g => g.groupId)
  assert.ok(!after.includes(group) && !after.includes(other), `listGroups after delete: ${after}`)
  assert.deepEqual(await committed(admin, group, topic), { 0: '-1', 1: '-1', 2: '-1', 3: '-1' })
  const [dead] = (await admin.describeGroups([group])).groups
  assert.equal(dead.errorCode, 0)
  assert.equal(dead.state, 'Dead')
  assert.deepEqual(dead.members, [])
}))

test('seek: a consumer reads from the offset it seeks to, then seeks back', T, async () => {
  const topic = h.unique('seek')
  await withAdmin(admin => admin.createTopics({ topics: [{ topic, numPartitions: 2 }] }))
  await produce(topic, 10, 2)
  const client = h.kafka(server)
  // fromBeginning false: without the seek nothing would be read (the topic has no new records).
  const consumer = client.consumer({ groupId: h.unique('seeker'), ...h.FAST_GROUP })
  await consumer.connect()
  try {
    await consumer.subscribe({ topics: [topic], fromBeginning: false })
    const got = []
    await consumer.run({ eachMessage: async ({ partition, message }) => { got.push(h.record(topic, partition, message)) } })
    consumer.seek({ topic, partition: 0, offset: '5' })
    consumer.seek({ topic, partition: 1, offset: '8' })
    await h.waitFor('7 records after the seeks', () => got.length >= 7)
    assert.deepEqual(pv(got), expected(2, { 0: 5, 1: 8 }))
    for (const [p, rs] of Object.entries(h.byPartition(got))) {
      assert.deepEqual(rs.map(r => r.offset), p === '0' ? [5, 6, 7, 8, 9] : [8, 9])
    }
    got.length = 0
    consumer.seek({ topic, partition: 0, offset: '2' })
    await h.waitFor('8 records after seeking back', () => got.length >= 8)
    assert.deepEqual(got.map(r => [r.partition, r.offset, r.value]),
      [2, 3, 4, 5, 6, 7, 8, 9].map(i => [0, i, `p0-${i}`]))
  } finally {
    await consumer.disconnect()
  }
})
