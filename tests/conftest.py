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
