"""Config: the example file is the defaults and documents every key; errors name the key path."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

import msgspec
import pytest
import yaml

from statsd_gateway.config import ApiKey, Config, load_config, parse_config
from statsd_gateway.config.shapes import GaugeSign, Sanitising
from statsd_gateway.errors import ConfigError
from statsd_gateway.protocol import GAUGE_SIGNS, SANITISERS

# Config loading and `check-config` (in a child process too), which never reach the ingest
# path: the same in both passes, skipped in the pure-Python one (tests/conftest.py).
pytestmark = pytest.mark.same_in_both_passes

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.yaml"
SHA = "a" * 64


def _is_section(hint: object) -> bool:
    return isinstance(hint, type) and issubclass(hint, msgspec.Struct)


def config_keys(cls: type[msgspec.Struct], prefix: str = "") -> list[str]:
    """Dotted paths of every config key, walking the Structs; list items as `keys[].name`."""
    out: list[str] = []
    for f in msgspec.structs.fields(cls):
        path = f"{prefix}{f.name}"
        hint = f.type
        if typing.get_origin(hint) is typing.Annotated:
            hint = typing.get_args(hint)[0]
        args = typing.get_args(hint)
        if _is_section(hint):
            out += config_keys(hint, path + ".")
        elif typing.get_origin(hint) is tuple and args and _is_section(args[0]):
            out.append(path)
            out += config_keys(args[0], path + "[].")
        else:
            out.append(path)
    return out


def top_level_block(text: str, key: str) -> str:
    """The lines of one top-level YAML section, comments included."""
    m = re.search(rf"^{re.escape(key)}:.*?(?=^\S|\Z)", text, flags=re.M | re.S)
    assert m, f"no top-level `{key}:` section"
    return m.group(0)


# --- the example file ------------------------------------------------------------------------


def test_example_config_loads_and_equals_the_defaults() -> None:
    assert load_config(EXAMPLE) == Config()


def test_key_walk_finds_nested_and_list_keys() -> None:
    keys = config_keys(Config)
    assert "udp.listen" in keys
    assert "aggregation.flush_interval" in keys
    assert {f"auth.keys[].{f.name}" for f in msgspec.structs.fields(ApiKey)} <= set(keys)


@pytest.mark.parametrize("key", config_keys(Config))
def test_every_config_key_is_documented_in_the_example(key: str) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    if "[]." in key:
        # List entries are shown commented out (the default list is empty).
        list_path, leaf = key.split("[].")
        block = top_level_block(text, list_path.split(".")[0])
        after = block[block.index(list_path.split(".")[-1] + ":") :]
        assert re.search(rf"^\s*#?\s*(-\s+)?{re.escape(leaf)}:", after, flags=re.M), (
            f"{key} is not shown in config.example.yaml"
        )
        return
    node: typing.Any = yaml.safe_load(text)
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"{key} is missing in config.example.yaml"
        node = node[part]


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1s", 1.0),
        ("10s", 10.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("30", 30.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    cfg = parse_config(f"storage:\n  retention_check_interval: {text}\nquery:\n  timeout: {text}\n")
    assert cfg.storage.retention_check_interval == seconds
    assert cfg.query.timeout == seconds


@pytest.mark.parametrize(
    ("tiers", "path"),
    [
        ("[{resolution: 10s, retention: 1h}, {resolution: 15s, retention: 1d}]", "[1].resolution"),
        ("[{resolution: 10s, retention: 30s}, {resolution: 1m, retention: 1d}]", "[0].retention"),
        ("[{resolution: 10s, retention: 5s}]", "[0].retention"),
        ("[{resolution: 10s}]", "[0].retention"),
        ("[{resolution: 10s, retention: 1h, extra: 1}]", "[0].extra"),
        ("[]", ""),
    ],
)
def test_bad_tiers_name_the_key(tiers: str, path: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(f"storage:\n  tiers: {tiers}\n")
    assert e.value.path == "storage.tiers" + path


def test_finest_tier_must_hold_whole_flush_intervals() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config("aggregation:\n  flush_interval: 3s\n")
    assert e.value.path == "storage.tiers[0].resolution"
    cfg = parse_config("aggregation:\n  flush_interval: 5s\n")
    assert cfg.storage.tiers[0].resolution == 10.0


def test_empty_file_is_the_defaults() -> None:
    assert parse_config("") == Config()
    assert parse_config("# nothing here\n") == Config()


def test_choices_are_the_parsers() -> None:
    assert typing.get_args(GaugeSign) == GAUGE_SIGNS
    assert typing.get_args(Sanitising) == SANITISERS


def test_an_empty_section_or_list_is_its_default() -> None:
    assert parse_config("udp:\nhttp:\n  tls:\nstorage:\n  tiers:\nauth:\n  keys:\n") == Config()


def test_api_key_entry_parsed() -> None:
    cfg = parse_config(
        f"auth:\n  keys:\n    - name: ci\n      sha256: {SHA.upper()}\n"
        "      tenant: team-a\n      scopes: [read]\n"
    )
    assert cfg.auth.keys == (ApiKey(name="ci", sha256=SHA, tenant="team-a", scopes=("read",)),)


# --- errors name the key path ----------------------------------------------------------------

BAD = [
    pytest.param("udpp:\n  listen: x\n", "udpp", id="unknown top-level key"),
    pytest.param("udp:\n  lisen: 127.0.0.1:1\n", "udp.lisen", id="unknown nested key"),
    pytest.param("udp:\n  listen: nope\n", "udp.listen", id="listen without port"),
    pytest.param('http:\n  listen: "127.0.0.1:99999"\n', "http.listen", id="port out of range"),
    pytest.param(
        "aggregation:\n  flush_interval: 10x\n", "aggregation.flush_interval", id="bad duration"
    ),
    pytest.param(
        "aggregation:\n  flush_interval: 0s\n", "aggregation.flush_interval", id="zero duration"
    ),
    pytest.param("query:\n  timeout: -1\n", "query.timeout", id="negative duration"),
    pytest.param(
        "aggregation:\n  max_series_per_tenant: many\n",
        "aggregation.max_series_per_tenant",
        id="integer expected",
    ),
    pytest.param("udp:\n  enabled: maybe\n", "udp.enabled", id="boolean expected"),
    pytest.param("udp:\n  listen:\n", "udp.listen", id="a key left empty"),
    pytest.param("udp:\n  1: 2\n", "udp", id="a key not a string"),
    pytest.param("unix:\n  mode: 0660\n", "unix.mode", id="mode not quoted"),
    pytest.param("http:\n  tls:\n    cert_file: a.pem\n", "http.tls.key_file", id="tls pair"),
    pytest.param("udp: 5\n", "udp", id="section not a mapping"),
    pytest.param(
        "auth:\n  keys:\n    - name: ci\n      sha256: xyz\n",
        "auth.keys[0].sha256",
        id="bad sha256",
    ),
    pytest.param(
        f"auth:\n  keys:\n    - name: a\n      sha256: {SHA}\n    - name: b\n      sha256: abc\n",
        "auth.keys[1].sha256",
        id="bad sha256 in second key",
    ),
    pytest.param(
        f"auth:\n  keys:\n    - name: ci\n      sha256: {SHA}\n      scopes: [read, root]\n",
        "auth.keys[0].scopes[1]",
        id="bad scope",
    ),
    pytest.param(  # left empty while editing: refused, never widened to read and write
        f"auth:\n  keys:\n    - name: ci\n      sha256: {SHA}\n      scopes:\n",
        "auth.keys[0].scopes",
        id="empty scopes",
    ),
    pytest.param(
        f"auth:\n  keys:\n    - name: ci\n      sha256: {SHA}\n      role: x\n",
        "auth.keys[0].role",
        id="unknown key in an api key",
    ),
    pytest.param(f"auth:\n  keys:\n    - sha256: {SHA}\n", "auth.keys[0].name", id="key name"),
    pytest.param("log:\n  level: loud\n", "log.level", id="bad log level"),
    pytest.param(
        "storage:\n  backfill_memory: 1000\n", "storage.backfill_memory", id="backfill under 1 MiB"
    ),
    pytest.param(
        "storage:\n  backfill_memory: 256MB\n", "storage.backfill_memory", id="backfill not bytes"
    ),
]


@pytest.mark.parametrize(("text", "path"), BAD)
def test_errors_name_the_key_path(text: str, path: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert e.value.path == path
    assert str(e.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("udp:\n  queue_size: 0\n", "udp.queue_size: expected an integer >= 1"),
        ("udp:\n  readers: 65\n", "udp.readers: expected an integer from 1 to 64"),
        (
            "udp:\n  lisen: x\n",
            "udp.lisen: unknown key "
            "(known: enabled, listen, queue_size, read_buffer, readers, tenant)",
        ),
        ("log:\n  level: loud\n", "log.level: expected one of debug, info, warning, error"),
        (
            "storage:\n  tiers: []\n",
            "storage.tiers: expected a non-empty list of {resolution, retention}",
        ),
        (
            "tcp:\n  idle_timeout: 5x\n",
            "tcp.idle_timeout: '5x' is not a duration such as 10s, 500ms or 1m",
        ),
        ("query: []\n", "query: expected a mapping"),
    ],
)
def test_errors_say_what_the_key_takes(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert str(e.value) == message


def test_invalid_yaml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("udp: [unclosed\n")


# --- the check-config command ----------------------------------------------------------------


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "statsd_gateway", "check-config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_accepts_the_example() -> None:
    proc = check_config(EXAMPLE)
    assert proc.returncode == 0, proc.stderr


def test_check_config_rejects_a_bad_file_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("udp:\n  lisen: 127.0.0.1:8125\n", encoding="utf-8")
    proc = check_config(bad)
    assert proc.returncode != 0
    assert "udp.lisen" in proc.stderr


def test_check_config_rejects_a_missing_file(tmp_path: Path) -> None:
    proc = check_config(tmp_path / "absent.yaml")
    assert proc.returncode != 0
    assert "absent.yaml" in proc.stderr
