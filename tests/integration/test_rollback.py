"""``poller rollback`` the way an operator runs it, against the real registry, real git and
real dockerd (builds), and the GitLab / GitHub doubles driven through the real clients."""

from __future__ import annotations

import json

import pytest

from poller.config import SourceConfig
from poller.errors import SlipwayError
from poller.rollback import Rollbacks
from poller.sources.github import GitHubSource
from poller.sources.gitlab import GitLabSource
from poller.store import Store
from tests.doubles.github import DEFAULT_TOKEN as GITHUB_TOKEN
from tests.doubles.gitlab import DEFAULT_TOKEN as GITLAB_TOKEN
from tests.doubles.gitrepo import GitRepo, git
from tests.integration.test_pipeline import REPO, make_config, poller, write_config
from tests.integration.test_webhooks_e2e import notified, start_json_sink

pytestmark = pytest.mark.integration


def once(cfg, docker_host) -> dict:
    res = poller("once", "--config", str(cfg), "--json", env_extra={"DOCKER_HOST": docker_host},
                 timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def rollback(cfg, *args) -> tuple[int, str, str]:
    res = poller("rollback", "game-server", "--config", str(cfg), *args, timeout=120)
    return res.returncode, res.stdout, res.stderr


def staging_action(out: dict) -> dict:
    return next(a for a in out["sources"][0]["actions"] if a["ref"] == "branch:master")


def test_staging_rollback_repoints_without_rebuild_and_holds_until_the_next_merge(
        tmp_path, registry, git_repo, docker_host):
    first = git_repo.seed_scratch_app("v1\n")
    cfg = write_config(tmp_path, make_config(tmp_path, registry, git_repo))
    once(cfg, docker_host)
    first_digest = registry.digest(REPO, "staging")
    git_repo.commit("merge", {"app.txt": "v2\n"})
    once(cfg, docker_host)
    second_digest = registry.digest(REPO, "staging")
    assert second_digest != first_digest

    # says what it will do, changes nothing
    code, out, err = rollback(cfg, "--env", "staging", "--dry-run")
    assert code == 0, err
    assert "would" in out and first_digest[:19] in out and "no rebuild" in out
    assert "dry run: nothing changed" in out
    assert registry.digest(REPO, "staging") == second_digest

    code, out, err = rollback(cfg, "--env", "staging", "--reason", "crash on join", "--by", "alice")
    assert code == 0, err
    assert registry.digest(REPO, "staging") == first_digest
    assert registry.labels(REPO, "staging")["org.opencontainers.image.revision"] == first

    # held: the branch head is still `second`, and the pipeline leaves staging alone
    out = once(cfg, docker_host)
    assert staging_action(out)["action"] == "held"
    assert registry.digest(REPO, "staging") == first_digest
    store = Store(tmp_path / "slipway.db")
    assert len(store.builds(source="game-server")) == 2   # no rebuild at any point
    [event] = store.events(kind="rollback")
    assert event["subject"] == "game-server"
    assert event["detail"]["by"] == "alice" and event["detail"]["reason"] == "crash on join"
    assert event["detail"]["to_digest"] == first_digest
    assert event["detail"]["from_digest"] == second_digest

    # the next merge releases the hold and is built as usual
    third = git_repo.commit("fix", {"app.txt": "v3\n"})
    out = once(cfg, docker_host)
    assert staging_action(out)["action"] == "build"
    assert registry.labels(REPO, "staging")["org.opencontainers.image.revision"] == third
    released = list(store.events(kind="rollback.released"))
    assert released and "new commit" in released[0]["detail"]["reason"]


def test_staging_rollback_to_a_named_build_then_unpin_follows_the_branch_again(
        tmp_path, registry, git_repo, docker_host):
    first = git_repo.seed_scratch_app("v1\n")
    cfg = write_config(tmp_path, make_config(tmp_path, registry, git_repo))
    once(cfg, docker_host)
    git_repo.commit("merge", {"app.txt": "v2\n"})
    once(cfg, docker_host)
    second_digest = registry.digest(REPO, "staging")

    code, out, err = rollback(cfg, "--env", "staging", "--to", f"sha-{first[:12]}")
    assert code == 0, err
    assert registry.labels(REPO, "staging")["org.opencontainers.image.revision"] == first

    code, out, err = rollback(cfg, "--env", "staging", "--unpin")
    assert code == 0 and "released" in out, err
    out = once(cfg, docker_host)
    assert staging_action(out)["action"] == "retag"          # back to the head, no rebuild
    assert registry.digest(REPO, "staging") == second_digest


def test_staging_rollback_with_nothing_to_go_back_to_says_so(tmp_path, registry, git_repo, docker_host):
    git_repo.seed_scratch_app("v1\n")
    cfg = write_config(tmp_path, make_config(tmp_path, registry, git_repo))
    once(cfg, docker_host)
    for args, says in ((("--env", "staging"), "no earlier staging build"),
                       (("--env", "staging", "--to", "sha-0000000000aa"), "no image"),
                       (("--env", "staging", "--to", "latest"), "give a build id"),
                       (("--env", "production"), "needs --to X.Y.Z")):
        code, _out, err = rollback(cfg, *args)
        assert code != 0
        assert says in err and "Traceback" not in err


def test_production_rollback_tags_the_old_commit_with_the_next_patch_and_the_pipeline_builds_it(
        tmp_path, registry, git_repo, docker_host):
    old = git_repo.seed_scratch_app("v1\n")
    git_repo.tag("v1.3.0")
    git_repo.commit("feature", {"app.txt": "v2\n"})
    git_repo.tag("v1.4.0")
    sink = start_json_sink()
    data = make_config(tmp_path, registry, git_repo)
    data["notify"] = {"webhooks": [{"url": f"http://127.0.0.1:{sink.server_address[1]}/hook",
                                    "format": "json"}]}
    cfg = write_config(tmp_path, data)
    once(cfg, docker_host)
    assert {"1.3.0", "1.4.0"} <= set(registry.tags(REPO))

    code, out, err = rollback(cfg, "--env", "production", "--to", "1.3.0", "--dry-run")
    assert code == 0, err
    assert f"create tag v1.4.1 on {old[:12]}" in out and "dry run" in out
    assert "v1.4.1" not in git("tag", cwd=git_repo.bare).split()

    code, out, err = rollback(cfg, "--env", "production", "--to", "1.3.0", "--reason", "bad 1.4")
    assert code == 0, err
    assert git("rev-parse", "v1.4.1^{commit}", cwd=git_repo.bare) == old
    once(cfg, docker_host)
    assert registry.labels(REPO, "1.4.1")["org.opencontainers.image.revision"] == old
    [event] = Store(tmp_path / "slipway.db").events(kind="rollback")
    assert event["detail"]["tag"] == "v1.4.1" and event["detail"]["reason"] == "bad 1.4"
    [note] = notified(sink, "rollback.production")
    assert "v1.4.1" in note["text"] and note["reason"] == "bad 1.4"
    sink.shutdown()

    code, out, err = rollback(cfg, "--env", "production", "--to", "9.9.9")
    assert code != 0 and "no release tag 9.9.9" in err


def _rollbacks(tmp_path, source, name="lobby"):
    from poller.config import parse_config

    cfg = parse_config({"registry": {"url": "127.0.0.1:5000"}, "sources": [
        {"name": name, "git": {"url": "file:///unused"}, "branch": "master",
         "image": "127.0.0.1:5000/lobby"}]})
    return Rollbacks(cfg, Store(tmp_path / "s.db"), registry=None, sources={name: source})


@pytest.mark.parametrize("host", ["gitlab", "github"])
def test_production_rollback_creates_the_tag_through_the_hosted_api(
        tmp_path, host, gitlab_double, github_double):
    repo = GitRepo(tmp_path, name="lobby")
    old = repo.commit("one", {"a.txt": "a"})
    repo.tag("v2.0.0")
    repo.commit("two", {"a.txt": "b"})
    repo.tag("v2.1.0")
    if host == "gitlab":
        gitlab_double.add_project("games/lobby", repo)
        src = GitLabSource(SourceConfig(name="lobby", branch="master", image="127.0.0.1:5000/lobby",
                                        gitlab={"url": gitlab_double.url, "project": "games/lobby",
                                                "token": GITLAB_TOKEN}))
    else:
        github_double.add_repo("games/lobby", repo)
        src = GitHubSource(SourceConfig(name="lobby", branch="master", image="127.0.0.1:5000/lobby",
                                        github={"repo": "games/lobby", "api_url": github_double.url,
                                                "token": GITHUB_TOKEN}))
    rb = _rollbacks(tmp_path, src)
    plan = rb.production("lobby", to="2.0.0", reason="r", by="bob")
    assert plan.tag == "v2.1.1" and plan.done
    assert git("rev-parse", "v2.1.1^{commit}", cwd=repo.bare) == old
    # the upstream refuses a tag that exists, and says which
    with pytest.raises(SlipwayError, match="v2.1.1"):
        src.create_tag("v2.1.1", old)


def test_staging_rollback_over_the_http_api_needs_the_token_and_is_audited(
        tmp_path, registry, git_repo, docker_host):
    from poller.api import create_app
    from poller.runtime import Runtime
    from poller.config import parse_config

    first = git_repo.seed_scratch_app("v1\n")
    data = make_config(tmp_path, registry, git_repo)
    cfg_path = write_config(tmp_path, data)
    once(cfg_path, docker_host)
    git_repo.commit("merge", {"app.txt": "v2\n"})
    once(cfg_path, docker_host)
    second_digest = registry.digest(REPO, "staging")

    data["api"] = {"token": "rb-token"}
    cfg = parse_config(data, file="test.yaml")
    client = create_app(Runtime(config=cfg, store=Store(tmp_path / "slipway.db"))).test_client()
    auth = {"Authorization": "Bearer rb-token"}
    body = {"env": "staging", "reason": "lag spikes"}
    assert client.post("/api/v1/rollbacks/game-server", json=body).status_code == 401
    assert client.post("/api/v1/rollbacks/game-server", json=body,
                       headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.post("/api/v1/rollbacks/nope", json=body, headers=auth).status_code == 404
    bad = client.post("/api/v1/rollbacks/game-server", json={"env": "production"}, headers=auth)
    assert bad.status_code == 400 and "to" in bad.json["message"]

    dry = client.post("/api/v1/rollbacks/game-server", json={**body, "dry_run": True}, headers=auth)
    assert dry.status_code == 200 and dry.json["dry_run"] and not dry.json["done"]
    assert registry.digest(REPO, "staging") == second_digest

    done = client.post("/api/v1/rollbacks/game-server", json=body, headers=auth)
    assert done.status_code == 200, done.json
    assert done.json["done"] and done.json["by"] == "token" and done.json["to_sha"] == first
    assert registry.labels(REPO, "staging")["org.opencontainers.image.revision"] == first

    listed = client.get("/api/v1/rollbacks").json
    assert [h["source"] for h in listed["holds"]] == ["game-server"]
    assert listed["recent"][0]["detail"]["reason"] == "lag spikes"

    assert client.post("/api/v1/rollbacks/game-server/unpin", headers=auth).json["released"]
    assert client.get("/api/v1/rollbacks").json["holds"] == []

    # production over HTTP: the dry run says which tag it would make, and makes none
    git_repo.tag("v1.0.0", sha=first)
    prod = client.post("/api/v1/rollbacks/game-server", headers=auth,
                       json={"env": "production", "to": "1.0.0", "dry_run": True})
    assert prod.status_code == 200, prod.json
    assert prod.json["tag"] == "v1.0.1" and not prod.json["done"]
    assert "v1.0.1" not in git("tag", cwd=git_repo.bare).split()
    missing = client.post("/api/v1/rollbacks/game-server", headers=auth,
                          json={"env": "production", "to": "0.9.0"})
    assert missing.status_code == 404 and "no release tag 0.9.0" in missing.json["message"]


@pytest.mark.parametrize("to, says", [
    ("99999999999999999999999999", "no build 99999999999999999999999999"),
    ("²", "give a build id"),
    ("sha-" + "f" * 200, "give a build id"),
])
def test_staging_rollback_to_a_strange_target_is_a_clear_refusal(tmp_path, to, says):
    from poller.config import parse_config

    cfg = parse_config({"registry": {"url": "127.0.0.1:1"}, "sources": [
        {"name": "gs", "git": {"url": "file:///unused"}, "branch": "master",
         "image": "127.0.0.1:1/gs"}]})
    rb = Rollbacks(cfg, Store(tmp_path / "s.db"), registry=None, sources={})
    with pytest.raises(SlipwayError, match=says):
        rb._staging_target(cfg.sources[0], to, None)
