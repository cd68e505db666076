"""``helm-api`` start-up: one documented listen address (HELM_API_PORT / --port) and clean
one-line config errors, through the real console entry point."""

import os
import signal
import socket
import subprocess
import sys

import pytest
import requests

from tests.fixtures.services import free_port, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _helm_api(*args, env=None, **kw):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HELM_API_")}
    environ.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "helm_api", *args], cwd=ROOT, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("args,env,where", [
    ([], {"HELM_API_PORT": "eighty"}, "HELM_API_PORT"),
    (["--port", "70000"], {}, "--port"),
    ([], {"HELM_API_NAMESPACE": "Not_A_Label"}, "HELM_API_NAMESPACE"),
    ([], {"HELM_API_TOKEN_FILE": "/nonexistent/token"}, "HELM_API_TOKEN_FILE"),
    ([], {"HELM_API_LOG_LEVEL": "loud"}, "HELM_API_LOG_LEVEL"),
    ([], {"HELM_API_LOG_FORMAT": "xml"}, "HELM_API_LOG_FORMAT"),
    ([], {"HELM_API_DEFAULT_ENVIRONMENT": "qa"}, "HELM_API_DEFAULT_ENVIRONMENT"),
    ([], {"HELM_API_KUBECONFIG": "/nonexistent/kubeconfig"}, "HELM_API_KUBECONFIG"),
    (["--host", "192.0.2.1"], {}, "--host"),  # TEST-NET-1: never an address of this machine
])
def test_a_bad_setting_at_start_up_is_one_line_and_exit_2(args, env, where):
    proc = _helm_api("--port", str(free_port()), *args, env=env) if "--port" not in args and "HELM_API_PORT" not in env \
        else _helm_api(*args, env=env)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # it started anyway: the setting was not checked
        proc.kill()
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"helm-api started despite {where}: {err[-500:]}")
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith("helm-api: config error: ") and where in err
    assert "Traceback" not in err and "Worker failed to boot" not in err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_serves_on_the_port_given_by_flag_or_environment(how):
    port = free_port()
    args, env = (["--port", str(port)], {}) if how == "flag" else ([], {"HELM_API_PORT": str(port)})
    proc = _helm_api("--host", "127.0.0.1", *args, env=env)
    try:
        def healthy():
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stderr.read()
                return False
        wait_until(healthy, timeout=30, what=f"helm-api /healthz on port {port}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_port_already_in_use_is_one_line_naming_the_port_setting(how):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        args, env = (["--port", port], {}) if how == "flag" else ([], {"HELM_API_PORT": port})
        proc = _helm_api("--host", "127.0.0.1", *args, env=env)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith("helm-api: config error: "), err
    assert ("--port" if how == "flag" else "HELM_API_PORT") in err and "already in use" in err


def test_environments_that_are_not_a_json_object_say_what_is_expected():
    proc = _helm_api(env={"HELM_API_ENVIRONMENTS": "staging=staging.yaml"})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err.count("\n") == 1, err
    assert "HELM_API_ENVIRONMENTS" in err and "JSON object" in err, err
