"""The vectorised DDV1 parse: the integral-mode blobs of a batch in one numpy pass.

Contract: :func:`_scan` accepts a blob only if it is well formed and exactly what
:func:`~statsd_gateway.sketch._codec.decode` would return with every count and the zero count
integral and below 2**53, and returns its bins as key deltas; every other blob is left to
``decode`` (``_codec_flat._gather`` does that and splices the results in).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from statsd_gateway.sketch._bins import _BOOL, _F64, _I64, _SAFE_INT, _sizes
from statsd_gateway.sketch._codec import _KEY_LIMIT, _VERSION
from statsd_gateway.sketch._mapping import MAPPING_ID

_U8 = npt.NDArray[np.uint8]
_I8 = npt.NDArray[np.int8]
_U64 = npt.NDArray[np.uint64]


@dataclass(frozen=True, slots=True)
class _Scan:
    """Result of the vectorised DDV1 parse: what it accepted, and their bins as deltas."""

    fast: _BOOL  # per blob: parsed here (integral mode, counts and zero < 2**53, well formed)
    zero: _F64  # per blob; 0 where not fast
    seg_len: _I64  # per store (2 per blob: positive, negative); 0 where not fast
    d8: _I8  # per bin of the fast blobs: key - previous key (a store's first: the key), if
    c8: _U8  # one-byte; count, if one-byte. Multi-byte ones: at fd_el/fc_el, values fd/fc_val
    fd_el: _I64
    fd_val: _I64
    fc_el: _I64
    fc_val: _F64
    first: _I64  # per store: first and last key (0 if empty)
    last: _I64


def _scan(raw: list[bytes]) -> _Scan:
    """Parse the integral-mode blobs of a batch in one numpy pass.

    A blob is accepted ("fast") only if it is well formed and exactly what :func:`decode` would
    return with every count and the zero count integral and below 2**53; anything else (float
    mode, huge counts, malformed or merely unusual blobs) is left to :func:`decode`.
    Varints are located through the (rare) continuation bytes only: the one-byte varints are the
    bytes themselves, so the per-byte work stays in uint8.
    """
    nb = len(raw)
    lens = _sizes(raw)
    bend = np.cumsum(lens)
    bstart = bend - lens
    buf: _U8 = np.frombuffer(b"".join(raw), dtype=np.uint8)
    ok = lens >= 6
    hs = bstart[ok]
    ok[ok] = (buf[hs] == _VERSION) & (buf[hs + 1] == 0) & (buf[hs + 2] == MAPPING_ID)
    ok[ok] = buf[bend[ok] - 1] < 0x80  # last varint complete

    # Varints: every byte < 0x80 ends one; blob ends are forced ends so none crosses blobs.
    term = buf < 0x80
    term[bend[lens > 0] - 1] = True
    cont = np.flatnonzero(~term)  # continuation bytes, few in practice
    v8: _U8 = buf[term] if cont.size else buf  # the last byte of every varint
    vfirst = bstart - np.searchsorted(cont, bstart)  # index of a blob's first varint
    vcount = bend - np.searchsorted(cont, bend) - vfirst
    # Multi-byte varints: runs of continuation bytes plus their final byte.
    if cont.size:
        brk = np.flatnonzero(np.diff(cont) != 1)
        run_last = np.append(brk, cont.size - 1)
        run_first = np.append(0, brk + 1)
        first_byte = cont[run_first]
        nbytes = run_last - run_first + 2
        big_idx = cont[run_last] + 1 - (run_last + 1)  # index in v8
        big_blob = np.searchsorted(bend, first_byte, side="right")
        over = nbytes > 9
        ok[big_blob[over]] = False  # overlong varints
        big_val = np.zeros(big_idx.size, dtype=np.uint64)
        for j in range(9):
            sel = np.flatnonzero((nbytes > j) & ~over)
            if sel.size == 0:
                break
            byte = buf[first_byte[sel] + j].astype(np.uint64) & np.uint64(0x7F)
            big_val[sel] |= byte << np.uint64(7 * j)
    else:
        big_idx = big_blob = np.empty(0, dtype=np.int64)
        big_val = np.empty(0, dtype=np.uint64)

    def at(idx: _I64) -> _U64:
        """The varint values at the given varint indices."""
        out: _U64 = v8[idx].astype(np.uint64)
        if big_idx.size and idx.size:
            j = np.minimum(np.searchsorted(big_idx, idx), big_idx.size - 1)
            hit = big_idx[j] == idx
            out[hit] = big_val[j[hit]]
        return out

    # Structure: 1 0 1 zero n_pos (zz c)*n_pos n_neg (zz c)*n_neg, nothing after.
    ok &= vcount >= 6
    sel = np.flatnonzero(ok)
    room = (vcount[sel] - 6) // 2
    np_raw = at(vfirst[sel] + 4)
    good = np_raw <= room.astype(np.uint64)
    sel, room, np_sel = sel[good], room[good], np_raw[good].astype(np.int64)
    nn_raw = at(vfirst[sel] + 5 + 2 * np_sel)
    good = (nn_raw <= room.astype(np.uint64)) & ((vcount[sel] - 6) % 2 == 0)
    good &= nn_raw.astype(np.int64) == room - np_sel
    zero_raw = at(vfirst[sel] + 3)
    good &= zero_raw < np.uint64(_SAFE_INT)
    ok[:] = False
    sel = sel[good]
    ok[sel] = True
    n_pos = np.zeros(nb, dtype=np.int64)
    n_neg = np.zeros(nb, dtype=np.int64)
    zero = np.zeros(nb, dtype=np.float64)
    n_pos[sel] = np_sel[good]
    n_neg[sel] = nn_raw[good].astype(np.int64)
    zero[sel] = zero_raw[good].astype(np.float64)

    # Multi-byte varints inside the bins: which bin, and key delta or count.
    bo = big_idx - vfirst[big_blob] if big_idx.size else big_idx
    npb = n_pos[big_blob]
    in_pos = (bo >= 5) & (bo < 5 + 2 * npb)
    in_neg = bo >= 6 + 2 * npb
    p = np.where(in_pos, bo - 5, bo - 6)
    in_bins = in_pos | in_neg
    is_count = in_bins & (p % 2 == 1)
    is_delta = in_bins & (p % 2 == 0)
    with np.errstate(over="ignore"):
        zzs = big_val.astype(np.int64)  # < 2**63: nine bytes carry 63 bits
    big_delta = (zzs >> 1) ^ -(zzs & 1)
    bad_big = (is_count & ((big_val == 0) | (big_val >= np.uint64(_SAFE_INT)))) | (
        is_delta & (np.abs(big_delta) >= _KEY_LIMIT)
    )
    ok[big_blob[bad_big]] = False

    while True:
        n_pos[~ok] = 0
        n_neg[~ok] = 0
        zero[~ok] = 0.0
        seg_len = np.stack([n_pos, n_neg], axis=1).reshape(-1)
        n_el = n_pos + n_neg
        ebase = np.cumsum(n_el) - n_el
        total = int(n_el.sum())
        # Keep the varints of the bins of the accepted blobs (drop headers, sizes, rejected).
        if ok.all():
            keep = np.ones(v8.size, dtype=np.bool_)
            for k in range(5):
                keep[vfirst + k] = False
            keep[vfirst + 5 + 2 * n_pos] = False
        else:
            okb = np.flatnonzero(ok)
            f, npo = vfirst[okb], n_pos[okb]
            starts = np.concatenate([f + 5, f + 6 + 2 * npo])
            stops = np.concatenate([f + 5 + 2 * npo, f + vcount[okb]])
            ne = stops > starts
            edge = np.zeros(v8.size + 1, dtype=np.int8)
            edge[starts[ne]] = 1
            edge[stops[ne]] = -1
            keep = np.cumsum(edge[:-1], dtype=np.int8).view(np.bool_)
        pairs = v8[keep]
        zz8, c8 = pairs[0::2], pairs[1::2]
        d8: _I8 = (zz8 >> 1).view(np.int8)  # zigzag of the one-byte varints, in place
        sign = (zz8 & 1).view(np.int8)
        np.negative(sign, out=sign)
        np.bitwise_xor(d8, sign, out=d8)
        fix = np.flatnonzero(in_bins & ok[big_blob])
        el = ebase[big_blob[fix]] + p[fix] // 2  # negative bins follow the positive ones
        isd = is_delta[fix]
        fd_el, fd_val = el[isd], big_delta[fix[isd]]
        fc_el, fc_val = el[~isd], big_val[fix[~isd]].astype(np.float64)
        # Per bin: keys strictly increasing inside a store, counts > 0; keys within range.
        seg_end = np.cumsum(seg_len)
        seg_start = seg_end - seg_len
        nz = seg_len > 0
        first_at = seg_start[nz]
        bad_el = (d8 <= 0) | (c8 == 0)
        # Special bins: a store's first (its delta is the key) and those with a multi-byte
        # varint (d8/c8 hold only its last byte): judge them from their real values.
        bad_el[first_at] = False
        bad_el[fd_el] = False
        bad_el[fc_el] = False
        at_first_d, at_first_c = _member(fd_el, first_at), _member(fc_el, first_at)
        fixed_c_d, fixed_d_c = _member(fd_el, fc_el), _member(fc_el, fd_el)
        bad_el[fd_el[(fd_val <= 0) & ~at_first_d]] = True
        bad_el[fc_el[(d8[fc_el] <= 0) & ~at_first_c & ~fixed_d_c]] = True
        bad_el[fd_el[(c8[fd_el] == 0) & ~fixed_c_d]] = True
        bad_el[first_at[(c8[first_at] == 0) & ~_member(first_at, fc_el)]] = True
        first = np.zeros(seg_len.size, dtype=np.int64)
        last = np.zeros(seg_len.size, dtype=np.int64)
        bad_seg = np.zeros(seg_len.size, dtype=np.bool_)
        if first_at.size:
            if bad_el.any():
                bad_seg[nz] = np.logical_or.reduceat(bad_el, first_at)
            fk = d8[first_at].astype(np.int64)
            acc_t = np.int32 if int(seg_len.max()) < 1 << 24 else np.int64  # no overflow
            lk = np.add.reduceat(d8, first_at, dtype=acc_t).astype(np.int64)
            if fd_el.size:
                j = np.minimum(np.searchsorted(fd_el, first_at), fd_el.size - 1)
                hit = fd_el[j] == first_at
                fk[hit] = fd_val[j[hit]]
                seg_of = np.searchsorted(first_at, fd_el, side="right") - 1
                np.add.at(lk, seg_of, fd_val - d8[fd_el])
            first[nz], last[nz] = fk, lk
            bad_seg |= (np.abs(first) >= _KEY_LIMIT) | (np.abs(last) >= _KEY_LIMIT)
        bad = bad_seg.reshape(-1, 2).any(axis=1)
        if not bad.any():
            break
        ok &= ~bad  # rare: rescan without the blobs decode() must judge
    assert c8.size == total
    return _Scan(ok, zero, seg_len, d8, c8, fd_el, fd_val, fc_el, fc_val, first, last)


def _member(a: _I64, sorted_b: _I64) -> _BOOL:
    """Elementwise ``a in sorted_b`` for a sorted, duplicate-free sorted_b."""
    if sorted_b.size == 0 or a.size == 0:
        return np.zeros(a.size, dtype=np.bool_)
    j = np.minimum(np.searchsorted(sorted_b, a), sorted_b.size - 1)
    out: _BOOL = sorted_b[j] == a
    return out
