"""Packaging a chart in pure Python: the archive helm would accept."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import yaml

from poller.charts.push import package_chart
from poller.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_package_game_server_chart_with_version_override():
    chart = package_chart(ROOT / "charts" / "game-server", version="1.4.0-staging.20261122.3")
    assert (chart.name, chart.version) == ("game-server", "1.4.0-staging.20261122.3")
    assert chart.filename == "game-server-1.4.0-staging.20261122.3.tgz"
    files = _members(chart.data)
    assert all(name.startswith("game-server/") for name in files)
    meta = yaml.safe_load(files["game-server/Chart.yaml"])
    assert meta["version"] == "1.4.0-staging.20261122.3"
    assert meta["name"] == "game-server"
    assert "game-server/values.yaml" in files
    assert "game-server/templates/workload.yaml" in files
    assert "game-server/.helmignore" not in files


def test_helmignore_is_honoured(tmp_path):
    (tmp_path / "Chart.yaml").write_text("apiVersion: v2\nname: demo\nversion: 0.1.0\n")
    (tmp_path / "values.yaml").write_text("a: 1\n")
    (tmp_path / "notes.bak").write_text("x")
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "f.txt").write_text("x")
    (tmp_path / ".helmignore").write_text("# comment\n*.bak\nscratch/\n")
    files = _members(package_chart(tmp_path, mtime=0).data)
    assert set(files) == {"demo/Chart.yaml", "demo/values.yaml"}


def test_packaging_is_reproducible(tmp_path):
    (tmp_path / "Chart.yaml").write_text("apiVersion: v2\nname: demo\nversion: 0.1.0\n")
    assert package_chart(tmp_path, mtime=5).data == package_chart(tmp_path, mtime=5).data


@pytest.mark.parametrize("chart_yaml, match", [
    (None, "not a chart directory"),
    ("apiVersion: v2\nversion: 1.0.0\n", "name"),
    ("apiVersion: v2\nname: x\nversion: latest\n", "not semver"),
])
def test_bad_charts_are_config_errors(tmp_path, chart_yaml, match):
    if chart_yaml is not None:
        (tmp_path / "Chart.yaml").write_text(chart_yaml)
    with pytest.raises(ConfigError, match=match):
        package_chart(tmp_path)
