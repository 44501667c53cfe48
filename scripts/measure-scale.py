"""How strom's costs grow with the work, measured on this machine against release
`strom server` processes that this script starts itself (see measure-scale.sh, which runs
it). Each part gets a fresh server and data directory of its own; PARTS chooses them
(default all five, in this order):

- partitions: for each count in PARTITIONS (topics of TOPIC_PARTITIONS partitions each),
  on a fresh server: time to create them (one CreateTopics per topic) and until Metadata
  shows them all led; Metadata for all topics, timed through librdkafka (list_topics) and
  as one raw Metadata v1 request (the server and the socket only), median of METADATA_REPS;
  RSS and open file descriptors of the idle server, beyond those of the same server empty
  (after it answered the creating client's first Metadata);
  one record to every partition, PRODUCE_ROUNDS rounds through one librdkafka producer;
  clean shutdown (SIGTERM) and the start after it, then SIGKILL and the start after it
  (until "listening on", and until Metadata shows every partition led again), with the
  records counted after the SIGKILL. strom keeps one segment file open per partition up to
  three quarters of its open files limit and closes the least recently used beyond it:
  points above the limit run as asked (FD_CAP=1 brings them down to fit, to see the cost
  with every file open). The idle
  server's CPU is averaged over IDLE_S (65 s: one pass of the 60 s checkpoints).
- topics: for each count in TOPICS, on a fresh server, that many single-partition topics
  created one CreateTopics at a time: the cost of one metadata change as the topics grow.
- connections: CONNECTIONS idle TCP connections (each sent one ApiVersions and stays open),
  opened in steps: RSS, descriptors and threads of the server per connection, its CPU while
  they idle, and an ApiVersions round trip beside them; RSS after closing them, and after
  opening and closing as many again (a leak grows, reuse does not); then, for each count in
  ACTIVE_CLIENTS, half librdkafka producers and half consumers (assigned, tailing) on one
  topic of ACTIVE_PARTITIONS partitions, spread over up to ACTIVE_WORKERS processes, for
  ACTIVE_SECONDS: records/s written (log end offsets) and read, as a ratio to the first count.
- consumers: one partition holding CONSUMER_RECORDS records; a producer appends to it at
  TAIL_RATE records/s (acks=1, linger.ms=0, send time in the value); for each count n in
  CONSUMERS: n consumers tail it (end-to-end latency: receive time minus send time), alone
  for TAIL_ALONE_S, then while n more read it from the start (aggregate read throughput).
- retention: one partition of SEGMENT_BYTES segments filled to RETENTION_SEGMENTS segments
  (records timestamped two hours ago), a producer sending at RETENTION_RATE records/s
  (acks=1, linger.ms=0, latency = produce() to delivery report); after RETENTION_BEFORE_S,
  IncrementalAlterConfigs sets retention.ms to one hour, so that the server (retention
  check every RETENTION_CHECK_MS) deletes every filled segment: produce latency before,
  during and after the deletion.

The servers' data directories are made under TMPDIR. On an ext4 filesystem where hundreds of
thousands of files were deleted lately (earlier runs), creating a file costs up to ten times
more (the kernel's inode allocator reads back recently freed inodes), and so does every step
that creates files: for figures about strom, point TMPDIR at a fresh filesystem (a
loop-mounted image will do).

Every figure is one run on a shared machine. Growth exponents between consecutive points
are log(cost ratio) / log(work ratio): about 1 means linear, 2 quadratic, 0 flat.
Tables go to stdout (--json: one JSON document instead); progress and the server's
warnings go to stderr.
"""

import atexit
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from array import array

STROM = os.environ.get("STROM", "target/release/strom")
START_TIMEOUT = float(os.environ.get("START_TIMEOUT_S", "900"))
STOP_TIMEOUT = float(os.environ.get("STOP_TIMEOUT_S", "900"))
SETTLE = float(os.environ.get("SETTLE_S", "3"))
KEEP = os.environ.get("KEEP_WORK", "") not in ("", "0")
T0 = time.monotonic()

_servers = []


def env_int(name, default):
    return int(os.environ.get(name, default))


def env_ints(name, default):
    return [int(x) for x in os.environ.get(name, default).replace("_", "").split(",") if x.strip()]


def log(msg):
    el = time.monotonic() - T0
    print(f"[{int(el // 60):3d}:{el % 60:04.1f}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def exponent(a, b, wa, wb):
    """log(b/a) / log(wb/wa): how a cost grew against the work."""
    try:
        if a is None or b is None or a <= 0 or b <= 0 or wa == wb:
            return None
        return math.log(b / a) / math.log(wb / wa)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------
# A server process


class Server:
    def __init__(self, work, overrides=()):
        self.work = work
        self.port = free_port()
        self.data = os.path.join(work, "data")
        self.err_path = os.path.join(work, "server.err")
        self.overrides = [f"listeners=PLAINTEXT://127.0.0.1:{self.port}", f"log.dirs={self.data}",
                          "num.partitions=1", "group.initial.rebalance.delay.ms=0", *overrides]
        self.proc = None
        _servers.append(self)

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        """Starts the server; returns the seconds until it printed "listening on"."""
        args = [STROM, "server"]
        for o in self.overrides:
            args += ["--override", o]
        err = open(self.err_path, "ab")
        started = time.monotonic()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err,
                                     stdin=subprocess.DEVNULL, text=True)
        err.close()
        self.started = started
        ready = threading.Event()
        proc = self.proc

        def watch():
            for line in proc.stdout:  # read to the end: the server never blocks on the pipe
                if "listening on" in line:
                    ready.set()

        threading.Thread(target=watch, daemon=True).start()
        while not ready.wait(0.005):
            if proc.poll() is not None:
                raise RuntimeError(f"strom server exited with {proc.returncode}:\n{tail(self.err_path)}")
            if time.monotonic() - started > START_TIMEOUT:
                raise RuntimeError(f"strom server not listening after {START_TIMEOUT} s:\n{tail(self.err_path)}")
        return time.monotonic() - started

    def stop(self):
        """SIGTERM; returns the seconds until the process exited (and its status)."""
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            rc = f"killed after {STOP_TIMEOUT:.0f} s without exiting ({rc})"
        return time.monotonic() - t, rc

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def status(self, key):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])

    def rss_kib(self):
        return self.status("VmRSS")

    def threads(self):
        return self.status("Threads")

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def cpu_s(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tail(path, lines=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_LINE = re.compile(r"^\S+\s+(WARN|ERROR)\s+(\S+?):\s+(.*)$")


def server_warnings(path):
    """WARN and ERROR lines of a server's stderr, grouped by message:
    [(level, target, message, count, first line)]."""
    groups = {}
    try:
        with open(path, errors="replace") as f:
            for line in f:
                line = ANSI.sub("", line).rstrip("\n")
                m = LOG_LINE.match(line)
                if not m and " broker fenced" in line and "shut" not in line:
                    # The broker fenced by its own controller: it missed heartbeats.
                    g = groups.setdefault(("INFO", "", "broker fenced (every one, the clean shutdowns' too)"), [0, line])
                    g[0] += 1
                    continue
                if not m:
                    if "panicked" in line:
                        groups.setdefault(("PANIC", "", line[:160]), [0, line])[0] += 1
                    continue
                # The message without its key=value fields (they vary line to line).
                msg = re.split(r"\s\w[\w.]*=", m.group(3), maxsplit=1)[0][:120]
                g = groups.setdefault((m.group(1), m.group(2), msg), [0, line])
                g[0] += 1
    except OSError:
        pass
    return [(lvl, tgt, msg, n, first) for (lvl, tgt, msg), (n, first) in groups.items()]


class Part:
    """A part's work directory, its servers and its cleanup."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.work = tempfile.mkdtemp(prefix=f"strom-measure-scale-{self.name}-")
        self.servers = []
        self.t = time.monotonic()
        return self

    def server(self, overrides=()):
        sub = os.path.join(self.work, f"s{len(self.servers)}")
        os.makedirs(sub)
        s = Server(sub, overrides)
        self.servers.append(s)
        return s

    def __exit__(self, *exc):
        for s in self.servers:
            s.kill()
        merged = {}
        for s in self.servers:
            for lvl, tgt, msg, n, first in server_warnings(s.err_path):
                m = merged.setdefault((lvl, tgt, msg), [0, first])
                m[0] += n
        self.warnings = [(lvl, tgt, msg, n, first) for (lvl, tgt, msg), (n, first) in merged.items()]
        self.seconds = time.monotonic() - self.t
        if KEEP:
            log(f"{self.name}: work directory kept: {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)
        return False


def cleanup():
    for s in _servers:
        try:
            s.kill()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    for p in mp.active_children():
        p.kill()


def on_signal(signum, frame):
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------------------------------
# Raw Kafka requests (ApiVersions v0, Metadata v1): the server's side without a client's


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed by the server")
        buf += chunk
    return bytes(buf)


def kafka_call(sock, api_key, version, body=b"", corr=1):
    client = b"measure-scale"
    msg = struct.pack(">hhih", api_key, version, corr, len(client)) + client + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    size = struct.unpack(">i", recv_exact(sock, 4))[0]
    resp = recv_exact(sock, size)
    if struct.unpack(">i", resp[:4])[0] != corr:
        raise RuntimeError("unexpected correlation id")
    return resp


def api_versions_conn(bootstrap):
    host, port = bootstrap.split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    resp = kafka_call(s, 18, 0)
    if struct.unpack(">h", resp[4:6])[0] != 0:
        raise RuntimeError("ApiVersions failed")
    return s


def raw_metadata(bootstrap):
    """Seconds and bytes of one Metadata v1 request for all topics, on a fresh connection."""
    host, port = bootstrap.split(":")
    with socket.create_connection((host, int(port)), timeout=300) as s:
        kafka_call(s, 18, 0)
        t = time.perf_counter()
        resp = kafka_call(s, 3, 1, struct.pack(">i", -1), corr=2)
        return time.perf_counter() - t, len(resp) + 4


# ---------------------------------------------------------------------------------------
# Output


def fmt(v, kind=""):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, str):
        return v
    if kind == "exp":
        return f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def table(headers, rows):
    cells = [headers] + [[fmt(c) if not isinstance(c, tuple) else fmt(*c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for k, r in enumerate(cells):
        out.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def growth_table(label, points, metrics):
    """Metrics as rows, work points as columns, then the growth exponents between points."""
    headers = ["metric"] + [f"{label}={p:,}" for p in points]
    headers += [f"exp {a:,}->{b:,}" for a, b in zip(points, points[1:])]
    rows = []
    for name, values, grows in metrics:
        row = [name] + list(values)
        for i in range(len(points) - 1):
            row.append(("-",) if not grows else (exponent(values[i], values[i + 1], points[i], points[i + 1]), "exp"))
        rows.append(row)
    return table(headers, rows)


def print_warnings(part):
    if not part.warnings:
        return "server stderr: no WARN or ERROR line"
    lines = ["server stderr, WARN/ERROR lines grouped by message (count, first occurrence):"]
    for lvl, tgt, msg, n, first in sorted(part.warnings, key=lambda w: -w[3]):
        lines.append(f"  {n:>7,} x {lvl} {tgt}: {msg}")
        lines.append(f"            first: {first[:300]}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Part 1: partitions on one node


def wait_all_led(bootstrap, expected, timeout=START_TIMEOUT):
    """Polls Metadata until `expected` ({topic: partitions}) are all there with a leader;
    returns the seconds it took."""
    from confluent_kafka.admin import AdminClient
    # log_level 2: no connection-refused lines while a restarted server comes up.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    t = time.monotonic()
    while True:
        try:
            md = admin.list_topics(timeout=120)
            ok = all(name in md.topics and md.topics[name].error is None
                     and len(md.topics[name].partitions) == n
                     and all(p.leader >= 0 for p in md.topics[name].partitions.values())
                     for name, n in expected.items())
            if ok:
                return time.monotonic() - t
        except Exception:  # noqa: BLE001 - asked again
            pass
        if time.monotonic() - t > timeout:
            raise RuntimeError("the partitions never all showed up led in Metadata")
        time.sleep(0.1)


def produce_round(producer, expected, value, errors):
    def report(err, msg):
        if err is not None:
            errors.append(str(err))
    t = time.perf_counter()
    n = 0
    for name, parts in expected.items():
        for p in range(parts):
            while True:
                try:
                    producer.produce(name, value, partition=p, on_delivery=report)
                    break
                except BufferError:
                    producer.poll(0.01)
            n += 1
            if n % 1000 == 0:
                producer.poll(0)
    left = producer.flush(900)
    if left:
        errors.append(f"{left} records not delivered after 900 s")
    return time.perf_counter() - t


def serving(bootstrap, expected, started, timeout=START_TIMEOUT):
    """Asks ListOffsets (latest) for every partition, through a fresh client each time, until
    all of them answer without error. Returns (seconds since `started`, the records counted,
    {error: how many partitions had it on the failed attempts})."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec
    seen = {}
    while True:
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
        req = {TopicPartition(name, p): OffsetSpec.latest() for name, n in expected.items() for p in range(n)}
        total, failed = 0, 0
        try:
            futs = admin.list_offsets(req, request_timeout=300)
            for f in futs.values():
                try:
                    total += f.result().offset
                except Exception as e:  # noqa: BLE001 - counted, asked again
                    failed += 1
                    name = getattr(e.args[0], "name", lambda: str(e))() if e.args else str(e)
                    seen[name] = seen.get(name, 0) + 1
        except Exception as e:  # noqa: BLE001 - counted, asked again
            failed += 1
            seen[str(e)[:80]] = seen.get(str(e)[:80], 0) + 1
        if not failed:
            return time.monotonic() - started, total, seen
        if time.monotonic() - started > timeout:
            return None, None, seen
        del admin
        time.sleep(0.5)


def partitions_point(part, P, per_topic, reps, rounds):
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    r = {"partitions": P}
    s = part.server()
    r["start_empty_s"] = s.start()
    # The baseline is a server that has served a client (the one creating the topics):
    # the first connection's one-time costs (its threads' malloc arenas, ~1 MiB) are not
    # the partitions'.
    admin = AdminClient({"bootstrap.servers": s.bootstrap})
    admin.list_topics(timeout=30)
    time.sleep(SETTLE)
    base_rss, base_fds = s.rss_kib(), s.fds()
    r["empty_rss_kib"], r["empty_fds"], r["empty_threads"] = base_rss, base_fds, s.threads()
    expected = {}
    left, i = P, 0
    while left > 0:
        expected[f"t{i:04d}"] = min(per_topic, left)
        left -= per_topic
        i += 1
    r["topics"] = len(expected)

    log(f"partitions {P:,}: creating {len(expected)} topics")
    per_request = []
    t = time.monotonic()
    cpu0 = s.cpu_s()
    for name, n in expected.items():
        ti = time.monotonic()
        admin.create_topics([NewTopic(name, n, 1)], request_timeout=600,
                            operation_timeout=600)[name].result()
        per_request.append(time.monotonic() - ti)
        if len(per_request) % 10 == 0:
            log(f"partitions {P:,}: {len(per_request)} topics created, last took {per_request[-1]:.2f} s,"
                f" RSS {s.rss_kib() / 1024:.0f} MiB, fds {s.fds():,}")
    r["create_s"] = time.monotonic() - t
    r["create_server_cpu_s"] = s.cpu_s() - cpu0
    r["create_first_topic_s"] = per_request[0]
    r["create_last_topic_s"] = per_request[-1]
    r["create_topic_median_s"] = statistics.median(per_request)
    r["create_us_per_partition"] = r["create_s"] / P * 1e6
    r["led_after_create_s"] = r["create_s"] + wait_all_led(s.bootstrap, expected)

    time.sleep(SETTLE)
    r["idle_rss_kib"], r["idle_fds"], r["idle_threads"] = s.rss_kib(), s.fds(), s.threads()
    r["rss_b_per_partition"] = (r["idle_rss_kib"] - base_rss) * 1024 / P
    r["fds_per_partition"] = (r["idle_fds"] - base_fds) / P
    # Over IDLE_S (default 65 s): one pass of every periodic job, the 60 s recovery point
    # and high watermark checkpoints included.
    idle_s = float(os.environ.get("IDLE_S", "65"))
    log(f"partitions {P:,}: idle for {idle_s:.0f} s")
    cpu0 = s.cpu_s()
    time.sleep(idle_s)
    r["idle_cpu_cores"] = (s.cpu_s() - cpu0) / idle_s

    log(f"partitions {P:,}: Metadata x{reps}")
    lib, raw, size = [], [], 0
    md_admin = AdminClient({"bootstrap.servers": s.bootstrap})
    md_admin.list_topics(timeout=300)  # connected, and librdkafka's caches warm
    for _ in range(reps):
        t = time.perf_counter()
        md = md_admin.list_topics(timeout=300)
        lib.append(time.perf_counter() - t)
        got = sum(len(tm.partitions) for name, tm in md.topics.items() if name in expected)
        if got != P:
            raise RuntimeError(f"Metadata listed {got} partitions of {P}")
        sec, size = raw_metadata(s.bootstrap)
        raw.append(sec)
    r["metadata_librdkafka_ms"] = statistics.median(lib) * 1000
    r["metadata_raw_ms"] = statistics.median(raw) * 1000
    r["metadata_bytes"] = size

    log(f"partitions {P:,}: producing {rounds} rounds of one record per partition")
    producer = Producer({"bootstrap.servers": s.bootstrap, "linger.ms": 5,
                         "batch.num.messages": 10000, "message.timeout.ms": 900000,
                         "queue.buffering.max.messages": max(100000, 2 * P)})
    errors = []
    value = b"v" * 100
    times, server_cpu, client_cpu = [], [], []
    import resource
    for _ in range(rounds):
        c0, u0 = s.cpu_s(), resource.getrusage(resource.RUSAGE_SELF)
        times.append(produce_round(producer, expected, value, errors))
        u1 = resource.getrusage(resource.RUSAGE_SELF)
        server_cpu.append(s.cpu_s() - c0)
        client_cpu.append(u1.ru_utime + u1.ru_stime - u0.ru_utime - u0.ru_stime)
    r["produce_round_s"] = statistics.median(times[1:] or times)
    r["produce_server_cpu_s"] = statistics.median(server_cpu[1:] or server_cpu)
    r["produce_client_cpu_s"] = statistics.median(client_cpu[1:] or client_cpu)
    r["produce_errors"] = len(errors)
    if errors:
        r["produce_error_sample"] = errors[:3]
    r["produce_first_round_rps"] = P / times[0]
    r["produce_rps"] = P / statistics.median(times[1:]) if len(times) > 1 else None
    del producer
    time.sleep(SETTLE)
    r["after_produce_rss_kib"], r["after_produce_fds"] = s.rss_kib(), s.fds()
    del admin, md_admin  # no clients of this server left to reconnect while it restarts

    log(f"partitions {P:,}: clean shutdown and restart")
    r["shutdown_s"], rc = s.stop()
    r["shutdown_status"] = rc
    r["start_clean_s"] = s.start()
    r["led_clean_s"] = (time.monotonic() - s.started) + wait_all_led(s.bootstrap, expected)
    r["serving_clean_s"], r["records_after_clean"], r["serving_clean_errors"] = serving(
        s.bootstrap, expected, s.started)
    time.sleep(SETTLE)
    r["restarted_rss_kib"], r["restarted_fds"] = s.rss_kib(), s.fds()

    log(f"partitions {P:,}: SIGKILL and restart")
    s.kill()
    r["start_killed_s"] = s.start()
    r["led_killed_s"] = (time.monotonic() - s.started) + wait_all_led(s.bootstrap, expected)
    r["serving_killed_s"], r["records_after_kill"], r["serving_killed_errors"] = serving(
        s.bootstrap, expected, s.started)
    r["records_produced"] = P * rounds
    s.stop()
    return r


def part_partitions():
    points = env_ints("PARTITIONS", "1000,10000,50000")
    per_topic = env_int("TOPIC_PARTITIONS", 1000)
    reps = env_int("METADATA_REPS", 5)
    rounds = env_int("PRODUCE_ROUNDS", 3)
    results = []
    notes = []
    # Beyond three quarters of its open files limit (this process's, inherited) strom closes
    # the least recently used segment files. FD_CAP=1 brings the points that would need that
    # down to the largest count of whole topics that fits with every file open.
    import resource
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if os.environ.get("FD_CAP", "") not in ("", "0"):
        fit = max(per_topic, (limit - 1000) // per_topic * per_topic)
        capped = []
        for P in points:
            if P > fit:
                notes.append(f"P={P:,} brought down to {fit:,} (FD_CAP=1): the open files limit here "
                             f"is {limit:,}")
                P = fit
            if P not in capped:
                capped.append(P)
        points = capped
    for n in notes:
        log(f"partitions: {n}")
    with Part("partitions") as part:
        for P in points:
            t = time.monotonic()
            try:
                r = partitions_point(part, P, per_topic, reps, rounds)
            except Exception as e:  # noqa: BLE001 - a failed point is a finding
                log(f"partitions {P:,}: FAILED: {e}")
                r = {"partitions": P, "failed": str(e)}
                for s in part.servers:
                    if s.proc and s.proc.poll() is None:
                        try:
                            r.setdefault("rss_kib_at_failure", s.rss_kib())
                            r.setdefault("fds_at_failure", s.fds())
                        except OSError:
                            pass
                    s.kill()
            r["seconds"] = time.monotonic() - t
            log(f"partitions {P:,}: done in {r['seconds']:.0f} s")
            results.append(r)
            for s in part.servers:
                s.kill()
                shutil.rmtree(s.data, ignore_errors=True)  # the next point's disk to itself
    return {"points": results, "notes": notes, "seconds": part.seconds, "warnings": part.warnings}, part


def report_partitions(res, part):
    ok = [r for r in res["points"] if "failed" not in r]
    out = list(res.get("notes", []))
    if ok:
        pts = [r["partitions"] for r in ok]
        g = lambda k, scale=1.0: [None if r.get(k) is None or isinstance(r.get(k), str) else r[k] * scale for r in ok]  # noqa: E731
        metrics = [
            ("topics", g("topics"), False),
            ("create all (s)", g("create_s"), True),
            ("create: server CPU (s)", g("create_server_cpu_s"), True),
            ("create: us per partition", g("create_us_per_partition"), True),
            ("create: first topic (s)", g("create_first_topic_s"), False),
            ("create: median topic (s)", g("create_topic_median_s"), False),
            ("create: last topic (s)", g("create_last_topic_s"), False),
            ("created -> all led in Metadata (s)", g("led_after_create_s"), True),
            ("Metadata all, librdkafka (ms)", g("metadata_librdkafka_ms"), True),
            ("Metadata all, raw v1 (ms)", g("metadata_raw_ms"), True),
            ("Metadata response (KiB)", g("metadata_bytes", 1 / 1024), True),
            ("RSS empty server (MiB)", g("empty_rss_kib", 1 / 1024), False),
            ("RSS idle after create (MiB)", g("idle_rss_kib", 1 / 1024), True),
            ("RSS per partition over empty (B)", g("rss_b_per_partition"), False),
            ("open fds empty", g("empty_fds"), False),
            ("open fds idle after create", g("idle_fds"), True),
            ("fds per partition", g("fds_per_partition"), False),
            ("threads idle", g("idle_threads"), False),
            ("server CPU idle, avg over IDLE_S (cores)", g("idle_cpu_cores"), True),
            ("produce 1/partition, round 1 (rec/s)", g("produce_first_round_rps"), False),
            ("produce 1/partition, later (rec/s)", g("produce_rps"), False),
            ("produce: one round (s)", g("produce_round_s"), True),
            ("produce: server CPU per round (s)", g("produce_server_cpu_s"), True),
            ("produce: client CPU per round (s)", g("produce_client_cpu_s"), True),
            ("produce errors", g("produce_errors"), False),
            ("RSS after produce (MiB)", g("after_produce_rss_kib", 1 / 1024), True),
            ("open fds after produce", g("after_produce_fds"), True),
            ("clean shutdown (s)", g("shutdown_s"), True),
            ("start after clean shutdown (s)", g("start_clean_s"), True),
            ("  ... until all led in Metadata (s)", g("led_clean_s"), True),
            ("  ... until ListOffsets answers all (s)", g("serving_clean_s"), True),
            ("records after clean restart", g("records_after_clean"), False),
            ("RSS after restart (MiB)", g("restarted_rss_kib", 1 / 1024), True),
            ("open fds after restart", g("restarted_fds"), True),
            ("start after SIGKILL (s)", g("start_killed_s"), True),
            ("  ... until all led in Metadata (s)", g("led_killed_s"), True),
            ("  ... until ListOffsets answers all (s)", g("serving_killed_s"), True),
            ("records after SIGKILL restart", g("records_after_kill"), False),
            ("records produced", g("records_produced"), False),
            ("time for this point (s)", g("seconds"), True),
        ]
        out.append(growth_table("P", pts, metrics))
        for r in ok:
            if r.get("shutdown_status") not in (0, None):
                out.append(f"P={r['partitions']:,}: clean shutdown exit status: {r['shutdown_status']}")
            for when in ("clean", "killed"):
                if r.get(f"serving_{when}_errors"):
                    out.append(f"P={r['partitions']:,}: ListOffsets after the {when} restart failed for a while, "
                               f"partitions x error over the attempts: {r[f'serving_{when}_errors']}")
            if r.get("produce_errors"):
                out.append(f"P={r['partitions']:,}: produce errors, e.g. {r.get('produce_error_sample')}")
        last = ok[-1]
        out.append(f"goals at P={last['partitions']:,}: start after clean shutdown "
                   f"{last['start_clean_s']:.2f} s (goal < 10 s); RSS over empty "
                   f"{last['rss_b_per_partition']:.0f} B per idle partition with "
                   f"{last['fds_per_partition']:.2f} open fds each (goal < 1024 B beyond open files)")
    for r in res["points"]:
        if "failed" in r:
            out.append(f"P={r['partitions']:,} FAILED after {r['seconds']:.0f} s: {r['failed']}"
                       + (f" (server RSS {r['rss_kib_at_failure'] / 1024:.0f} MiB, fds {r['fds_at_failure']:,})"
                          if "rss_kib_at_failure" in r else ""))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# Part 1b: many single-partition topics


def part_topics():
    from confluent_kafka.admin import AdminClient, NewTopic
    points = env_ints("TOPICS", "1000,4000")
    res = {"points": []}
    with Part("topics") as part:
        for T in points:
            log(f"topics {T:,}: creating them one CreateTopics at a time")
            s = part.server()
            s.start()
            time.sleep(SETTLE)
            base = s.rss_kib()
            admin = AdminClient({"bootstrap.servers": s.bootstrap})
            lat = []
            c0 = s.cpu_s()
            t0 = time.monotonic()
            for i in range(T):
                name = f"s{i:06d}"
                t = time.perf_counter()
                admin.create_topics([NewTopic(name, 1, 1)], operation_timeout=60)[name].result()
                lat.append(time.perf_counter() - t)
            r = {"topics": T, "create_s": time.monotonic() - t0, "server_cpu_s": s.cpu_s() - c0}
            tenth = max(1, T // 10)
            r["first_tenth_ms"] = statistics.median(lat[:tenth]) * 1000
            r["last_tenth_ms"] = statistics.median(lat[-tenth:]) * 1000
            r["server_cpu_ms_per_topic"] = r["server_cpu_s"] / T * 1000
            time.sleep(SETTLE)
            r["rss_b_per_topic"] = (s.rss_kib() - base) * 1024 / T
            md = []
            for _ in range(3):
                t = time.perf_counter()
                admin.list_topics(timeout=120)
                md.append(time.perf_counter() - t)
            r["metadata_ms"] = statistics.median(md) * 1000
            del admin
            s.stop()
            shutil.rmtree(s.data, ignore_errors=True)
            res["points"].append(r)
    res["seconds"] = part.seconds
    res["warnings"] = part.warnings
    return res, part


def report_topics(res, part):
    pts = [r["topics"] for r in res["points"]]
    g = lambda k: [r[k] for r in res["points"]]  # noqa: E731
    return "\n".join([
        "single-partition topics, each created by its own CreateTopics (sequential), fresh server per point:",
        growth_table("T", pts, [
            ("create all (s)", g("create_s"), True),
            ("server CPU (s)", g("server_cpu_s"), True),
            ("server CPU per topic (ms)", g("server_cpu_ms_per_topic"), True),
            ("CreateTopics, median of first 10% (ms)", g("first_tenth_ms"), False),
            ("CreateTopics, median of last 10% (ms)", g("last_tenth_ms"), True),
            ("RSS per topic over empty (B)", g("rss_b_per_topic"), False),
            ("Metadata all, librdkafka (ms)", g("metadata_ms"), True),
        ])])


# ---------------------------------------------------------------------------------------
# Part 2: connections


def active_worker(bootstrap, topic, n_producers, assignments, record_size, counters, slots,
                  ready, stop):
    """A process with `n_producers` producers (one thread writes through all of them in
    turn, as fast as they take records) or with one consumer thread per entry of
    `assignments` (its partitions, read from their end)."""
    from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
    value = b"a" * record_size
    producers = [Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": 1,
                           "queue.buffering.max.kbytes": 16384, "batch.num.messages": 10000})
                 for _ in range(n_producers)]
    consumers = []
    for k, parts in enumerate(assignments):
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"active-{os.getpid()}-{k}",
                      "enable.auto.commit": False, "queued.max.messages.kbytes": 8192,
                      "fetch.max.bytes": 8388608})
        c.assign([TopicPartition(topic, p, OFFSET_END) for p in parts])
        consumers.append(c)

    def consume(c, slot):
        n = 0
        while not stop.is_set():
            n += len(c.consume(1000, 0.1))
            counters[slot] = n

    threads = [threading.Thread(target=consume, args=(c, slots[k]), daemon=True)
               for k, c in enumerate(consumers)]
    for t in threads:
        t.start()
    with ready.get_lock():
        ready.value += 1
    if not producers:
        stop.wait()
    while producers and not stop.is_set():
        for p in producers:
            for _ in range(200):
                try:
                    p.produce(topic, value)
                except BufferError:
                    p.poll(0.001)
                    break
            p.poll(0)
    for p in producers:
        p.flush(30)
    for t in threads:
        t.join()
    for c in consumers:
        c.close()


def log_end_offsets(admin, topic, partitions):
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec
    futs = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in range(partitions)},
                              request_timeout=60)
    return sum(f.result().offset for f in futs.values())


def active_step(s, admin, topic, partitions, clients, workers, seconds, record_size):
    ctx = mp.get_context("spawn")
    n_prod = clients // 2
    n_cons = clients - n_prod
    # Producers and consumers in processes of their own (half the workers each), so that
    # neither starves the other of its interpreter.
    pw = max(1, min(workers // 2, n_prod)) if n_prod else 0
    cw = max(1, min(workers // 2, n_cons)) if n_cons else 0
    # Consumer k reads partitions k, k + n_cons, ...
    assign = [[p for p in range(partitions) if p % n_cons == k] or [k % partitions] for k in range(n_cons)]
    counters = ctx.Array("q", max(1, n_cons), lock=False)
    ready = ctx.Value("i", 0)
    stop = ctx.Event()
    procs = []
    slot = 0
    for w in range(pw):
        procs.append(ctx.Process(target=active_worker, daemon=True, args=(
            s.bootstrap, topic, len(range(w, n_prod, pw)), [], record_size, counters, [], ready, stop)))
    for w in range(cw):
        mine = assign[w::cw]
        slots = list(range(slot, slot + len(mine)))
        slot += len(mine)
        procs.append(ctx.Process(target=active_worker, daemon=True, args=(
            s.bootstrap, topic, 0, mine, record_size, counters, slots, ready, stop)))
    for p in procs:
        p.start()
    workers = len(procs)
    deadline = time.monotonic() + 300
    while ready.value < workers:
        if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
            stop.set()
            raise RuntimeError("active clients did not start")
        time.sleep(0.05)
    time.sleep(5)  # warm-up: consumers have their offsets, producers their leaders
    w0, r0, c0, t0 = log_end_offsets(admin, topic, partitions), sum(counters), s.cpu_s(), time.monotonic()
    rss = []
    end = t0 + seconds
    while time.monotonic() < end:
        time.sleep(min(1, max(0, end - time.monotonic())))
        rss.append(s.rss_kib())
    w1, r1, c1, t1 = log_end_offsets(admin, topic, partitions), sum(counters), s.cpu_s(), time.monotonic()
    stop.set()
    for p in procs:
        p.join(60)
        if p.is_alive():
            p.kill()
    el = t1 - t0
    return {"clients": clients, "producers": n_prod, "consumers": n_cons, "processes": workers,
            "written_rps": (w1 - w0) / el, "read_rps": (r1 - r0) / el,
            "written_mbps": (w1 - w0) * record_size / el / 1e6,
            "read_mbps": (r1 - r0) * record_size / el / 1e6,
            "server_cpu_cores": (c1 - c0) / el, "rss_kib": max(rss) if rss else s.rss_kib(),
            "fds": s.fds(), "threads": s.threads()}


def part_connections():
    from confluent_kafka.admin import AdminClient, NewTopic
    steps = env_ints("CONNECTIONS", "500,1000,2000")
    clients_steps = env_ints("ACTIVE_CLIENTS", "2,20,200")
    workers = env_int("ACTIVE_WORKERS", 4)
    seconds = env_int("ACTIVE_SECONDS", 10)
    partitions = env_int("ACTIVE_PARTITIONS", 100)
    record_size = env_int("RECORD_SIZE", 512)
    res = {}
    with Part("connections") as part:
        s = part.server()
        s.start()
        time.sleep(SETTLE)

        def rtt():
            conn = api_versions_conn(s.bootstrap)
            ts = []
            for i in range(200):
                t = time.perf_counter()
                kafka_call(conn, 18, 0, corr=i + 10)
                ts.append(time.perf_counter() - t)
            conn.close()
            return statistics.median(ts) * 1e6

        base = {"connections": 0, "rss_kib": s.rss_kib(), "fds": s.fds(), "threads": s.threads(),
                "apiversions_rtt_us": rtt()}
        c0 = s.cpu_s()
        time.sleep(SETTLE)
        base["idle_cpu_cores"] = (s.cpu_s() - c0) / SETTLE
        idle = [base]
        conns = []
        for n in steps:
            log(f"connections: opening idle connections up to {n:,}")
            t = time.monotonic()
            while len(conns) < n:
                conns.append(api_versions_conn(s.bootstrap))
            opened = time.monotonic() - t
            time.sleep(SETTLE)
            row = {"connections": n, "open_s": opened, "rss_kib": s.rss_kib(), "fds": s.fds(),
                   "threads": s.threads(), "apiversions_rtt_us": rtt()}
            c0 = s.cpu_s()
            time.sleep(SETTLE)
            row["idle_cpu_cores"] = (s.cpu_s() - c0) / SETTLE
            row["rss_b_per_conn"] = (row["rss_kib"] - base["rss_kib"]) * 1024 / n
            row["fds_per_conn"] = (row["fds"] - base["fds"]) / n
            # Every connection still answers.
            for k, c in enumerate(conns[:: max(1, len(conns) // 50)]):
                kafka_call(c, 18, 0, corr=1000 + k)
            idle.append(row)
        for c in conns:
            c.close()
        time.sleep(SETTLE)
        res["after_close"] = {"rss_kib": s.rss_kib(), "fds": s.fds(), "threads": s.threads()}
        # Once more: memory kept for reuse stays level, a leak grows again.
        n = len(conns)
        conns = [api_versions_conn(s.bootstrap) for _ in range(n)]
        for c in conns:
            c.close()
        conns = []
        time.sleep(SETTLE)
        res["after_second_cycle"] = {"rss_kib": s.rss_kib(), "fds": s.fds()}
        res["idle"] = idle

        admin = AdminClient({"bootstrap.servers": s.bootstrap})
        admin.create_topics([NewTopic("active", partitions, 1)])["active"].result(60)
        active = []
        for n in clients_steps:
            log(f"connections: {n} active clients for {seconds} s")
            try:
                active.append(active_step(s, admin, "active", partitions, n, workers, seconds, record_size))
            except Exception as e:  # noqa: BLE001 - a finding
                active.append({"clients": n, "failed": str(e)})
        res["active"] = active
        del admin  # before the server goes: no reconnection attempts to report
    res["seconds"] = part.seconds
    res["warnings"] = part.warnings
    res["record_size"] = record_size
    res["active_seconds"] = seconds
    return res, part


def report_connections(res, part):
    out = []
    idle = res["idle"]
    rows = []
    for r in idle:
        rows.append([r["connections"], r.get("open_s"), r["rss_kib"] / 1024, r.get("rss_b_per_conn"),
                     r["fds"], r.get("fds_per_conn"), r["threads"], r["idle_cpu_cores"],
                     r["apiversions_rtt_us"]])
    out.append("idle connections (each sent one ApiVersions, then idles):")
    out.append(table(["connections", "open s", "RSS MiB", "RSS B/conn", "fds", "fds/conn",
                      "threads", "CPU idle cores", "ApiVersions rtt us"], rows))
    pts = [r["connections"] for r in idle[1:]]
    if len(pts) > 1:
        deltas = [(r["rss_kib"] - idle[0]["rss_kib"]) for r in idle[1:]]
        exps = [exponent(deltas[i], deltas[i + 1], pts[i], pts[i + 1]) for i in range(len(pts) - 1)]
        out.append("growth exponent of RSS over empty: " + ", ".join(
            f"{a:,}->{b:,}: {fmt(e, 'exp')}" for (a, b), e in zip(zip(pts, pts[1:]), exps)))
    a = res["after_close"]
    b = res["after_second_cycle"]
    out.append(f"after closing them all: RSS {a['rss_kib'] / 1024:.1f} MiB "
               f"(empty {idle[0]['rss_kib'] / 1024:.1f}), fds {a['fds']}, threads {a['threads']}; "
               f"after opening and closing as many again: RSS {b['rss_kib'] / 1024:.1f} MiB, fds {b['fds']}")
    ok = [r for r in res["active"] if "failed" not in r]
    out.append("")
    out.append(f"active clients: half producers (acks=1, linger.ms=5), half consumers tailing, "
               f"{res['record_size']} B records, {res['active_seconds']} s each:")
    rows = []
    first = ok[0] if ok else None
    for r in ok:
        tot = r["written_rps"] + r["read_rps"]
        ratio = tot / (first["written_rps"] + first["read_rps"]) if first else None
        rows.append([r["clients"], f"{r['producers']}+{r['consumers']}", r["processes"], r["written_rps"],
                     r["written_mbps"], r["read_rps"], r["read_mbps"], ratio,
                     r["written_rps"] / first["written_rps"] if first and first["written_rps"] else None,
                     r["server_cpu_cores"], r["rss_kib"] / 1024, r["threads"]])
    out.append(table(["clients", "prod+cons", "procs", "written rec/s", "MB/s", "read rec/s", "MB/s",
                      "ratio (w+r)", "ratio w", "server cores", "RSS MiB", "threads"], rows))
    for r in res["active"]:
        if "failed" in r:
            out.append(f"{r['clients']} active clients FAILED: {r['failed']}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# Part 3: many consumers of one partition


def steady_producer(bootstrap, topic, rate, record_size, stop, ready, out_q, timestamped):
    """Sends `rate` records/s (acks=1, linger.ms=0) until `stop`; the value starts with the
    send time. With `timestamped`, puts the (send time, latency) of every delivery in
    `out_q` at the end."""
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "acks": 1, "linger.ms": 0,
                  "enable.idempotence": False, "message.timeout.ms": 120000})
    pad = b"p" * max(0, record_size - 18)
    sent = array("d")
    lat = array("d")
    errors = [0]

    def report(err, msg, t=None):
        if err is not None:
            errors[0] += 1

    start = time.monotonic()
    i = 0
    first = True
    while not stop.is_set():
        due = start + i / rate
        now = time.monotonic()
        if now < due:
            p.poll(due - now)
            continue
        wall = time.time()
        value = b"%.6f|" % wall + pad
        if timestamped:
            def cb(err, msg, wall=wall, mono=time.monotonic()):
                if err is None:
                    sent.append(wall)
                    lat.append(time.monotonic() - mono)
                else:
                    errors[0] += 1
        else:
            cb = report
        while True:
            try:
                p.produce(topic, value, partition=0, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.001)
        i += 1
        p.poll(0)
        if first:
            p.flush(30)
            ready.set()
            first = False
    p.flush(30)
    out_q.put((sent.tobytes(), lat.tobytes(), errors[0], i))


def tail_worker(bootstrap, topic, n, ready, stop, out_q):
    """`n` consumers tailing partition 0 from its end, one thread each; puts their
    (send time, latency) pairs in `out_q` at the end."""
    from confluent_kafka import OFFSET_END, Consumer, TopicPartition
    sys.setswitchinterval(0.0005)
    results = []

    def run(k):
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"tail-{os.getpid()}-{k}",
                      "enable.auto.commit": False, "queued.max.messages.kbytes": 4096})
        c.assign([TopicPartition(topic, 0, OFFSET_END)])
        sent, lat = array("d"), array("d")
        counted = False
        while not stop.is_set():
            m = c.poll(0.1)  # not consume(n, t): it waits for n records or t
            if m is not None:
                now = time.time()
                if m.error() is not None:
                    continue
                try:
                    t = float(m.value().split(b"|", 1)[0])
                except ValueError:
                    continue
                sent.append(t)
                lat.append(now - t)
                if not counted:
                    counted = True
                    with ready.get_lock():
                        ready.value += 1
        c.close()
        results.append((sent.tobytes(), lat.tobytes()))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out_q.put(results)


def reader_worker(bootstrap, topic, n, records, ready, go, done, out_q):
    """`n` consumers reading partition 0 from offset 0 up to `records`, one thread each,
    after `go`; puts their finish times in `out_q`."""
    from confluent_kafka import Consumer, TopicPartition
    finished = []
    consumers = [Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{os.getpid()}-{k}",
                           "enable.auto.commit": False, "queued.max.messages.kbytes": 16384})
                 for k in range(n)]

    def run(c):
        c.assign([TopicPartition(topic, 0, 0)])
        reached = 0
        while reached < records:
            # No more than what is left: consume(n, t) waits for n records or t.
            msgs = c.consume(max(1, min(10000, records - reached)), 1.0)
            for m in reversed(msgs):
                if m.error() is None:
                    reached = max(reached, m.offset() + 1)
                    break
        finished.append(time.time())
        with done.get_lock():
            done.value += 1
        c.close()

    with ready.get_lock():
        ready.value += 1
    go.wait()
    threads = [threading.Thread(target=run, args=(c,)) for c in consumers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out_q.put(finished)


def wait_value(v, n, what, timeout=300, procs=()):
    deadline = time.monotonic() + timeout
    while v.value < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what} ({v.value} of {n})")
        for p in procs:
            if p.exitcode not in (None, 0):
                raise RuntimeError(f"a worker exited with {p.exitcode} while waiting for {what}")
        time.sleep(0.02)


def part_consumers():
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    steps = env_ints("CONSUMERS", "1,10,50")
    records = env_int("CONSUMER_RECORDS", 200000)
    rate = env_int("TAIL_RATE", 1000)
    alone = float(os.environ.get("TAIL_ALONE_S", "5"))
    record_size = env_int("RECORD_SIZE", 512)
    reader_workers = env_int("READER_WORKERS", 2)
    per_tail_proc = env_int("TAILS_PER_PROCESS", 25)
    ctx = mp.get_context("spawn")
    res = {"records": records, "record_size": record_size, "tail_rate": rate, "steps": []}
    with Part("consumers") as part:
        s = part.server()
        s.start()
        admin = AdminClient({"bootstrap.servers": s.bootstrap})
        admin.create_topics([NewTopic("shared", 1, 1)])["shared"].result(60)
        log(f"consumers: writing {records:,} records of {record_size} B")
        p = Producer({"bootstrap.servers": s.bootstrap, "linger.ms": 5, "batch.num.messages": 10000,
                      "queue.buffering.max.messages": 1000000})
        value = b"r" * record_size
        for i in range(records):
            while True:
                try:
                    p.produce("shared", value, partition=0)
                    break
                except BufferError:
                    p.poll(0.01)
        assert p.flush(120) == 0
        del p

        stop_p = ctx.Event()
        p_ready = ctx.Event()
        p_q = ctx.Queue()
        prod = ctx.Process(target=steady_producer, daemon=True,
                           args=(s.bootstrap, "shared", rate, record_size, stop_p, p_ready, p_q, False))
        prod.start()
        if not p_ready.wait(60):
            raise RuntimeError("the steady producer did not start")
        for n in steps:
            log(f"consumers: {n} tailing, then {n} more reading {records:,} records from the start")
            row = {"consumers": n}
            t_ready, t_stop, q = ctx.Value("i", 0), ctx.Event(), ctx.Queue()
            tails = []
            left = n
            while left > 0:
                k = min(per_tail_proc, left)
                left -= k
                tp = ctx.Process(target=tail_worker, daemon=True,
                                 args=(s.bootstrap, "shared", k, t_ready, t_stop, q))
                tp.start()
                tails.append(tp)
            r_ready, go, done, rq = ctx.Value("i", 0), ctx.Event(), ctx.Value("i", 0), ctx.Queue()
            readers = []
            try:
                wait_value(t_ready, n, "every tail consumer's first record", procs=tails)
                time.sleep(1)
                wa0 = time.time()
                time.sleep(alone)
                wa1 = time.time()
                nw = max(1, min(reader_workers, n))
                for w in range(nw):
                    k = len(range(w, n, nw))
                    rp = ctx.Process(target=reader_worker, daemon=True,
                                     args=(s.bootstrap, "shared", k, records, r_ready, go, done, rq))
                    rp.start()
                    readers.append(rp)
                wait_value(r_ready, nw, "the readers", procs=readers)
                c0 = s.cpu_s()
                tr0 = time.time()
                go.set()
                wait_value(done, n, "the readers to finish", timeout=START_TIMEOUT, procs=readers)
                tr1 = time.time()
                row["server_cpu_cores"] = (s.cpu_s() - c0) / (tr1 - tr0)
                row["rss_kib"] = s.rss_kib()
                finished = []
                for _ in readers:
                    finished += rq.get(timeout=60)
            finally:
                t_stop.set()
                go.set()
            samples = []
            for _ in tails:
                samples += q.get(timeout=120)
            for tp in tails + readers:
                tp.join(30)
            la, lr = [], []
            for sb, lb in samples:
                sent, lat = array("d"), array("d")
                sent.frombytes(sb)
                lat.frombytes(lb)
                for t, l in zip(sent, lat):
                    if wa0 <= t < wa1:
                        la.append(l)
                    elif tr0 <= t < tr1:
                        lr.append(l)
            row.update({
                "read_seconds": tr1 - tr0,
                "read_rps": n * records / (tr1 - tr0),
                "read_mbps": n * records * record_size / (tr1 - tr0) / 1e6,
                "slowest_reader_s": max(finished) - tr0, "fastest_reader_s": min(finished) - tr0,
                "tail_alone_p50_ms": pct(la, 0.5) * 1000, "tail_alone_p99_ms": pct(la, 0.99) * 1000,
                "tail_alone_max_ms": max(la) * 1000 if la else None, "tail_alone_samples": len(la),
                "tail_p50_ms": pct(lr, 0.5) * 1000, "tail_p99_ms": pct(lr, 0.99) * 1000,
                "tail_max_ms": max(lr) * 1000 if lr else None, "tail_samples": len(lr),
            })
            res["steps"].append(row)
        stop_p.set()
        _, _, perrors, sent = p_q.get(timeout=60)
        prod.join(30)
        res["producer_errors"] = perrors
        del admin
    res["seconds"] = part.seconds
    res["warnings"] = part.warnings
    return res, part


def report_consumers(res, part):
    rows = []
    first = res["steps"][0] if res["steps"] else None
    for r in res["steps"]:
        rows.append([r["consumers"], r["consumers"], r["read_rps"], r["read_mbps"],
                     r["read_rps"] / first["read_rps"], r["fastest_reader_s"], r["slowest_reader_s"],
                     r["server_cpu_cores"],
                     r["tail_alone_p50_ms"], r["tail_alone_p99_ms"], r["tail_p50_ms"], r["tail_p99_ms"],
                     r["tail_max_ms"], r["tail_samples"]])
    out = [f"one partition of {res['records']:,} records of {res['record_size']} B; a producer appends "
           f"{res['tail_rate']:,} records/s (acks=1, linger.ms=0); latency = receive time - send time "
           f"in the value:",
           table(["readers", "tails", "read rec/s", "MB/s", "ratio", "first done s", "last done s",
                  "server cores", "tail alone p50 ms", "p99", "tail w/ readers p50 ms", "p99", "max",
                  "samples"], rows)]
    if res.get("producer_errors"):
        out.append(f"steady producer: {res['producer_errors']} delivery errors")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# Part 4: retention under load


def part_retention():
    from confluent_kafka import Producer
    from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                       NewTopic, ResourceType)
    segments = env_int("RETENTION_SEGMENTS", 1000)
    seg_bytes = env_int("SEGMENT_BYTES", 1048576)
    rate = env_int("RETENTION_RATE", 1000)
    before = float(os.environ.get("RETENTION_BEFORE_S", "10"))
    after = float(os.environ.get("RETENTION_AFTER_S", "5"))
    check = env_int("RETENTION_CHECK_MS", 1000)
    record_size = env_int("RETENTION_RECORD_SIZE", 1024)
    ctx = mp.get_context("spawn")
    res = {"segments_target": segments, "segment_bytes": seg_bytes, "rate": rate,
           "record_size": record_size, "check_ms": check}
    with Part("retention") as part:
        s = part.server([f"log.retention.check.interval.ms={check}"])
        s.start()
        admin = AdminClient({"bootstrap.servers": s.bootstrap})
        admin.create_topics([NewTopic("ret", 1, 1, config={"segment.bytes": str(seg_bytes)})])["ret"].result(60)
        pdir = os.path.join(s.data, "ret-0")

        def logs():
            return {f for f in os.listdir(pdir) if f.endswith(".log")}

        log(f"retention: filling to {segments:,} segments of {seg_bytes:,} B")
        old = int(time.time() * 1000) - 2 * 3600 * 1000
        p = Producer({"bootstrap.servers": s.bootstrap, "linger.ms": 5, "batch.size": 65536,
                      "queue.buffering.max.kbytes": 262144})
        value = b"f" * 16384
        t = time.monotonic()
        while len(logs()) < segments + 1:
            for _ in range(max(64, seg_bytes // 16384 * 20)):
                while True:
                    try:
                        p.produce("ret", value, partition=0, timestamp=old)
                        break
                    except BufferError:
                        p.poll(0.01)
            assert p.flush(120) == 0
        res["fill_s"] = time.monotonic() - t
        del p
        filled = logs()
        active = max(filled)
        doomed = filled - {active}
        res["segments_filled"] = len(doomed)
        res["fds_filled"] = s.fds()
        res["rss_filled_kib"] = s.rss_kib()

        log(f"retention: steady producer at {rate:,} records/s, {before:.0f} s before the change")
        stop_p, p_ready, p_q = ctx.Event(), ctx.Event(), ctx.Queue()
        prod = ctx.Process(target=steady_producer, daemon=True,
                           args=(s.bootstrap, "ret", rate, record_size, stop_p, p_ready, p_q, True))
        prod.start()
        try:
            if not p_ready.wait(60):
                raise RuntimeError("the steady producer did not start")
            time.sleep(1)
            wb0 = time.time()
            time.sleep(before)
            t_alter = time.time()
            res_cfg = ConfigResource(ResourceType.TOPIC, "ret", incremental_configs=[
                ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET)])
            admin.incremental_alter_configs([res_cfg])[res_cfg].result(30)
            t_altered = time.time()
            t_first = t_done = None
            deadline = time.monotonic() + 300 + check / 1000
            last_count = len(doomed)
            poll = 0.01
            while time.monotonic() < deadline:
                left = len(doomed & logs())
                now = time.time()
                if left < last_count and t_first is None:
                    t_first = now
                last_count = left
                if left == 0:
                    t_done = now
                    break
                time.sleep(poll)
            res["segments_left"] = last_count
            time.sleep(after)
            t_end = time.time()
        finally:
            stop_p.set()
        sb, lb, perrors, sent_n = p_q.get(timeout=120)
        prod.join(30)
        sent, lat = array("d"), array("d")
        sent.frombytes(sb)
        lat.frombytes(lb)
        res["producer_errors"] = perrors
        windows = {"before": (wb0, t_alter)}
        if t_first is not None:
            dur_end = t_done if t_done is not None else t_end
            windows["during"] = (t_first - poll, dur_end)
            windows["alter -> deleted"] = (t_alter, dur_end)
            if t_done is not None:
                windows["after"] = (t_done + 0.5, t_end)
        for name, (a, b) in windows.items():
            ls = [l for t, l in zip(sent, lat) if a <= t < b]
            res[name] = {"seconds": b - a, "records": len(ls), "p50_ms": pct(ls, 0.5) * 1000,
                         "p99_ms": pct(ls, 0.99) * 1000, "max_ms": max(ls) * 1000 if ls else None}
        res["alter_s"] = t_altered - t_alter
        res["alter_to_first_deletion_s"] = t_first - t_alter if t_first else None
        res["deletion_s"] = (t_done - t_first) if t_first and t_done else None
        del admin
        res["fds_after"] = s.fds()
        res["rss_after_kib"] = s.rss_kib()
        # What the server logged about it.
        runs = []
        with open(s.err_path, errors="replace") as f:
            for line in f:
                if "deleted segments by retention" in line:
                    m = re.search(r"segments\S*=\S*?(\d+)", ANSI.sub("", line))
                    runs.append(int(m.group(1)) if m else None)
        res["retention_runs_logged"] = runs
    res["seconds"] = part.seconds
    res["warnings"] = part.warnings
    return res, part


def report_retention(res, part):
    out = [f"one partition, segment.bytes={res['segment_bytes']:,}, {res['segments_filled']:,} closed "
           f"segments filled in {res['fill_s']:.1f} s (server fds {res['fds_filled']:,}, RSS "
           f"{res['rss_filled_kib'] / 1024:.0f} MiB); producer at {res['rate']:,} records/s of "
           f"{res['record_size']} B, acks=1, linger.ms=0; retention check every {res['check_ms']} ms"]
    rows = []
    for name in ("before", "during", "alter -> deleted", "after"):
        w = res.get(name)
        if w:
            rows.append([name, w["seconds"], w["records"], w["p50_ms"], w["p99_ms"], w["max_ms"]])
    out.append(table(["window", "seconds", "records", "p50 ms", "p99 ms", "max ms"], rows))
    b, d = res.get("before"), res.get("during")
    if b and d:
        out.append(f"during/before: p50 x{d['p50_ms'] / b['p50_ms']:.2f}, p99 x{d['p99_ms'] / b['p99_ms']:.2f}, "
                   f"max x{d['max_ms'] / b['max_ms']:.2f}")
    out.append(f"IncrementalAlterConfigs took {fmt(res['alter_s'] * 1000)} ms; first segment gone "
               f"{fmt(res['alter_to_first_deletion_s'])} s after it; all {res['segments_filled']:,} gone "
               f"{fmt(res['deletion_s'])} s after the first (segments left: {res['segments_left']}); "
               f"server fds after {res['fds_after']:,}; server log 'deleted segments by retention': "
               f"{res['retention_runs_logged'] if len(res['retention_runs_logged']) < 20 else str(len(res['retention_runs_logged'])) + ' runs'}")
    if res.get("producer_errors"):
        out.append(f"steady producer: {res['producer_errors']} delivery errors")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------


PARTS = {
    "partitions": (part_partitions, report_partitions),
    "topics": (part_topics, report_topics),
    "connections": (part_connections, report_connections),
    "consumers": (part_consumers, report_consumers),
    "retention": (part_retention, report_retention),
}


def main():
    as_json = "--json" in sys.argv[1:]
    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    chosen = [p.strip() for p in os.environ.get("PARTS", ",".join(PARTS)).split(",") if p.strip()]
    for p in chosen:
        if p not in PARTS:
            raise SystemExit(f"unknown part {p!r}: choose among {', '.join(PARTS)}")
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    log(f"strom: {STROM}; open files limit {soft:,}/{hard:,}; {os.cpu_count()} CPUs; parts: {', '.join(chosen)}")
    results = {"open_files_limit": soft, "cpus": os.cpu_count()}
    exit_code = 0
    for name in chosen:
        run, report = PARTS[name]
        log(f"{name}: start")
        t = time.monotonic()
        part = None
        try:
            res, part = run()
        except Exception as e:  # noqa: BLE001 - the other parts still run
            import traceback
            traceback.print_exc()
            res = {"failed": f"{type(e).__name__}: {e}"}
            exit_code = 1
        res["seconds"] = time.monotonic() - t
        results[name] = res
        log(f"{name}: done in {res['seconds']:.0f} s")
        if not as_json:
            print(f"\n== {name} ({res['seconds']:.0f} s) ==")
            if "failed" in res:
                print(f"FAILED: {res['failed']}")
            else:
                print(report(res, part))
                print(print_warnings(part))
            sys.stdout.flush()
    if as_json:
        for name in chosen:
            if isinstance(results[name], dict) and "warnings" in results[name]:
                results[name]["warnings"] = [
                    {"level": lvl, "target": tgt, "message": msg, "count": n, "first": first}
                    for lvl, tgt, msg, n, first in results[name]["warnings"]]
        print(json.dumps(results, indent=1, default=str))
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
