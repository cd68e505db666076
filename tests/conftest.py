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


def pytest_terminal_summary(terminalreporter):
    """Every fixture is torn down by now, so a thread still running was left by a test or by a
    product object nobody closed: name it, so its owner gets fixed. (Such threads, still reading
    or logging while the interpreter tears down, once aborted a full run after its summary.)"""
    import threading

    left = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if left:
        terminalreporter.write_sep("=", f"{len(left)} thread(s) still running after the tests", yellow=True)
        for t in left:
            target = getattr(t, "_target", None)
            terminalreporter.write_line(f"{t.name} (daemon={t.daemon}): {getattr(target, '__qualname__', target)}")


_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _exit_status.append(int(exitstatus))


def pytest_unconfigure(config):
    """With no thread left (the normal case) the interpreter exits as usual. If the summary above
    named threads still running, the tests' status is kept by ending the process here rather
    than letting those threads meet the interpreter's teardown (where a thread writing to a
    closed stream aborts the process and the status is lost). The named threads are the bug."""
    import os
    import sys
    import threading

    left = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if left and _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
