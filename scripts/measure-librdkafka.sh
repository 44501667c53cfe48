#!/usr/bin/env bash
# Produce and consume throughput of a librdkafka-based client (kcat) against a release
# `strom server` (or $STROM), beside the loopback TCP bandwidth measured in the same run, then the same
# with `strom perf`: 1,000,000 records of 100 bytes, acks=1, 6 partitions.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}
command -v kcat >/dev/null || { apt-get update -qq && apt-get install -y -qq kcat >/dev/null; }
# STROM=/path/to/strom measures that binary (an older commit's, to compare) instead.
if [ -z "${STROM:-}" ]; then
  cargo build --release --ignore-rust-version -p strom >/dev/null 2>&1
  STROM=$PWD/target/release/strom
fi
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null && wait $pid 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$STROM" server --override "listeners=PLAINTEXT://127.0.0.1:$port" \
  --override "log.dirs=$work/data" --override num.partitions=6 >"$work/server.out" 2>"$work/server.err" &
pid=$!
until grep -q "listening on" "$work/server.out" 2>/dev/null; do sleep 0.05; done

python3 - "$N" >"$work/records" <<'PY'
import sys
n = int(sys.argv[1])
line = ("x" * 100 + "\n").encode()
sys.stdout.buffer.write(line * n)
PY

loopback=$(python3 - <<'PY'
import socket, threading, time
total = 4 << 30
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
def sink():
    c, _ = srv.accept(); buf = bytearray(1 << 20); got = 0
    while got < total:
        n = c.recv_into(buf); got += n
        if n == 0: break
t = threading.Thread(target=sink); t.start()
s = socket.create_connection(srv.getsockname()); chunk = b"\0" * (1 << 20)
start = time.perf_counter()
for _ in range(total >> 20): s.sendall(chunk)
s.close(); t.join()
print(f"{total / (time.perf_counter() - start) / 1e6:.0f}")
PY
)

cpu() { awk '{print $14 + $15}' /proc/$pid/stat; }
c0=$(cpu)
t0=$(date +%s.%N)
kcat -b "127.0.0.1:$port" -P -t perf -X acks=1 -X linger.ms=5 -X batch.num.messages=10000 \
  -X queue.buffering.max.messages=2000000 -X queue.buffering.max.kbytes=2097151 -l "$work/records"
t1=$(date +%s.%N)
c1=$(cpu)
count=$(kcat -b "127.0.0.1:$port" -C -t perf -o beginning -e -q -f '\n' -X fetch.max.bytes=52428800 | wc -l)
t2=$(date +%s.%N)
c2=$(cpu)
tick=$(getconf CLK_TCK)
python3 - "$N" "$count" "$t0" "$t1" "$t2" "$loopback" "$c0" "$c1" "$c2" "$tick" <<'PY'
import sys
n, count, t0, t1, t2, loop = int(sys.argv[1]), int(sys.argv[2]), *map(float, sys.argv[3:6]), float(sys.argv[6])
c0, c1, c2, tick = map(float, sys.argv[7:11])
mb = n * 100 / 1e6
p, c = t1 - t0, t2 - t1
print(f"records: {n} x 100 B, acks=1, 6 partitions; consumed {count}")
print(f"loopback TCP: {loop:.0f} MB/s")
print(f"produce: {n/p:,.0f} msgs/s, {mb/p:.1f} MB/s payload = {mb/p/loop:.3f} of loopback")
print(f"consume: {n/c:,.0f} msgs/s, {mb/c:.1f} MB/s payload = {mb/c/loop:.3f} of loopback")
print(f"server CPU: produce {(c1-c0)/tick/p:.2f} cores, consume {(c2-c1)/tick/c:.2f} cores busy on average")
PY
echo "strom perf (same server, same run):"
"$STROM" perf produce --bootstrap-server "127.0.0.1:$port" --topic perf-strom --num-records "$N" --record-size 100 --acks 1
"$STROM" perf consume --bootstrap-server "127.0.0.1:$port" --topic perf-strom --messages "$N"
