"""A read of part of a chunk window keeps the sketches of the rows in its range only, in the C
decoder as in the reference: the rows outside come back without one, their bins neither kept
nor judged. Where crafted blocks do not add up on their own, the reference pairs a batch's
flagged rows with its sketches across blocks: C leaves such a batch to it (never another
answer)."""

from __future__ import annotations

import numpy as np

from statsd_gateway.store import chunks_decode
from statsd_gateway.store.chunk_rows import in_range_columns
from tests.conftest import require_native_core
from tests.test_chunk_native import T0, _column, assert_same, block, chunk, decode_both, f64

READ = {"values": ("count",), "sketches": True, "hll": False, "since": -np.inf, "until": T0 + 500}


def one_block(ts: list[float], has: list[float], s: int, lens: list[float],
              keys: list[float]) -> bytes:  # fmt: skip
    """A chunk of one sketch block as given, however inconsistent."""
    cols = [f64(*has), f64(*([0.0] * s)), f64(*lens), f64(*keys), np.ones(len(keys))]
    return chunk(len(ts), [_column(f64(*ts))], blocks=[block(T0, s, len(keys), cols)])


def test_blocks_that_make_up_each_others_difference_are_left_to_the_reference() -> None:
    require_native_core()
    batches = {
        # one flag too many in the first block, one too few in the last
        "flags": [
            one_block([T0], [1.0], 0, [], []),
            one_block([T0 + 1, T0 + 1000], [1.0, 1.0], 2, [1, 0, 1, 0], [5, 7]),
            one_block([T0 + 2], [0.0], 1, [1, 0], [9]),
        ],
        # the first block's lengths one past its bins, the last one's one short
        "lengths": [
            one_block([T0], [1.0], 1, [2, 0], [5]),
            one_block([T0 + 1, T0 + 1000], [1.0, 1.0], 2, [1, 0, 1, 0], [6, 7]),
            one_block([T0 + 2], [1.0], 1, [0, 0], [9]),
        ],
    }
    for name, blobs in batches.items():
        ref, nat, deferred = decode_both(blobs, **READ)
        assert nat == ref and deferred, name


def test_a_read_inside_a_block_keeps_only_its_rows_sketches() -> None:
    """Sixty rows in one block, each with a sketch; a read of rows 10 to 19 gets those ten
    sketches, as the reference does, and the range's cut has none left to take."""
    ts = T0 + 60.0 * np.arange(60)
    blob = one_block(list(ts), [1.0] * 60, 60, [1.0, 0.0] * 60, [float(k) for k in range(60)])
    read = {**READ, "since": float(ts[10]), "until": float(ts[20])}
    assert not assert_same([blob], **read)
    d = chunks_decode.decode_chunks([blob], ("count",), sketches=True, since=read["since"],
                                    until=read["until"])  # fmt: skip
    assert d.sketch_rows.tolist() == list(range(10, 20))
    assert d.sketches.keys.tolist() == list(range(10, 20))
    cols = in_range_columns(d, np.zeros(1, dtype=np.int64), read["since"], read["until"], True)
    assert cols.sketches is d.sketches  # nothing to take
    assert cols.sketch_rows.tolist() == list(range(10))
