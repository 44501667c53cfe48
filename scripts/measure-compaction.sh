#!/usr/bin/env bash
# What log compaction costs, measured in one run on this machine (release builds):
# 1. the cleaner's throughput (MB of log read per second) as a ratio to the log's append
#    throughput, in process (crates/storage/examples/compaction_throughput.rs);
# 2. produce throughput into a compacted topic (`strom perf produce --key-count`, acks=1)
#    with the cleaner off, on, and on with log.cleaner.io.max.bytes.per.second, each on a
#    fresh server, with how many cleanings ran meanwhile.
# N records of 100 B over KEYS keys; THROTTLE bytes/s for the third run.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-3000000}
KEYS=${KEYS:-10000}
THROTTLE=${THROTTLE:-10485760}
cargo build --release --ignore-rust-version -p strom >/dev/null 2>&1
cargo build --release --ignore-rust-version -p strom-storage --example compaction_throughput >/dev/null 2>&1

echo "== cleaner vs append, in process"
./target/release/examples/compaction_throughput "$N" "$KEYS" 100

work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Runs one produce against a fresh server started with the given overrides; prints
# "records/s cleanings".
run() {
  local port dir
  port=$(free_port)
  dir="$work/$1"
  shift
  mkdir -p "$dir"
  ./target/release/strom server --override "listeners=PLAINTEXT://127.0.0.1:$port" \
    --override "log.dirs=$dir/data" --override log.cleaner.backoff.ms=100 "$@" \
    >"$dir/out" 2>"$dir/err" &
  pid=$!
  until grep -q "listening on" "$dir/out" 2>/dev/null; do sleep 0.05; done
  ./target/release/strom topics create --bootstrap-server "127.0.0.1:$port" --topic table \
    --config cleanup.policy=compact --config segment.bytes=8388608 \
    --config min.cleanable.dirty.ratio=0.1 >/dev/null
  local rate
  rate=$(./target/release/strom perf produce --bootstrap-server "127.0.0.1:$port" --topic table \
    --num-records "$N" --record-size 100 --key-count "$KEYS" --json |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["records_per_sec"]))')
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
  echo "$rate $(grep -c 'cleaned log' "$dir/err" || true)"
}

echo "== produce into a compacted topic: $N x 100 B over $KEYS keys, acks=1"
read -r off _ < <(run off --override log.cleaner.enable=false)
read -r on on_cleanings < <(run on)
read -r slow slow_cleanings < <(run throttled --override "log.cleaner.io.max.bytes.per.second=$THROTTLE")
python3 - "$off" "$on" "$on_cleanings" "$slow" "$slow_cleanings" "$THROTTLE" <<'PY'
import sys
off, on, on_c, slow, slow_c, throttle = map(float, sys.argv[1:])
print(f"cleaner off:        {off:,.0f} records/s")
print(f"cleaner on:         {on:,.0f} records/s = {on / off:.2f} x off ({on_c:.0f} cleanings during the run)")
print(f"cleaner throttled:  {slow:,.0f} records/s = {slow / off:.2f} x off "
      f"({slow_c:.0f} cleanings; log.cleaner.io.max.bytes.per.second={throttle / 1048576:.0f} MiB/s)")
PY
