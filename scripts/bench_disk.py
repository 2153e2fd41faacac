"""The disk's part of SubmitPayment's latency: an ideal group commit on the ledger's file system.

Payments "arrive" at a fixed rate; one loop appends a page for each payment that has arrived to a file
and makes it durable with ``fdatasync`` (as SQLite's commit does with ``synchronous=FULL``), then takes the
next lot. A payment's latency is the end of the sync that covered it minus its arrival. No server, no
gRPC, no SQL: what is left is the disk, so no design that syncs once per group of payments answers faster
on this disk at this hour. ``./scripts/bench`` runs it first, with nothing else running, as the baseline
that SubmitPayment's p99 at 1,000/s is judged against beside the empty RPC's, and again before its escrow
phase.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stats import percentile

# Fewer bytes than SQLite writes (several pages of tables and indexes a payment): a floor, not an estimate.
_BYTES_PER_PAYMENT = 4096
# Payments a second: the rate of the p99 target.
_RATE = 1000


def measure_disk(directory: str | None = None, seconds: float = 10.0) -> dict[str, Any]:
    """Latencies (ms) of an ideal group commit at 1,000 payments/s for ``seconds``, in a new file in
    ``directory``. The file is left there for the directory's owner to delete (deleting it stalls the disk's
    next syncs: the point of the measure); without a directory it is a temporary file, deleted at once."""
    page = bytes(_BYTES_PER_PAYMENT)
    latencies: list[float] = []
    syncs: list[float] = []
    total = int(_RATE * seconds)
    fd, path = tempfile.mkstemp(dir=directory, prefix="disk-floor-")
    try:
        start = time.perf_counter()
        taken = 0
        while taken < total:
            now = time.perf_counter() - start
            arrived = min(total, int(now * _RATE) + 1)
            if arrived <= taken:
                time.sleep(max(0.0, taken / _RATE - now))
                continue
            os.write(fd, page * (arrived - taken))
            synced = time.perf_counter()
            os.fdatasync(fd)
            done = time.perf_counter()
            syncs.append((done - synced) * 1000)
            at = (done - start) * 1000
            latencies.extend(at - i * 1000 / _RATE for i in range(taken, arrived))
            taken = arrived
    finally:
        os.close(fd)
        if directory is None:
            os.unlink(path)
    return {
        "disk_sync_p50_ms": round(statistics.median(syncs), 2),
        "disk_sync_p99_ms": round(percentile(syncs, 0.99), 2),
        "disk_sync_max_ms": round(max(syncs), 2),
        "disk_syncs_per_s": round(len(syncs) / seconds, 1),
        "disk_floor_p50_ms_at_1000": round(statistics.median(latencies), 2),
        "disk_floor_p99_ms_at_1000": round(percentile(latencies, 0.99), 2),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(measure_disk(seconds=float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)))
