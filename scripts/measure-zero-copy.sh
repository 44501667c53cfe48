#!/usr/bin/env bash
# Broker CPU per GB served, with zero-copy fetch (sendfile) and without
# (zero.copy.fetch.enable=false: records read into memory and copied), in one run on this
# machine: SIZE_MB of 1 KiB records and of 64 KiB records are produced once, then each topic
# is read from the beginning by `strom perf consume` against the same data directory served
# both ways (the page cache is warm for both). CPU is the server's utime+stime from
# /proc/<pid>/stat around each consume.
#
# On this VM most of the broker's CPU in a consume is the kernel's loopback TCP path (the
# receiving side's softirq work is often charged to the sending broker), and it moves by 3x
# between identical runs. So the two ways alternate for ROUNDS rounds and the table gives the
# median, with the lowest and highest figure beside it; user and system time are split.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-1024}
ROUNDS=${ROUNDS:-5}
BATCH=${BATCH:-524288}  # the producer's batch.size (Kafka's default 16384 makes each 64 KiB record a batch)
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
cpu() { awk '{print $14 "," $15}' "/proc/$pid/stat"; }

start true
for size in 1024 65536; do
  n=$((SIZE_MB * 1048576 / size))
  "$bin" topics create --bootstrap-server "127.0.0.1:$port" --topic "r$size" >/dev/null
  "$bin" perf produce --bootstrap-server "127.0.0.1:$port" --topic "r$size" --num-records "$n" \
    --record-size "$size" --batch-size "$BATCH" --json >/dev/null
done
stop

results=()
for round in $(seq "$ROUNDS"); do
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
done

python3 - "$ticks" "$SIZE_MB" "${results[@]}" <<'PY'
import statistics, sys
ticks, size_mb = float(sys.argv[1]), float(sys.argv[2])
gb = size_mb / 1024
runs = {}
for r in sys.argv[3:]:
    zero, size, mbps, secs, before, after = r.split()
    (ub, sb), (ua, sa) = (map(float, x.split(",")) for x in (before, after))
    user, system = (ua - ub) / ticks / gb, (sa - sb) / ticks / gb
    runs.setdefault((zero, int(size)), []).append((user + system, user, system, float(mbps)))
med = statistics.median
print(f"{len(runs[('true', 1024)])} rounds of {size_mb:.0f} MB; broker CPU seconds per GB served, median")
print(f"{'records':>8} {'fetch':>9} {'cpu s/GB':>9} {'(min-max)':>13} {'user':>6} {'system':>7} {'consume MB/s':>13}")
for size in (1024, 65536):
    for zero, name in (("false", "copy"), ("true", "sendfile")):
        rs = runs[(zero, size)]
        tot = [r[0] for r in rs]
        span = f"({min(tot):.2f}-{max(tot):.2f})"
        print(f"{size // 1024:>4} KiB {name:>9} {med(tot):>9.3f} {span:>13}"
              f" {med([r[1] for r in rs]):>6.3f} {med([r[2] for r in rs]):>7.3f} {med([r[3] for r in rs]):>13.0f}")
    copy, zc = (med([r[0] for r in runs[(z, size)]]) for z in ("false", "true"))
    cu, zu = (med([r[1] for r in runs[(z, size)]]) for z in ("false", "true"))
    ratio = lambda a, b: f"{a / b:.2f}x" if b else "all of the"
    print(f"{size // 1024:>4} KiB: sendfile uses {ratio(copy, zc)} less broker CPU per GB,"
          f" {ratio(cu, zu)} less user CPU")
PY
