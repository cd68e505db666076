"""Instant triggers end to end: a real ``poller run`` whose poll interval is an hour, a real git
push followed by a GitLab-style push webhook, a real dockerd build, and a real docker-registry
whose notification endpoint is the poller's ``/hooks/registry``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

from poller.approvals import ApprovalQueue
from poller.store import Store
from tests.fixtures.services import Registry, free_port, start_registry, stop_registry, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REPO = "game-server"
GITLAB_TOKEN = "gl-webhook-e2e-secret"
REGISTRY_TOKEN = "registry-webhook-e2e-token"
API_TOKEN = "api-e2e-token"


def start_notifying_registry(root: Path, hook_url: str, token: str) -> Registry:
    """A docker-registry that notifies ``hook_url`` (with a bearer token) and a counting sink."""
    root.mkdir(parents=True, exist_ok=True)
    return start_registry(root, notify=[(hook_url, token)])


class _JsonSink(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.bodies.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def start_json_sink() -> ThreadingHTTPServer:
    """A real HTTP endpoint that keeps every JSON body POSTed to it (a chat webhook stand-in)."""
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _JsonSink)
    sink.bodies, sink.lock = [], threading.Lock()
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    return sink


def notified(sink, event: str) -> list[dict]:
    with sink.lock:
        return [b for b in sink.bodies if b.get("event") == event]


@dataclass
class RunningPoller:
    proc: subprocess.Popen
    api: str
    store_path: Path
    log_path: Path

    def builds(self) -> list[dict]:
        return requests.get(f"{self.api}/api/v1/builds", timeout=5).json()

    def build_for(self, ref: str) -> dict | None:
        return next((b for b in self.builds() if b["ref"] == ref), None)

    def store(self) -> Store:
        return Store(self.store_path)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.log_path.read_text()


def start_poller(tmp_path: Path, git_url: str, registry_addr: str, docker_host: str, *,
                 api_port: int, interval: float = 3600.0, extra: dict | None = None) -> RunningPoller:
    data = {
        "registry": {"url": registry_addr, "insecure": True},
        "store": {"path": str(tmp_path / "slipway.db")},
        "state_dir": str(tmp_path / "state"),
        "build": {"concurrency": 2, "retry_initial": 3600},
        "poll": {"interval": interval, "jitter": 0, "resync": 3600},
        "api": {"listen": f"127.0.0.1:{api_port}", "token": API_TOKEN, "public_read": True,
                "gitlab_webhook_token": GITLAB_TOKEN, "registry_webhook_token": REGISTRY_TOKEN},
        "sources": [{"name": "game-server", "git": {"url": git_url}, "branch": "master",
                     "image": f"{registry_addr}/{REPO}"}],
        **(extra or {}),
    }
    cfg = tmp_path / "slipway.yaml"
    cfg.write_text(yaml.safe_dump(data))
    log_path = tmp_path / "poller.log"
    proc = subprocess.Popen([sys.executable, "-m", "poller", "--log-format", "json", "run", "--config", str(cfg)],
                            cwd=ROOT, env={**os.environ, "DOCKER_HOST": docker_host},
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    run = RunningPoller(proc, f"http://127.0.0.1:{api_port}", tmp_path / "slipway.db", log_path)
    try:
        wait_until(lambda: requests.get(f"{run.api}/healthz", timeout=1).ok, timeout=30,
                   what="the poller's API")
    except AssertionError:
        raise AssertionError("poller did not start:\n" + run.stop()[-3000:])
    return run


def gitlab_push_hook(api: str, *, git_url: str, ref: str, after: str, token: str = GITLAB_TOKEN,
                     delivery: str | None = None) -> requests.Response:
    """What GitLab POSTs after a push (the fields Slipway reads, shaped like GitLab's)."""
    tag = ref.startswith("refs/tags/")
    body = {"object_kind": "tag_push" if tag else "push", "event_name": "tag_push" if tag else "push",
            "ref": ref, "before": "0" * 40, "after": after, "checkout_sha": after, "project_id": 7,
            "project": {"id": 7, "path_with_namespace": "games/game-server", "git_http_url": git_url,
                        "web_url": "https://gitlab.example.com/games/game-server"},
            "repository": {"name": "game-server", "git_http_url": git_url}}
    return requests.post(f"{api}/hooks/gitlab", data=json.dumps(body), timeout=10, headers={
        "Content-Type": "application/json", "X-Gitlab-Event": "Tag Push Hook" if tag else "Push Hook",
        "X-Gitlab-Token": token, "X-Gitlab-Event-UUID": delivery or str(uuid.uuid4())})


def test_push_webhook_starts_the_build_at_once_and_registry_pushes_are_heard(tmp_path, git_repo, docker_host):
    api_port = free_port()
    registry = start_notifying_registry(tmp_path / "registry", f"http://127.0.0.1:{api_port}/hooks/registry",
                                        REGISTRY_TOKEN)
    git_repo.seed_scratch_app("v1\n")
    sink = start_json_sink()
    # An approval that is already waiting is announced once the poller runs.
    appr = ApprovalQueue(Store(tmp_path / "slipway.db")).request(
        kind="deployment", subject="prod/game-server", from_version="0.9.0", to_version="1.0.0")
    run = start_poller(tmp_path, git_repo.url, registry.addr, docker_host, api_port=api_port, extra={
        "notify": {"webhooks": [{"url": f"http://127.0.0.1:{sink.server_address[1]}/hook", "format": "json"}]}})
    try:
        # The start-up pass builds staging; after that nothing polls for an hour.
        wait_until(lambda: (b := run.build_for("branch:master")) and b["status"] == "succeeded",
                   timeout=120, what="the start-up staging build")
        wait_until(lambda: any(s["last_poll"] for s in requests.get(f"{run.api}/api/v1/status").json()["sources"]),
                   what="the start-up poll to be recorded")
        # The registry told the poller about its own push (manifest push, tag staging).
        wait_until(lambda: any(e["detail"].get("tag") == "staging"
                               for e in run.store().events(kind="registry.push")),
                   timeout=30, what="the registry's notification of the staging push")

        # A forged hook changes nothing.
        git_repo.tag("v1.0.0")
        sha = git_repo.head()
        forged = gitlab_push_hook(run.api, git_url=git_repo.url, ref="refs/tags/v1.0.0", after=sha,
                                  token="wrong")
        assert forged.status_code == 401
        # The real one starts the build within a few seconds.
        delivery = str(uuid.uuid4())
        sent = time.monotonic()
        r = gitlab_push_hook(run.api, git_url=git_repo.url, ref="refs/tags/v1.0.0", after=sha,
                             delivery=delivery)
        assert r.status_code == 202 and r.json()["matched"] == ["game-server"], r.text
        wait_until(lambda: run.build_for("tag:v1.0.0"), timeout=5, interval=0.02,
                   what="the tag's build to start after the webhook")
        started_after = time.monotonic() - sent
        assert started_after < 5
        # Replaying the delivery is harmless: no second build.
        replay = gitlab_push_hook(run.api, git_url=git_repo.url, ref="refs/tags/v1.0.0", after=sha,
                                  delivery=delivery)
        assert replay.status_code == 200 and replay.json()["duplicate"] is True
        wait_until(lambda: run.build_for("tag:v1.0.0")["status"] == "succeeded", timeout=120,
                   what="the release build to finish")
        assert "1.0.0" in registry.tags(REPO)
        assert [b["ref"] for b in run.builds()].count("tag:v1.0.0") == 1
        wait_until(lambda: any(e["detail"].get("tag") == "1.0.0"
                               for e in run.store().events(kind="registry.push")),
                   timeout=30, what="the registry's notification of the 1.0.0 push")
        metrics = requests.get(f"{run.api}/metrics", timeout=5).text
        assert 'slipway_builds_total{kind="release",result="succeeded",source="game-server"} 1.0' in metrics
        assert 'slipway_approvals_pending{kind="deployment"} 1.0' in metrics
        assert f'slipway_upstream_requests_total{{status="200",upstream="registry:{registry.addr}"}}' in metrics
        # Notifications: the release, and the waiting approval (once), reached the webhook.
        released = wait_until(lambda: notified(sink, "release.deployed"), timeout=10,
                              what="the release notification")
        assert released[0]["image"] == f"{registry.addr}/{REPO}" and "1.0.0" in released[0]["tags"]
        asked = wait_until(lambda: notified(sink, "approval.requested"), timeout=10,
                           what="the approval notification")
        assert len(asked) == 1 and asked[0]["approval_id"] == appr.id
        assert notified(sink, "build.failed") == []
    finally:
        text = run.stop()
        stop_registry(registry)
        registry.sink.shutdown()
        sink.shutdown()
    assert run.proc.returncode == 0, text[-3000:]
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    hooks = [entry for entry in lines if entry.get("event") == "webhook.trigger"]
    assert hooks and hooks[0]["source"] == "game-server"
    assert API_TOKEN not in text and GITLAB_TOKEN not in text and REGISTRY_TOKEN not in text
    # The build's lines after build.started (progress, result) carry its correlation id.
    build_lines = [entry for entry in lines if entry.get("event", "").startswith("build.")
                   and entry.get("ref") == "tag:v1.0.0"]
    assert [e["event"] for e in build_lines][0] == "build.started"
    build_id = build_lines[0]["build_id"]
    assert {e.get("cid") for e in build_lines[1:]} == {f"build-{build_id}"}
    assert any(e["event"] == "build.progress" and e.get("step") for e in build_lines)


def test_github_push_webhook_starts_the_build_at_once(tmp_path, git_repo, github_double, registry, docker_host):
    """GitHub: a real ``poller run`` polling hourly, a GitHub source served by the REST double
    over a real repository, and a push webhook signed with HMAC-SHA256."""
    from poller.api.webhooks import github_signature
    from tests.doubles.github import DEFAULT_TOKEN as GH_TOKEN

    secret = "gh-webhook-e2e-secret"
    git_repo.seed_scratch_app("v1\n")
    github_double.add_repo("studio/matchmaker", git_repo)
    api_port = free_port()
    run = start_poller(tmp_path, git_repo.url, registry.addr, docker_host, api_port=api_port, extra={
        "api": {"listen": f"127.0.0.1:{api_port}", "token": API_TOKEN, "github_webhook_secret": secret},
        "sources": [{"name": "matchmaker", "branch": "master", "image": f"{registry.addr}/matchmaker",
                     "github": {"repo": "studio/matchmaker", "api_url": github_double.url, "token": GH_TOKEN}}]})
    try:
        wait_until(lambda: (b := run.build_for("branch:master")) and b["status"] == "succeeded",
                   timeout=120, what="the start-up staging build")
        new = git_repo.commit("merge", {"app.txt": "v2\n"})
        body = json.dumps({"ref": "refs/heads/master", "after": new,
                           "repository": {"full_name": "studio/matchmaker",
                                          "clone_url": "https://github.com/studio/matchmaker.git"}}).encode()

        def hook(signature: str, delivery: str) -> requests.Response:
            return requests.post(f"{run.api}/hooks/github", data=body, timeout=10, headers={
                "Content-Type": "application/json", "X-GitHub-Event": "push",
                "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": signature})

        assert hook("sha256=" + "0" * 64, str(uuid.uuid4())).status_code == 401
        assert not [b for b in run.builds() if b["sha"] == new]
        r = hook(github_signature(secret, body), str(uuid.uuid4()))
        assert r.status_code == 202 and r.json()["matched"] == ["matchmaker"], r.text
        wait_until(lambda: any(b["sha"] == new for b in run.builds()), timeout=5, interval=0.02,
                   what="the merge's build to start after the webhook")
        wait_until(lambda: registry.digest("matchmaker", "staging") and
                   registry.labels("matchmaker", "staging")["org.opencontainers.image.revision"] == new,
                   timeout=120, what="staging at the merged commit")
    finally:
        text = run.stop()
    assert run.proc.returncode == 0, text[-3000:]
    assert secret not in text and GH_TOKEN not in text
