"""Kafka's Java partitioner for keyed records (`Utils.murmur2`, then `toPositive(h) % numPartitions`),
ported bit for bit so tests can check that our producers place keys where Java clients do."""

from __future__ import annotations

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def _to_int32(value: int) -> int:
    value &= _MASK
    return value - (1 << 32) if value & 0x80000000 else value


def murmur2(data: bytes) -> int:
    """`org.apache.kafka.common.utils.Utils.murmur2`: a signed 32-bit hash."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    tail = data[whole:]
    if tail:  # Java's switch falls through: bytes 3, 2, 1 of the tail, then one multiply
        for index in range(len(tail) - 1, -1, -1):
            h ^= tail[index] << (8 * index)
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return _to_int32(h)


def java_partition(key: bytes, partitions: int) -> int:
    """Where Kafka's Java producer (and Kafka Streams) puts a record with this key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
