"""Seeds for fuzz/sg_chunks_fuzz.c: chunks the encoder writes (store/chunks.py), as the
harness reads its inputs (three option bytes, then blobs each behind a 2-byte length), both
compressed and "plain" (every group uncompressed, for the harness to compress). Written to the
directory given (fuzz/run.sh makes them at run time, outside the repo).

    .venv/bin/python fuzz/chunk_seeds.py /tmp/sg-fuzz-chunks/seeds
"""

from __future__ import annotations

import itertools
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

from statsd_gateway import sketch
from statsd_gateway.model import MetricType, RowBatch
from statsd_gateway.store.chunks import _varint, encode_chunks
from statsd_gateway.store.chunks_decode import _read_varint

T0 = 1_700_006_400.0  # RANGE's times in the harness are around it


def batch(kind: str, n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    ts = T0 + 60.0 * np.arange(n)
    nan = np.full(n, np.nan)
    v = rng.integers(1, 998, n).astype(np.float64)
    v[::5] += 0.25
    v[1::9] = -0.0
    has = np.full(n, kind == "timer") & (rng.random(n) < 0.9)
    sizes = np.where(has, rng.integers(0, 12, n), 0)
    values = rng.integers(1, 998, int(sizes.sum())).astype(np.float64)
    values[::4] *= -1
    flat = sketch.bin_flat(values, None, np.concatenate([[0], np.cumsum(sizes)]))
    gauge = kind == "gauge"
    hll: list[bytes | None] = [None] * n
    if kind == "set":
        hll = [rng.bytes(int(rng.integers(1, 12))) if i % 3 else None for i in range(n)]
    rows = RowBatch(
        ts=ts, keys=[("default", kind, ())] * n, types=[MetricType.TIMING] * n,
        count=np.full(n, 3.0), sum=v * 3, min=v - 1, max=v + 1e10,
        last=v if gauge else nan, last_ts=ts + 3.5 if gauge else nan,
        sketches=flat, has_sketch=has, hll=hll,
    )  # fmt: skip
    return encode_chunks(rows, [0, n])


def plain(blob: bytes) -> bytes:
    """The chunk with every group decompressed (the harness's plain template)."""
    out = bytearray(blob[:1])
    n, at = _read_varint(blob, 1)
    out += _varint(n)

    def group(at: int) -> int:
        size, at = _read_varint(blob, at)
        body = zlib.decompress(blob[at : at + size]) if size else b""
        out.extend(_varint(len(body)) + body)
        return at + size

    at = group(group(at))
    k, at = _read_varint(blob, at)
    out += _varint(k)
    for _ in range(k):
        out += blob[at : at + 8]
        at = group(at + 8)
    group(at)
    return bytes(out)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    chunks = {
        "timer130": batch("timer", 130, 1), "timer360": batch("timer", 360, 2),
        "timer1": batch("timer", 1, 3), "gauge": batch("gauge", 40, 4),
        "set": batch("set", 50, 5), "empty": batch("timer", 0, 6),
    }  # fmt: skip
    # every column, sketches and HLLs; sum only; min and last_ts with one hour's sketches
    options = {"all": (0xFF, 0x01), "sum": (0x02, 0x01), "hour": (0x64, 0x56)}
    for (name, blobs), (opt, (o0, o1)), mode in itertools.product(
        chunks.items(), options.items(), ("raw", "plain")
    ):
        body = [plain(b) if mode == "plain" else b for b in blobs]
        if name == "gauge":  # two blobs: a chunk after another
            body += [plain(b) if mode == "plain" else b for b in chunks["set"]]
        data = bytes((o0, o1, int(mode == "plain"))) + b"".join(
            struct.pack("<H", len(b)) + b for b in body
        )
        (out / f"{name}-{opt}-{mode}").write_bytes(data)


if __name__ == "__main__":
    main()
