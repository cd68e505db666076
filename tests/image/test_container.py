"""The README's "Running it in a container", run as written against the real Docker engine:
the product image built from the local base, `poller run` building through the mounted socket,
the helm API on a chosen port, uid 10001, nothing of the build host's trust store or secrets in
any layer, and a source-only change that reuses the dependency layer.

The commands are parsed from README.md and run verbatim with bash in a copy of the repository
(so the source change below never touches the checkout)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.fixtures.services import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.image, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
TAG = "slipway"
POLLER, HELM_API, STATE_VOLUME = "slipway-poller", "slipway-helm-api", "slipway-state"
REPO = "game-server"
SOCKET = "/var/run/docker.sock"


def readme_commands() -> list[str]:
    """Every command of the README's container section, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Running it in a container", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip():
                commands.append(command)
    return commands


def command(*needles: str) -> str:
    found = [c for c in readme_commands() if all(n in c for n in needles)]
    assert len(found) == 1, f"README container section: one command with {needles}, found {found}"
    return found[0]


def sh(cmd: str, cwd: Path, env: dict, timeout: float = 1200) -> subprocess.CompletedProcess:
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=cwd, env=env, text=True,
                         capture_output=True, timeout=timeout, check=False)
    assert res.returncode == 0, f"{cmd}\nexit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def docker(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(["docker", *args], text=True, capture_output=True, timeout=timeout, check=False)
    assert not check or res.returncode == 0, f"docker {' '.join(args)}: {res.stderr}"
    return res


def remove_containers() -> None:
    docker("rm", "-f", POLLER, HELM_API, check=False)
    docker("volume", "rm", "-f", STATE_VOLUME, check=False)


def layers(tag: str) -> list[str]:
    return json.loads(docker("image", "inspect", tag).stdout)[0]["RootFS"]["Layers"]


class Lane:
    def __init__(self, work: Path, home: Path, say):
        self.work, self.home, self.say = work, home, say
        self.env = {**os.environ, "HOME": str(home)}

    def run(self, cmd: str, timeout: float = 1200) -> float:
        t0 = time.monotonic()
        sh(cmd, self.work, self.env, timeout=timeout)
        took = time.monotonic() - t0
        self.say(f"[image] {took:6.1f}s  {cmd.split('#')[0].strip()[:90]}")
        return took


@pytest.fixture(scope="module")
def lane(tmp_path_factory, pytestconfig):
    """A copy of the checkout (tracked and new files) with the image built as the README says."""
    reporter = pytestconfig.pluginmanager.getplugin("terminalreporter")
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def say(line: str) -> None:  # build times go to the terminal, not the captured output
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)
    base = tmp_path_factory.mktemp("image")
    work, home = base / "slipway", base / "home"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, text=True,
                           capture_output=True, check=True).stdout.split()
    for name in files:
        src = ROOT / name
        if src.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / name)
    home.mkdir()
    lane = Lane(work, home, say)
    remove_containers()
    for cmd in (command("scripts/services up docker"), command("scripts/base-image"), command("scripts/wheels"),
                command("docker build", "-t slipway")):
        lane.run(cmd)
    yield lane
    remove_containers()


def test_the_image_runs_as_uid_10001_with_byte_compiled_code(lane):
    out = docker("run", "--rm", "--read-only", TAG, "sh", "-c",
                 "id -u; python -X importtime -c 'import helm_api.__main__, poller.cli' 2>&1 >/dev/null"
                 " | wc -l; find /opt/slipway -name '*.py' -path '*site-packages/poller/*' | head -1").stdout
    uid, imported, _ = out.splitlines()
    assert uid == "10001"
    assert int(imported) > 100  # the imports ran on a read-only filesystem from the .pyc files
    pyc = docker("run", "--rm", TAG, "sh", "-c",
                 "ls /opt/slipway/lib/python3*/site-packages/poller/__pycache__/cli.*.pyc").stdout
    assert pyc.strip()


def _host_needles() -> dict[str, bytes]:
    """What of the build host must never be in an image: its extra CA certificates (a base64 line
    from each) and its credential and pip files."""
    needles = {}
    for crt in Path("/usr/local/share/ca-certificates").glob("**/*.crt"):
        body = [ln for ln in crt.read_text().splitlines() if ln and not ln.startswith("-----")]
        if len(body) > 3:
            needles[str(crt)] = body[len(body) // 2].encode()
    for secret in ("/root/.docker/config.json", "/root/.netrc", "/root/.git-credentials",
                   "/etc/pip.conf", "/root/.config/pip/pip.conf", "/root/.pypirc"):
        p = Path(secret)
        if p.is_file() and p.stat().st_size > 0:
            needles[secret] = p.read_bytes().strip()
    return needles


def test_no_ca_or_secret_of_the_build_host_is_in_any_layer(lane, tmp_path):
    needles = _host_needles()
    assert any(k.endswith(".crt") for k in needles), "this machine has extra CAs: the check must see them"
    found: list[str] = []
    files = 0
    save = subprocess.Popen(["docker", "save", TAG], stdout=subprocess.PIPE)
    with tarfile.open(fileobj=save.stdout, mode="r|") as outer:
        for member in outer:
            blob = outer.extractfile(member) if member.isfile() else None
            if blob is None:
                continue
            if not member.name.endswith("layer.tar"):
                data = blob.read()  # the image config and history
                found += [f"{member.name}: {k}" for k, v in needles.items() if v in data]
                continue
            with tarfile.open(fileobj=blob, mode="r|") as layer:
                for f in layer:
                    if re.search(r"(^|/)usr/local/share/ca-certificates/.+\.crt$", f.name):
                        found.append(f"{member.name}: {f.name}")
                    if not f.isfile():
                        continue
                    files += 1
                    data = layer.extractfile(f).read()
                    found += [f"{member.name}:{f.name}: {k}" for k, v in needles.items() if v in data]
    assert save.wait(120) == 0
    assert files > 1000, "the scan read the layers"
    assert not found, found
    env = json.loads(docker("image", "inspect", TAG).stdout)[0]["Config"]["Env"]
    assert not [e for e in env if e.split("=")[0] in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")]


@pytest.fixture
def git_server(git_repo):
    from tests.doubles.git_http import GitHttpServer

    srv = GitHttpServer(git_repo.root)
    yield srv
    srv.stop()


def test_poller_run_builds_through_the_mounted_socket(lane, registry, git_repo, git_server):
    sha = git_repo.seed_scratch_app("from the container\n")
    config = {
        "registry": {"url": registry.addr, "insecure": True},
        "store": {"path": "/var/lib/slipway/slipway.db"},
        "state_dir": "/var/lib/slipway/state",
        "poll": {"interval": 1, "jitter": 0.1, "resync": 30},
        "api": {"listen": None},
        "sources": [{"name": REPO, "git": {"url": git_server.repo_url(f"{REPO}.git")},
                     "branch": "master", "image": f"{registry.addr}/{REPO}"}],
    }
    (lane.work / "slipway.yaml").write_text(yaml.safe_dump(config))
    run = command("poller run")
    assert "--group-add" in run and SOCKET in run
    lane.run(run)

    def staging_at_seed():
        state = docker("inspect", "-f", "{{.State.Status}}", POLLER).stdout.strip()
        assert state == "running", docker("logs", POLLER).stderr[-3000:]
        return registry.digest(REPO, "staging") and \
            registry.labels(REPO, "staging")["org.opencontainers.image.revision"] == sha
    wait_until(staging_at_seed, timeout=180, what="the containerised poller pushed staging")
    docker("stop", "-t", "30", POLLER)
    code = docker("inspect", "-f", "{{.State.ExitCode}}", POLLER).stdout.strip()
    assert code == "0", docker("logs", POLLER).stderr[-3000:]


def test_without_the_socket_group_the_error_says_which_fix_applies(lane, registry, git_repo, git_server):
    git_repo.seed_scratch_app("no access\n")
    config = {
        "registry": {"url": registry.addr, "insecure": True},
        "store": {"path": "/tmp/slipway.db"}, "state_dir": "/tmp/state", "api": {"listen": None},
        "sources": [{"name": REPO, "git": {"url": git_server.repo_url(f"{REPO}.git")},
                     "branch": "master", "image": f"{registry.addr}/{REPO}"}],
    }
    cfg = lane.work / "no-group.yaml"
    cfg.write_text(yaml.safe_dump(config))
    res = docker("run", "--rm", "--network", "host", "-v", f"{SOCKET}:{SOCKET}",
                 "-v", f"{cfg}:/etc/slipway/slipway.yaml:ro", TAG,
                 "poller", "once", "--config", "/etc/slipway/slipway.yaml", check=False)
    gid = os.stat(SOCKET).st_gid
    said = res.stdout + res.stderr
    assert f"permission denied on {SOCKET}" in said and f"--group-add {gid}" in said, said[-3000:]
    assert "DOCKER_HOST=tcp://" in said and "Traceback" not in said


def test_helm_api_serves_on_the_port_the_readme_chooses(lane):
    run = command("slipway helm-api")
    port = int(re.search(r"HELM_API_PORT=(\d+)", run).group(1))
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} is taken on this machine"
    kube = lane.home / ".kube"
    kube.mkdir(exist_ok=True)
    (kube / "config").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "kube-token"}}]}))
    (lane.work / "helm-api-token").write_text("a-helm-api-token\n")
    lane.run(run)
    curl = command("curl", "/healthz")

    def healthy():
        state = docker("inspect", "-f", "{{.State.Status}}", HELM_API).stdout.strip()
        assert state == "running", docker("logs", HELM_API).stderr[-3000:]
        return subprocess.run(["bash", "-c", curl], capture_output=True, check=False).returncode == 0
    wait_until(healthy, timeout=60, what=f"helm API /healthz on port {port}")
    assert requests.post(f"http://127.0.0.1:{port}/apply", timeout=10).status_code == 401
    docker("rm", "-f", HELM_API)


def test_a_bad_helm_api_setting_stops_the_container_with_one_line(lane):
    name = "slipway-helm-api-bad-setting"
    try:
        res = docker("run", "--name", name, "-e", "HELM_API_PORT=http", TAG, "helm-api",
                     check=False, timeout=60)
    finally:
        docker("rm", "-f", name, check=False)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "HELM_API_PORT" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and "Worker failed to boot" not in res.stderr


def test_a_source_only_change_reuses_the_dependency_layer(lane):
    before = layers(TAG)
    init = lane.work / "poller" / "__init__.py"
    init.write_text(init.read_text() + f"# source-only change {time.time()}\n")
    took = lane.run(command("docker build", "-t slipway"))
    after = layers(TAG)
    lane.say(f"[image] source-only rebuild: {took:.1f}s; layers {len(before)} -> {len(after)}")
    assert len(after) == len(before)
    assert after[:-1] == before[:-1], "only the source layer may change"
    assert after[-1] != before[-1]
    history = docker("history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", TAG).stdout
    size = next(line.split("\t")[0] for line in history.splitlines() if "COPY" in line)
    lane.say(f"[image] source layer: {size}")
    assert size.endswith(("kB", "B")) and not size.endswith("GB") or \
        (size.endswith("MB") and float(size[:-2]) < 10), size


@pytest.mark.cluster
def test_helmsman_job_image_from_the_local_base_and_the_toolchain(lane, toolchain):
    lane.run(command("scripts/helmsman-image"))
    image = "slipway/helmsman:local"
    out = docker("run", "--rm", image, "sh", "-c",
                 "id -u; helm version --short; kubectl version --client; helmsman -v; ls /dss; "
                 "head -2 /usr/local/bin/helmsman; pwd").stdout
    assert out.splitlines()[0] == "10001"
    assert "v3.20" in out and "staging.yaml" in out and "production.yaml" in out
    assert "STAND-IN" in out and "Client Version: v1.32" in out and out.splitlines()[-1] == "/work"
