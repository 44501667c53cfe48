"""Helpers shared by the client suites: deadlines, and a reader for the batches a partition stores.

strom stores record batches byte-identical to what the producer sent (DESIGN.md, "On disk"), so
reading their headers back tells whether a client really compressed, and with which codec, and
whether an idempotent producer really sent producer ids and sequences. That keeps a codec
round-trip test from passing because a client quietly sent the records uncompressed.
"""

import os
import struct
import time
from dataclasses import dataclass

# RecordBatch attributes, bits 0-2.
CODEC_IDS = {None: 0, "none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def wait_until(what, predicate, timeout=30.0, interval=0.05):
    """Polls `predicate` until it returns a true value; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class StoredBatch:
    base_offset: int
    last_offset_delta: int
    magic: int
    codec: int
    transactional: bool
    control: bool
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int


# baseOffset int64, batchLength int32, partitionLeaderEpoch int32, magic int8, crc uint32,
# attributes int16, lastOffsetDelta int32, baseTimestamp int64, maxTimestamp int64,
# producerId int64, producerEpoch int16, baseSequence int32, recordCount int32.
_HEADER = struct.Struct(">qiibIhiqqqhii")


def stored_batches(data_dir, topic, partition):
    """The record batch headers of every segment of `topic`-`partition`, in offset order.
    `data_dir` may be a list (a cluster's brokers): the partition is in the one that leads it."""
    dirs = data_dir if isinstance(data_dir, list) else [data_dir]
    held = [os.path.join(d, f"{topic}-{partition}") for d in dirs]
    directory = next((d for d in held if os.path.isdir(d)), held[0])
    batches = []
    for name in sorted(n for n in os.listdir(directory) if n.endswith(".log")):
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos + _HEADER.size <= len(data):
            (base, length, _epoch, magic, _crc, attributes, last_delta, _base_ts, _max_ts,
             pid, pepoch, base_seq, count) = _HEADER.unpack_from(data, pos)
            if length <= 0 or pos + 12 + length > len(data):
                break
            batches.append(StoredBatch(base, last_delta, magic, attributes & 0x7, bool(attributes & 0x10),
                                       bool(attributes & 0x20), pid, pepoch, base_seq, count))
            pos += 12 + length
    return batches


def assert_stored_with_codec(data_dir, topic, partitions, codec, records):
    """Every batch of the topic is magic 2; together they hold exactly `records` records at
    contiguous offsets; and the codec is `codec`. librdkafka sends a batch uncompressed when
    compressing would not make it smaller (a lone short record, say), so uncompressed batches
    are allowed too, as long as most records went in batches compressed with `codec` and at
    least one of those held several records."""
    want = CODEC_IDS[codec]
    total = 0
    compressed = 0
    biggest = 0
    for p in range(partitions):
        batches = stored_batches(data_dir, topic, p)
        next_offset = 0
        for b in batches:
            assert b.magic == 2, b
            assert b.codec in (want, 0), f"partition {p}: batch at {b.base_offset} stored with codec {b.codec}, want {want} ({codec})"
            assert b.base_offset == next_offset, f"partition {p}: batch at {b.base_offset}, expected {next_offset}"
            assert b.record_count == b.last_offset_delta + 1, b
            next_offset = b.base_offset + b.record_count
            total += b.record_count
            if b.codec == want:
                compressed += b.record_count
                biggest = max(biggest, b.record_count)
    assert total == records, f"{total} records stored, {records} produced"
    assert compressed * 2 >= records, f"only {compressed} of {records} records stored in {codec} batches"
    if records > 1:
        assert biggest > 1, f"no {codec} batch held more than one record: the client never batched"
