"""Runs of helmsman: Jobs made from the CronJob template, never two at once per environment.

:func:`job_from_cronjob` builds exactly what ``kubectl create job NAME --from=cronjob/X``
builds (the template's spec, labels and annotations, ``cronjob.kubernetes.io/instantiate:
manual``, a controller owner reference to the CronJob), plus our own labels so runs can be
found again, and the environment's DSS file in the helmsman container's environment.

:class:`JobRunner` holds the no-overlap rule. The cluster is the truth for "is a run
active" (a Job carrying our labels without a Complete/Failed condition); only the queued
follow-up lives in memory: while a run is active, every ``apply`` for that environment
returns the running Job and sets one follow-up flag; a background thread (started on
demand, stopped when nothing is queued) starts that one follow-up as soon as the running
Job ends or disappears. Queued follow-ups do not survive a restart of the helm API; the
poller's next reconcile asks again.
"""

from __future__ import annotations

import copy
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from helm_api.config import HelmApiConfig
from helm_api.kube import Kube
from poller.errors import InvalidInput, NotFound, PermanentError, Unprocessable, UpstreamError
from poller.logs import get_logger

log = get_logger(__name__)

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "slipway-helm-api"
ENV_LABEL = "slipway.dev/environment"
CRONJOB_LABEL = "slipway.dev/cronjob"
REASON_ANNOTATION = "slipway.dev/reason"
FOLLOWS_ANNOTATION = "slipway.dev/follows"
INSTANTIATE_ANNOTATION = "cronjob.kubernetes.io/instantiate"

PENDING, RUNNING, SUCCEEDED, FAILED = "pending", "running", "succeeded", "failed"


class UnknownEnvironment(InvalidInput):
    """No environment named (and no default), or one that is not configured (400)."""

    def __init__(self, environment: str, known: list[str]):
        self.environment, self.known = environment, known
        self.extra = {"known": known}
        if environment:
            self.code = "unknown_environment"
            super().__init__(f"unknown environment '{environment}'; known: {', '.join(known)}")
        else:
            self.code = "environment_required"
            super().__init__("give 'environment' in the body; known: " + ", ".join(known))


class CronJobMissing(NotFound):
    code = "cronjob_not_found"


class CronJobInvalid(Unprocessable):
    """The CronJob has no usable job template (422)."""

    code = "cronjob_invalid"


class JobNotFound(NotFound):
    code = "job_not_found"


def job_name(prefix: str, *, clock: Callable[[], float] = time.time) -> str:
    """A fresh Job name: ``<prefix>-<MMDDhhmmss>-<4 hex>``, at most 63 characters."""
    stamp = time.strftime("%m%d%H%M%S", time.gmtime(clock()))
    head = prefix[:63 - len(stamp) - 6].rstrip("-")
    return f"{head}-{stamp}-{secrets.token_hex(2)}"


def job_from_cronjob(cronjob: dict, name: str, *, env_vars: dict[str, str] | None = None,
                     container: str | None = None, labels: dict[str, str] | None = None,
                     annotations: dict[str, str] | None = None) -> dict:
    """The Job ``kubectl create job NAME --from=cronjob/...`` would create, plus extras.

    ``env_vars`` are set (replacing same-named entries) in ``container`` (default: the first
    container of the pod template). Raises :class:`CronJobInvalid` when the CronJob has no
    usable job template.
    """
    meta = cronjob.get("metadata") or {}
    template = (cronjob.get("spec") or {}).get("jobTemplate") or {}
    spec = copy.deepcopy(template.get("spec") or {})
    containers = (((spec.get("template") or {}).get("spec") or {}).get("containers")) or []
    if not containers:
        raise CronJobInvalid(f"cronjob {meta.get('name')}: its jobTemplate has no containers")
    tmeta = template.get("metadata") or {}

    job_annotations = {INSTANTIATE_ANNOTATION: "manual"}
    job_annotations.update(tmeta.get("annotations") or {})
    job_annotations.update(annotations or {})
    job_labels = dict(tmeta.get("labels") or {})
    job_labels.update(labels or {})

    if env_vars:
        target = containers[0]
        if container:
            matches = [c for c in containers if c.get("name") == container]
            if not matches:
                raise CronJobInvalid(f"cronjob {meta.get('name')}: no container named "
                                     f"'{container}' in its jobTemplate")
            target = matches[0]
        env = [e for e in (target.get("env") or []) if e.get("name") not in env_vars]
        env.extend({"name": k, "value": v} for k, v in env_vars.items())
        target["env"] = env

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta.get("namespace"),
            "labels": job_labels,
            "annotations": job_annotations,
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "CronJob", "name": meta.get("name"),
                "uid": meta.get("uid"), "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": spec,
    }


def _conditions(job: dict) -> dict[str, str]:
    return {c.get("type"): c.get("status") for c in (job.get("status") or {}).get("conditions") or []}


#: Terminal conditions. Since Kubernetes 1.31 the Job controller first adds the *interim*
#: ``SuccessCriteriaMet`` / ``FailureTarget`` and only adds ``Complete`` / ``Failed`` (and
#: ``completionTime``) once every pod has terminated; a Job with only an interim condition
#: still has pods running, so it is neither finished nor free to be followed by another run.
_DONE, _FAILED = "Complete", "Failed"


def is_finished(job: dict) -> bool:
    c = _conditions(job)
    return c.get(_DONE) == "True" or c.get(_FAILED) == "True"


def job_phase(job: dict, pods: list[dict] | None = None) -> str:
    c = _conditions(job)
    if c.get(_DONE) == "True":
        return SUCCEEDED
    if c.get(_FAILED) == "True":
        return FAILED
    if c.get("SuccessCriteriaMet") == "True" or c.get("FailureTarget") == "True":
        return RUNNING          # decided, pods still terminating: the run has not ended yet
    status = job.get("status") or {}
    if status.get("ready"):
        return RUNNING
    if any((p.get("status") or {}).get("phase") == "Running" for p in pods or []):
        return RUNNING
    return PENDING


def job_finished_at(job: dict) -> str | None:
    """When the run ended: set exactly when :func:`is_finished` is true."""
    if not is_finished(job):
        return None
    status = job.get("status") or {}
    if status.get("completionTime"):
        return status["completionTime"]
    for cond in status.get("conditions") or []:
        if cond.get("type") in (_FAILED, _DONE) and cond.get("status") == "True":
            return cond.get("lastTransitionTime")
    return None


def job_summary(job: dict, pods: list[dict] | None = None) -> dict[str, Any]:
    meta = job.get("metadata") or {}
    labels = meta.get("labels") or {}
    ann = meta.get("annotations") or {}
    return {
        "name": meta.get("name"),
        "environment": labels.get(ENV_LABEL),
        "phase": job_phase(job, pods),
        "created_at": meta.get("creationTimestamp"),
        "started_at": (job.get("status") or {}).get("startTime"),
        "finished_at": job_finished_at(job),
        "reason": ann.get(REASON_ANNOTATION),
        "follows": ann.get(FOLLOWS_ANNOTATION),
    }


@dataclass
class ApplyResult:
    job: str
    environment: str
    created: bool
    follow_up_queued: bool


@dataclass
class _FollowUp:
    after: str
    reasons: list[str] = field(default_factory=list)
    requests: int = 0


class JobRunner:
    """Start helmsman runs; at most one active per environment, at most one queued after it."""

    def __init__(self, kube: Kube, config: HelmApiConfig, *,
                 on_created: Callable[[str, str, str], None] | None = None,
                 clock: Callable[[], float] = time.time):
        self.kube = kube
        self.config = config
        self.clock = clock
        self._on_created = on_created or (lambda env, trigger, name: None)
        self._lock = threading.RLock()
        self._pending: dict[str, _FollowUp] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.ticks = 0

    # -- selectors ------------------------------------------------------------------
    def _selector(self, environment: str | None = None) -> str:
        sel = f"{MANAGED_BY}={MANAGED_BY_VALUE},{CRONJOB_LABEL}={self.config.cronjob}"
        return sel + (f",{ENV_LABEL}={environment}" if environment else "")

    def check_environment(self, environment: str | None) -> str:
        env = environment or self.config.resolved_default_environment
        if env is None:
            raise UnknownEnvironment("", sorted(self.config.environments))
        if env not in self.config.environments:
            raise UnknownEnvironment(env, sorted(self.config.environments))
        return env

    def active_job(self, environment: str) -> str | None:
        """Name of the newest unfinished run for ``environment``, read from the cluster."""
        jobs = self.kube.list_jobs(self.config.namespace, label_selector=self._selector(environment))
        active = [j for j in jobs if not is_finished(j)]
        if not active:
            return None
        active.sort(key=lambda j: (j["metadata"].get("creationTimestamp") or "", j["metadata"]["name"]))
        return active[-1]["metadata"]["name"]

    # -- applying ---------------------------------------------------------------------
    def apply(self, environment: str | None, reason: str = "") -> ApplyResult:
        env = self.check_environment(environment)
        with self._lock:
            running = self.active_job(env)
            if running:
                fu = self._pending.get(env)
                if fu is None or fu.after != running:
                    fu = self._pending[env] = _FollowUp(after=running)
                fu.requests += 1
                if reason and reason not in fu.reasons:
                    fu.reasons.append(reason)
                log.info("helm_api.apply.queued", environment=env, running=running,
                         requests=fu.requests)
                self._ensure_thread()
                return ApplyResult(job=running, environment=env, created=False,
                                   follow_up_queued=True)
            self._pending.pop(env, None)  # nothing running: this run covers any queued one
            name = self._create(env, reason, trigger="apply")
            return ApplyResult(job=name, environment=env, created=True, follow_up_queued=False)

    def _create(self, env: str, reason: str, *, trigger: str, follows: str | None = None) -> str:
        try:
            cronjob = self.kube.get_cronjob(self.config.namespace, self.config.cronjob)
        except NotFound as exc:
            raise CronJobMissing(f"cronjob {self.config.namespace}/{self.config.cronjob} does not "
                                 "exist; install the slipway chart or set HELM_API_CRONJOB") from exc
        annotations = {REASON_ANNOTATION: (reason or trigger)[:1000]}
        if follows:
            annotations[FOLLOWS_ANNOTATION] = follows
        name = job_name(f"{self.config.cronjob}-{env}", clock=self.clock)
        body = job_from_cronjob(
            cronjob, name, container=self.config.container,
            env_vars={self.config.dss_env_var: self.config.environments[env],
                      "SLIPWAY_ENVIRONMENT": env},
            labels={MANAGED_BY: MANAGED_BY_VALUE, ENV_LABEL: env,
                    CRONJOB_LABEL: self.config.cronjob},
            annotations=annotations)
        created = self.kube.create_job(self.config.namespace, body)
        name = created["metadata"]["name"]
        log.info("helm_api.job.created", job=name, environment=env, trigger=trigger,
                 follows=follows)
        self._on_created(env, trigger, name)
        return name

    # -- follow-ups -------------------------------------------------------------------
    def pending(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {env: {"after": f.after, "requests": f.requests, "reasons": list(f.reasons)}
                    for env, f in self._pending.items()}

    def tick(self) -> list[str]:
        """Start every queued follow-up whose run has ended. Returns the Jobs started."""
        started: list[str] = []
        with self._lock:
            self.ticks += 1
            for env, fu in list(self._pending.items()):
                try:
                    running = self.active_job(env)
                    if running:
                        fu.after = running
                        continue
                    reason = "; ".join(fu.reasons)[:900] or "queued apply"
                    reason = f"follow-up of {fu.after} ({fu.requests} request(s)): {reason}"
                    started.append(self._create(env, reason, trigger="follow_up", follows=fu.after))
                    del self._pending[env]
                except UpstreamError as exc:
                    log.warning("helm_api.follow_up.retry", environment=env, error=str(exc))
                except PermanentError as exc:
                    log.error("helm_api.follow_up.dropped", environment=env, error=str(exc))
                    del self._pending[env]
        return started

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="helm-api-follow-ups", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.follow_up_interval):
            try:
                self.tick()
            except Exception as exc:  # never let the watcher die silently
                log.error("helm_api.follow_up.error", error=str(exc), exc_info=True)
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return

    def stop(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(timeout=10)

    # -- reading ----------------------------------------------------------------------
    def list_runs(self, limit: int) -> list[dict[str, Any]]:
        jobs = self.kube.list_jobs(self.config.namespace, label_selector=self._selector())
        jobs.sort(key=lambda j: (j["metadata"].get("creationTimestamp") or "", j["metadata"]["name"]),
                  reverse=True)
        return [job_summary(j) for j in jobs[:limit]]

    def describe(self, name: str) -> dict[str, Any]:
        ns = self.config.namespace
        try:
            job = self.kube.get_job(ns, name)
        except NotFound as exc:
            raise JobNotFound(f"no job named '{name}' in {ns}") from exc
        labels = (job.get("metadata") or {}).get("labels") or {}
        if labels.get(MANAGED_BY) != MANAGED_BY_VALUE:
            raise JobNotFound(f"job '{name}' was not started by the helm API")
        pods = self.kube.list_pods(ns, label_selector=f"job-name={name}")
        out = job_summary(job, pods)
        out["log"], out["log_error"], out["pod"] = None, None, None
        if pods:
            pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
            pod = pods[-1]
            out["pod"] = pod["metadata"]["name"]
            if (pod.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed"):
                containers = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
                container = self.config.container or (containers[0] if containers else None)
                try:
                    out["log"] = self.kube.pod_log(ns, out["pod"], container=container,
                                                   tail_lines=self.config.log_tail_lines)
                except (UpstreamError, PermanentError) as exc:
                    out["log_error"] = str(exc)[:300]
        return out
