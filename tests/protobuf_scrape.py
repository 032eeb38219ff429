"""The Prometheus protobuf exposition read back for the tests: a decoder of the wire format
(https://protobuf.dev/programming-guides/encoding/) and of client_model's io.prometheus.client
messages, written here from metrics.proto's field numbers (not the exporter's encoder), and a
scrape that asks for that format."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from statsd_gateway.gateway import Gateway

PROTOBUF_TYPE = (
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
)
# What Prometheus 2.42 sends with --enable-feature=native-histograms; newer ones q-value it.
PROMETHEUS_PROTOBUF_ACCEPT = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,"
    "application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
NEWER_PROMETHEUS_ACCEPT = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;"
    "q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,application/openmetrics-text;"
    "version=0.0.1;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def unzigzag(v: int) -> int:
    return (v >> 1) ^ -(v & 1)


def fields(buf: bytes) -> list[tuple[int, Any]]:
    """(field number, value): an int for a varint, a float for a 64-bit field (every one of
    these messages' is a double), bytes for a length-delimited one."""
    out: list[tuple[int, Any]] = []
    pos = 0
    while pos < len(buf):
        tag, pos = varint(buf, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = varint(buf, pos)
        elif wire_type == 1:
            (value,) = struct.unpack_from("<d", buf, pos)
            pos += 8
        elif wire_type == 2:
            n, pos = varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        else:
            raise AssertionError(f"wire type {wire_type} in a message that has none")
        out.append((number, value))
    assert pos == len(buf)
    return out


def delimited(body: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(body):
        n, pos = varint(body, pos)
        out.append(body[pos : pos + n])
        pos += n
    assert pos == len(body)
    return out


@dataclass
class Histogram:
    count: float = 0.0
    count_is_float: bool = False
    sum: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le → cumulative count
    schema: int | None = None
    zero_threshold: float = 0.0
    zero_count: float = 0.0
    positive: dict[int, float] = field(default_factory=dict)  # bucket index → count
    negative: dict[int, float] = field(default_factory=dict)
    float_buckets: bool = False


@dataclass
class Metric:
    labels: dict[str, str]
    value: float | None = None  # a counter's or gauge's
    count: int = 0  # a summary's
    sum: float = 0.0
    quantiles: dict[float, float] = field(default_factory=dict)
    histogram: Histogram | None = None


TYPES = {0: "counter", 1: "gauge", 2: "summary", 3: "untyped", 4: "histogram"}


def decode(body: bytes) -> dict[str, tuple[str, str, list[Metric]]]:
    """name → (type, help, metrics) of each MetricFamily in the stream."""
    out = {}
    for message in delimited(body):
        name, help_, kind, metrics = "", "", "counter", []
        for number, value in fields(message):
            if number == 1:
                name = value.decode()
            elif number == 2:
                help_ = value.decode()
            elif number == 3:
                kind = TYPES[value]
            elif number == 4:
                metrics.append(decode_metric(value))
        assert name not in out, f"{name} twice"
        out[name] = (kind, help_, metrics)
    return out


def decode_metric(buf: bytes) -> Metric:
    m = Metric({})
    for number, value in fields(buf):
        if number == 1:
            pair = dict(fields(value))
            m.labels[pair[1].decode()] = pair[2].decode()
        elif number in (2, 3):  # Gauge, Counter: value = 1
            m.value = dict(fields(value)).get(1, 0.0)
        elif number == 4:
            for n, v in fields(value):
                if n == 1:
                    m.count = v
                elif n == 2:
                    m.sum = v
                elif n == 3:
                    q = dict(fields(v))
                    m.quantiles[q[1]] = q[2]
        elif number == 7:
            m.histogram = decode_histogram(value)
    return m


def decode_histogram(buf: bytes) -> Histogram:
    h = Histogram()
    spans: dict[str, list[tuple[int, int]]] = {"pos": [], "neg": []}
    counts: dict[str, list[float]] = {"pos": [], "neg": []}
    for number, value in fields(buf):
        if number == 1:
            h.count = value
        elif number == 4:
            h.count, h.count_is_float = value, True
        elif number == 2:
            h.sum = value
        elif number == 3:
            b = dict(fields(value))
            h.buckets[b[2]] = b.get(4, b.get(1, 0))
        elif number == 5:
            h.schema = unzigzag(value)
        elif number == 6:
            h.zero_threshold = value
        elif number in (7, 8):
            h.zero_count = value
        elif number in (9, 12):
            s = dict(fields(value))
            spans["neg" if number == 9 else "pos"].append((unzigzag(s.get(1, 0)), s.get(2, 0)))
        elif number in (10, 13):  # deltas
            side = counts["neg" if number == 10 else "pos"]
            side.append((side[-1] if side else 0) + unzigzag(value))
        elif number in (11, 14):  # float counts
            counts["neg" if number == 11 else "pos"].append(value)
            h.float_buckets = True
    for side, into in (("pos", h.positive), ("neg", h.negative)):
        index, it = 0, iter(counts[side])
        for offset, length in spans[side]:  # the first from 0, each other from the last's end
            index += offset
            for _ in range(length):
                c = next(it)
                if c:
                    into[index] = c
                index += 1
        assert next(it, None) is None, "more buckets than the spans have"
    return h


async def scrape_bytes(gw: Gateway, accept: str) -> tuple[str, bytes]:
    assert gw.exporter_address is not None
    url = "http://{}:{}/metrics".format(*gw.exporter_address)
    async with aiohttp.ClientSession() as s, s.get(url, headers={"Accept": accept}) as r:
        assert r.status == 200
        return r.headers["Content-Type"], await r.read()
