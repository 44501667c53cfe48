#!/usr/bin/env bash
# The benchmark suite (issue 13), in one run on this machine: first its own limits (loopback
# TCP throughput and round trip, sequential disk write with fdatasync), then a release
# `strom server` (or $STROM) measured with librdkafka (the rdkafka crate, examples/
# bench_client.rs) and with `strom perf`: produce, consume and end-to-end, 100 B and 1 KiB
# records, acks=1 and acks=all, 6 partitions. Prints one table, each figure beside the
# limit it approaches, as a ratio; throughput is the median of ROUNDS runs per client, and
# strom perf's figure is also given as a ratio to librdkafka's. N100 / N1K set the record
# counts.
#
#   scripts/bench.sh            # about 3 minutes here
#   scripts/bench.sh --json     # the same figures for scripts
set -euo pipefail
cd "$(dirname "$0")/.."
N100=${N100:-1000000}
N1K=${N1K:-300000}
E2E=${E2E:-30000}     # records per end-to-end run, at RATE per second
RATE=${RATE:-10000}
ROUNDS=${ROUNDS:-3}   # throughput runs per client and test; the table shows their median
json=${1:-}

. scripts/deps.sh
echo "building (release) ..." >&2
[ "$ROUNDS" -ge 1 ] || { echo "ROUNDS must be at least 1" >&2; exit 2; }
build_log=$(mktemp)
if ! cargo build --release --ignore-rust-version -p strom --bin strom --example bench_client \
  >"$build_log" 2>&1; then
  tail -20 "$build_log" >&2
  echo "the release build failed (whole log: $build_log)" >&2
  exit 1
fi
rm -f "$build_log"
STROM=${STROM:-$PWD/target/release/strom}
client=$PWD/target/release/examples/bench_client
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null && wait $pid 2>/dev/null; rm -rf "$work"' EXIT
results=$work/results
: >"$results"
# One line per result: "<what> <json>" (strom perf prints its JSON over several lines).
note() { echo "$1" | tr -d '\n' >>"$results"; echo >>"$results"; }
# Runs a measuring command; its JSON, or the end of the script with what it said.
run() {
  local out
  if ! out=$("$@" 2>"$work/stderr"); then
    echo "failed: $*" >&2
    tail -5 "$work/stderr" >&2
    exit 1
  fi
  echo "$out"
}

echo "machine limits ..." >&2
note "loopback $("$client" loopback)"
t0=$(date +%s.%N)
dd if=/dev/zero of="$work/dd" bs=1M count=1024 conv=fdatasync status=none
t1=$(date +%s.%N)
rm -f "$work/dd"
note "disk {\"mb_per_sec\": $(python3 -c "print(round(1073741824/($t1-$t0)/1e6,1))")}"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$STROM" server --override "listeners=PLAINTEXT://127.0.0.1:$port" \
  --override "log.dirs=$work/data" --override num.partitions=6 >"$work/server.out" 2>"$work/server.err" &
pid=$!
until grep -q "listening on" "$work/server.out" 2>/dev/null; do
  kill -0 $pid 2>/dev/null || { cat "$work/server.err" >&2; exit 1; }
  sleep 0.05
done
b=127.0.0.1:$port

# One throughput round of each client; they read size, acks, a, n and round when called.
lib() {
  local t=lib-$size-$acks-$round r
  r=$(run "$client" produce "$b" "$t" "$n" "$size" "$acks")
  note "librdkafka produce $size $acks $r"
  r=$(run "$client" consume "$b" "$t" "$n")
  note "librdkafka consume $size $acks $r"
}
ours() {
  local t=perf-$size-$acks-$round r
  r=$(run "$STROM" perf produce --bootstrap-server "$b" --topic "$t" --num-records "$n" \
    --record-size "$size" --acks="$a" --json)
  note "strom-perf produce $size $acks $r"
  r=$(run "$STROM" perf consume --bootstrap-server "$b" --topic "$t" --messages "$n" --json)
  note "strom-perf consume $size $acks $r"
}

for size in 100 1024; do
  n=$N100; [ $size = 1024 ] && n=$N1K
  for acks in 1 all; do
    a=$acks; [ $a = all ] && a=-1
    # Throughput runs: ROUNDS of each client, alternating which goes first (the second one
    # shares the machine with the first one's writeback), each to a fresh topic.
    for round in $(seq "$ROUNDS"); do
      echo "size $size, acks=$acks, round $round ..." >&2
      if [ $((round % 2)) = 1 ]; then lib; ours; else ours; lib; fi
    done
    r=$(run "$client" e2e "$b" "e2e-$size-$acks" "$E2E" "$size" "$acks" "$RATE")
    note "librdkafka e2e $size $acks $r"
    r=$(run "$STROM" perf produce --bootstrap-server "$b" --topic "lat-$size-$acks" \
      --num-records "$E2E" --record-size "$size" --acks="$a" --throughput "$RATE" --json)
    note "strom-perf ack-latency $size $acks $r"
  done
done

python3 - "$results" "$json" "$N100" "$N1K" "$E2E" "$RATE" "$ROUNDS" <<'PY'
import json, statistics, sys
lines = open(sys.argv[1]).read().splitlines()
as_json, n100, n1k, e2e, rate, rounds = sys.argv[2] == "--json", *sys.argv[3:]
limits, runs = {}, {}
for l in lines:
    head, _, body = l.partition(" {")
    data = json.loads("{" + body)
    words = head.split()
    if len(words) == 1:
        limits[words[0]] = data
    else:
        runs.setdefault(tuple(words), []).append(data)
# Throughput: the run with the median records/s stands for its rounds.
rows = []
for key, ds in runs.items():
    if "records_per_sec" in ds[0]:
        d = dict(sorted(ds, key=lambda d: d["records_per_sec"])[(len(ds) - 1) // 2])
        d["rounds"] = [x["records_per_sec"] for x in ds]  # in the order they ran
        d["records_per_sec"] = statistics.median(d["rounds"])
        d["mb_per_sec"] = d["records_per_sec"] * int(key[2]) / 1e6
    else:
        d = ds[0]
    rows.append((key, d))
loop, rtt, disk = limits["loopback"]["mb_per_sec"], limits["loopback"]["rtt_ms"], limits["disk"]["mb_per_sec"]
out = []
for (client, test, size, acks), d in rows:
    r = {"client": client, "test": test, "size": int(size), "acks": acks}
    if test in ("produce", "consume"):
        r["records_per_sec"] = d["records_per_sec"]
        r["rounds"] = d["rounds"]
        # Payload bytes in MB (10^6) for both clients (strom perf prints MiB).
        r["mb_per_sec"] = d["records_per_sec"] * int(size) / 1e6
        r["of_loopback"] = d["mb_per_sec"] / loop
        if test == "produce":
            r["of_disk"] = d["mb_per_sec"] / disk
    else:
        lat = d.get("latency_ms", d)
        r["p50_ms"], r["p99_ms"] = lat["p50"] if "p50" in lat else lat["p50_ms"], lat["p99"] if "p99" in lat else lat["p99_ms"]
        r["p50_of_rtt"] = r["p50_ms"] / rtt
    out.append(r)
by = {(r["client"], r["test"], r["size"], r["acks"]): r for r in out}
for (client, test, size, acks), r in by.items():
    other = by.get(("librdkafka", test, size, acks))
    if client == "strom-perf" and other is not None and "records_per_sec" in r:
        r["vs_librdkafka"] = r["records_per_sec"] / other["records_per_sec"]
        r["rounds_vs_librdkafka"] = [x / other["records_per_sec"] for x in r["rounds"]]
if as_json:
    print(json.dumps({"limits": limits, "results": out}, indent=2))
    sys.exit()
print(f"Machine: loopback TCP {loop:,.0f} MB/s, round trip {rtt*1000:.0f} us; disk sequential write "
      f"(dd, fdatasync) {disk:,.0f} MB/s.")
print(f"Records: {int(n100):,} x 100 B and {int(n1k):,} x 1 KiB per throughput run, 6 partitions, "
      f"median of {rounds} runs per client alternating which goes first; "
      f"latency runs {int(e2e):,} records at {int(rate):,}/s.")
print()
print(f"| {'client':<10} | {'test':<11} | {'size':>5} | {'acks':>4} | {'records/s':>10} | {'MB/s':>7} | {'÷ loopback':>10} | {'÷ disk':>7} | {'p50 ms':>7} | {'p99 ms':>7} | {'p50 ÷ RTT':>9} |")
print("|" + "|".join("-" * w for w in (12, 13, 7, 6, 12, 9, 12, 9, 9, 9, 11)) + "|")
f = lambda v, fmt: format(v, fmt) if v is not None else ""
for r in out:
    print(f"| {r['client']:<10} | {r['test']:<11} | {r['size']:>5} | {r['acks']:>4} | "
          f"{f(r.get('records_per_sec'), ',.0f'):>10} | {f(r.get('mb_per_sec'), '.1f'):>7} | "
          f"{f(r.get('of_loopback'), '.3f'):>10} | {f(r.get('of_disk'), '.2f'):>7} | "
          f"{f(r.get('p50_ms'), '.2f'):>7} | {f(r.get('p99_ms'), '.2f'):>7} | {f(r.get('p50_of_rtt'), ',.0f'):>9} |")
print()
print("strom perf ÷ librdkafka (median records/s; each run's ratio to the other client's median in brackets):")
for r in out:
    if "vs_librdkafka" in r:
        each = ", ".join(f"{x:.2f}" for x in r["rounds_vs_librdkafka"])
        print(f"- {r['test']} {r['size']} B acks={r['acks']}: {r['vs_librdkafka']:.2f}x ({each})")
PY
