"""Builds the native ingest core, relay, chunk decoder and window quantiles
(statsd_gateway/native/) with the system's C compiler, linked with zlib.

Optional: where it cannot be built, the package installs without it and the daemon runs the
pure-Python parser and aggregator, which stay the reference (native.py says which is in use).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "statsd_gateway._native",
            sources=[
                "statsd_gateway/native/sg_core.c",
                "statsd_gateway/native/sg_bins.c",
                "statsd_gateway/native/sg_chunks.c",
                "statsd_gateway/native/sg_chunks_module.c",
                "statsd_gateway/native/sg_relay.c",
                "statsd_gateway/native/sg_relay_module.c",
                "statsd_gateway/native/sg_windows.c",
                "statsd_gateway/native/sg_windows_module.c",
                "statsd_gateway/native/sg_interval_module.c",
                "statsd_gateway/native/sg_module.c",
            ],
            depends=[
                "statsd_gateway/native/sg_core.h",
                "statsd_gateway/native/sg_interval.h",
                "statsd_gateway/native/sg_bins.h",
                "statsd_gateway/native/sg_chunks.h",
                "statsd_gateway/native/sg_relay.h",
                "statsd_gateway/native/sg_windows.h",
            ],
            libraries=["z"],  # zlib: the chunks' groups (zlib.h from zlib1g-dev)
            # No fused multiply-add: sums must round as the Python reference's do.
            extra_compile_args=[
                "-O2",
                "-std=gnu11",
                "-ffp-contract=off",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-Wno-missing-field-initializers",
            ],
            optional=True,
        )
    ]
)
