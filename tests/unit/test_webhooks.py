"""Webhook receivers: secrets and signatures checked, replays and garbage harmless.

The app is the real one (``create_app``); the scheduler and pipeline it reaches are small
recording doubles, because what is under test is the receiver, not the build.
"""

from __future__ import annotations

import json
import threading

import pytest

from poller.api import create_app
from poller.api.webhooks import DeliveryMemory, github_signature, normalize_repo_url
from poller.config import parse_config
from poller.runtime import Runtime
from poller.store import Store

GL_TOKEN = "gl-hook-secret-1"
GH_SECRET = "gh-hook-secret-2"
REG_TOKEN = "reg-hook-token-3"


class RecordingScheduler:
    def __init__(self, jobs):
        self.jobs, self.triggered = set(jobs), []

    def trigger(self, job_id: str) -> bool:
        self.triggered.append(job_id)
        return job_id in self.jobs


class RecordingPipeline:
    def __init__(self):
        self.calls, self.done = [], threading.Event()

    def reconcile_source(self, name, *, force=False):
        self.calls.append((name, force))
        self.done.set()


def make_app(tmp_path, *, scheduler=None, pipeline=None, secrets=True):
    api = {"token": "api-token-x", "public_read": True}
    if secrets:
        api.update(gitlab_webhook_token=GL_TOKEN, github_webhook_secret=GH_SECRET,
                   registry_webhook_token=REG_TOKEN)
    cfg = parse_config({
        "registry": {"url": "127.0.0.1:5000"},
        "api": api,
        "sources": [
            {"name": "lobby", "gitlab": {"url": "https://gitlab.example.com", "project": "games/lobby"},
             "branch": "master", "image": "127.0.0.1:5000/lobby"},
            {"name": "match", "github": {"repo": "studio/matchmaker"}, "branch": "main",
             "image": "127.0.0.1:5000/matchmaker"},
            {"name": "engine", "git": {"url": "https://gitlab.example.com/games/engine.git"},
             "branch": "master", "image": "127.0.0.1:5000/engine"},
            {"name": "local", "git": {"url": "file:///srv/git/local.git"}, "branch": "master",
             "image": "127.0.0.1:5000/local"},
        ]}, env={})
    store = Store(tmp_path / "s.db")
    return create_app(Runtime(config=cfg, store=store, scheduler=scheduler, pipeline=pipeline))


def gitlab_push(path="games/lobby", kind="push", ref="refs/heads/master", **project_extra):
    return {"object_kind": kind, "event_name": kind, "ref": ref, "after": "a" * 40,
            "project_id": 15, "project": {"id": 15, "path_with_namespace": path,
                                          "git_http_url": f"https://gitlab.example.com/{path}.git",
                                          "git_ssh_url": f"git@gitlab.example.com:{path}.git",
                                          "web_url": f"https://gitlab.example.com/{path}", **project_extra}}


def post_gitlab(client, body, token=GL_TOKEN, uuid="uuid-1", event="Push Hook"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"X-Gitlab-Event": event, "Content-Type": "application/json"}
    if token is not None:
        headers["X-Gitlab-Token"] = token
    if uuid:
        headers["X-Gitlab-Event-UUID"] = uuid
    return client.post("/hooks/gitlab", data=data, headers=headers)


def post_github(client, body, secret=GH_SECRET, event="push", delivery="d-1", signature=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery,
               "Content-Type": "application/json",
               "X-Hub-Signature-256": (github_signature(secret, raw) if signature is None else signature)}
    return client.post("/hooks/github", data=raw, headers=headers)


def registry_envelope(repo="lobby", tag="1.2.0", event_id="ev-1", host="127.0.0.1:5000"):
    return {"events": [
        {"id": event_id + "-layer", "action": "push",
         "target": {"mediaType": "application/octet-stream", "repository": repo, "digest": "sha256:" + "b" * 64},
         "request": {"host": host}},
        {"id": event_id, "action": "push", "timestamp": "2026-11-22T03:00:00Z",
         "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "repository": repo, "tag": tag, "digest": "sha256:" + "c" * 64},
         "request": {"host": host, "method": "PUT"}}]}


# -- GitLab ---------------------------------------------------------------------------------
def test_gitlab_push_triggers_the_matching_source(tmp_path):
    sched = RecordingScheduler({"source:lobby", "source:engine"})
    c = make_app(tmp_path, scheduler=sched).test_client()
    r = post_gitlab(c, gitlab_push())
    assert r.status_code == 202 and r.json["matched"] == ["lobby"]
    assert r.json["triggered"] == [{"source": "lobby", "trigger": "scheduled"}]
    assert sched.triggered == ["source:lobby"]
    # A plain git source is matched by its clone URL; a tag push is a trigger too.
    r = post_gitlab(c, gitlab_push("games/engine", kind="tag_push", ref="refs/tags/v1.0.0"),
                    uuid="uuid-2", event="Tag Push Hook")
    assert r.json["matched"] == ["engine"] and sched.triggered[-1] == "source:engine"


def test_gitlab_wrong_or_missing_token_is_401_and_changes_nothing(tmp_path):
    sched = RecordingScheduler({"source:lobby"})
    c = make_app(tmp_path, scheduler=sched).test_client()
    assert post_gitlab(c, gitlab_push(), token="nope").status_code == 401
    assert post_gitlab(c, gitlab_push(), token=None).status_code == 401
    assert post_gitlab(c, gitlab_push(), token=GL_TOKEN + "x").status_code == 401
    assert sched.triggered == []
    # The refused delivery id was not remembered: the genuine one still gets through.
    assert post_gitlab(c, gitlab_push()).json["matched"] == ["lobby"]


def test_gitlab_replay_is_harmless(tmp_path):
    sched = RecordingScheduler({"source:lobby"})
    c = make_app(tmp_path, scheduler=sched).test_client()
    assert post_gitlab(c, gitlab_push(), uuid="same").status_code == 202
    again = post_gitlab(c, gitlab_push(), uuid="same")
    assert again.status_code == 200 and again.json["duplicate"] is True
    assert sched.triggered == ["source:lobby"]


def test_gitlab_malformed_and_unknown(tmp_path):
    sched = RecordingScheduler({"source:lobby"})
    c = make_app(tmp_path, scheduler=sched).test_client()
    assert post_gitlab(c, b"{not json").status_code == 400
    assert post_gitlab(c, b"[1, 2]", uuid="u-list").status_code == 400
    assert post_gitlab(c, b"\xff\xfe", uuid="u-bin").status_code == 400
    r = post_gitlab(c, gitlab_push("other/thing"), uuid="u-unknown")
    assert r.status_code == 202 and r.json["matched"] == []
    r = post_gitlab(c, {"object_kind": "issue"}, uuid="u-issue", event="Issue Hook")
    assert r.status_code == 202 and r.json["ignored"] is True
    # A push with a garbage project section matches nothing and does not crash.
    r = post_gitlab(c, {"object_kind": "push", "project": "x", "repository": 3}, uuid="u-garbage")
    assert r.status_code == 202 and r.json["matched"] == []
    assert sched.triggered == []


def test_unconfigured_receivers_are_disabled_not_open(tmp_path):
    c = make_app(tmp_path, secrets=False).test_client()
    assert post_gitlab(c, gitlab_push(), token="").status_code == 403
    assert post_github(c, {"repository": {"full_name": "studio/matchmaker"}}).status_code == 403
    assert c.post("/hooks/registry", json=registry_envelope()).status_code == 403


def test_without_scheduler_the_pipeline_reconciles_in_the_background(tmp_path):
    pipeline = RecordingPipeline()
    c = make_app(tmp_path, pipeline=pipeline).test_client()
    r = post_gitlab(c, gitlab_push())
    assert r.json["triggered"] == [{"source": "lobby", "trigger": "started"}]
    assert pipeline.done.wait(10)
    assert pipeline.calls == [("lobby", True)]


# -- GitHub ---------------------------------------------------------------------------------
def github_push(full_name="studio/matchmaker"):
    return {"ref": "refs/tags/v2.0.0", "after": "d" * 40,
            "repository": {"full_name": full_name, "clone_url": f"https://github.com/{full_name}.git",
                           "ssh_url": f"git@github.com:{full_name}.git"}}


def test_github_signed_push_triggers_and_bad_signatures_do_not(tmp_path):
    sched = RecordingScheduler({"source:match"})
    c = make_app(tmp_path, scheduler=sched).test_client()
    body = json.dumps(github_push()).encode()
    assert post_github(c, body, secret="wrong", delivery="x1").status_code == 401
    assert post_github(c, body, signature="sha1=abc", delivery="x2").status_code == 401
    assert post_github(c, body, signature="", delivery="x3").status_code == 401
    # The signature covers the exact bytes: the same JSON re-serialised differently fails.
    sig = github_signature(GH_SECRET, body)
    assert post_github(c, body.replace(b", ", b","), signature=sig, delivery="x4").status_code == 401
    assert sched.triggered == []
    r = post_github(c, body, delivery="ok-1")
    assert r.status_code == 202 and r.json["matched"] == ["match"] and sched.triggered == ["source:match"]
    assert post_github(c, body, delivery="ok-1").json["duplicate"] is True
    assert sched.triggered == ["source:match"]


def test_github_ping_unknown_and_malformed(tmp_path):
    sched = RecordingScheduler({"source:match"})
    c = make_app(tmp_path, scheduler=sched).test_client()
    assert post_github(c, {"zen": "Keep it simple."}, event="ping").json["pong"] is True
    assert post_github(c, b"{broken", delivery="m1").status_code == 400
    r = post_github(c, github_push("someone/else"), delivery="m2")
    assert r.status_code == 202 and r.json["matched"] == []
    assert post_github(c, github_push(), event="issues", delivery="m3").json["ignored"] is True
    assert sched.triggered == []


# -- registry -------------------------------------------------------------------------------
def test_registry_push_is_recorded_and_triggers_a_scheduled_image_job(tmp_path):
    sched = RecordingScheduler({"image:127.0.0.1:5000/lobby"})
    app = make_app(tmp_path, scheduler=sched)
    c = app.test_client()
    auth = {"Authorization": f"Bearer {REG_TOKEN}"}
    assert c.post("/hooks/registry", json=registry_envelope(), headers={"Authorization": "Bearer no"}).status_code == 401
    assert c.post("/hooks/registry", json=registry_envelope()).status_code == 401
    store = app.extensions["slipway"].store
    assert list(store.events(kind="registry.push")) == []
    r = c.post("/hooks/registry", json=registry_envelope(), headers=auth)
    assert r.status_code == 202
    assert r.json["matched"] == [{"image": "127.0.0.1:5000/lobby", "tag": "1.2.0",
                                  "digest": "sha256:" + "c" * 64, "triggered": ["image:127.0.0.1:5000/lobby"]}]
    events = list(store.events(kind="registry.push"))
    assert len(events) == 1 and events[0]["subject"] == "127.0.0.1:5000/lobby"
    assert events[0]["detail"]["tag"] == "1.2.0"
    # The registry retries a whole envelope: a replay records nothing new.
    again = c.post("/hooks/registry", json=registry_envelope(), headers=auth)
    assert again.json == {"matched": [], "duplicates": 1}
    assert len(list(store.events(kind="registry.push"))) == 1
    # Unwatched repositories, pulls and malformed envelopes are harmless.
    assert c.post("/hooks/registry", json=registry_envelope(repo="nobody", event_id="e2"),
                  headers=auth).json["matched"] == []
    assert c.post("/hooks/registry", json={"events": [{"action": "pull", "target": {}}, 7]},
                  headers=auth).json["matched"] == []
    assert c.post("/hooks/registry", data="nope", headers=auth).status_code == 400
    assert c.post("/hooks/registry", json={"events": "x"}, headers=auth).status_code == 400
    assert len(list(store.events(kind="registry.push"))) == 1


# -- helpers --------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    "https://gitlab.example.com/games/lobby.git", "https://user:pw@GitLab.example.com/games/lobby/",
    "git@gitlab.example.com:games/lobby.git", "ssh://git@gitlab.example.com/games/lobby",
])
def test_repo_urls_normalise_to_one_form(url):
    assert normalize_repo_url(url) == "gitlab.example.com/games/lobby"


def test_file_urls_and_ports():
    assert normalize_repo_url("file:///srv/git/local.git") == "/srv/git/local"
    assert normalize_repo_url("http://127.0.0.1:8929/a/b.git") == "127.0.0.1:8929/a/b"


def test_delivery_memory_is_bounded():
    mem = DeliveryMemory(size=3)
    assert all(mem.first_time(k) for k in "abcd")
    assert len(mem) == 3
    assert mem.first_time("a")          # forgotten: oldest went first
    assert not mem.first_time("d")


def test_registry_push_of_a_deployed_image_triggers_the_updater(tmp_path):
    cfg = parse_config({
        "registry": {"url": "127.0.0.1:5000"},
        "api": {"registry_webhook_token": REG_TOKEN},
        "updates": {"deployments": [{
            "name": "game-prod", "image": "127.0.0.1:5000/game-server", "policy": "minor",
            "target": {"kubernetes": {"kind": "Deployment", "name": "game", "namespace": "prod",
                                      "container": "engine"}}}]}}, env={})
    sched = RecordingScheduler({"updates"})
    app = create_app(Runtime(config=cfg, store=Store(tmp_path / "s.db"), scheduler=sched))
    r = app.test_client().post("/hooks/registry", json=registry_envelope(repo="game-server"),
                               headers={"Authorization": f"Bearer {REG_TOKEN}"})
    assert r.status_code == 202 and r.json["matched"][0]["triggered"] == ["updates"]
    assert sched.triggered[0] == "updates"
