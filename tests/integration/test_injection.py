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
    with pytest.raises(SlipwayError, match="full commit id"):
        src.write_archive(f"--upload-pack=touch {marker};", open(tmp_path / "out.tar", "wb"))
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
