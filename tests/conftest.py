"""Test lanes: ``unit`` (no marker, no services), ``integration`` (dockerd, docker-registry,
git, etcd, started by scripts/services) and ``cluster`` (the real control plane built by
scripts/toolchain). Fixtures live in tests/fixtures/, one plugin module per domain."""

import importlib.util

pytest_plugins = [
    name for name in (
        "tests.fixtures.services",
        "tests.fixtures.cluster",
        "tests.fixtures.hosted",
        "tests.fixtures.fleet",
        "tests.fixtures.buildkit",
        "tests.fixtures.postgres",
    ) if importlib.util.find_spec(name) is not None
]


# A full run has twice ended with SIGABRT *after* the summary (every result already printed),
# while the interpreter was tearing down: some thread of a test-created client (a database
# pool, a watch, a waitress server) was still alive. The exit status must be the tests', so once
# everything is reported and every fixture torn down, the process ends without that teardown.
# The cause is not found yet; it is tracked in the closing note of issue 15.
_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _exit_status.append(int(exitstatus))


def pytest_unconfigure(config):
    import os
    import sys

    if _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
