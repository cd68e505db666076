"""Names that reach git, the registry or the file system are validated at the edge: nothing
a user or an upstream sends is ever read as a git option, a path outside its place or
another repository's name."""

from __future__ import annotations

import pytest

from poller.config import SourceConfig, parse_config
from poller.errors import ConfigError, SlipwayError
from poller.sources.git import GitSource
from tests.doubles.gitrepo import GitRepo

pytestmark = pytest.mark.integration


def _source(url, tmp_path, branch="master"):
    cfg = SourceConfig(name="gs", git={"url": url}, branch=branch, image="r:5000/gs")
    return GitSource(cfg, cache_dir=tmp_path / "cache")


def test_a_commit_that_looks_like_an_option_never_reaches_git_as_one(tmp_path):
    repo = GitRepo(tmp_path / "repos", name="gs")
    repo.commit("a")
    marker = tmp_path / "pwned"
    src = _source(repo.url, tmp_path)
    with pytest.raises(SlipwayError, match="full commit id"), open(tmp_path / "out.tar", "wb") as out:
        src.write_archive(f"--upload-pack=touch {marker};", out)
    assert not marker.exists()


def test_a_git_url_starting_with_a_dash_is_refused_at_config_load(tmp_path):
    marker = tmp_path / "pwned"
    data = {"registry": {"url": "127.0.0.1:5000"},
            "sources": [{"name": "gs", "git": {"url": f"--upload-pack=touch {marker};"},
                         "branch": "master", "image": "127.0.0.1:5000/gs"}]}
    with pytest.raises(ConfigError) as err:
        parse_config(data, file="slipway.yaml")
    assert err.value.file == "slipway.yaml" and err.value.key == "sources[0].git.url"
    assert "must not start with '-'" in err.value.reason
    assert not marker.exists()


@pytest.mark.parametrize("branch", ["-x", "--upload-pack=x", "a..b", "a b", "ma\nster", "a~1"])
def test_a_branch_that_is_not_a_ref_name_is_refused_at_config_load(branch):
    data = {"registry": {"url": "127.0.0.1:5000"},
            "sources": [{"name": "gs", "git": {"url": "file:///srv/gs.git"}, "branch": branch,
                         "image": "127.0.0.1:5000/gs"}]}
    with pytest.raises(ConfigError) as err:
        parse_config(data, file="slipway.yaml")
    assert err.value.key == "sources[0].branch"


# -- plugin names: CLI and HTTP ---------------------------------------------------------------
def _jar() -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("plugin.yml", "name: chat")
    return buf.getvalue()


def _repositories(registry) -> list[str]:
    root = registry.storage / "docker" / "registry" / "v2" / "repositories"
    if not root.exists():
        return []
    return sorted(str(p.parent.relative_to(root)) for p in root.rglob("_manifests"))


def _plugin_config(tmp_path, registry):
    import yaml

    path = tmp_path / "slipway.yaml"
    path.write_text(yaml.safe_dump({
        "registry": {"url": registry.addr, "insecure": True},
        "store": {"path": str(tmp_path / "slipway.db")}, "api": {"listen": None, "token": "t0ken-value"},
        "plugins": {"server_types": {"lobby": {"plugins": {"chat": "latest"}}}}}))
    return path


@pytest.mark.parametrize("plugin", ["../gs", "chat/../../gs", "Chat", "chat\n", "-chat", "a?b"])
def test_plugin_push_refuses_a_name_that_is_not_one_repository_component(tmp_path, registry, plugin):
    import subprocess
    import sys
    from pathlib import Path

    jar = tmp_path / "x.jar"
    jar.write_bytes(_jar())
    res = subprocess.run([sys.executable, "-m", "poller", "plugin", "push", str(jar), "--config",
                          str(_plugin_config(tmp_path, registry)), f"--plugin={plugin}", "--version", "9.9.9"],
                         cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "plugin name" in res.stderr and "Traceback" not in res.stderr
    assert _repositories(registry) == []
    assert registry.events("push") == []


@pytest.fixture
def api_server(tmp_path, registry):
    import threading

    from werkzeug.serving import make_server

    from poller.api import create_app

    from poller.runtime import Runtime
    from poller.store import Store

    cfg = parse_config({"registry": {"url": registry.addr, "insecure": True},
                        "api": {"token": "t0ken-value"},
                        "plugins": {"server_types": {"lobby": {"plugins": {"chat": "latest"}}}}}, env={})
    server = make_server("127.0.0.1", 0, create_app(Runtime(config=cfg, store=Store(tmp_path / "s.db"))),
                         threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.mark.parametrize("raw", ["..", "%2E%2E", "chat%3Fx=1", "chat%23frag", "chat%0A", "..%2Fgs",
                                 "Chat", "chat%20x"])
def test_artifact_publish_refuses_a_bad_plugin_name_before_the_registry(api_server, registry, raw):
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", api_server.server_port, timeout=30)
    conn.request("POST", f"/api/v1/artifacts/{raw}?version=9.9.9", body=_jar(),
                  headers={"Authorization": "Bearer t0ken-value", "Content-Type": "application/java-archive"})
    resp = conn.getresponse()
    body = resp.read()
    # '/' (even encoded) never matches the route: 404; every other bad name: 400 bad_request.
    assert resp.status == (404 if "%2F" in raw else 400), (resp.status, body)
    assert resp.getheader("Content-Type", "").startswith("application/json")
    assert "error" in json.loads(body)
    assert _repositories(registry) == []
    assert registry.events("push") == []


def test_artifact_publish_refuses_a_bad_version_tag(api_server, registry):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", api_server.server_port, timeout=30)
    conn.request("POST", "/api/v1/artifacts/chat?env=dev%0Ax", body=_jar(),
                 headers={"Authorization": "Bearer t0ken-value"})
    resp = conn.getresponse()
    assert resp.status == 400 and b"bad_request" in resp.read()
    assert _repositories(registry) == []
