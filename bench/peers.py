"""Our UDP ingest beside Etsy statsd 0.9, both measured in one run of the peer harness (not a test).

What it does
    For each mode it runs the peer harness's paced-rate search (`run_peer.py search` in
    ../shared/bench/: the highest paced rate with < 0.1 % loss at which the daemon also keeps up,
    confirmed by `--repeat` runs) first on statsd-gateway, then on Etsy statsd 0.9, so the two
    share the machine's state of the moment. Daemon pinned to CPU 0, sender and harness to CPU 1,
    1 s flush for both, the harness's 32 MiB receive buffer. `--rounds R` does the whole
    alternation R times; the table gives the median over rounds.

    Modes are MODE[:PACK[:KEYS]] (udpload's modes; PACK 1400 and KEYS 100 unless given, except
    timeru 1,000 keys and counteru 10,000, as the native-core targets are set). The default set:
        counter      identical `bench.cN:1|c` lines, packed into 1400-byte datagrams
        timeru       timers whose values never repeat, 1,000 keys
        tagged       counters with DogStatsD tags
        counteru     counters with varying values over 10,000 keys
        counter:1    one line per datagram (the sender's core is the limit here)

    Our daemon runs from the console script of a venv (`--sgw-bin`). The driver makes an API key
    with `statsd-gateway keygen` into a temporary directory of its own and exports TMPDIR and
    SGW_KEY_SHA256 to the harness, so the helpers in ../shared/bench/ours/ find it. It writes the
    daemon's config itself (what ours/sgw_serve.sh writes: UDP on the harness port with
    `read_buffer: 0`, so the socket gets the harness's rmem_default; HTTP on 127.0.0.1:18080; a
    fresh store in each run's work dir; flush_interval 1s; the bench key) plus the lines of
    `--sgw-config-extra` in the udp: section, and checks it with `statsd-gateway check-config`
    before anything runs. What it counted is read by ours/sgw_readback.py:
    `statsd_gateway_samples_accepted_total{transport="udp"}` from /metrics (public, no key).

    Etsy statsd is installed with `npm install statsd@0.9` into `--statsd-cache` when missing.
    udpload is built from the harness's source into `--out`. Results: `--out`/sgw.jsonl and
    statsd.jsonl (the harness's rows), index.jsonl (one outcome per mode, peer and round, which
    the table is made from) and runs/ (each run's work dir: config, store, and daemon.log, whose
    first line says which ingest core ran: native or pure Python).

Needs root (the harness sets net.core.rmem_max and rmem_default for each run and puts them back),
Linux, gcc, node and npm, taskset and ss. Sends only to loopback.

How to run (from the repository root)
    python3 bench/peers.py --quick                      # one mode, short runs: a minute or two
    python3 bench/peers.py --out /tmp/peers-1           # every default mode, 3 confirm runs each
    python3 bench/peers.py --modes timeru,counteru --rounds 2 --out /tmp/peers-2
    python3 bench/peers.py --sgw-bin ../wt-x/.venv/bin/statsd-gateway \\
        --sgw-config-extra 'readers: 2' --out /tmp/peers-3
    python3 bench/peers.py --peers sgw --sgw-env STATSD_GATEWAY_PURE_PYTHON=1 --out /tmp/peers-4
    python3 bench/peers.py --table-only --out /tmp/peers-1   # the table again, from index.jsonl
    python3 bench/peers.py --peers sgw --modes timeru --rate 3000000 --repeat 3 \\
        --sgw-bin ../wt-x/.venv/bin/statsd-gateway --out /tmp/peers-5   # CPU at one rate
    python3 bench/peers.py --dry-run                    # print the harness command lines only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from peer_results import (
    PEERS,
    ModeSpec,
    Outcome,
    load_index,
    outcome_of,
    paced_outcome,
    read_rows,
    table,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_HARNESS = REPO.parent / "shared" / "bench"
DEFAULT_MODES = "counter,timeru,tagged,counteru,counter:1"
HTTP_PORT = 18080  # ours/sgw_readback.py's and sgw_querycheck.py's default
# Short runs for --quick, within what run_peer.py search accepts.
QUICK_SEARCH = ["--lines", "300000", "--search-min-lines", "200000", "--min-seconds", "1"]
QUICK_SEARCH += ["--max-lines", "3000000", "--max-trials", "2"]
SERVE = "_serve"  # the hidden subcommand run_peer.py starts as our daemon
STATSD_CACHE = Path.home() / ".cache" / "statsd-gateway-bench" / "statsd-0.9"


# --------------------------------------------------------------------------- our daemon


@dataclass(frozen=True)
class SgwProfile:
    """How every run starts our daemon; written to a file that `_serve` reads."""

    sgw_bin: str
    sha256: str
    udp_extra: str
    env: dict[str, str]
    http_port: int = HTTP_PORT

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> SgwProfile:
        return cls(**json.loads(path.read_text()))


def udp_section(port: str, extra: str) -> str:
    """The udp: mapping of our config: the harness's port, SO_RCVBUF left to rmem_default, then
    `extra` (block-style YAML); a key of `extra` replaces the default of the same name."""
    extra_lines = [ln.rstrip() for ln in extra.strip("\n").splitlines() if ln.strip()]
    given = {m.group(1) for ln in extra_lines for m in [re.match(r"([A-Za-z_]\w*)\s*:", ln)] if m}
    defaults = {"listen": f'"127.0.0.1:{port}"', "read_buffer": "0"}
    lines = [f"  {k}: {v}" for k, v in defaults.items() if k not in given]
    return "udp:\n" + "".join(ln + "\n" for ln in lines + ["  " + ln for ln in extra_lines])


def sgw_config(profile: SgwProfile, port: str, workdir: str) -> str:
    """The whole config of one run (as ../shared/bench/ours/sgw_serve.sh writes it, plus extra)."""
    return (
        udp_section(port, profile.udp_extra)
        + f'http:\n  listen: "127.0.0.1:{profile.http_port}"\n'
        + f"storage:\n  path: {json.dumps(os.path.join(workdir, 'metrics.db'))}\n"
        + "aggregation:\n  flush_interval: 1s\n"
        + "auth:\n  keys:\n    - name: bench\n"
        + f'      sha256: "{profile.sha256}"\n      tenant: default\n'
        + "      scopes: [read, write]\n"
    )


def serve(argv: list[str]) -> None:
    """`peers.py _serve PROFILE PORT WORKDIR`, started by run_peer.py: writes this run's config
    and becomes the daemon (exec, so the harness measures the daemon's own process)."""
    profile_path, port, workdir = argv
    profile = SgwProfile.load(Path(profile_path))
    cfg = Path(workdir) / "sgw.yaml"
    cfg.write_text(sgw_config(profile, port, workdir))
    env = os.environ | profile.env
    os.execve(profile.sgw_bin, [profile.sgw_bin, "serve", "--config", str(cfg)], env)


def make_bench_key(sgw_bin: str, tmp: Path) -> str:
    """A fresh API key from `statsd-gateway keygen`, kept where the harness's helpers look
    ($TMPDIR/sgw-bench/bench.key and bench.sha256); returns its sha256."""
    out = subprocess.run([sgw_bin, "keygen", "--name", "bench"], capture_output=True, text=True)
    key = re.search(r"^key: (\S+)$", out.stdout, re.M)
    sha = re.search(r"^\s*sha256: ([0-9a-f]{64})$", out.stdout, re.M)
    if out.returncode != 0 or not key or not sha:
        raise SystemExit(f"statsd-gateway keygen failed: {out.stdout}{out.stderr}")
    keydir = tmp / "sgw-bench"
    keydir.mkdir(mode=0o700)
    (keydir / "bench.key").write_text(key.group(1) + "\n")
    (keydir / "bench.sha256").write_text(sha.group(1) + "\n")
    return sha.group(1)


def check_sgw_config(profile: SgwProfile, tmp: Path) -> None:
    """Fails before any run when the config (with --sgw-config-extra) is not one our daemon
    accepts, with its own message."""
    workdir = tmp / "check"
    workdir.mkdir()
    cfg = workdir / "sgw.yaml"
    cfg.write_text(sgw_config(profile, "8125", str(workdir)))
    out = subprocess.run(
        [profile.sgw_bin, "check-config", str(cfg)], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"our daemon refuses the bench config:\n{cfg.read_text()}{out.stderr}")


# --------------------------------------------------------------------------- setup


def build_udpload(harness: Path, out: Path) -> Path:
    exe, src = out / "udpload", harness / "udpload.c"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
    return exe


def ensure_statsd(cache: Path) -> Path:
    """Etsy statsd 0.9 under `cache`, installed with npm the first time; returns its package dir."""
    pkg = cache / "node_modules" / "statsd"
    if not (pkg / "stats.js").exists():
        cache.mkdir(parents=True, exist_ok=True)
        if not (cache / "package.json").exists():
            (cache / "package.json").write_text('{"name": "peer-statsd", "private": true}\n')
        print(f"installing statsd@0.9 into {cache}", flush=True)
        npm = ["npm", "install", "--no-audit", "--no-fund", "statsd@0.9"]
        subprocess.run(npm, cwd=cache, check=True)
    version = json.loads((pkg / "package.json").read_text())["version"]
    if not version.startswith("0.9"):
        raise SystemExit(f"{pkg} is statsd {version}, not 0.9")
    return pkg


# --------------------------------------------------------------------------- one search


def harness_argv(
    args: argparse.Namespace, spec: ModeSpec, peer: str, paths: dict[str, Path]
) -> list[str]:
    """The run_peer.py command line of one search (or, with --quick, one short search)."""
    out = args.out / f"{peer}.jsonl"
    argv = [sys.executable, str(args.harness / "run_peer.py")]
    # A run at a paced rate lasts 6 s, as a search's confirm runs do at least.
    argv += (
        ["run", "--rate", str(args.rate), "--lines", str(6 * args.rate)]
        if args.rate
        else ["search"]
    )
    argv += ["--mode", spec.mode, "--pack", str(spec.pack), "--keys", str(spec.keys)]
    argv += ["--repeat", "1" if args.quick else str(args.repeat), "--flush-s", "1"]
    argv += ["--daemon-cpus", "0", "--sender-cpus", "1", "--udpload", str(paths["udpload"])]
    argv += ["--out", str(out), "--workroot", str(args.out / "runs")]
    argv += QUICK_SEARCH if args.quick else []
    if peer == "statsd":
        return [*argv, "--peer", "statsd", "--statsd-dir", str(paths["statsd"])]
    serve_cmd = [sys.executable, str(Path(__file__).resolve()), SERVE, str(paths["profile"])]
    readback = [sys.executable, str(args.harness / "ours" / "sgw_readback.py")]
    argv += ["--peer", "custom", "--readback", "cmd"]
    argv += ["--daemon-cmd", shlex.join(serve_cmd) + " {port} {workdir}"]
    argv += ["--readback-cmd", shlex.join([*readback, f"http://127.0.0.1:{HTTP_PORT}/metrics"])]
    if args.query_check:
        check = [sys.executable, str(args.harness / "ours" / "sgw_querycheck.py")]
        post = shlex.join(check) + f" {{mode}} {{keys}} 1.5 {HTTP_PORT}"
        argv += ["--post-cmd", post, "--post-kinds", "confirm"]
    return argv


def run_search(
    args: argparse.Namespace,
    spec: ModeSpec,
    peer: str,
    rnd: int,
    paths: dict[str, Path],
    env: dict[str, str],
) -> Outcome:
    out = args.out / f"{peer}.jsonl"
    offset = out.stat().st_size if out.exists() else 0
    argv = harness_argv(args, spec, peer, paths)
    print(f"\n=== round {rnd} {spec.label} keys={spec.keys} {peer}", flush=True)
    try:
        proc = subprocess.run(argv, env=env, timeout=args.timeout)
        failed = f"run_peer.py exited {proc.returncode}" if proc.returncode else None
    except subprocess.TimeoutExpired:
        failed = f"run_peer.py timed out after {args.timeout:.0f} s"
    rows = read_rows(out, offset)
    outcome = (
        paced_outcome(rows, spec, peer, rnd) if args.rate else outcome_of(rows, spec, peer, rnd)
    )
    if failed:
        outcome = dataclasses.replace(outcome, error=failed)
    with (args.out / "index.jsonl").open("a") as f:
        f.write(json.dumps(asdict(outcome)) + "\n")
    return outcome


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = ap.add_argument
    add("--modes", default=DEFAULT_MODES, help="comma list of MODE[:PACK[:KEYS]]")
    add("--repeat", type=int, default=3, help="confirm runs per search (--quick: 1)")
    add("--rounds", type=int, default=1, help="times the ours-then-Etsy alternation runs")
    add("--quick", action="store_true", help="first mode only (default counter), short runs")
    add("--out", type=Path, default=None, help="results dir (default: new, in the system tmp)")
    add("--sgw-bin", type=Path, default=Path(".venv/bin/statsd-gateway"), help="our daemon")
    add("--sgw-config-extra", default="", metavar="YAML", help="added to udp:, e.g. 'readers: 2'")
    add("--sgw-env", action="append", default=[], metavar="KEY=VALUE", help="our daemon's env")
    add("--peers", default=",".join(PEERS), help="comma list of sgw, statsd (default both)")
    add("--query-check", action="store_true", help="confirm runs: also count via our query API")
    add("--harness", type=Path, default=DEFAULT_HARNESS, help="the peer harness's dir")
    add("--statsd-cache", type=Path, default=STATSD_CACHE, help="npm dir of statsd@0.9")
    add("--timeout", type=float, default=1800.0, help="seconds one search may take")
    add("--rate", type=int, default=0, help="instead of a search: --repeat runs at this paced rate")
    add("--table-only", action="store_true", help="print the table of --out/index.jsonl")
    add("--dry-run", action="store_true", help="print the harness command lines only")
    args = ap.parse_args(argv)
    try:
        args.specs = [ModeSpec.parse(s) for s in args.modes.split(",") if s.strip()]
    except ValueError as e:
        ap.error(f"--modes: {e}")
    if args.quick:
        # one mode: the first one asked for, or the headline (packed counters)
        args.specs = args.specs[:1] if args.modes != DEFAULT_MODES else [ModeSpec.parse("counter")]
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if not args.specs or not args.peers or not set(args.peers) <= set(PEERS):
        ap.error("--modes and --peers must name at least one known mode and peer")
    if any("=" not in kv for kv in args.sgw_env):
        ap.error("--sgw-env takes KEY=VALUE")
    if args.table_only and args.out is None:
        ap.error("--table-only needs --out")
    return args


def prepare(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Key, daemon profile, udpload, Etsy statsd; returns the paths the searches use and the
    harness's environment."""
    sgw_bin = args.sgw_bin.resolve()
    if "sgw" in args.peers and not os.access(sgw_bin, os.X_OK):
        raise SystemExit(f"{sgw_bin}: no such console script (pass --sgw-bin)")
    for p in (args.out, tmp, sgw_bin):
        if "{" in str(p) or "}" in str(p):
            raise SystemExit(f"{p}: braces in a path break run_peer.py's command templates")
    paths = {"profile": tmp / "sgw-profile.json", "udpload": args.out / "udpload"}
    paths["statsd"] = args.statsd_cache / "node_modules" / "statsd"
    env = os.environ | {"TMPDIR": str(tmp), "SGW_BIN": str(sgw_bin)}
    if "sgw" in args.peers:
        sha = "0" * 64 if args.dry_run else make_bench_key(str(sgw_bin), tmp)
        env["SGW_KEY_SHA256"] = sha
        sgw_env = dict(kv.split("=", 1) for kv in args.sgw_env)
        profile = SgwProfile(str(sgw_bin), sha, args.sgw_config_extra, sgw_env)
        profile.save(paths["profile"])
        if not args.dry_run:
            check_sgw_config(profile, tmp)
    if not args.dry_run:
        paths["udpload"] = build_udpload(args.harness, args.out)
        if "statsd" in args.peers:
            paths["statsd"] = ensure_statsd(args.statsd_cache)
    return paths, env


def main(argv: list[str]) -> None:
    if argv[:1] == [SERVE]:
        return serve(argv[1:])
    args = parse_args(argv)
    if args.rate and (args.quick or args.query_check):
        raise SystemExit("--rate runs at one rate: --quick and --query-check are a search's")
    if args.table_only:
        print(table(load_index(args.out)), end="")
        return None
    if os.geteuid() != 0 and not args.dry_run:
        raise SystemExit("run as root: the harness sets net.core.rmem_max and rmem_default")
    if args.dry_run:
        args.out = (args.out or Path("OUT")).resolve()
    else:
        args.out = (args.out or Path(tempfile.mkdtemp(prefix="sgw-peers-"))).resolve()
        args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="sgw-peers-key-"))
    try:
        paths, env = prepare(args, tmp)
        outcomes = []
        for rnd in range(1, args.rounds + 1):
            for spec in args.specs:
                for peer in args.peers:
                    if args.dry_run:
                        print(shlex.join(harness_argv(args, spec, peer, paths)))
                        continue
                    outcomes.append(run_search(args, spec, peer, rnd, paths, env))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if outcomes:
        print(f"\nresults in {args.out}\n\n" + table(outcomes), end="")
    return None


if __name__ == "__main__":
    main(sys.argv[1:])
