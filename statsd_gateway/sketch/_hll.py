"""Sets: HyperLogLog sketches from Apache DataSketches.

Contract: lg_k=12, HLL_4, stored as the compact serialisation; a union is serialised the same
way. This is the only module that imports ``datasketches``. An unreadable blob raises
``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import datasketches

HLL_LG_K: int = 12


def _hll_load(blob: bytes) -> Any:
    try:
        return datasketches.hll_sketch.deserialize(bytes(blob))
    except (ValueError, IndexError, RuntimeError) as e:
        raise ValueError(f"invalid HLL blob: {e}") from e


def hll_from_members(members: Iterable[str]) -> bytes:
    """A compact HLL_4 (lg_k=12) serialisation of the set of members."""
    sk = datasketches.hll_sketch(HLL_LG_K, datasketches.tgt_hll_type.HLL_4)
    update = sk.update
    for m in members:
        update(m)
    return bytes(sk.serialize_compact())


def hll_merge(blobs: Iterable[bytes]) -> bytes:
    """Union of HLL blobs, serialised compact as HLL_4 (lg_k=12). No blobs -> empty sketch."""
    union = datasketches.hll_union(HLL_LG_K)
    for blob in blobs:
        union.update(_hll_load(blob))
    return bytes(union.get_result(datasketches.tgt_hll_type.HLL_4).serialize_compact())


def hll_merge_pair(a: bytes | None, b: bytes | None) -> bytes | None:
    """Union of two HLL blobs (a SQLite user function for upserts). None is the empty operand."""
    if a is None:
        return None if b is None else bytes(b)
    if b is None:
        return bytes(a)
    return hll_merge((a, b))


def hll_estimate(blob: bytes) -> float:
    """Estimated number of distinct members."""
    return float(_hll_load(blob).get_estimate())
