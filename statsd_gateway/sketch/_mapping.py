"""The DDSketch mapping: value <-> key for the LogarithmicMapping at relative accuracy 0.01.

Contract:
- ``MAPPING_ID`` 1 is ddsketch's ``LogarithmicMapping(0.01)`` with index offset 0. The constants
  are computed with exactly the operations of ``ddsketch.mapping.LogarithmicMapping``, so keys
  are bit-identical to ddsketch's.
- :func:`key_of` is the scalar key, pinned to ddsketch by the tests; ``_keys`` is the vectorised
  one used by binning, identical to it for every finite value > ``MIN_POSSIBLE`` (it calls
  :func:`key_of` for the values where numpy's log could differ).
- :func:`value_of` is ddsketch's bucket centre for a key (what quantiles return).
"""

from __future__ import annotations

import math
import sys

import numpy as np

from statsd_gateway.sketch._bins import _F64, _I64

RELATIVE_ACCURACY: float = 0.01
MAPPING_ID: int = 1  # LogarithmicMapping α=0.01, index offset 0 (ddsketch's LogarithmicMapping)
# Computed with exactly the operations of ddsketch.mapping.LogarithmicMapping (bit-identical).
_GAMMA_MANTISSA = 2 * RELATIVE_ACCURACY / (1 - RELATIVE_ACCURACY)
GAMMA: float = 1 + _GAMMA_MANTISSA
_MULT: float = (1 / math.log1p(_GAMMA_MANTISSA)) * math.log(2)
_LN2: float = math.log(2)
_CENTRE: float = 2.0 / (1 + GAMMA)
MIN_POSSIBLE: float = sys.float_info.min * GAMMA

# What a native binner needs to compute key_of exactly as here: ceil(log(v) / ln2 * mult).
KEY_CONSTANTS: tuple[float, float, float] = (_MULT, _LN2, MIN_POSSIBLE)

_EDGE_EPS = 1e-7  # |log_gamma(v) - nearest integer| below which keys are recomputed with math.log


def key_of(value: float) -> int:
    """ddsketch's key for a value > MIN_POSSIBLE (for |v| of a negative value, pass |v|)."""
    return math.ceil(math.log(value, 2) * _MULT)


def value_of(key: int) -> float:
    """ddsketch's value for a key: the bucket centre 2·γ^key/(γ+1). Overflow gives inf."""
    try:
        return math.pow(2.0, float(key) / _MULT) * _CENTRE
    except OverflowError:
        return math.inf


def _keys(a: _F64) -> _I64:
    """Keys of finite values > MIN_POSSIBLE, identical to ddsketch's ``mapping.key``.

    np.log may differ from libm's log by an ulp; that can only move a key when log_gamma(v) lies
    within a few 1e-12 of an integer, so such values are recomputed with math.log exactly as
    ddsketch does.
    """
    x = np.log(a) / _LN2 * _MULT  # same operation order as math.log(v, 2) * multiplier
    k = np.ceil(x)
    near = np.abs(x - np.rint(x)) <= _EDGE_EPS
    if near.any():
        idx = np.flatnonzero(near)
        k[idx] = [key_of(t) for t in a[idx].tolist()]
    return k.astype(np.int64)
