#!/usr/bin/env bash
# How strom's costs grow with the work (see measure-scale.py, which this runs; its docstring
# lists every measurement): partitions on one node (creation, Metadata, RSS and descriptors
# per partition, produce to all, start after a clean shutdown and after SIGKILL),
# topics (single-partition topics created one at a time: the cost of a metadata change),
# connections (idle ones: memory each; 2 to 200 active librdkafka clients: throughput),
# consumers (many reading one partition from the start while as many tail it: throughput,
# end-to-end latency), retention (produce latency while ~1,000 segments are deleted).
# Each part starts release `strom server` processes of its own in temporary directories,
# removed at the end. Uses confluent-kafka (librdkafka) from the compat suite's venv
# (target/compat-venv, made by tests/compat/run.sh when missing).
#
# PARTS=partitions,topics,connections,consumers,retention chooses the parts (default all);
# --json prints one JSON document instead of the tables. The other settings, with their
# defaults (the full scale; e.g. PARTITIONS=500,2000 IDLE_S=5 TOPICS=100,400
# CONNECTIONS=100,200 ACTIVE_CLIENTS=2,20 CONSUMERS=1,5 CONSUMER_RECORDS=20000
# RETENTION_SEGMENTS=50 for a quick check):
#   PARTITIONS=1000,10000,50000 TOPIC_PARTITIONS=1000 METADATA_REPS=5 PRODUCE_ROUNDS=3
#   IDLE_S=65 FD_CAP=1 (lowers points above the open files limit to fit with every file open)
#   TOPICS=1000,4000
#   CONNECTIONS=500,1000,2000 ACTIVE_CLIENTS=2,20,200 ACTIVE_WORKERS=4 ACTIVE_SECONDS=10
#   ACTIVE_PARTITIONS=100 RECORD_SIZE=512
#   CONSUMERS=1,10,50 CONSUMER_RECORDS=200000 TAIL_RATE=1000 TAIL_ALONE_S=5 READER_WORKERS=2
#   RETENTION_SEGMENTS=1000 SEGMENT_BYTES=1048576 RETENTION_RATE=1000 RETENTION_BEFORE_S=10
#   RETENTION_AFTER_S=5 RETENTION_CHECK_MS=1000 RETENTION_RECORD_SIZE=1024
#   SETTLE_S=3 START_TIMEOUT_S=900 KEEP_WORK=1 (keeps the temporary directories)
# STROM=/path/to/strom measures that binary instead of building target/release/strom.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${STROM:-}" ]; then
  cargo build --release --ignore-rust-version -p strom >/dev/null 2>&1
  STROM=$PWD/target/release/strom
fi
if [ ! -x target/compat-venv/bin/python ]; then
  bash tests/compat/run.sh -k nothing-matches >/dev/null 2>&1 || true
fi
# Every partition and every connection holds a descriptor: as many as the hard limit allows
# (for the servers, started from here, and for the idle connections' client side).
ulimit -n "$(ulimit -Hn)"
STROM=$STROM exec target/compat-venv/bin/python scripts/measure-scale.py "$@"
