"""Small conversions between storage values and protobuf fields."""

from __future__ import annotations

from google.protobuf import timestamp_pb2


def timestamp(time_us: int) -> timestamp_pb2.Timestamp:
    """A Timestamp from integer microseconds since the epoch."""
    result = timestamp_pb2.Timestamp()
    result.FromMicroseconds(time_us)
    return result
