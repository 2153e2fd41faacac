"""What the benchmark scripts share for summing up their samples."""

from __future__ import annotations


def percentile(values: list[float], p: float) -> float:
    """The sample at fraction ``p`` of the sorted ``values`` (nearest rank, no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]
