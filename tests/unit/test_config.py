import pytest

from poller.config import load_config, parse_config
from poller.errors import ConfigError

ISSUE_EXAMPLE = """
registry: {url: "127.0.0.1:5000", insecure: true}
sources:
  - name: game-server
    git: {url: "file:///srv/git/game-server.git"}      # any git remote
    branch: master
    image: 127.0.0.1:5000/game-server
  - name: lobby
    gitlab: {url: "https://gitlab.example.com", project: "games/lobby", token: "${GITLAB_TOKEN}"}
    branch: master
    image: 127.0.0.1:5000/lobby
    dockerfile: docker/Dockerfile
    context: .
"""


def write(tmp_path, text):
    p = tmp_path / "slipway.yaml"
    p.write_text(text)
    return p


def test_the_documented_example_loads(tmp_path):
    cfg = load_config(write(tmp_path, ISSUE_EXAMPLE), env={"GITLAB_TOKEN": "glpat-secret-value"})
    assert [s.kind for s in cfg.sources] == ["git", "gitlab"]
    assert cfg.registry.base_url == "http://127.0.0.1:5000"
    lobby = cfg.source("lobby")
    assert lobby.gitlab.token.get_secret_value() == "glpat-secret-value"
    assert lobby.image_repository == "lobby" and lobby.dockerfile == "docker/Dockerfile"
    # The secret never shows in a repr or a dump.
    assert "glpat-secret-value" not in repr(cfg) and "glpat-secret-value" not in str(cfg.model_dump())


def test_missing_key_names_file_key_and_reason(tmp_path):
    text = ISSUE_EXAMPLE + """  - name: third
    git: {url: "file:///x.git"}
    image: 127.0.0.1:5000/third
"""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={"GITLAB_TOKEN": "t"})
    assert str(exc.value) == f"{path}: sources[2].branch: field required"
    assert exc.value.key == "sources[2].branch"


def test_unset_secret_variable_is_a_config_error(tmp_path):
    path = write(tmp_path, ISSUE_EXAMPLE)
    with pytest.raises(ConfigError, match=r"sources\[1\]\.gitlab\.token: environment variable GITLAB_TOKEN is not set"):
        load_config(path, env={})


def test_secret_from_file(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    cfg = load_config(write(tmp_path, ISSUE_EXAMPLE.replace("${GITLAB_TOKEN}", "${file:%s}" % secret)), env={})
    assert cfg.source("lobby").gitlab.token.get_secret_value() == "from-a-file"


@pytest.mark.parametrize("mutate, key, reason", [
    (lambda d: d["sources"][0].update(image="game-server"), "sources[0].image", "registry host"),
    (lambda d: d["sources"][0].update(image="127.0.0.1:5000/x:latest"), "sources[0].image", "without a tag"),
    (lambda d: d["sources"][0].update(github={"repo": "a/b"}), "sources[0]", "exactly one"),
    (lambda d: d["sources"][0].update(colour="red"), "sources[0].colour", "unknown key"),
    (lambda d: d["sources"][0].update(context="../outside"), "sources[0].context", "inside the repository"),
    (lambda d: d["sources"].append(dict(d["sources"][0])), None, "already used"),
    (lambda d: d.update(build={"concurrency": 0}), "build.concurrency", "greater than or equal to 1"),
])
def test_invalid_values_are_explained(mutate, key, reason):
    data = {"registry": {"url": "r:5000"}, "sources": [
        {"name": "a", "git": {"url": "file:///a.git"}, "branch": "master", "image": "r:5000/a"}]}
    mutate(data)
    with pytest.raises(ConfigError) as exc:
        parse_config(data, file="f.yaml", env={})
    assert reason in str(exc.value)
    if key:
        assert exc.value.key == key


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML: line 3"):
        load_config(write(tmp_path, "registry:\n  url: [unclosed\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_a_charts_only_configuration_needs_no_registry(tmp_path):
    cfg = load_config(write(tmp_path, """
charts:
  repos: [{name: main, url: "http://charts.example:8080"}]
  helm_api: {url: "http://helm-api:8080"}
"""))
    assert cfg.registry is None and cfg.sources == [] and cfg.charts.repos[0].name == "main"


def test_sources_without_a_registry_say_registry_is_required(tmp_path):
    path = write(tmp_path, ISSUE_EXAMPLE.split("\n", 2)[2])  # drop the registry: line
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={"GITLAB_TOKEN": "t"})
    assert str(exc.value) == (f"{path}: registry: field required when sources is set "
                              "(images are pushed and read there)")
