"""The BuildKit engine end to end: real buildkitd (root, runc OCI worker) built from the module
proxy, real buildctl, real git, real docker-registry, a local package repository that counts
downloads. Builds go through the pipeline (build_pipeline with ``build.engine: buildkit``)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from poller.builds.builder import BuildPlan
from poller.config import parse_config
from poller.runtime import build_pipeline
from tests.doubles.gitrepo import BUSYBOX
from tests.fixtures.services import wait_until

pytestmark = pytest.mark.integration

REPO = "game-server"

#: Two independent stages, then one that copies from both; no BuildKit-only syntax, so the
#: docker engine's classic builder builds it too.
MULTI_STAGE = """FROM scratch AS tools
COPY busybox /bin/busybox

FROM tools AS assets
RUN ["/bin/busybox", "sh", "-c", "echo assets > /assets.txt"]

FROM tools AS app
COPY app.txt /app.txt

FROM scratch
COPY --from=tools /bin/busybox /bin/busybox
COPY --from=assets /assets.txt /assets.txt
COPY --from=app /app.txt /app.txt
CMD ["/bin/busybox", "cat", "/app.txt"]
"""

#: Dependencies downloaded behind a cache mount (like ~/.m2 for Maven) in their own stage;
#: the app stage changes on every commit.
CACHED_DEPS = """# syntax-free: the dockerfile.v0 frontend built into buildkitd
FROM scratch AS tools
COPY busybox /bin/busybox

FROM tools AS deps
COPY deps.txt /deps.txt
RUN --mount=type=cache,target=/cache,id=slipway-test-m2 ["/bin/busybox", "sh", "-c", \
    "for p in $(/bin/busybox cat /deps.txt); do [ -f /cache/$p ] || /bin/busybox wget -q -O /cache/$p {repo}/packages/$p || exit 1; done; /bin/busybox mkdir -p /lib/app && /bin/busybox cp /cache/* /lib/app/"]

FROM tools AS app
COPY app.txt /app.txt
RUN --mount=type=cache,target=/cache,id=slipway-test-m2 ["/bin/busybox", "sh", "-c", \
    "{app_step}"]

FROM scratch
COPY --from=tools /bin/busybox /bin/busybox
COPY --from=deps /lib/app /lib/app
COPY --from=app /app.txt /app.txt
"""


def config(tmp_path, registry, git_repo, addresses, buildkit_toolchain, *, engine="buildkit",
           image=REPO, retry_unhealthy=3600) -> dict:
    return {
        "registry": {"url": registry.addr, "insecure": True},
        "store": {"path": str(tmp_path / f"slipway-{engine}.db")},
        "state_dir": str(tmp_path / "state"),
        "build": {"concurrency": 2, "retry_initial": 3600, "engine": engine,
                  "buildkit": {"addresses": addresses,
                               "buildctl": str(buildkit_toolchain.bindir / "buildctl"),
                               "stall_check": 5, "retry_unhealthy": retry_unhealthy}},
        "api": {"listen": None},
        "sources": [{"name": "game-server", "git": {"url": git_repo.url}, "branch": "master",
                     "image": f"{registry.addr}/{image}"}],
    }


def pipeline_for(data, docker_host=None):
    if docker_host:
        data = {**data, "docker": {**data.get("docker", {}), "base_url": docker_host}}
    return build_pipeline(parse_config(data, file="test.yaml"))


def run_once(pipeline):
    try:
        return pipeline.run_once()
    finally:
        pipeline.shutdown()


def seed_cached_deps(git_repo, package_repo, *, app: str = "v1\n", app_step: str = "true") -> str:
    import shutil

    shutil.copy(BUSYBOX, git_repo.work / "busybox")
    return git_repo.commit("app", {
        "Dockerfile": CACHED_DEPS.format(repo=package_repo.url, app_step=app_step),
        "deps.txt": "netty.jar\nguava.jar\nlog4j.jar\n", "app.txt": app})


def layers(registry, tag: str) -> list[str]:
    import requests

    accept = "application/vnd.docker.distribution.manifest.v2+json"
    r = requests.get(f"{registry.url}/v2/{REPO}/manifests/{tag}", headers={"Accept": accept}, timeout=5)
    r.raise_for_status()
    return [layer["digest"] for layer in r.json()["layers"]]


def builder_histories(toolchain, daemon) -> int:
    """How many builds a buildkitd has run (its own build history)."""
    import subprocess

    res = subprocess.run([str(toolchain.bindir / "buildctl"), "--addr", daemon.address, "debug", "histories"],
                         check=False, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return len([ln for ln in res.stdout.splitlines()[1:] if ln.strip()])


def test_multi_stage_build_pushes_the_same_tags_and_labels_as_the_docker_engine(
        tmp_path, registry, git_repo, docker_host, buildkitd_factory, buildkit_toolchain):
    import shutil

    shutil.copy(BUSYBOX, git_repo.work / "busybox")
    sha = git_repo.commit("app", {"Dockerfile": MULTI_STAGE, "app.txt": "v1\n"})
    daemon = buildkitd_factory()

    classic = run_once(pipeline_for(config(tmp_path, registry, git_repo, [daemon.address], buildkit_toolchain,
                                           engine="docker", image="classic"), docker_host))
    bk_pipeline = pipeline_for(config(tmp_path, registry, git_repo, [daemon.address], buildkit_toolchain,
                                      image=REPO))
    kit = run_once(bk_pipeline)

    assert [(a.action, a.status) for a in classic[0].actions] == [("build", "succeeded")]
    assert [(a.action, a.status) for a in kit[0].actions] == [("build", "succeeded")]
    assert registry.tags("classic") == sorted(["staging", f"sha-{sha[:12]}"])
    # The same tags, plus the registry cache at <image>:buildcache.
    assert registry.tags(REPO) == sorted(["buildcache", "staging", f"sha-{sha[:12]}"])
    for tag in registry.tags("classic"):
        kit_labels = registry.labels(REPO, tag)
        classic_labels = registry.labels("classic", tag)
        assert kit_labels.pop("org.opencontainers.image.created").endswith("Z")
        classic_labels.pop("org.opencontainers.image.created")
        assert kit_labels == classic_labels
        assert kit_labels["org.opencontainers.image.revision"] == sha
    # The recorded digest is the one the registry serves; the log is kept.
    assert registry.digest(REPO, "staging") == kit[0].actions[0].digest
    rec = bk_pipeline.store.get_build(kit[0].actions[0].build_id)
    assert rec.status == "succeeded" and rec.digest == kit[0].actions[0].digest
    assert f"on BuildKit {daemon.address}" in rec.log and "echo assets" in rec.log


def test_cache_mount_keeps_downloaded_dependencies_between_builds(
        tmp_path, registry, git_repo, buildkitd_factory, buildkit_toolchain, package_repo):
    seed_cached_deps(git_repo, package_repo)
    daemon = buildkitd_factory()
    data = config(tmp_path, registry, git_repo, [daemon.address], buildkit_toolchain)

    first = run_once(pipeline_for(data))
    assert first[0].actions[0].status == "succeeded", first[0].actions[0].error
    assert package_repo.fetches() == 3

    # A new dependency list re-runs the download step: only the new jar is fetched.
    git_repo.commit("add a dependency", {"deps.txt": "netty.jar\nguava.jar\nlog4j.jar\nkryo.jar\n"})
    second = run_once(pipeline_for(data))
    action = second[0].actions[0]
    assert action.status == "succeeded", action.error
    assert package_repo.fetches() == 4
    log = pipeline_for(data).store.get_build(action.build_id).log
    assert "wget" in log and "CACHED" in log  # the deps step ran again; unchanged stages did not


def test_fresh_builder_imports_the_registry_cache_and_downloads_nothing_again(
        tmp_path, registry, git_repo, buildkitd_factory, buildkit_toolchain, package_repo):
    sha = seed_cached_deps(git_repo, package_repo)
    first = buildkitd_factory()
    data = config(tmp_path, registry, git_repo, [first.address], buildkit_toolchain)
    r1 = run_once(pipeline_for(data))
    assert r1[0].actions[0].status == "succeeded", r1[0].actions[0].error
    assert package_repo.fetches() == 3
    assert "buildcache" in registry.tags(REPO)
    first.down()

    fresh = buildkitd_factory()  # a new state dir: an empty local cache
    data = config(tmp_path, registry, git_repo, [fresh.address], buildkit_toolchain)
    pipeline = pipeline_for(data)
    plan = BuildPlan(source="game-server", image=f"{registry.addr}/{REPO}", ref="branch:master",
                     kind="staging", sha=sha, version=f"sha-{sha[:12]}", tags=("rebuilt",))
    lines: list[str] = []
    try:
        pipeline.builder.build(plan, pipeline.sources["game-server"], pipeline.cfg.sources[0], lines.append)
    finally:
        pipeline.shutdown()
    assert package_repo.fetches() == 3, "the fresh builder downloaded dependencies again"
    log = "".join(lines)
    assert "CACHED" in log and "wget" in log
    # The same layers (the manifests differ only in the image config: its 'created' label).
    assert layers(registry, "rebuilt") == layers(registry, f"sha-{sha[:12]}")


def test_a_source_sticks_to_one_builder_and_moves_when_it_dies(
        tmp_path, registry, git_repo, buildkitd_factory, buildkit_toolchain):
    git_repo.seed_scratch_app("v1\n")
    a, b = buildkitd_factory(), buildkitd_factory()
    data = config(tmp_path, registry, git_repo, [a.address, b.address], buildkit_toolchain)

    for i in range(3):
        if i:
            git_repo.commit(f"change {i}", {"app.txt": f"v{i + 1}\n"})
        r = run_once(pipeline_for(data))
        assert r[0].actions[0].status == "succeeded", r[0].actions[0].error
    counts = {d.address: builder_histories(buildkit_toolchain, d) for d in (a, b)}
    assert sorted(counts.values()) == [0, 3], counts  # all three on the same builder
    sticky, other = (a, b) if counts[a.address] else (b, a)

    sticky.down()
    git_repo.commit("after the builder died", {"app.txt": "v4\n"})
    pipeline = pipeline_for(data)
    r = run_once(pipeline)
    action = r[0].actions[0]
    assert action.status == "succeeded", action.error
    assert builder_histories(buildkit_toolchain, other) == 1
    assert f"on BuildKit {other.address}" in pipeline.store.get_build(action.build_id).log


def test_builder_killed_mid_build_fails_the_build_cleanly_and_the_next_cycle_retries_it(
        tmp_path, registry, git_repo, buildkitd_factory, buildkit_toolchain, package_repo):
    seed_cached_deps(git_repo, package_repo)
    release = package_repo.hold("guava.jar")
    daemon = buildkitd_factory()
    # retry_unhealthy 0: the builder is health-checked again on the next build.
    data = config(tmp_path, registry, git_repo, [daemon.address], buildkit_toolchain, retry_unhealthy=0)
    pipeline = pipeline_for(data)
    try:
        report = pipeline.reconcile_source("game-server", force=True)
        assert [a.action for a in report.actions] == ["build"]
        assert package_repo.arrived.wait(120), "the build never reached the download step"
        started = time.monotonic()
        os.kill(daemon.load()["pid"], signal.SIGKILL)
        pipeline.wait_for_builds(timeout=60)
        took = time.monotonic() - started
        release.set()
        action = report.actions[0]
        assert action.status == "failed"
        assert "BuildKit builder" in action.error and daemon.address in action.error
        rec = pipeline.store.get_build(action.build_id)
        # The builder's fault, not the commit's: recorded as an upstream error (no back-off on
        # the commit), so the next cycle tries again.
        assert rec.status == "upstream-error" and f"ERROR: BuildKit builder {daemon.address} is gone" in rec.log
        assert took < 30, f"the failure took {took:.0f}s to notice"

        # Next cycle, builder still down: the build fails at once, naming it; nothing hangs.
        again = pipeline.reconcile_source("game-server", force=True)
        pipeline.wait_for_builds(timeout=60)
        assert [(a.action, a.status) for a in again.actions] == [("build", "failed")]
        assert "no BuildKit builder is healthy" in again.actions[0].error

        # The builder is restarted (same state dir, same socket): the next cycle builds it.
        buildkitd_factory(str(daemon.state_dir))
        retry = pipeline.reconcile_source("game-server", force=True)
        pipeline.wait_for_builds(timeout=300)
        assert [(a.action, a.status) for a in retry.actions] == [("build", "succeeded")], retry.actions[0].error
    finally:
        release.set()
        pipeline.shutdown()
    assert [b.status for b in pipeline.store.builds()] == ["succeeded", "upstream-error", "upstream-error"]


def test_push_to_a_registry_with_credentials_never_shows_the_password(
        tmp_path, git_repo, buildkitd_factory, buildkit_toolchain):
    import crypt  # deprecated in 3.11 but present: bcrypt through libxcrypt, as htpasswd needs
    import subprocess

    import requests

    from tests.fixtures.services import free_port

    password = "s3cret-registry-pw"
    (tmp_path / "htpasswd").write_text(f"slipway:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    port = free_port()
    (tmp_path / "registry.yml").write_text(f"""version: 0.1
storage: {{filesystem: {{rootdirectory: {tmp_path / 'registry-data'}}}}}
http: {{addr: 127.0.0.1:{port}}}
auth: {{htpasswd: {{realm: slipway-test, path: {tmp_path / 'htpasswd'}}}}}
""")
    with open(tmp_path / "registry.log", "wb") as registry_log:
        proc = subprocess.Popen(["docker-registry", "serve", str(tmp_path / "registry.yml")],
                                stdout=registry_log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(f"{url}/v2/", timeout=1).status_code == 401, timeout=20,
                   what="the registry with htpasswd auth")
        sha = git_repo.seed_scratch_app("v1\n")
        daemon = buildkitd_factory()

        class Reg:
            addr = f"127.0.0.1:{port}"
        data = config(tmp_path, Reg, git_repo, [daemon.address], buildkit_toolchain)
        data["registry"].update({"username": "slipway", "password": password})
        pipeline = pipeline_for(data)
        result = run_once(pipeline)
        action = result[0].actions[0]
        assert action.status == "succeeded", action.error
        r = requests.head(f"{url}/v2/{REPO}/manifests/sha-{sha[:12]}", auth=("slipway", password), timeout=5,
                          headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == action.digest
        log = pipeline.store.get_build(action.build_id).log
        assert password not in log

    finally:
        proc.terminate()
        proc.wait(10)


def test_builder_that_stops_answering_mid_build_fails_the_build_instead_of_hanging(
        tmp_path, registry, git_repo, buildkitd_factory, buildkit_toolchain, package_repo):
    seed_cached_deps(git_repo, package_repo)
    release = package_repo.hold("guava.jar")
    daemon = buildkitd_factory()
    data = config(tmp_path, registry, git_repo, [daemon.address], buildkit_toolchain)
    data["build"]["buildkit"].update({"stall_check": 2, "connect_timeout": 2})
    pipeline = pipeline_for(data)
    pid = daemon.load()["pid"]
    try:
        report = pipeline.reconcile_source("game-server", force=True)
        assert package_repo.arrived.wait(120), "the build never reached the download step"
        os.kill(pid, signal.SIGSTOP)  # alive, holding its socket, answering nothing
        started = time.monotonic()
        pipeline.wait_for_builds(timeout=90)
        took = time.monotonic() - started
        action = report.actions[0]
        assert action.status == "failed" and "stopped answering" in action.error, action.error
        assert took < 60, f"the stall took {took:.0f}s to notice"
        assert pipeline.store.get_build(action.build_id).status == "upstream-error"
    finally:
        os.kill(pid, signal.SIGCONT)
        release.set()
        pipeline.shutdown()


def test_example_game_server_builds_with_dockerfile_buildkit_and_its_plugin_cache(
        tmp_path, registry, git_repo, buildkitd_factory, buildkit_toolchain, package_repo):
    import shutil

    example = Path(__file__).resolve().parents[2] / "examples" / "game-server"
    shutil.copytree(example, git_repo.work, dirs_exist_ok=True)
    shutil.copy(BUSYBOX, git_repo.work / "busybox")
    git_repo.commit("example", {"plugins.txt": "# plugins\nworldedit.jar\nessentials.jar\n"})
    daemon = buildkitd_factory()
    data = config(tmp_path, registry, git_repo, [daemon.address], buildkit_toolchain)
    data["sources"][0].update({"dockerfile": "Dockerfile.buildkit",
                               "build_args": {"PLUGIN_MIRROR": f"{package_repo.url}/packages"}})
    first = run_once(pipeline_for(data))[0].actions[0]
    assert first.status == "succeeded", first.error
    assert package_repo.fetches() == 2
    git_repo.commit("one more plugin", {"plugins.txt": "worldedit.jar\nessentials.jar\nluckperms.jar\n"})
    second = run_once(pipeline_for(data))[0].actions[0]
    assert second.status == "succeeded", second.error
    assert package_repo.fetches() == 3  # only the new jar: the others came from the cache mount
