#!/bin/sh
# Builds fuzz/sg_fuzz.c (libFuzzer, ASan, UBSan) and fuzzes the native parser for SECONDS
# (default 600). One process, one core. Usage: fuzz/run.sh [SECONDS] [extra libFuzzer flags]
# The build, the growing corpus and any crash artifact go to $SG_FUZZ_DIR (default
# /tmp/sg-fuzz, outside the repo); fuzz/corpus/ holds the seeds and is only read.
# SG_FUZZ_TARGET=chunks fuzzes the chunk decoder instead (fuzz/sg_chunks_fuzz.c, sg_chunks.c;
# default directory /tmp/sg-fuzz-chunks), from seeds fuzz/chunk_seeds.py writes there with the
# venv's Python ($SG_PY, default .venv/bin/python). SG_FUZZ_TARGET=windows fuzzes the window
# quantiles (fuzz/sg_windows_fuzz.c, sg_windows.c; default directory /tmp/sg-fuzz-windows), from
# an empty corpus (an input is option bytes and the arrays' makings: any bytes are one).
set -eu
cd "$(dirname "$0")/.."
seconds="${1:-600}"
[ $# -gt 0 ] && shift
if [ "${SG_FUZZ_TARGET:-parser}" = chunks ]; then
    out="${SG_FUZZ_DIR:-/tmp/sg-fuzz-chunks}"
    mkdir -p "$out/corpus" "$out/seeds"
    "${SG_PY:-.venv/bin/python}" fuzz/chunk_seeds.py "$out/seeds"
    clang -g -O1 -fsanitize=fuzzer,address,undefined,float-cast-overflow \
        -fno-sanitize-recover=undefined,float-cast-overflow -DSG_CH_NO_MMAP \
        -I statsd_gateway/native fuzz/sg_chunks_fuzz.c statsd_gateway/native/sg_chunks.c \
        -lz -lm -o "$out/sg_chunks_fuzz"
    echo "fuzzing the chunk decoder at $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
        "for ${seconds}s; output in $out" >&2
    exec "$out/sg_chunks_fuzz" -max_total_time="$seconds" -max_len=70000 -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="$out/" -print_final_stats=1 "$@" \
        "$out/corpus" "$out/seeds"
fi
if [ "${SG_FUZZ_TARGET:-parser}" = windows ]; then
    out="${SG_FUZZ_DIR:-/tmp/sg-fuzz-windows}"
    mkdir -p "$out/corpus"
    clang -g -O1 -fsanitize=fuzzer,address,undefined,float-cast-overflow \
        -fno-sanitize-recover=undefined,float-cast-overflow \
        -I statsd_gateway/native fuzz/sg_windows_fuzz.c statsd_gateway/native/sg_windows.c \
        -lm -o "$out/sg_windows_fuzz"
    echo "fuzzing the window quantiles at $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
        "for ${seconds}s; output in $out" >&2
    exec "$out/sg_windows_fuzz" -max_total_time="$seconds" -max_len=4096 -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="$out/" -print_final_stats=1 "$@" "$out/corpus"
fi
out="${SG_FUZZ_DIR:-/tmp/sg-fuzz}"
mkdir -p "$out/corpus"
clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I statsd_gateway/native fuzz/sg_fuzz.c statsd_gateway/native/sg_core.c \
    statsd_gateway/native/sg_bins.c -lm -lpthread \
    -o "$out/sg_fuzz"
echo "fuzzing $(git rev-parse --short HEAD 2>/dev/null || echo '?') for ${seconds}s; output in $out" >&2
exec "$out/sg_fuzz" -max_total_time="$seconds" -max_len=70000 -timeout=10 -rss_limit_mb=2048 \
    -dict=fuzz/statsd.dict -artifact_prefix="$out/" -print_final_stats=1 "$@" \
    "$out/corpus" fuzz/corpus
