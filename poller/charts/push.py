"""``poller chart push``: package a chart directory and upload it to ChartMuseum.

Packaging is pure Python (what ``helm package`` writes: a gzipped tar whose single top
directory is the chart's name, ``.helmignore`` honoured), so the poller image needs no helm
binary and no helm-push plugin. Upload is ChartMuseum's ``POST /api/charts`` with the
archive as the body; a 409 means that version exists already.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from poller.errors import ConfigError, PermanentError, UpstreamError
from poller.http import make_session, request
from poller.logs import get_logger
from poller.names import InvalidName, check_chart_name
from poller.versions import parse_version

log = get_logger(__name__)

_ALWAYS_IGNORED = {".git", ".helmignore", ".DS_Store", "__pycache__"}


class ChartExists(PermanentError):
    """The repository already has this chart version (ChartMuseum answered 409)."""


@dataclass(frozen=True)
class PackagedChart:
    name: str
    version: str
    data: bytes

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.tgz"


def _ignore_patterns(chart_dir: Path) -> list[str]:
    path = _inside(chart_dir, chart_dir / ".helmignore")
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.strip().startswith(("#", "!"))]


def _ignored(rel: str, is_dir: bool, patterns: list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    if name in _ALWAYS_IGNORED:
        return True
    for pat in patterns:
        dir_only = pat.endswith("/")
        p = pat.rstrip("/").lstrip("/")
        if dir_only and not is_dir:
            continue
        if fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p):
            return True
    return False


def _inside(chart_dir: Path, path: Path) -> Path:
    """``path`` itself, refused when it is a symlink that leads out of the chart directory."""
    if path.is_symlink():
        target = path.resolve()
        root = chart_dir.resolve()
        if target != root and root not in target.parents:
            raise ConfigError(f"is a symlink to {target}, outside the chart directory; charts are "
                              "packaged from their own files only", file=str(path))
    return path


def load_chart_meta(chart_dir: str | os.PathLike) -> dict:
    chart_yaml = _inside(Path(chart_dir), Path(chart_dir) / "Chart.yaml")
    try:
        meta = yaml.safe_load(chart_yaml.read_text())
    except OSError as exc:
        raise ConfigError(f"not a chart directory: {exc.strerror}", file=str(chart_yaml)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=str(chart_yaml)) from None
    if not isinstance(meta, dict):
        raise ConfigError("must be a mapping", file=str(chart_yaml))
    for key in ("apiVersion", "name", "version"):
        if not meta.get(key):
            raise ConfigError("field required", file=str(chart_yaml), key=key)
    try:
        check_chart_name(meta["name"] if isinstance(meta["name"], str) else repr(meta["name"]))
    except InvalidName as exc:
        raise ConfigError(str(exc), file=str(chart_yaml), key="name") from None
    return meta


def package_chart(chart_dir: str | os.PathLike, *, version: str | None = None,
                  mtime: float | None = None) -> PackagedChart:
    """Package ``chart_dir`` into a ``.tgz``; ``version`` overrides ``Chart.yaml``'s."""
    chart_dir = Path(chart_dir)
    meta = load_chart_meta(chart_dir)
    if version is not None:
        meta["version"] = version
    version = str(meta["version"])
    meta["version"] = version
    if parse_version(version) is None:
        raise ConfigError(f"chart version '{version}' is not semver (X.Y.Z[-pre][+build])",
                          file=str(chart_dir / "Chart.yaml"), key="version")
    name = str(meta["name"])
    patterns = _ignore_patterns(chart_dir)
    stamp = int(mtime if mtime is not None else time.time())

    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=stamp) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add_bytes(arcname: str, data: bytes) -> None:
            info = tarfile.TarInfo(arcname)
            info.size, info.mtime, info.mode = len(data), stamp, 0o644
            tar.addfile(info, io.BytesIO(data))

        add_bytes(f"{name}/Chart.yaml", yaml.safe_dump(meta, sort_keys=False).encode())
        for root, dirs, files in os.walk(chart_dir):
            rel_root = Path(root).relative_to(chart_dir).as_posix()
            rel_root = "" if rel_root == "." else rel_root + "/"
            dirs[:] = sorted(d for d in dirs if not _ignored(rel_root + d, True, patterns))
            for d in dirs:  # os.walk does not descend into symlinked directories: say so
                _inside(chart_dir, Path(root) / d)
            for f in sorted(files):
                rel = rel_root + f
                if rel == "Chart.yaml" or _ignored(rel, False, patterns):
                    continue
                add_bytes(f"{name}/{rel}", _inside(chart_dir, Path(root) / f).read_bytes())
    return PackagedChart(name, version, buf.getvalue())


def push_chart(chart: PackagedChart, repo_url: str, *, session: requests.Session | None = None,
               username: str | None = None, password: str | None = None,
               force: bool = False) -> dict:
    """Upload to ChartMuseum (``POST {repo}/api/charts``). Raises :class:`ChartExists` on 409."""
    session = session or make_session("chartmuseum")
    url = repo_url.rstrip("/") + "/api/charts" + ("?force=true" if force else "")
    auth = (username, password or "") if username else None
    try:
        resp = request(session, "POST", url, upstream="chartmuseum", data=chart.data, auth=auth,
                       headers={"Content-Type": "application/octet-stream"})
    except UpstreamError as exc:
        if exc.status == 409:
            raise ChartExists(f"{chart.name} {chart.version} already exists in {repo_url}; "
                              "push a new version (--version) instead") from exc
        raise
    log.info("charts.pushed", chart=chart.name, version=chart.version, repo=repo_url)
    try:
        return resp.json()
    except ValueError:
        return {}
