"""Pick the implementation for a configured source."""

from __future__ import annotations

from pathlib import Path

from poller.config import SourceConfig
from poller.http import RequestCounter, make_session
from poller.sources.base import Source


def _host(url: str) -> str:
    """host[:port] of a URL, without any credentials (it becomes a metrics label)."""
    return url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]


def make_source(cfg: SourceConfig, *, cache_dir: Path, counter: RequestCounter | None = None) -> Source:
    if cfg.kind == "git":
        from poller.sources.git import GitSource

        return GitSource(cfg, cache_dir=cache_dir, counter=counter)
    if cfg.kind == "gitlab":
        from poller.sources.gitlab import GitLabSource

        assert cfg.gitlab is not None   # kind is derived from which remote is set
        host = _host(cfg.gitlab.url)
        return GitLabSource(cfg, session=make_session(f"gitlab:{host}", counter=counter,
                                                      verify=cfg.gitlab.ssl_verify))
    from poller.sources.github import GitHubSource

    assert cfg.github is not None
    host = _host(cfg.github.api_url)
    return GitHubSource(cfg, session=make_session(f"github:{host}", counter=counter))
