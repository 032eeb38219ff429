"""The outcomes of bench/peers.py: what one harness search found, and the side-by-side table.

An `Outcome` is made from the rows run_peer.py appends to its JSONL file during one search: the
`search-result` row (the rate, whether it was confirmed, whether the sender was the limit) and
the `confirm` runs at that rate (CPU per 1,000 lines, peak RSS, what bound the run).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PEERS = ("sgw", "statsd")  # ours first, then Etsy, in every mode
MODE_KEYS = {"timeru": 1000, "counteru": 10000}  # keys per mode when the spec names none
UDPLOAD_MODES = ("counter", "timer", "tagged", "mixed", "timeru", "counteru")


@dataclass(frozen=True)
class ModeSpec:
    """One measured load: udpload's mode, datagram payload bytes (1 = a line each), key count."""

    mode: str
    pack: int
    keys: int

    @property
    def label(self) -> str:
        if self.pack == 1:
            return f"{self.mode} 1/dgram"
        return self.mode if self.pack == 1400 else f"{self.mode} pack {self.pack}"

    @classmethod
    def parse(cls, text: str) -> ModeSpec:
        """`MODE[:PACK[:KEYS]]`, e.g. `counter`, `counter:1`, `timeru:1400:1000`; ValueError
        saying what is wrong otherwise."""
        parts = text.strip().split(":")
        if parts[0] not in UDPLOAD_MODES or len(parts) > 3:
            raise ValueError(f"{text!r}: expected MODE[:PACK[:KEYS]], MODE one of {UDPLOAD_MODES}")
        try:
            pack = int(parts[1]) if len(parts) > 1 and parts[1] else 1400
            keys = int(parts[2]) if len(parts) > 2 else MODE_KEYS.get(parts[0], 100)
        except ValueError:
            raise ValueError(f"{text!r}: PACK and KEYS are integers") from None
        if pack < 1 or keys < 1:
            raise ValueError(f"{text!r}: PACK and KEYS are at least 1")
        return cls(parts[0], pack, keys)


@dataclass(frozen=True)
class Outcome:
    """What one search found for one peer: the rate, and the confirm runs' figures at it."""

    round: int
    spec: str
    mode: str
    pack: int
    keys: int
    peer: str
    search_id: str | None
    max_rate: float | None
    confirmed: bool
    confirm_passes: str | None
    sender_limited: bool
    cpu_us_per_1k: float | None
    peak_rss_kb: float | None
    bound: str | None
    error: str | None = None


def read_rows(path: Path, offset: int) -> list[dict[str, Any]]:
    """The JSON rows of a JSONL file from byte `offset` on (what one search appended)."""
    if not path.exists():
        return []
    with path.open() as f:
        f.seek(offset)
        return [json.loads(ln) for ln in f if ln.strip()]


def _outcome(spec: ModeSpec, peer: str, rnd: int, **figures: Any) -> Outcome:
    """An Outcome of `peer` in round `rnd` for the mode `spec`, with these figures."""
    return Outcome(
        round=rnd, spec=spec.label, mode=spec.mode, pack=spec.pack, keys=spec.keys, peer=peer,
        **figures,
    )  # fmt: skip


def paced_outcome(rows: list[dict[str, Any]], spec: ModeSpec, peer: str, rnd: int) -> Outcome:
    """The runs at one paced rate (`run_peer.py run --rate`, no search): that rate, how many
    passed, and the medians of their CPU and peak RSS."""
    runs = [r for r in rows if r.get("kind") == "paced"]
    ok = [bool(r["passes"]) for r in runs]  # run_peer.py's own verdict on each run
    bounds = [str(r["bound"]) for r in runs]
    return _outcome(
        spec,
        peer,
        rnd,
        search_id=None,
        max_rate=median([r.get("rate_target") for r in runs]),
        confirmed=bool(ok) and all(ok),
        confirm_passes=f"{sum(ok)}/{len(ok)}",
        # The sender fell short of the rate: the CPU figure is of a lighter load.
        sender_limited=any(r.get("sender_limited") for r in runs),
        cpu_us_per_1k=median([r.get("cpu_us_per_1k_lines") for r in runs]),
        peak_rss_kb=median([r.get("peak_rss_kb") for r in runs]),
        bound=statistics.mode(bounds) if bounds else None,
        error=None if runs else "no run",
    )


def outcome_of(rows: list[dict[str, Any]], spec: ModeSpec, peer: str, rnd: int) -> Outcome:
    """The search-result row the harness appended, and the median of its confirm runs."""
    results = [r for r in rows if r.get("kind") == "search-result"]
    sr = results[-1] if results else {}
    rate = median([sr.get("max_rate")])
    at_max = [
        r
        for r in rows
        if r.get("kind") == "confirm"
        and r.get("search_id") == sr.get("search_id")
        and rate is not None
        and abs(r["rate_target"] - rate) < 1
    ]
    bounds = [str(r["bound"]) for r in at_max]
    passes = sr.get("confirm_passes")
    return _outcome(
        spec,
        peer,
        rnd,
        search_id=str(sr["search_id"]) if sr else None,
        max_rate=rate,
        confirmed=bool(sr.get("confirmed")),
        confirm_passes=str(passes) if passes is not None else None,
        sender_limited=bool(sr.get("sender_limited")),
        cpu_us_per_1k=median([r.get("cpu_us_per_1k_lines") for r in at_max]),
        peak_rss_kb=median([r.get("peak_rss_kb") for r in at_max]),
        bound=statistics.mode(bounds) if bounds else None,
        error=None if rate is not None else "no result" if not sr else "no passing rate",
    )


# --------------------------------------------------------------------------- the table


def median(xs: list[object]) -> float | None:
    vals = [float(x) for x in xs if isinstance(x, int | float) and x == x]
    return statistics.median(vals) if vals else None


def fmt(x: float | None, f: str = "{:,.0f}") -> str:
    return "–" if x is None else f.format(x)


def ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or not b else f"{a / b:.2f}×"


def status(outs: list[Outcome]) -> str:
    """confirmed 3/3, NOT confirmed 1/3, sender-limited, or the error, one per round."""
    words = []
    for o in outs:
        if o.error and o.max_rate is None:
            words.append(o.error)
            continue
        w = ("confirmed " if o.confirmed else "NOT confirmed ") + str(o.confirm_passes)
        words.append(
            w
            + (", sender-limited" if o.sender_limited else "")
            + (f" ({o.error})" if o.error else "")
        )
    return "; ".join(words) or "–"


def table(outcomes: list[Outcome]) -> str:
    head = (
        "| mode | keys | ours max paced (lines/s) | Etsy max paced | ours/Etsy | ours CPU µs/1k "
        "| Etsy CPU µs/1k | CPU ours/Etsy | ours peak RSS MiB | Etsy peak RSS MiB | ours | Etsy |\n"
        + "|---" * 12
        + "|\n"
    )
    rows = []
    for spec in dict.fromkeys((o.spec, o.keys) for o in outcomes):
        by = {p: [o for o in outcomes if (o.spec, o.keys) == spec and o.peer == p] for p in PEERS}
        rate = {p: median([o.max_rate for o in by[p]]) for p in PEERS}
        cpu = {p: median([o.cpu_us_per_1k for o in by[p]]) for p in PEERS}
        mib = {
            p: median([(o.peak_rss_kb or 0) / 1024 for o in by[p] if o.peak_rss_kb]) for p in PEERS
        }
        rows.append(
            f"| {spec[0]} | {spec[1]:,} | {fmt(rate['sgw'])} | {fmt(rate['statsd'])} "
            f"| {ratio(rate['sgw'], rate['statsd'])} | {fmt(cpu['sgw'])} | {fmt(cpu['statsd'])} "
            f"| {ratio(cpu['sgw'], cpu['statsd'])} | {fmt(mib['sgw'])} | {fmt(mib['statsd'])} "
            f"| {status(by['sgw'])} | {status(by['statsd'])} |\n"
        )
    n = max((o.round for o in outcomes), default=0)
    note = f"\nMedians over {n} rounds; the status is per round.\n" if n > 1 else ""
    return head + "".join(rows) + note


def load_index(out: Path) -> list[Outcome]:
    return [Outcome(**row) for row in read_rows(out / "index.jsonl", 0)]
