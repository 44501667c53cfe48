#!/usr/bin/env bash
# What transactions cost, measured with librdkafka (confluent-kafka) against a release
# `strom server`, all in one run: the same records produced by an idempotent producer and
# by a transactional one (one commit every TXN_SIZE records), then the transactional topic
# read back with read_uncommitted and read_committed, by confluent-kafka and by
# `strom perf consume`. Prints records/s and the ratios between them.
# Needs the compat venv (target/compat-venv, made by tests/compat/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000000}
TXN_SIZE=${TXN_SIZE:-1000}
venv=target/compat-venv
[ -x "$venv/bin/python" ] || { echo "run tests/compat/run.sh once first: it makes $venv" >&2; exit 1; }
cargo build --release --ignore-rust-version -p strom >/dev/null 2>&1
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null && wait $pid 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/release/strom server --override "listeners=PLAINTEXT://127.0.0.1:$port" \
  --override "log.dirs=$work/data" --override num.partitions=6 >"$work/server.out" 2>"$work/server.err" &
pid=$!
until grep -q "listening on" "$work/server.out" 2>/dev/null; do sleep 0.05; done

"$venv/bin/python" - "127.0.0.1:$port" "$N" "$TXN_SIZE" <<'PY'
import sys, time
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, n, txn_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
value = b"x" * 100
common = {"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.num.messages": 10000,
          "queue.buffering.max.messages": 1000000}

def produce(topic, transactional):
    conf = dict(common, **{"enable.idempotence": True})
    if transactional:
        conf["transactional.id"] = "measure-" + topic
    p = Producer(conf)
    if transactional:
        p.init_transactions()
    start = time.perf_counter()
    for i in range(n):
        if transactional and i % txn_size == 0:
            if i:
                p.commit_transaction()
            p.begin_transaction()
        while True:
            try:
                p.produce(topic, value, key=str(i % 64).encode())
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
    if transactional:
        p.commit_transaction()
    assert p.flush(60) == 0
    return n / (time.perf_counter() - start)

def consume(topic, isolation):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "measure-" + isolation + topic,
                  "isolation.level": isolation, "enable.auto.commit": False,
                  "fetch.max.bytes": 52428800, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, p, 0) for p in range(6)])
    got, start = 0, time.perf_counter()
    while got < n:
        for m in c.consume(10000, 1.0):
            if m.error() is None:
                got += 1
    rate = n / (time.perf_counter() - start)
    c.close()
    return rate

topics = ["plain1", "txn1", "plain2", "txn2"]
admin = AdminClient({"bootstrap.servers": bootstrap})
for f in admin.create_topics([NewTopic(t, 6, 1) for t in topics]).values():
    f.result()
# Alternated, twice, so that a warm-up or a noisy moment shows as a difference between rounds.
idem1, txn1 = produce("plain1", False), produce("txn1", True)
idem2, txn2 = produce("plain2", False), produce("txn2", True)
idem, txn = (idem1 + idem2) / 2, (txn1 + txn2) / 2
plain_read = consume("txn1", "read_uncommitted")
committed_read = consume("txn2", "read_committed")
print(f"{n} records of 100 B, 6 partitions, acks=all, transactions of {txn_size} records")
print(f"produce  idempotent     {idem:>10,.0f} records/s   (rounds: {idem1:,.0f}, {idem2:,.0f})")
print(f"produce  transactional  {txn:>10,.0f} records/s   (rounds: {txn1:,.0f}, {txn2:,.0f})   ratio to idempotent {txn / idem:.2f}")
print(f"consume  read_uncommitted {plain_read:>8,.0f} records/s  (confluent-kafka)")
print(f"consume  read_committed   {committed_read:>8,.0f} records/s  (confluent-kafka)   ratio to read_uncommitted {committed_read / plain_read:.2f}")
PY

perf_consume() {
  ./target/release/strom perf consume --bootstrap-server "127.0.0.1:$port" --topic "$1" \
    --messages "$N" --isolation-level "$2" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["records_per_sec"])'
}
uncommitted=$(perf_consume txn1 read_uncommitted)
committed=$(perf_consume txn1 read_committed)
python3 - "$uncommitted" "$committed" <<'PY'
import sys
u, c = map(float, sys.argv[1:3])
print(f"consume  read_uncommitted {u:>8,.0f} records/s  (strom perf)")
print(f"consume  read_committed   {c:>8,.0f} records/s  (strom perf)   ratio to read_uncommitted {c / u:.2f}")
PY
