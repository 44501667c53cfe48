'use strict'
// One strom server per test file, started and stopped here, and the helpers the kafkajs tests
// share: deadlines, a consumer that collects an exact number of records, and a reader for the
// record batch headers a partition stores.
//
// The server gets a free port on 127.0.0.1 and a fresh data directory; its stderr goes to
// server.log beside the data (STROM_LOG=debug in the environment gives more). Both are removed
// when the server stopped cleanly after SIGTERM, and kept (their place printed) otherwise.
//
// With STROM_COMPAT_CLUSTER=3, "the server" is three nodes in combined mode (each a broker
// and a voter of the metadata quorum), formatted with one cluster id; the clients get the
// address of node 2 only and must follow the metadata to the other leaders. `dataDir` is then
// the list of the nodes' directories.

const { spawn, execFile } = require('node:child_process')
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const crypto = require('node:crypto')
const { before, after } = require('node:test')
const { Kafka, logLevel } = require('kafkajs')

const ROOT = path.resolve(__dirname, '..', '..')
const STROM_BIN = process.env.STROM_BIN || path.join(ROOT, 'target', 'debug', 'strom')
const START_TIMEOUT_MS = 60000
const STOP_TIMEOUT_MS = 30000

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

function tail(file, lines = 40) {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n')
  } catch (e) {
    return `(no log: ${e.message})`
  }
}

// Starts one server; resolves with { proc, port } once it printed "listening on", or with
// { proc, code } when it exited before that (the port may have been taken meanwhile).
function startOnce(work) {
  return freePort().then(port => {
    const data = path.join(work, 'data')
    return spawnServer([
      'server',
      '--override', `listeners=PLAINTEXT://127.0.0.1:${port}`,
      '--override', `log.dirs=${data}`,
      '--override', 'num.partitions=1',
      '--override', 'group.initial.rebalance.delay.ms=0',
    ], path.join(work, 'server.log'), port)
  })
}

function spawnServer(args, logPath, port) {
  return new Promise((resolve, reject) => {
    const log = fs.openSync(logPath, 'a')
    const proc = spawn(STROM_BIN, args, { stdio: ['ignore', 'pipe', log] })
    fs.closeSync(log)
    let out = ''
    let settled = false
    const timer = setTimeout(() => {
      if (settled) return
      settled = true
      proc.kill('SIGKILL')
      reject(new Error(`strom server not listening after ${START_TIMEOUT_MS} ms:\n${tail(logPath)}`))
    }, START_TIMEOUT_MS)
    // Keeps reading to the end so that the server never blocks on a full pipe.
    proc.stdout.setEncoding('utf8')
    proc.stdout.on('data', chunk => {
      if (settled) return
      out += chunk
      if (out.includes('listening on')) {
        settled = true
        clearTimeout(timer)
        resolve({ proc, port })
      }
    })
    proc.on('error', e => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      reject(new Error(`cannot start ${STROM_BIN}: ${e.message}`))
    })
    proc.on('exit', code => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      resolve({ proc, code })
    })
  })
}

const CLUSTER = Number(process.env.STROM_COMPAT_CLUSTER || '1')

function run(args) {
  return new Promise((resolve, reject) => {
    execFile(STROM_BIN, args, (e, stdout, stderr) => e ? reject(new Error(`${args.join(' ')}: ${stderr}`)) : resolve(stdout))
  })
}

// Formats and starts `n` nodes in combined mode; resolves with their processes once all
// listen (or with { code } of the first that exited before).
async function startClusterOnce(work, n) {
  const brokers = []
  const controllers = []
  for (let i = 0; i < n; i++) {
    brokers.push(await freePort())
    controllers.push(await freePort())
  }
  const voters = controllers.map((p, i) => `${i + 1}@127.0.0.1:${p}`).join(',')
  const clusterId = (await run(['storage', 'random-uuid'])).trim()
  const nodes = []
  for (let i = 0; i < n; i++) {
    const config = path.join(work, `node${i + 1}.properties`)
    fs.writeFileSync(config, [
      `node.id=${i + 1}`, 'process.roles=broker,controller', `controller.quorum.voters=${voters}`,
      'controller.listener.names=CONTROLLER',
      `listeners=PLAINTEXT://127.0.0.1:${brokers[i]},CONTROLLER://127.0.0.1:${controllers[i]}`,
      'listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT',
      `log.dirs=${path.join(work, `data${i + 1}`)}`, 'num.partitions=1',
      'group.initial.rebalance.delay.ms=0', 'controller.quorum.election.timeout.ms=300', '',
    ].join('\n'))
    await run(['storage', 'format', '-t', clusterId, '-c', config])
    nodes.push(spawnServer(['server', '--config', config], path.join(work, `server${i + 1}.log`), brokers[i]))
  }
  const started = await Promise.all(nodes)
  const failed = started.find(s => !s.port)
  if (failed) {
    for (const s of started) if (s.port) s.proc.kill('SIGKILL')
    return failed
  }
  return { procs: started.map(s => s.proc), port: brokers[1], ports: brokers, dirs: started.map((_, i) => path.join(work, `data${i + 1}`)) }
}

async function startServer() {
  try {
    fs.accessSync(STROM_BIN, fs.constants.X_OK)
  } catch {
    throw new Error(`no strom binary at ${STROM_BIN}: cargo build --ignore-rust-version -p strom`)
  }
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'strom-compat-js-'))
  const logPath = path.join(work, CLUSTER > 1 ? 'server2.log' : 'server.log')
  let started
  for (let attempt = 0; attempt < 3; attempt++) {
    started = CLUSTER > 1 ? await startClusterOnce(work, CLUSTER) : await startOnce(work)
    if (started.port) break
  }
  if (!started.port) {
    throw new Error(`strom server exited with ${started.code} before listening (kept in ${work}):\n${tail(logPath)}`)
  }
  const procs = started.procs || [started.proc]
  const { port } = started
  let stopping = false
  const exits = procs.map(proc => new Promise(resolve => proc.on('exit', (code, signal) => {
    proc.exitedWith = { code, signal }
    if (!stopping) {
      process.stderr.write(`strom server exited early (code ${code}, signal ${signal}); log in ${work}:\n${tail(logPath)}\n`)
    }
    resolve(proc.exitedWith)
  })))
  const exited = () => procs.map(p => p.exitedWith).find(Boolean) || null
  // A crashed test process must not leave the servers running.
  const reaper = () => { for (const p of procs) if (!p.exitedWith) p.kill('SIGKILL') }
  process.on('exit', reaper)

  return {
    bootstrap: `127.0.0.1:${port}`,
    port,
    // Every broker's address: a test that must see a change on all of them asks each.
    brokers: (started.ports || [port]).map(p => `127.0.0.1:${p}`),
    // The node.id of the broker the clients are given.
    brokerId: CLUSTER > 1 ? 2 : 0,
    dataDir: started.dirs || path.join(work, 'data'),
    logPath,
    exited,
    async stop() {
      process.removeListener('exit', reaper)
      const early = exited()
      stopping = true
      for (const p of procs) if (!p.exitedWith) p.kill('SIGTERM')
      let timer
      const result = await Promise.race([
        Promise.all(exits),
        new Promise(resolve => { timer = setTimeout(() => resolve(null), STOP_TIMEOUT_MS) }),
      ])
      clearTimeout(timer)
      if (result === null) {
        reaper()
        await Promise.all(exits)
        throw new Error(`strom server still running ${STOP_TIMEOUT_MS} ms after SIGTERM (kept in ${work}):\n${tail(logPath)}`)
      }
      if (early) {
        throw new Error(`strom server exited during the tests (code ${early.code}, signal ${early.signal}); kept in ${work}:\n${tail(logPath)}`)
      }
      const bad = result.find(r => r.code !== 0)
      if (bad) {
        throw new Error(`strom server exited with ${bad.code} (signal ${bad.signal}) after SIGTERM; kept in ${work}:\n${tail(logPath)}`)
      }
      fs.rmSync(work, { recursive: true, force: true })
    },
  }
}

// Registers before/after hooks for the calling test file: one server for all its tests. The
// returned object is filled in by the time the tests run.
function useServer() {
  const ctx = {}
  before(async () => {
    Object.assign(ctx, await startServer())
  })
  after(async () => {
    if (ctx.stop) await ctx.stop()
  })
  return ctx
}

const LOG_LEVELS = { debug: logLevel.DEBUG, info: logLevel.INFO, warn: logLevel.WARN, error: logLevel.ERROR }

function kafka(server, clientId = 'strom-compat-js') {
  return new Kafka({
    clientId,
    brokers: [server.bootstrap],
    logLevel: LOG_LEVELS[process.env.STROM_JS_LOG] ?? logLevel.NOTHING,
    connectionTimeout: 5000,
    requestTimeout: 30000,
    retry: { initialRetryTime: 100, retries: 8 },
  })
}

// Group member settings that keep rebalances short (kafkajs defaults: 30 s sessions, a
// heartbeat every 3 s, fetches that wait up to 5 s).
const FAST_GROUP = { sessionTimeout: 10000, rebalanceTimeout: 10000, heartbeatInterval: 300, maxWaitTimeInMs: 100 }

function unique(prefix) {
  return `${prefix}-${crypto.randomBytes(6).toString('hex')}`
}

// Resolves with the value of `fn` once it is truthy; polls every `interval` ms and fails after
// `timeout` ms.
async function waitFor(what, fn, { timeout = 30000, interval = 50 } = {}) {
  const deadline = Date.now() + timeout
  let last
  for (;;) {
    try {
      const v = await fn()
      if (v) return v
      last = undefined
    } catch (e) {
      last = e
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.stack || last}` : ''}`)
    }
    await new Promise(r => setTimeout(r, interval))
  }
}

// Rejects when `promise` has not settled within `ms`.
function within(ms, what, promise) {
  let timer
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${typeof what === 'function' ? what() : what}`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

// A kafkajs message as plain data: strings for key, value and header values.
function record(topic, partition, message) {
  const headers = {}
  for (const [k, v] of Object.entries(message.headers || {})) {
    headers[k] = Array.isArray(v) ? v.map(x => x.toString()) : v.toString()
  }
  return {
    topic,
    partition,
    offset: Number(message.offset),
    timestamp: Number(message.timestamp),
    key: message.key == null ? null : message.key.toString(),
    value: message.value == null ? null : message.value.toString(),
    headers,
  }
}

// Runs `consumer` (connected and subscribed) until `done(records)` is true for the records
// it received; stops it and resolves with them in arrival order.
async function collect(consumer, done, { timeout = 30000, what = 'records' } = {}) {
  const got = []
  let finish
  const finished = new Promise(r => { finish = r })
  await consumer.run({
    eachMessage: async ({ topic, partition, message }) => {
      got.push(record(topic, partition, message))
      if (done(got)) finish()
    },
  })
  try {
    if (!done(got)) {
      await within(timeout, () => `${what}: got ${got.length}: ${JSON.stringify(got.slice(-5))}`, finished)
    }
  } finally {
    await consumer.stop()
  }
  return got
}

// Reads `count` records of `topics` from the beginning with a fresh group (or `groupId`).
async function readAll(client, topics, count, { groupId = unique('reader'), consumer: extra = {}, timeout } = {}) {
  const consumer = client.consumer({ groupId, ...FAST_GROUP, ...extra })
  await consumer.connect()
  try {
    await consumer.subscribe({ topics: [].concat(topics), fromBeginning: true })
    return await collect(consumer, got => got.length >= count, { timeout, what: `${count} records of ${topics}` })
  } finally {
    await consumer.disconnect()
  }
}

// Records grouped by partition, each list in arrival order.
function byPartition(records) {
  const out = {}
  for (const r of records) (out[r.partition] ||= []).push(r)
  return out
}

// Record batch headers of every segment of `topic`-`partition` in the server's data directory:
// strom stores batches byte-identical to what the producer sent, so these tell which codec,
// producer id and sequences the client really used.
function storedBatches(dataDir, topic, partition) {
  // A cluster's list of directories: the partition is in its leader's.
  const held = (Array.isArray(dataDir) ? dataDir : [dataDir]).map(d => path.join(d, `${topic}-${partition}`))
  const dir = held.find(d => fs.existsSync(d)) || held[0]
  const batches = []
  for (const name of fs.readdirSync(dir).filter(n => n.endsWith('.log')).sort()) {
    const buf = fs.readFileSync(path.join(dir, name))
    let pos = 0
    while (pos + 61 <= buf.length) {
      const length = buf.readInt32BE(pos + 8)
      if (length <= 0 || pos + 12 + length > buf.length) break
      const attributes = buf.readInt16BE(pos + 21)
      batches.push({
        baseOffset: Number(buf.readBigInt64BE(pos)),
        magic: buf.readInt8(pos + 16),
        codec: attributes & 7,
        transactional: Boolean(attributes & 0x10),
        control: Boolean(attributes & 0x20),
        lastOffsetDelta: buf.readInt32BE(pos + 23),
        producerId: Number(buf.readBigInt64BE(pos + 43)),
        producerEpoch: buf.readInt16BE(pos + 51),
        baseSequence: buf.readInt32BE(pos + 53),
        recordCount: buf.readInt32BE(pos + 57),
      })
      pos += 12 + length
    }
  }
  return batches
}

// Runs target/debug/strom (or STROM_BIN) with `args`, `input` on stdin; resolves with stdout.
function strom(args, input = '') {
  return new Promise((resolve, reject) => {
    const child = execFile(STROM_BIN, args, { timeout: 60000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`strom ${args.join(' ')} failed: ${err.message}\n${stderr}`))
      else resolve(stdout)
    })
    child.stdin.end(input)
  })
}

// Resolves once every broker's own metadata shows `topic` with `count` partitions (the strom
// CLI asks the broker it is given).
async function everyBrokerShows(server, topic, count) {
  await waitFor(`${count} partitions of ${topic} on every broker`, async () => {
    for (const b of server.brokers) {
      const out = JSON.parse(await strom(['topics', 'describe', '--topic', topic, '--json', '--bootstrap-server', b]))
      if (out[0].partitions.length !== count) return false
    }
    return true
  })
}

// Expects `promise` to reject; resolves with the error.
async function rejection(promise) {
  try {
    await promise
  } catch (e) {
    return e
  }
  throw new Error('expected a rejection, but it resolved')
}

// The KafkaJSProtocolError behind a kafkajs error (kafkajs wraps non-retriable errors in
// KafkaJSNonRetriableError with the original as `cause`).
function protocolError(e) {
  for (let x = e; x; x = x.cause) {
    if (x.name === 'KafkaJSProtocolError' || x.type) return x
    if (x.cause === x) break
  }
  return e
}

module.exports = {
  FAST_GROUP,
  byPartition,
  collect,
  everyBrokerShows,
  kafka,
  protocolError,
  readAll,
  record,
  rejection,
  startServer,
  storedBatches,
  strom,
  unique,
  useServer,
  waitFor,
  within,
}
