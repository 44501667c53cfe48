#!/usr/bin/env bash
# Broker CPU per GB served, with zero-copy fetch (sendfile) and without
# (zero.copy.fetch.enable=false: records read into memory and copied), in one run on this
# machine: SIZE_MB of 1 KiB records and of 64 KiB records are produced once, then each topic
# is read from the beginning by `strom perf consume` against the same data directory served
# both ways (the page cache is warm for both). CPU is the server's utime+stime from
# /proc/<pid>/stat around each consume.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-1024}
cargo build --release --ignore-rust-version -p strom >/dev/null 2>&1
bin=./target/release/strom
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ticks=$(getconf CLK_TCK)

start() {
  "$bin" server --override "listeners=PLAINTEXT://127.0.0.1:$port" --override "log.dirs=$work/data" \
    --override "zero.copy.fetch.enable=$1" >"$work/out" 2>"$work/err" &
  pid=$!
  until grep -q "listening on" "$work/out" 2>/dev/null; do sleep 0.05; done
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; : >"$work/out"; }
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }

start true
for size in 1024 65536; do
  n=$((SIZE_MB * 1048576 / size))
  "$bin" topics create --bootstrap-server "127.0.0.1:$port" --topic "r$size" >/dev/null
  "$bin" perf produce --bootstrap-server "127.0.0.1:$port" --topic "r$size" --num-records "$n" \
    --record-size "$size" --batch-size 524288 --json >/dev/null
done
stop

results=()
for zero in true false; do
  start "$zero"
  for size in 1024 65536; do
    n=$((SIZE_MB * 1048576 / size))
    before=$(cpu)
    rate=$("$bin" perf consume --bootstrap-server "127.0.0.1:$port" --topic "r$size" --messages "$n" --json |
      python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["mb_per_sec"], d["seconds"])')
    after=$(cpu)
    results+=("$zero $size $rate $before $after")
  done
  stop
done

python3 - "$ticks" "$SIZE_MB" "${results[@]}" <<'PY'
import sys
ticks, size_mb = float(sys.argv[1]), float(sys.argv[2])
rows = {}
for r in sys.argv[3:]:
    zero, size, mbps, secs, before, after = r.split()
    cpu = (float(after) - float(before)) / ticks
    rows[(zero, int(size))] = (cpu / (size_mb / 1024), float(mbps), cpu / float(secs))
print(f"{'records':>8} {'fetch':>10} {'broker cpu s/GB':>16} {'consume MB/s':>13} {'broker cores busy':>18}")
for size in (1024, 65536):
    for zero, name in (("false", "copy"), ("true", "sendfile")):
        per_gb, mbps, busy = rows[(zero, size)]
        print(f"{size // 1024:>6} KiB {name:>10} {per_gb:>16.3f} {mbps:>13.0f} {busy:>18.2f}")
    copy, zc = rows[("false", size)][0], rows[("true", size)][0]
    print(f"{size // 1024:>6} KiB: sendfile uses {copy / zc if zc else float('inf'):.2f}x less broker CPU per GB")
PY
