"""The secret-leak check: distinctive secrets (ASCII, non-ASCII, quotes, backslashes) planted
in every secret-bearing setting, real builds (one that prints a build arg and the registry
password, one that prints them and fails), upstreams that fail, then every CLI and HTTP read
path. Nothing captured -- output, logs, the store's files, /metrics, the dashboard -- may
hold any of them, in any encoding."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from tests.doubles.gitrepo import BUSYBOX, GitRepo
from tests.fixtures.services import free_port, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

#: One distinctive value per secret-bearing setting; every kind of awkward character.
SECRETS = {
    "REG_PW": "rëg-pässwörd-ü-✓-RP7",           # inline in registry.url, and echoed by a build
    "BUILD_SECRET": 'bu"ild-\\arg-BA3',          # a build arg from ${VAR}, echoed by both builds
    "API_TOKEN": 'api-tok-Ω-"q"-AT9',
    "GITLAB_HOOK": "glwh\\sec-GW2-ä",
    "GITHUB_HOOK": 'ghwh-"sec"-GH4',
    "REGISTRY_HOOK": "rgwh-ß-RW6",
    "GITLAB_TOKEN": "glpat-ünïcode-GT1",
    "GITHUB_TOKEN": 'ghp_"quoted"\\-GT5',
    "HELM_TOKEN": "helm-tök-HT8",
    "CHART_PW": 'chart-pw-\\"x-CP2',
    "NOTIFY_TOKEN": "notify-hook-NT3",
    "UPDATES_PW": "upd-reg-pw-ÜR1",
    "GITLAB_URL_PW": "gl-url-pw-GU5",           # inline in a GitLab URL
}

DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
ARG SECRET_ARG
ARG PW
RUN ["/bin/busybox", "sh", "-c", "printf 'arg=%s pw=%s\\\\n' \\"$SECRET_ARG\\" \\"$PW\\"{fail}"]
CMD ["/bin/busybox", "true"]
"""


def forms(secret: str) -> set[str]:
    """How a secret could show up: raw, JSON-escaped (ASCII or not), repr'd, URL-quoted."""
    return {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
            repr(secret)[1:-1], quote(secret, safe=""), quote(secret)}


def leaks(name: str, blob: bytes) -> list[str]:
    found = []
    for key, secret in SECRETS.items():
        for form in forms(secret):
            for enc in ("utf-8", "utf-16-le"):  # SQLite may keep text as UTF-16 too
                if form.encode(enc) in blob:
                    found.append(f"{key} ({form!r}, {enc}) in {name}")
    return found


def _app_repo(root: Path, name: str, fail: bool) -> GitRepo:
    repo = GitRepo(root, name=name)
    shutil.copy(BUSYBOX, repo.work / "busybox")
    repo.commit("app", {"Dockerfile": DOCKERFILE.replace("{fail}", "; exit 3" if fail else "")})
    return repo


@pytest.fixture
def setup(tmp_path, registry, docker_host):
    ok = _app_repo(tmp_path / "repos", "leaky-app", fail=False)
    bad = _app_repo(tmp_path / "repos", "leaky-broken", fail=True)
    closed = free_port()  # nothing listens: every hosted upstream fails
    api_port = free_port()
    build_args = {"SECRET_ARG": "${BUILD_SECRET}", "PW": "${REG_PW}"}
    data = {
        "registry": {"url": "http://robot:${REG_PW_URL}@" + registry.addr, "insecure": True},
        "store": {"path": str(tmp_path / "store" / "slipway.db")},
        "state_dir": str(tmp_path / "state"),
        "poll": {"interval": 0.5, "jitter": 0.1, "resync": 30},
        "build": {"retry_initial": 0.5, "retry_max": 1},
        "api": {"listen": f"127.0.0.1:{api_port}", "token": "${API_TOKEN}", "public_read": True,
                "gitlab_webhook_token": "${GITLAB_HOOK}", "github_webhook_secret": "${GITHUB_HOOK}",
                "registry_webhook_token": "${REGISTRY_HOOK}"},
        "sources": [
            {"name": "app", "git": {"url": ok.url}, "branch": "master", "image": f"{registry.addr}/leaky-app",
             "build_args": build_args},
            {"name": "broken", "git": {"url": bad.url}, "branch": "master",
             "image": f"{registry.addr}/leaky-broken", "build_args": build_args},
            {"name": "lab", "gitlab": {"url": f"http://bot:${{GITLAB_URL_PW}}@127.0.0.1:{closed}", "project": "g/lab",
                                       "token": "${GITLAB_TOKEN}"},
             "branch": "master", "image": f"{registry.addr}/lab"},
            {"name": "hub", "github": {"repo": "o/hub", "api_url": f"http://127.0.0.1:{closed}",
                                       "token": "${GITHUB_TOKEN}"},
             "branch": "master", "image": f"{registry.addr}/hub"},
        ],
        "charts": {"repos": [{"name": "cm", "url": f"http://127.0.0.1:{closed}", "username": "u",
                              "password": "${CHART_PW}"}],
                   "helm_api": {"url": f"http://127.0.0.1:{closed}", "token": "${HELM_TOKEN}"}},
        "notify": {"webhooks": [{"url": f"http://127.0.0.1:{closed}/hooks/${{NOTIFY_TOKEN}}",
                                 "format": "json", "timeout": 1}]},
        "updates": {"registries": [{"url": "https://u:${UPDATES_PW_URL}@other-registry.example:5000"}]},
    }
    cfg = tmp_path / "slipway.yaml"
    cfg.write_text(yaml.safe_dump(data))
    env = {**os.environ, **SECRETS, "REG_PW_URL": quote(SECRETS["REG_PW"], safe=""),
           "UPDATES_PW_URL": quote(SECRETS["UPDATES_PW"], safe=""),
           "DOCKER_HOST": docker_host}
    return cfg, env, api_port, tmp_path


def _cli(env, *args) -> str:
    res = subprocess.run([sys.executable, "-m", "poller", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    return f"$ poller {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}\n"


def _http(port, method, path, body=None, headers=None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    head = "".join(f"{k}: {v}\n" for k, v in resp.getheaders())
    return resp.status, f"{method} {path} -> {resp.status}\n{head}\n{data.decode('utf-8', 'replace')}\n"


def test_no_planted_secret_appears_in_any_output_log_store_or_endpoint(setup, registry):
    cfg, env, port, tmp_path = setup
    captured: list[tuple[str, bytes]] = []

    captured.append(("check-config", _cli(env, "check-config", str(cfg)).encode()))

    # poller run (text logs): builds, the failing build, failing upstreams, notifications.
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "poller", "--log-format", "text", "run", "--config",
                                 str(cfg)], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        def builds():
            try:
                status, text = _http(port, "GET", "/api/v1/builds")
            except OSError:
                return []
            return json.loads(text.split("\n\n", 1)[1]) if status == 200 else []
        wait_until(lambda: {(b["source"], b["status"]) for b in builds()} >= {("app", "succeeded"),
                                                                            ("broken", "failed")},
                   timeout=60, what="a succeeded and a failed build")
        ids = [b["id"] for b in builds()]
        auth = {"Authorization": f"Bearer {SECRETS['API_TOKEN']}".encode().decode("latin-1", "replace")}
        paths = ["/healthz", "/metrics", "/api/v1/status", "/api/v1/builds", "/api/v1/approvals",
                 "/api/v1/updates", "/api/v1/updates/history", "/api/v1/fleet", "/dashboard",
                 "/dashboard/sections", "/api/v1/builds?limit=abc"]
        paths += [p for i in ids for p in (f"/api/v1/builds/{i}", f"/dashboard/builds/{i}/log")]
        for path in paths:
            for headers in ({}, auth):
                captured.append((f"GET {path}", _http(port, "GET", path, headers=headers)[1].encode()))
        # Failing writes and webhooks with wrong secrets: their errors must not echo the right ones.
        for path, headers in [("/hooks/gitlab", {"X-Gitlab-Token": "wrong"}),
                              ("/hooks/github", {"X-Hub-Signature-256": "sha256=00", "X-GitHub-Event": "push"}),
                              ("/hooks/registry", {"Authorization": "Bearer wrong"}),
                              ("/api/v1/sources/app/reconcile", {"Authorization": "Bearer wrong"}),
                              ("/api/v1/sources/app/reconcile", auth)]:
            captured.append((f"POST {path}", _http(port, "POST", path, body=b"{}",
                                                   headers={"Content-Type": "application/json",
                                                            **headers})[1].encode()))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    captured.append(("poller run log", log_path.read_bytes()))

    # poller once (JSON logs, JSON output): the failing build is retried and fails again.
    captured.append(("once --json", _cli(env, "--log-format", "json", "once", "--config", str(cfg),
                                         "--json").encode()))
    captured.append(("status", _cli(env, "status", "--config", str(cfg)).encode()))
    captured.append(("status --json", _cli(env, "status", "--config", str(cfg), "--json").encode()))
    for i in ids:
        captured.append((f"status --log {i}", _cli(env, "status", "--config", str(cfg), "--log", str(i)).encode()))
    captured.append(("approvals list", _cli(env, "approvals", "list", "--config", str(cfg), "--all").encode()))
    for f in sorted((tmp_path / "store").iterdir()):
        captured.append((f"store file {f.name}", f.read_bytes()))

    everything = b"".join(blob for _, blob in captured)
    found = [hit for name, blob in captured for hit in leaks(name, blob)]
    assert not found, "\n".join(found)
    # The test saw what it meant to: both builds printed their line, and it was masked.
    assert b"arg=*** pw=***" in everything
    assert b"returned a non-zero code: 3" in everything
