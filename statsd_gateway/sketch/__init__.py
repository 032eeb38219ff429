"""Quantile sketches (DDSketch bins) and distinct-count sketches (HyperLogLog) for the gateway.

A quantile sketch is a :class:`Bins`: the sparse bins of ``ddsketch.DDSketch(0.01)`` (the
LogarithmicMapping at relative accuracy 0.01, index offset 0, ``MAPPING_ID`` 1), bit-identical
to ddsketch fed the same values and weights. A set is a HyperLogLog blob (Apache DataSketches,
lg_k=12, HLL_4). Callers use this package only (``from statsd_gateway import sketch``); the
modules behind it are private, one per concern, each stating its contract in its docstring:

- ``_bins``: :class:`Bins`, :class:`FlatBins` (many sketches as flat arrays) and the conversions
  between them (:func:`flat_from_bins`, :func:`flat_take`, :func:`flat_concat`,
  :func:`flat_from_arrays`).
- ``_mapping``: the mapping constants, :func:`key_of`, :func:`value_of`.
- ``_binning``: values -> bins (:func:`bin_flat`, :func:`bin_groups`, :func:`bin_values`).
- ``_codec``: the storage format DDV1 (described there), :func:`encode` / :func:`decode`.
- ``_scan``, ``_codec_flat``: DDV1 vectorised over many blobs (:func:`encode_flat`,
  :func:`decode_flat`, :func:`decode_many`).
- ``_merge``: :func:`merge`, :func:`merge_flat`, :func:`merge_blobs`.
- ``_quantile``: :func:`quantile`, :func:`cell_quantiles`.
- ``_windows``: :func:`window_quantiles` (sliding windows of cells, for PromQL's ranges).
- ``_export``: :func:`to_proto` (the API's DDSketch protobuf), :func:`to_ddsketch`.
- ``_hll``: :func:`hll_from_members`, :func:`hll_merge`, :func:`hll_merge_pair`,
  :func:`hll_estimate`.

Each vectorised path is bit-identical to its per-sketch reference (``encode``, ``decode``,
``merge``, ``quantile``), which the tests compare it against. Imports go one way, in the order
above (``_hll`` stands alone).
"""

from statsd_gateway.sketch._binning import bin_flat, bin_groups, bin_values
from statsd_gateway.sketch._bins import (
    Bins,
    FlatBins,
    flat_concat,
    flat_from_arrays,
    flat_from_bins,
    flat_from_checked,
    flat_take,
)
from statsd_gateway.sketch._codec import FORMAT, decode, encode
from statsd_gateway.sketch._codec_flat import decode_flat, decode_many, encode_flat
from statsd_gateway.sketch._export import to_ddsketch, to_proto
from statsd_gateway.sketch._hll import (
    HLL_LG_K,
    hll_estimate,
    hll_from_members,
    hll_merge,
    hll_merge_pair,
)
from statsd_gateway.sketch._mapping import (
    GAMMA,
    KEY_CONSTANTS,
    MAPPING_ID,
    MIN_POSSIBLE,
    RELATIVE_ACCURACY,
    key_of,
    value_of,
)
from statsd_gateway.sketch._merge import merge, merge_blobs, merge_flat
from statsd_gateway.sketch._quantile import cell_quantiles, quantile
from statsd_gateway.sketch._windows import window_quantiles

__all__ = [
    "FORMAT",
    "GAMMA",
    "HLL_LG_K",
    "KEY_CONSTANTS",
    "MAPPING_ID",
    "MIN_POSSIBLE",
    "RELATIVE_ACCURACY",
    "Bins",
    "FlatBins",
    "bin_flat",
    "bin_groups",
    "bin_values",
    "cell_quantiles",
    "decode",
    "decode_flat",
    "decode_many",
    "encode",
    "encode_flat",
    "flat_concat",
    "flat_from_arrays",
    "flat_from_bins",
    "flat_from_checked",
    "flat_take",
    "hll_estimate",
    "hll_from_members",
    "hll_merge",
    "hll_merge_pair",
    "key_of",
    "merge",
    "merge_blobs",
    "merge_flat",
    "quantile",
    "to_ddsketch",
    "to_proto",
    "value_of",
    "window_quantiles",
]
