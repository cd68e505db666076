"""Turn new chart versions into helmsman runs: reconcile, don't remember.

Each :meth:`ChartWatcher.reconcile` compares what the repository index lists with what the
store recorded as *applied* (the ``chart_applies`` history), never with in-memory state
alone, so the first poll after a restart does not re-trigger versions already handled and
does catch up on versions pushed while the poller was down.

Per chart and channel the newest version newer than the last applied one wins:

* ``staging`` versions (``ChartRepoConfig.staging_pattern``) apply to
  ``charts.environments['staging']``;
* stable releases apply to ``charts.environments['release']``; with ``charts.approval``
  ``major`` a release whose major is above the last applied one waits in the approval queue
  (kind ``chart``, subject ``<repo>/<chart>``) and applies on the first reconcile after it
  is approved; a rejected version never applies. ``all`` asks for every release, ``none``
  for none.

All changes for one environment in one reconcile collapse into one ``POST /apply``.

An unchanged index (304, or the same body digest) after a reconcile that left nothing
outstanding (no failed apply, no approval that could still be granted) costs nothing more:
no parsing, no store reads, no plan. The index's validators, body digest, the versions it
listed and whether the last reconcile settled are kept in the store (``chart_index_state``),
so this holds across processes too: ``poller chart watch --once`` run again sends
``If-None-Match`` / ``If-Modified-Since`` and costs a 304 (or, for ChartMuseum, one 200
whose digest matches) when nothing changed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from poller.approvals import APPROVED, PENDING, ApprovalQueue
from poller.charts.index import (
    RELEASE,
    STAGING,
    ChartVersion,
    IndexPoller,
    IndexSnapshot,
    charts_from_json,
    charts_to_json,
)
from poller.config import ChartRepoConfig, ChartsConfig
from poller.errors import ConfigError, SlipwayError, UpstreamError
from poller.events import ChartApplied, EventBus
from poller.http import make_session, request
from poller.logs import get_logger
from poller.store import Store
from poller.versions import Version, parse_version

log = get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chart_applies (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    repo        TEXT NOT NULL,
    chart       TEXT NOT NULL,
    version     TEXT NOT NULL,
    channel     TEXT NOT NULL,      -- staging | release
    environment TEXT NOT NULL,
    job         TEXT,               -- the helmsman Job that carries it
    approval_id INTEGER,
    at          REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS chart_applies_by_chart ON chart_applies (repo, chart, channel);
CREATE TABLE IF NOT EXISTS chart_index_state (
    repo          TEXT PRIMARY KEY,
    fingerprint   TEXT NOT NULL,      -- url, staging pattern, chart filter it was read with
    etag          TEXT,
    last_modified TEXT,
    digest        TEXT,
    charts        TEXT NOT NULL,      -- JSON: versions per chart as last listed
    settled       INTEGER NOT NULL,   -- the last reconcile left nothing outstanding
    at            REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Applied:
    chart: str
    version: str
    channel: str
    environment: str
    job: str | None
    approval_id: int | None = None


@dataclass(frozen=True)
class Awaiting:
    chart: str
    version: str
    from_version: str | None
    approval_id: int
    status: str  # pending | rejected | expired


@dataclass
class ReconcileResult:
    index_changed: bool
    applied: list[Applied] = field(default_factory=list)
    awaiting: list[Awaiting] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (environment, error)

    @property
    def did_something(self) -> bool:
        return bool(self.applied)

    def as_dict(self) -> dict:
        return {"index_changed": self.index_changed,
                "applied": [a.__dict__ for a in self.applied],
                "awaiting": [a.__dict__ for a in self.awaiting],
                "failed": [{"environment": e, "error": m} for e, m in self.failed]}


@dataclass(frozen=True)
class _Decision:
    version: ChartVersion
    environment: str
    approval_id: int | None = None


class ApplyFailed(UpstreamError):
    """The helm API did not take an apply; ``result`` holds what did happen."""

    def __init__(self, message: str, *, result: ReconcileResult, cause: SlipwayError):
        super().__init__(message, upstream="helm-api",
                         status=getattr(cause, "status", None),
                         retry_after=getattr(cause, "retry_after", None))
        self.result = result


class ChartWatcher:
    def __init__(self, repo_cfg: ChartRepoConfig, charts_cfg: ChartsConfig, store: Store, *,
                 session: requests.Session | None = None, approvals: ApprovalQueue | None = None,
                 index_session: requests.Session | None = None,
                 clock: Callable[[], float] = time.time, bus: EventBus | None = None):
        if charts_cfg.helm_api is None:
            raise ConfigError("charts.helm_api.url is needed to watch charts", key="charts.helm_api")
        for channel in (STAGING, RELEASE):
            if channel not in charts_cfg.environments:
                raise ConfigError(f"no environment for '{channel}' chart versions",
                                  key="charts.environments")
        self.repo = repo_cfg
        self.charts = charts_cfg
        self.store = store
        self.clock = clock
        self.approvals = approvals or ApprovalQueue(store, clock=clock)
        self.session = session or make_session("helm-api")
        self.index = IndexPoller(repo_cfg, session=index_session)
        self._settled = False  # the last reconcile left nothing that could still apply
        self.bus = bus if bus is not None else EventBus()   # ChartApplied, applied or refused
        store.ensure_schema(_SCHEMA)
        self._load_index_state()

    # -- index state kept between processes -----------------------------------------
    def _fingerprint(self) -> str:
        key = json.dumps([self.repo.url, self.repo.staging_pattern, sorted(self.repo.charts or [])])
        return hashlib.sha256(key.encode()).hexdigest()

    def _load_index_state(self) -> None:
        row = self.store.execute("SELECT * FROM chart_index_state WHERE repo=?",
                                 (self.repo.name,)).fetchone()
        if row is None or row["fingerprint"] != self._fingerprint():
            return
        try:
            charts = charts_from_json(json.loads(row["charts"]))
        except (ValueError, TypeError, AttributeError, KeyError):
            return  # unreadable: fetch the whole index once more
        self.index.restore(IndexSnapshot(row["etag"], row["last_modified"], row["digest"], charts))
        self._settled = bool(row["settled"])

    def _save_index_state(self) -> None:
        snap = self.index.snapshot()
        if snap is None:
            return
        self.store.execute(
            "INSERT INTO chart_index_state (repo, fingerprint, etag, last_modified, digest, charts,"
            " settled, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(repo) DO UPDATE SET"
            " fingerprint=excluded.fingerprint, etag=excluded.etag,"
            " last_modified=excluded.last_modified, digest=excluded.digest,"
            " charts=excluded.charts, settled=excluded.settled, at=excluded.at",
            (self.repo.name, self._fingerprint(), snap.etag, snap.last_modified, snap.digest,
             json.dumps(charts_to_json(snap.charts)), int(self._settled), self.clock()))

    # -- history --------------------------------------------------------------------
    def last_applied(self, chart: str, channel: str) -> Version | None:
        rows = self.store.execute(
            "SELECT version FROM chart_applies WHERE repo=? AND chart=? AND channel=?",
            (self.repo.name, chart, channel)).fetchall()
        versions = [v for v in (parse_version(r["version"]) for r in rows) if v is not None]
        return max(versions) if versions else None

    def history(self, chart: str | None = None) -> list[dict]:
        sql, params = "SELECT * FROM chart_applies WHERE repo=?", [self.repo.name]
        if chart:
            sql += " AND chart=?"
            params.append(chart)
        return [dict(r) for r in self.store.execute(sql + " ORDER BY id", tuple(params)).fetchall()]

    # -- deciding -------------------------------------------------------------------
    def _subject(self, chart: str) -> str:
        return f"{self.repo.name}/{chart}"

    def _needs_approval(self, last: Version | None, target: ChartVersion) -> bool:
        if self.charts.approval == "all":
            return True
        if self.charts.approval == "none" or last is None:
            return False
        return target.parsed.major > last.major

    def _decide_release(self, chart: str, newer: list[ChartVersion], last: Version | None,
                        result: ReconcileResult) -> _Decision | None:
        """The release to apply to production, if any; ``newer`` is newest first."""
        env = self.charts.environments[RELEASE]
        target = newer[0]
        if not self._needs_approval(last, target):
            return _Decision(target, env)
        is_major = last is not None and target.parsed.major > last.major
        appr = self.approvals.request(
            kind="chart", subject=self._subject(chart), to_version=target.version,
            from_version=str(last) if last else None,
            reason=f"{'major bump' if is_major else 'release'} of production chart {chart}")
        if appr.status == APPROVED:
            return _Decision(target, env, approval_id=appr.id)
        if appr.status == PENDING:
            log.info("charts.awaiting_approval", repo=self.repo.name, chart=chart,
                     version=target.version, approval_id=appr.id)
        result.awaiting.append(Awaiting(chart, target.version, str(last) if last else None,
                                        appr.id, appr.status))
        # A pending or refused major bump does not hold back releases of the current major.
        free = [v for v in newer if not self._needs_approval(last, v)]
        return _Decision(free[0], env) if free else None

    def plan(self, charts: dict[str, list[ChartVersion]], result: ReconcileResult
             ) -> dict[str, list[_Decision]]:
        plan: dict[str, list[_Decision]] = {}
        for chart in sorted(charts):
            for channel in (STAGING, RELEASE):
                last = self.last_applied(chart, channel)
                newer = [v for v in charts[chart] if v.channel == channel
                         and (last is None or v.parsed > last)]
                if not newer:
                    continue
                decision: _Decision | None
                if channel == STAGING:
                    decision = _Decision(newer[0], self.charts.environments[STAGING])
                else:
                    decision = self._decide_release(chart, newer, last, result)
                if decision is not None:
                    plan.setdefault(decision.environment, []).append(decision)
        return plan

    # -- acting ---------------------------------------------------------------------
    def _post_apply(self, environment: str, reason: str) -> str | None:
        api = self.charts.helm_api
        assert api is not None   # checked in __init__
        headers = {}
        if api.token is not None:
            headers["Authorization"] = f"Bearer {api.token.get_secret_value()}"
        resp = request(self.session, "POST", api.url.rstrip("/") + "/apply", upstream="helm-api",
                       json={"environment": environment, "reason": reason[:1000]},
                       headers=headers)
        try:
            return resp.json().get("job")
        except ValueError:
            return None

    def reconcile(self) -> ReconcileResult:
        """Poll the index once and apply what is new. Raises :class:`ApplyFailed` (after
        recording what did succeed) when the helm API refused or could not be reached."""
        polled = self.index.poll()
        result = ReconcileResult(index_changed=polled.changed)
        if not polled.changed and self._settled:
            return result
        self._settled = False
        self._save_index_state()  # validators are worth keeping even if applying fails below
        first_error: SlipwayError | None = None
        for env, decisions in self.plan(polled.charts, result).items():
            reason = "; ".join(f"{d.version.chart} {d.version.version} ({d.version.channel})"
                               for d in decisions)
            try:
                job = self._post_apply(env, f"new chart versions: {reason}")
            except SlipwayError as exc:
                log.warning("charts.apply.failed", repo=self.repo.name, environment=env,
                            error=str(exc))
                self.store.record_event("chart.apply_failed", self.repo.name, environment=env,
                                        charts=reason, error=str(exc))
                result.failed.append((env, str(exc)))
                first_error = first_error or exc
                for d in decisions:
                    self.bus.publish(ChartApplied(repo=self.repo.name, chart=d.version.chart,
                                                  version=d.version.version, channel=d.version.channel,
                                                  environment=env, ok=False, error=str(exc)))
                continue
            now = self.clock()
            for d in decisions:
                self.store.execute(
                    "INSERT INTO chart_applies (repo, chart, version, channel, environment, job,"
                    " approval_id, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (self.repo.name, d.version.chart, d.version.version, d.version.channel, env,
                     job, d.approval_id, now))
                if d.approval_id is not None:
                    self.approvals.mark_applied(d.approval_id)
                self.store.record_event("chart.applied", self._subject(d.version.chart),
                                        version=d.version.version, channel=d.version.channel,
                                        environment=env, job=job)
                result.applied.append(Applied(d.version.chart, d.version.version,
                                              d.version.channel, env, job, d.approval_id))
                self.bus.publish(ChartApplied(repo=self.repo.name, chart=d.version.chart,
                                              version=d.version.version, channel=d.version.channel,
                                              environment=env, ok=True, job=job))
            log.info("charts.applied", repo=self.repo.name, environment=env, job=job,
                     charts=reason)
        # a rejected version never applies; pending ones and failed applies are still due
        self._settled = not result.failed and all(a.status == "rejected" for a in result.awaiting)
        self._save_index_state()
        if first_error is not None:
            raise ApplyFailed(f"helm API apply failed: {first_error}", result=result,
                              cause=first_error) from first_error
        return result
