"""The poller's chart watch against real HTTP: a static Helm repo, the ChartMuseum stand-in
(run with python; the cluster lane's `chartmuseum`), and a recording stand-in for the helm API
(or the real helm API on the real cluster)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import requests
import yaml

from poller.approvals import ApprovalQueue
from poller.charts.index import classify
from poller.charts.watcher import ApplyFailed, ChartWatcher
from poller.config import ChartRepoConfig, ChartsConfig, HelmApiClientConfig
from poller.http import RequestCounter, make_session
from poller.store import Store
from tests.integration.chart_servers import ChartMuseumProcess, IndexServer, RecordingHelmApi

TOKEN = "helm-api-token"
ROOT = Path(__file__).resolve().parents[2]
GAME = ROOT / "charts" / "game-server"


@pytest.fixture
def cli_main():
    """``poller.cli.main`` run in this process. It sets up logging as a process would, on this
    test's captured stderr; that handler is taken off the root logger afterwards, or every later
    log line (threads' too, at exit) would go to a closed stream."""
    from poller.cli import main

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield main
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


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


@pytest.fixture
def museum(tmp_path):
    cm = ChartMuseumProcess(tmp_path / "chartmuseum-storage")
    yield cm
    cm.stop()


def push(url: str, version: str, chart_dir: Path = GAME) -> None:
    from poller.charts.push import package_chart, push_chart

    push_chart(package_chart(chart_dir, version=version), url)


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "slipway.db"


def make_watcher(repo_url, api_url, store_path, *, approval="major", counter=None, charts=None):
    repo_cfg = ChartRepoConfig(name="main", url=repo_url, charts=charts)
    charts_cfg = ChartsConfig(repos=[repo_cfg], approval=approval,
                              helm_api=HelmApiClientConfig(url=api_url, token=TOKEN))
    index_session = make_session("chart-repo:main", counter=counter or RequestCounter())
    return ChartWatcher(repo_cfg, charts_cfg, Store(store_path), index_session=index_session)


def applied(api):
    return [(c["body"]["environment"], c["body"]["reason"]) for c in api.calls]


@pytest.mark.parametrize("version, channel", [
    ("1.4.0-staging.20261122.3", "staging"),
    ("1.4.0-staging", "staging"),
    ("1.4.0", "release"),
    ("v1.4.0", "release"),
    ("1.4.0-rc.1", None),
    ("1.4", None),
    ("latest", None),
])
def test_classify_with_a_narrow_staging_pattern(version, channel):
    assert classify(version, r"^\d+\.\d+\.\d+-staging(\.|$)") == channel


@pytest.mark.parametrize("version, channel", [
    ("1.4.0-staging.20261122.3", "staging"),
    ("0.3.0-rc.1", "staging"),
    ("v1.4.0-alpha", "staging"),
    ("1.4.0", "release"),
    ("1.4", None),
    ("latest", None),
])
def test_default_staging_channel_is_every_prerelease(version, channel):
    assert classify(version, ChartRepoConfig(name="r", url="http://x").staging_pattern) == channel


def test_staging_and_release_versions_apply_to_their_environments(repo, api, store_path):
    repo.add("game-server", "1.3.0", "1.4.0-staging.1")
    w = make_watcher(repo.url, api.url, store_path)
    res = w.reconcile()
    assert sorted((a.chart, a.version, a.environment) for a in res.applied) == [
        ("game-server", "1.3.0", "production"), ("game-server", "1.4.0-staging.1", "staging")]
    envs = sorted(env for env, _ in applied(api))
    assert envs == ["production", "staging"]
    assert all(c["auth"] == f"Bearer {TOKEN}" for c in api.calls)
    assert all(c["path"] == "/apply" for c in api.calls)
    staging_reason = next(r for e, r in applied(api) if e == "staging")
    assert "game-server 1.4.0-staging.1" in staging_reason

    # newer staging build -> one more staging apply, production untouched
    repo.add("game-server", "1.4.0-staging.2")
    res = w.reconcile()
    assert [(a.version, a.environment) for a in res.applied] == [("1.4.0-staging.2", "staging")]
    assert len(api.calls) == 3


def test_unchanged_index_costs_exactly_one_304_and_applies_nothing(repo, api, store_path):
    repo.add("game-server", "1.0.0")
    counter = RequestCounter()
    w = make_watcher(repo.url, api.url, store_path, counter=counter)
    w.reconcile()
    calls = len(api.calls)
    before = len(repo.statuses)
    res = w.reconcile()
    assert repo.statuses[before:] == [304]
    assert counter.snapshot()[("chart-repo:main", 304)] == 1
    assert counter.total() == 2
    assert not res.index_changed and not res.applied
    assert len(api.calls) == calls


def test_unchanged_chartmuseum_index_costs_one_200_and_no_parse(museum, api, store_path, caplog):
    """ChartMuseum sends no validators and answers every GET with 200; the body's digest
    tells an unchanged index apart before anything is parsed or planned."""
    push(museum.url, "1.0.0")
    counter = RequestCounter()
    w = make_watcher(museum.url, api.url, store_path, counter=counter)
    assert [a.version for a in w.reconcile().applied] == ["1.0.0"]
    caplog.set_level(logging.DEBUG, logger="poller.charts.index")
    caplog.clear()
    res = w.reconcile()
    assert not res.index_changed and not res.applied and not res.awaiting
    assert counter.snapshot() == {("chart-repo:main", 200): 2}
    events = [(r.getMessage(), r.fields.get("by")) for r in caplog.records
              if r.name == "poller.charts.index"]
    assert events == [("charts.index.unchanged", "digest")]
    assert len(api.calls) == 1

    push(museum.url, "1.0.1")
    res = w.reconcile()
    assert res.index_changed and [a.version for a in res.applied] == ["1.0.1"]


def test_unchanged_index_still_applies_an_approval_granted_meanwhile(repo, api, store_path):
    repo.add("game-server", "1.0.0")
    w = make_watcher(repo.url, api.url, store_path)
    w.reconcile()
    repo.add("game-server", "2.0.0")
    [waiting] = w.reconcile().awaiting
    ApprovalQueue(Store(store_path)).approve(waiting.approval_id, by="tester")
    res = w.reconcile()  # same watcher, index unchanged (304)
    assert not res.index_changed
    assert [a.version for a in res.applied] == ["2.0.0"]


def test_chartmuseum_index_has_no_validators_and_a_stable_body(museum):
    push(museum.url, "1.0.0")
    first = requests.get(f"{museum.url}/index.yaml", timeout=10)
    assert first.status_code == 200
    assert "ETag" not in first.headers and "Last-Modified" not in first.headers
    again = requests.get(f"{museum.url}/index.yaml", timeout=10, headers={
        "If-None-Match": '"anything"', "If-Modified-Since": "Tue, 01 Dec 2099 00:00:00 GMT"})
    assert again.status_code == 200
    assert again.content == first.content  # `generated` is not rewritten per GET
    push(museum.url, "1.1.0")
    changed = requests.get(f"{museum.url}/index.yaml", timeout=10)
    assert changed.content != first.content
    versions = [e["version"] for e in yaml.safe_load(changed.content)["entries"]["game-server"]]
    assert versions == ["1.1.0", "1.0.0"]


def test_chartmuseum_latest_is_the_newest_stable_version(museum):
    push(museum.url, "1.0.0")
    push(museum.url, "1.1.0-staging.1")
    latest = requests.get(f"{museum.url}/api/charts/game-server/latest", timeout=10)
    assert latest.status_code == 200 and latest.json()["version"] == "1.0.0"
    push(museum.url, "0.1.0-rc.1", ROOT / "charts" / "slipway")
    only_pre = requests.get(f"{museum.url}/api/charts/slipway/latest", timeout=10)
    assert only_pre.status_code == 404


def test_chartmuseum_upload_with_a_trailing_slash_is_404(museum):
    from poller.charts.push import package_chart

    chart = package_chart(GAME, version="1.0.0")
    resp = requests.post(f"{museum.url}/api/charts/", data=chart.data, timeout=10)
    assert resp.status_code == 404
    assert requests.post(f"{museum.url}/api/charts", data=chart.data, timeout=10).status_code == 201


def test_restart_does_not_retrigger_but_catches_up(repo, api, store_path):
    repo.add("game-server", "1.0.0", "1.1.0-staging.1")
    make_watcher(repo.url, api.url, store_path).reconcile()
    assert len(api.calls) == 2

    # a new process: same store -> the stored validators make it a 304, nothing to do
    again = make_watcher(repo.url, api.url, store_path)
    res = again.reconcile()
    assert not res.index_changed and res.applied == []
    assert repo.statuses[-1] == 304
    assert len(api.calls) == 2

    # pushed while "down": the next process applies exactly that
    repo.add("game-server", "1.1.0-staging.2")
    res = make_watcher(repo.url, api.url, store_path).reconcile()
    assert [(a.version, a.environment) for a in res.applied] == [("1.1.0-staging.2", "staging")]
    assert len(api.calls) == 3


def test_many_charts_collapse_into_one_apply_per_environment(repo, api, store_path):
    repo.add("game-server", "1.0.0-staging.1")
    repo.add("slipway", "0.2.0-staging.4")
    repo.add("ignored-chart", "9.9.9-staging.1")
    res = make_watcher(repo.url, api.url, store_path, charts=["game-server", "slipway"]).reconcile()
    assert len(api.calls) == 1
    env, reason = applied(api)[0]
    assert env == "staging"
    assert "game-server 1.0.0-staging.1" in reason and "slipway 0.2.0-staging.4" in reason
    assert "ignored-chart" not in reason
    assert {a.job for a in res.applied} == {"helmsman-cronjob-staging-1"}


def test_major_bump_waits_for_approval_then_applies(repo, api, store_path):
    repo.add("game-server", "1.2.0")
    w = make_watcher(repo.url, api.url, store_path)
    w.reconcile()
    assert applied(api)[0][0] == "production"

    repo.add("game-server", "2.0.0", "1.2.1")
    res = w.reconcile()
    # the major waits; the patch of the current major goes out
    assert [(a.version, a.environment) for a in res.applied] == [("1.2.1", "production")]
    assert [(x.version, x.from_version, x.status) for x in res.awaiting] == [("2.0.0", "1.2.0", "pending")]
    queue = ApprovalQueue(Store(store_path))
    [pending] = queue.list(kind="chart")
    assert (pending.subject, pending.to_version) == ("main/game-server", "2.0.0")

    # still pending: nothing more, and no second approval request
    res = w.reconcile()
    assert res.applied == [] and len(queue.list(kind="chart")) == 1
    calls = len(api.calls)

    queue.approve(pending.id, by="tester")
    res = make_watcher(repo.url, api.url, store_path).reconcile()  # even after a restart
    assert [(a.version, a.approval_id) for a in res.applied] == [("2.0.0", pending.id)]
    assert len(api.calls) == calls + 1
    assert queue.get(pending.id).status == "applied"


def test_rejected_major_never_applies(repo, api, store_path):
    repo.add("game-server", "1.0.0")
    w = make_watcher(repo.url, api.url, store_path)
    w.reconcile()
    repo.add("game-server", "2.0.0")
    res = w.reconcile()
    queue = ApprovalQueue(Store(store_path))
    queue.reject(res.awaiting[0].approval_id, by="tester")
    calls = len(api.calls)
    # the next process reports the refusal once; after that the index is settled (a 304)
    for awaiting in (["rejected"], []):
        res = make_watcher(repo.url, api.url, store_path).reconcile()
        assert res.applied == []
        assert [a.status for a in res.awaiting] == awaiting
    assert len(api.calls) == calls
    # a later major release is a new question
    repo.add("game-server", "2.0.1")
    res = w.reconcile()
    assert [(a.version, a.status) for a in res.awaiting] == [("2.0.1", "pending")]


def test_approval_all_and_none(repo, api, store_path, tmp_path):
    repo.add("game-server", "1.0.0")
    res = make_watcher(repo.url, api.url, store_path, approval="all").reconcile()
    assert res.applied == [] and res.awaiting[0].version == "1.0.0"
    repo.add("game-server", "2.0.0")
    res = make_watcher(repo.url, api.url, tmp_path / "other.db", approval="none").reconcile()
    assert [a.version for a in res.applied] == ["2.0.0"]


def test_staging_majors_need_no_approval(repo, api, store_path):
    repo.add("game-server", "1.0.0-staging.1")
    w = make_watcher(repo.url, api.url, store_path)
    w.reconcile()
    repo.add("game-server", "2.0.0-staging.1")
    res = w.reconcile()
    assert [(a.version, a.environment) for a in res.applied] == [("2.0.0-staging.1", "staging")]
    assert res.awaiting == []


def test_helm_api_failure_records_nothing_and_retries(repo, api, store_path):
    repo.add("game-server", "1.0.0-staging.1")
    w = make_watcher(repo.url, api.url, store_path)
    api.fail_with = 503
    with pytest.raises(ApplyFailed) as info:
        w.reconcile()
    assert info.value.result.failed[0][0] == "staging"
    assert info.value.status == 503
    assert w.history() == []
    api.fail_with = None
    res = w.reconcile()  # index unchanged (304), the version is still due
    assert not res.index_changed
    assert [a.version for a in res.applied] == ["1.0.0-staging.1"]
    assert len(w.history()) == 1


def test_bad_token_is_an_auth_error(repo, api, store_path):
    from poller.errors import AuthError

    repo.add("game-server", "1.0.0-staging.1")
    w = make_watcher(repo.url, api.url, store_path)
    api.fail_with = 403
    with pytest.raises(ApplyFailed) as info:
        w.reconcile()
    assert isinstance(info.value.__cause__, AuthError)


def test_cli_watch_once(repo, api, tmp_path, capsys, cli_main):
    import json

    main = cli_main

    repo.add("game-server", "0.3.0-staging.1")
    cfg = tmp_path / "slipway.yaml"
    cfg.write_text(f"""
registry: {{url: http://127.0.0.1:5000, insecure: true}}
store: {{path: {tmp_path / 'cli.db'}}}
charts:
  repos: [{{name: main, url: "{repo.url}"}}]
  helm_api: {{url: "{api.url}", token: "${{HELM_TOKEN}}"}}
""")
    import os
    os.environ["HELM_TOKEN"] = TOKEN
    try:
        assert main(["--log-format", "json", "chart", "watch", "--config", str(cfg), "--once"]) == 0
    finally:
        del os.environ["HELM_TOKEN"]
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["applied"][0]["version"] == "0.3.0-staging.1"
    assert api.calls[0]["auth"] == f"Bearer {TOKEN}"


# -- against the real ChartMuseum ------------------------------------------------------------
@pytest.mark.cluster
def test_push_to_chartmuseum_then_watch_sees_it(chartmuseum, api, store_path, tmp_path):
    from pathlib import Path

    from poller.charts.push import ChartExists, package_chart, push_chart

    chart_dir = Path(__file__).resolve().parents[2] / "charts" / "game-server"
    chart = package_chart(chart_dir, version="1.4.0-staging.20261122.3")
    assert push_chart(chart, chartmuseum.url) == {"saved": True}
    with pytest.raises(ChartExists, match="already exists"):
        push_chart(chart, chartmuseum.url)

    counter = RequestCounter()
    w = make_watcher(chartmuseum.url, api.url, store_path, counter=counter)
    res = w.reconcile()
    assert [(a.chart, a.version, a.environment) for a in res.applied] == [
        ("game-server", "1.4.0-staging.20261122.3", "staging")]

    push_chart(package_chart(chart_dir, version="1.4.0"), chartmuseum.url)
    res = w.reconcile()
    assert [(a.version, a.environment) for a in res.applied] == [("1.4.0", "production")]
    # nothing new: no apply; ChartMuseum answers 200 (no validators), the digest matches
    res = w.reconcile()
    assert res.applied == [] and not res.index_changed
    assert counter.snapshot().get(("chart-repo:main", 304)) is None
    assert len(api.calls) == 2


@pytest.mark.cluster
def test_cli_push_to_chartmuseum(chartmuseum, capsys, cli_main):
    import json
    from pathlib import Path

    main = cli_main

    chart_dir = Path(__file__).resolve().parents[2] / "charts" / "game-server"
    assert main(["chart", "push", str(chart_dir), "--repo", chartmuseum.url,
                 "--version", "0.9.0"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "0.9.0"
    assert main(["chart", "push", str(chart_dir), "--repo", chartmuseum.url,
                 "--version", "0.9.0"]) == 1
    assert "already exists" in capsys.readouterr().err


@pytest.mark.cluster
def test_push_watch_apply_runs_helmsman_job_in_the_cluster(chartmuseum, kube, namespace, store_path):
    """The whole loop on real parts: chart push -> ChartMuseum -> ChartWatcher -> helm API
    over HTTP -> a Job from the CronJob with the staging DSS file, run to completion."""
    import json
    from pathlib import Path

    import requests

    from helm_api import create_app
    from helm_api.config import HelmApiConfig
    from poller.charts.push import package_chart, push_chart
    from tests.cluster.test_helm_api import Served, cronjob_manifest, wait_for

    kube.kubectl("apply", "-f", "-", input=cronjob_manifest(namespace))
    served = Served(create_app(HelmApiConfig(token=TOKEN, namespace=namespace,
                                             follow_up_interval=0.2), kube=kube.api_client()))
    try:
        chart_dir = Path(__file__).resolve().parents[2] / "charts" / "game-server"
        push_chart(package_chart(chart_dir, version="2.1.0-staging.7"), chartmuseum.url)
        w = make_watcher(chartmuseum.url, served.url, store_path)
        res = w.reconcile()
        [done] = res.applied
        assert (done.version, done.environment) == ("2.1.0-staging.7", "staging")
        job = json.loads(kube.kubectl("get", "job", done.job, "-n", namespace, "-o", "json").stdout)
        env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["DSS_FILE"] == "staging.yaml"
        assert "game-server 2.1.0-staging.7" in job["metadata"]["annotations"]["slipway.dev/reason"]
        wait_for(lambda: requests.get(f"{served.url}/jobs/{done.job}").json()["phase"] == "succeeded",
                 120, what="the helmsman job to succeed")
        # next poll: nothing new, no second job
        assert make_watcher(chartmuseum.url, served.url, store_path).reconcile().applied == []
        jobs = json.loads(kube.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]
        assert [j["metadata"]["name"] for j in jobs] == [done.job]
    finally:
        served.stop()
