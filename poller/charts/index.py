"""Poll a Helm repository's ``index.yaml`` cheaply and classify what it lists.

:class:`IndexPoller` sends ``If-None-Match`` / ``If-Modified-Since`` from the previous
answer, so an unchanged index costs one request answered 304 and no parsing. The validators,
the body's digest and what the index listed can be handed over between processes
(:meth:`IndexPoller.snapshot` / :meth:`IndexPoller.restore`; the watcher keeps them in the
store), so ``poller chart watch --once`` run again costs a 304 too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import requests
import yaml

from poller.config import ChartRepoConfig
from poller.errors import UpstreamError
from poller.http import make_session, request
from poller.logs import get_logger
from poller.versions import Version, parse_version

log = get_logger(__name__)

STAGING, RELEASE = "staging", "release"


@dataclass(frozen=True)
class ChartVersion:
    chart: str
    version: str
    parsed: Version
    channel: str  # staging | release
    digest: str | None = None
    created: str | None = None


def classify(version: str, staging_pattern: str | re.Pattern) -> str | None:
    """``staging`` when the version matches the pattern, ``release`` for stable semver,
    ``None`` for anything else (other prereleases, non-semver)."""
    pattern = re.compile(staging_pattern) if isinstance(staging_pattern, str) else staging_pattern
    parsed = parse_version(version)
    if parsed is None:
        return None
    if pattern.search(version):
        return STAGING
    if not parsed.is_prerelease:
        return RELEASE
    return None


def parse_index(text: str | bytes, *, staging_pattern: str,
                charts: Iterable[str] | None = None) -> dict[str, list[ChartVersion]]:
    """Versions per chart from an ``index.yaml`` body, newest first; unknown kinds dropped."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UpstreamError(f"chart index is not valid YAML: {exc}"[:300], upstream="chart-repo") from exc
    if not isinstance(data, dict) or not isinstance(data.get("entries") or {}, dict):
        raise UpstreamError("chart index has no 'entries' mapping", upstream="chart-repo")
    wanted = set(charts) if charts else None
    pattern = re.compile(staging_pattern)
    out: dict[str, list[ChartVersion]] = {}
    for chart, entries in (data.get("entries") or {}).items():
        if wanted is not None and chart not in wanted:
            continue
        found = []
        for entry in entries or []:
            if not isinstance(entry, dict):
                continue
            version = str(entry.get("version", ""))
            channel = classify(version, pattern)
            if channel is None:
                continue
            found.append(ChartVersion(chart, version, parse_version(version), channel,  # type: ignore[arg-type]
                                      entry.get("digest"), str(entry.get("created") or "") or None))
        found.sort(key=lambda v: v.parsed, reverse=True)
        out[chart] = found
    return out


def charts_to_json(charts: dict[str, list[ChartVersion]]) -> dict[str, list[dict]]:
    return {chart: [{"version": v.version, "channel": v.channel, "digest": v.digest,
                     "created": v.created} for v in versions]
            for chart, versions in charts.items()}


def charts_from_json(data: dict) -> dict[str, list[ChartVersion]]:
    """Inverse of :func:`charts_to_json`; entries that no longer parse are dropped."""
    out: dict[str, list[ChartVersion]] = {}
    for chart, versions in data.items():
        found = []
        for v in versions:
            parsed = parse_version(str(v.get("version", "")))
            if parsed is not None and v.get("channel") in (STAGING, RELEASE):
                found.append(ChartVersion(chart, v["version"], parsed, v["channel"],
                                          v.get("digest"), v.get("created")))
        out[chart] = found
    return out


@dataclass(frozen=True)
class IndexSnapshot:
    """What one poll learnt that the next one can reuse: validators, body digest, charts."""

    etag: str | None
    last_modified: str | None
    digest: str | None
    charts: dict[str, list[ChartVersion]]


@dataclass
class IndexResult:
    changed: bool
    charts: dict[str, list[ChartVersion]]


class IndexPoller:
    """Fetch ``<repo>/index.yaml`` with conditional requests; remember the last answer."""

    def __init__(self, repo: ChartRepoConfig, *, session: requests.Session | None = None):
        self.repo = repo
        self.upstream = f"chart-repo:{repo.name}"
        self.session = session or make_session(self.upstream)
        self.url = repo.url.rstrip("/") + "/index.yaml"
        self._etag: str | None = None
        self._last_modified: str | None = None
        self._digest: str | None = None
        self._charts: dict[str, list[ChartVersion]] | None = None

    def snapshot(self) -> IndexSnapshot | None:
        if self._charts is None:
            return None
        return IndexSnapshot(self._etag, self._last_modified, self._digest, self._charts)

    def restore(self, snap: IndexSnapshot) -> None:
        """Start from what an earlier poll (maybe another process) learnt."""
        self._etag, self._last_modified = snap.etag, snap.last_modified
        self._digest, self._charts = snap.digest, snap.charts

    def poll(self) -> IndexResult:
        headers = {"Accept": "application/x-yaml, text/yaml, */*"}
        if self._charts is not None:
            if self._etag:
                headers["If-None-Match"] = self._etag
            if self._last_modified:
                headers["If-Modified-Since"] = self._last_modified
        auth = None
        if self.repo.username:
            auth = (self.repo.username,
                    self.repo.password.get_secret_value() if self.repo.password else "")
        resp = request(self.session, "GET", self.url, upstream=self.upstream, headers=headers,
                       auth=auth)
        if resp.status_code == 304 and self._charts is not None:
            log.debug("charts.index.unchanged", repo=self.repo.name, by="304")
            return IndexResult(False, self._charts)
        self._etag = resp.headers.get("ETag")
        self._last_modified = resp.headers.get("Last-Modified")
        digest = hashlib.sha256(resp.content).hexdigest()
        if digest == self._digest and self._charts is not None:
            log.debug("charts.index.unchanged", repo=self.repo.name, by="digest")
            return IndexResult(False, self._charts)
        charts = parse_index(resp.content, staging_pattern=self.repo.staging_pattern,
                             charts=self.repo.charts)
        changed = charts != self._charts
        self._charts, self._digest = charts, digest
        log.info("charts.index.fetched", repo=self.repo.name, charts=len(charts),
                 conditional=bool(self._etag or self._last_modified))
        return IndexResult(changed, charts)
