"""``poller chart watch`` as an operator runs it: from cron with ``--once`` (cheap when nothing
changed, even in a new process), as a service (stops cleanly on SIGTERM), and from a
configuration that only watches charts (no ``registry:``, no sources)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.services import wait_until
from tests.integration.chart_servers import (
    ChartMuseumProcess,
    IndexServer,
    RecordingHelmApi,
)

ROOT = Path(__file__).resolve().parents[2]
GAME = ROOT / "charts" / "game-server"


@pytest.fixture
def repo():
    srv = IndexServer()
    yield srv
    srv.stop()


@pytest.fixture
def api():
    srv = RecordingHelmApi()
    yield srv
    srv.stop()


def charts_only_config(tmp_path: Path, repo_url: str, api_url: str) -> Path:
    """No registry, no sources: only a chart repository and the helm API."""
    cfg = tmp_path / "charts-only.yaml"
    cfg.write_text(f"""
store: {{path: {tmp_path / 'slipway.db'}}}
api: {{listen: null}}
poll: {{interval: 0.2}}
charts:
  repos: [{{name: main, url: "{repo_url}"}}]
  helm_api: {{url: "{api_url}"}}
""")
    return cfg


def watch_once(cfg: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "poller", "--log-format", "json", "chart", "watch",
                          "--config", str(cfg), "--once"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_watch_once_run_again_sends_the_stored_validators_and_costs_a_304(repo, api, tmp_path):
    repo.add("game-server", "1.0.0", "1.1.0-staging.1")
    cfg = charts_only_config(tmp_path, repo.url, api.url)
    first = watch_once(cfg)
    assert sorted(a["version"] for a in first["applied"]) == ["1.0.0", "1.1.0-staging.1"]
    second = watch_once(cfg)  # a new process: only the store remembers the validators
    assert repo.statuses == [200, 304]
    assert second == {"repo": "main", "index_changed": False, "applied": [], "awaiting": [],
                      "failed": []}
    repo.add("game-server", "1.1.0-staging.2")
    third = watch_once(cfg)
    assert repo.statuses == [200, 304, 200]
    assert [a["version"] for a in third["applied"]] == ["1.1.0-staging.2"]
    assert len(api.calls) == 3


def test_watch_once_run_again_against_chartmuseum_matches_the_stored_body_digest(api, tmp_path):
    from poller.charts.push import package_chart, push_chart

    museum = ChartMuseumProcess(tmp_path / "chartmuseum-storage")
    try:
        push_chart(package_chart(GAME, version="1.0.0"), museum.url)
        cfg = charts_only_config(tmp_path, museum.url, api.url)
        assert [a["version"] for a in watch_once(cfg)["applied"]] == ["1.0.0"]
        again = watch_once(cfg)
        assert not again["index_changed"] and not again["applied"]
        push_chart(package_chart(GAME, version="1.0.1"), museum.url)
        later = watch_once(cfg)
        assert later["index_changed"] and [a["version"] for a in later["applied"]] == ["1.0.1"]
    finally:
        museum.stop()


def test_watch_once_still_applies_an_approval_granted_between_runs(repo, api, tmp_path):
    from poller.approvals import ApprovalQueue
    from poller.store import Store

    repo.add("game-server", "1.0.0")
    cfg = charts_only_config(tmp_path, repo.url, api.url)
    watch_once(cfg)
    repo.add("game-server", "2.0.0")
    [waiting] = watch_once(cfg)["awaiting"]
    ApprovalQueue(Store(tmp_path / "slipway.db")).approve(waiting["approval_id"], by="tester")
    res = watch_once(cfg)
    assert repo.statuses[-1] == 304
    assert [a["version"] for a in res["applied"]] == ["2.0.0"]


def test_chart_watch_stops_cleanly_on_sigterm(repo, api, tmp_path):
    repo.add("game-server", "1.0.0")
    cfg = charts_only_config(tmp_path, repo.url, api.url)
    with open(tmp_path / "watch.log", "w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "poller", "--log-format", "json", "chart",
                                 "watch", "--config", str(cfg)], cwd=ROOT, env=dict(os.environ),
                                stdout=log, stderr=log)
        try:
            wait_until(lambda: len(repo.statuses) >= 2, timeout=30, what="two polls of the index")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
        log.seek(0)
        text = log.read()
    assert code == 0, text[-3000:]
    assert "Traceback" not in text
    assert "charts.watch.stopped" in text
