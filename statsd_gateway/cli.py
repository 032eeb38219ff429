"""Command line: serve, check-config, keygen, query. Signals and logging are set up here."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import logging
import secrets
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence

from statsd_gateway.config import Config, hash_key, load_config, load_reload_config
from statsd_gateway.errors import ConfigError, ListenError
from statsd_gateway.gateway import Gateway, tune_gc
from statsd_gateway.store import StoreError
from statsd_gateway.systemd import Notifier

log = logging.getLogger("statsd_gateway")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _reload(gateway: Gateway, notifier: Notifier, path: str | None) -> None:
    """SIGHUP: re-read the config file; a bad file is logged and the running config stays."""
    if path is None:
        log.info("SIGHUP: no --config file to reload")
        return
    notifier.notify("RELOADING=1")
    try:
        new = load_reload_config(path, gateway.config)
    except ConfigError as e:
        log.error("reload: %s is not valid, keeping the running config: %s", path, e)
    else:
        for key in gateway.reload(new):
            log.warning("reload: %s changed; it takes effect after a restart", key)
        log.info("reloaded %s", path)
    notifier.notify("READY=1")


async def _serve(config: Config, path: str | None) -> int:
    tune_gc()
    gateway = Gateway(config)
    notifier = Notifier()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, gateway, notifier, path)
    try:
        await gateway.start()
    # ConfigError: a TLS file changed since the config was read.
    except (StoreError, ListenError, OSError, ConfigError) as e:
        log.error("cannot start: %s", e)
        await gateway.stop()
        return 1
    gc.freeze()  # what start-up built lives as long as the process: keep it out of collections
    notifier.ready("ingesting")
    await stop.wait()
    log.info("stopping: flushing what is in memory")
    await notifier.stopping()
    await gateway.stop()
    log.info("stopped")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config) if args.config else Config()
    except ConfigError as e:
        print(f"statsd-gateway: bad config: {e}", file=sys.stderr)
        return 2
    _setup_logging(config.log.level)
    try:
        import uvloop

        return int(uvloop.run(_serve(config, args.config)))
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        return asyncio.run(_serve(config, args.config))


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        load_config(args.file)
    except ConfigError as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return 1
    print(f"{args.file}: ok")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    key = "sgw_" + secrets.token_urlsafe(32)
    print(f"key: {key}")
    print("config entry (the key itself is not stored):")
    print("auth:")
    print("  keys:")
    print(f"    - name: {args.name}")
    print(f"      sha256: {hash_key(key)}")
    print(f"      tenant: {args.tenant}")
    print("      scopes: [read, write]")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    params = {"name": args.name, "agg": args.agg}
    for k in ("tags", "window", "since", "until", "group_by"):
        if getattr(args, k):
            params[k] = getattr(args, k)
    url = args.url.rstrip("/") + "/v1/metrics/query?" + urllib.parse.urlencode(params)
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {args.key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as e:
        err = json.load(e).get("error", {})
        print(f"error {e.code} {err.get('code')}: {err.get('message')}", file=sys.stderr)
        return 1
    except urllib.error.URLError as e:
        print(f"cannot reach {args.url}: {e.reason}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    series = body.get("series") or [{"tags": body.get("tags", {}), "points": body["points"]}]
    zone = datetime.UTC if args.utc else None
    print(f"{'time':<25}  {'value':>14}  tags")
    for s in series:
        tags = ",".join(f"{k}:{v}" for k, v in s["tags"].items())
        for p in s["points"]:
            when = datetime.datetime.fromtimestamp(p["timestamp"], zone).astimezone(zone)
            print(f"{when.isoformat():<25}  {format_value(p['value']):>14}  {tags}")
    return 0


def format_value(v: float | None) -> str:
    """A value as a person reads it: integers whole, others to the millisecond's precision of a
    timing (`12.554`), small ones to 4 significant digits (`0.0001235`)."""
    if v is None:
        return "-"
    if float(v).is_integer():
        return str(int(v))
    if abs(v) >= 1:
        return f"{v:.3f}".rstrip("0").rstrip(".")
    return f"{v:.4g}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="statsd-gateway", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the daemon")
    s.add_argument("--config", help="YAML config file (default: embedded defaults)")
    s.set_defaults(func=cmd_serve)
    c = sub.add_parser("check-config", help="validate a config file and exit")
    c.add_argument("file")
    c.set_defaults(func=cmd_check_config)
    k = sub.add_parser("keygen", help="print a new API key and its config entry")
    k.add_argument("--name", default="my-key")
    k.add_argument("--tenant", default="default")
    k.set_defaults(func=cmd_keygen)
    q = sub.add_parser("query", help="query a running daemon and print a table")
    q.add_argument("name")
    q.add_argument("agg")
    q.add_argument("--url", default="http://127.0.0.1:8080")
    q.add_argument("--key", required=True)
    q.add_argument("--tags")
    q.add_argument("--window")
    q.add_argument("--since")
    q.add_argument("--until")
    q.add_argument("--group-by", dest="group_by")
    q.add_argument("--utc", action="store_true", help="print times in UTC (default: local time)")
    q.add_argument("--json", action="store_true", help="print the API's JSON answer as it is")
    q.set_defaults(func=cmd_query)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
