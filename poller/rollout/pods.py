"""Drive a gradual in-place release over a workload's pods (game servers).

For each step (canary, then percentages): pick the next servers by update priority,
skipping busy ones when the update restarts the game, never more than ``max_unavailable``
not ready at once; patch only the named container's image on each pod (Kubernetes updates
a container image on a live pod in place: the pod, its IP and its players stay); wait until
each is ready on the new image (the health gate); then reload each and record the result.
Pause and abort are read from the store between batches. Running it again is safe: servers
already on the new image are counted, reloads already recorded as ok are not repeated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from poller import kube
from poller.errors import UpstreamError
from poller.events import (
    EventBus,
    RolloutFinished,
    RolloutProgress,
    RolloutStarted,
    RolloutStopped,
)
from poller.logs import get_logger
from poller.rollout.control import RolloutControl
from poller.rollout.plan import Server, next_batch, resolve, step_targets
from poller.rollout.reload import Reloader
from poller.settings.updates import RolloutConfig
from poller.targets.base import ImageRef, TargetError

log = get_logger(__name__)
_JSON_PATCH = "application/json-patch+json"


@dataclass
class RolloutOutcome:
    state: str                      # succeeded | paused | aborted | waiting | failed
    updated: list[str] = field(default_factory=list)
    message: str = ""


def running_digest(status: dict) -> str | None:
    """The digest a container really runs: the ``@sha256:..`` part of its ``imageID``."""
    _, at, digest = (status.get("imageID") or "").rpartition("@")
    return digest if at and digest else None


def image_matches(status: dict, want: str, want_digest: str | None = None) -> bool:
    """Whether a container status shows it running ``want``.

    Digests decide when one is known (``want``'s own or ``want_digest``, what its tag points at):
    the kubelet reports ``image``/``imageID`` under the first name containerd pulled that digest
    as, so an image pushed under two tags shows the other tag's name. Names decide otherwise."""
    w = ImageRef.parse(want)
    digest = w.digest or want_digest
    if digest and running_digest(status) is not None:
        return running_digest(status) == digest
    got = status.get("image") or ""
    if got == want or (w.digest and w.digest in got):
        return True
    g = ImageRef.parse(got)
    return not w.digest and (g.repository, g.tag) == (w.repository, w.tag)


class PodRollout:
    def __init__(self, api, cfg: RolloutConfig, *, namespace: str, container: str, selector: dict[str, str],
                 control: RolloutControl, reloader: Reloader | None = None,
                 wait: Callable[[float], None] | None = None, bus: EventBus | None = None,
                 digest_of: Callable[[str], str | None] | None = None, pods=None):
        """``pods``: the namespace's pod :class:`~poller.targets.informer.Informer` (reads from
        its cache, waits woken by its watch); without it pods are listed from the API server."""
        from kubernetes import client

        self.core = client.CoreV1Api(api)
        self.pod_cache = pods
        self.cfg, self.namespace, self.container, self.selector = cfg, namespace, container, selector
        self.control, self.reloader = control, reloader
        self._digest_of = digest_of      # image -> the digest its tag points at (the registry), if known
        self._digests: dict[str, str | None] = {}
        if wait is not None:
            self._wait = wait
        elif pods is not None:
            self._wait = lambda s: pods.wait_for(lambda: False, s)
        else:
            self._wait = lambda s: time.sleep(s)
        #: RolloutStarted, RolloutProgress (after each batch), RolloutFinished, RolloutStopped
        self.bus = bus if bus is not None else EventBus()

    # -- reading pods -----------------------------------------------------------------------
    def _pods(self) -> list[dict]:
        if self.pod_cache is not None:
            return [p for p in self.pod_cache.list(self.selector) if not p["metadata"].get("deletionTimestamp")]
        sel = ",".join(f"{k}={v}" for k, v in sorted(self.selector.items()))
        listed = kube.call(f"list pods {sel}", self.core.list_namespaced_pod, self.namespace, label_selector=sel)
        pods = [p for p in listed["items"] if not p["metadata"].get("deletionTimestamp")]
        return sorted(pods, key=lambda p: p["metadata"]["name"])

    def _container(self, pod: dict) -> tuple[int, dict]:
        for i, c in enumerate(pod["spec"]["containers"]):
            if c["name"] == self.container:
                return i, c
        raise TargetError(f"pod {pod['metadata']['name']} has no container {self.container!r}")

    def _ready_on(self, pod: dict, image: str | None) -> bool:
        status = pod.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in status.get("conditions") or [])
        if not ready:
            return False
        if image is None:
            return True
        cs = next((c for c in status.get("containerStatuses") or [] if c.get("name") == self.container), None)
        return cs is not None and bool(cs.get("ready", False)) \
            and image_matches(cs, image, self._target_digest(image))

    def _target_digest(self, image: str) -> str | None:
        if self._digest_of is None or ImageRef.parse(image).digest:
            return None
        if image not in self._digests:
            self._digests[image] = self._digest_of(image)
        return self._digests[image]

    def _busy(self, pod: dict) -> bool:
        labels = pod["metadata"].get("labels") or {}
        if self.cfg.busy_label:
            key, eq, value = self.cfg.busy_label.partition("=")
            if key in labels and (not eq or labels[key] == value):
                return True
        return labels.get(self.cfg.ops_state_label) in self.cfg.busy_ops_states

    def _priority(self, pod: dict) -> int:
        raw = (pod["metadata"].get("labels") or {}).get(self.cfg.priority_label, "0")
        try:
            return int(raw)
        except ValueError:
            return 0

    def _servers(self, pods: list[dict], image: str) -> list[Server]:
        out = []
        for p in pods:
            _, c = self._container(p)
            spec_new = c.get("image") == image
            out.append(Server(name=p["metadata"]["name"], priority=self._priority(p), busy=self._busy(p),
                              ready=self._ready_on(p, c.get("image")), updated=spec_new))
        return out

    # -- acting -----------------------------------------------------------------------------
    def _patch(self, pod: dict, image: str) -> None:
        index, _ = self._container(pod)
        path = f"/spec/containers/{index}"
        body = [{"op": "test", "path": f"{path}/name", "value": self.container},
                {"op": "replace", "path": f"{path}/image", "value": image}]
        rv = pod["metadata"].get("resourceVersion")
        if rv:
            body.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": rv})
        from kubernetes.client.exceptions import ApiException

        what = f"patch pod {pod['metadata']['name']}"
        try:
            resp = self.core.patch_namespaced_pod(pod["metadata"]["name"], self.namespace, body,
                                                  _content_type=_JSON_PATCH, _preload_content=False)
        except ApiException as exc:
            if exc.status in (409, 422):   # changed since read: the next pass re-reads and re-plans
                raise UpstreamError(f"kubernetes: {what}: changed since it was read", upstream="kubernetes",
                                    status=exc.status) from exc
            raise kube.api_error(exc, what) from exc
        except Exception as exc:
            raise kube.api_error(exc, what) from exc
        if self.pod_cache is not None:
            self.pod_cache.observe(json.loads(resp.data))

    def _gate(self, names: list[str], image: str) -> None:
        """Wait until every pod in ``names`` is ready on ``image``; TargetError after the timeout."""
        deadline = time.monotonic() + self.cfg.health_timeout
        while True:
            pods = {p["metadata"]["name"]: p for p in self._pods()}
            waiting = [n for n in names if n not in pods or not self._ready_on(pods[n], image)]
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise TargetError(f"health gate: {', '.join(waiting)} not ready on {image} "
                                  f"after {self.cfg.health_timeout:.0f}s")
            self._wait(self.cfg.poll)

    def _reload(self, rollout_id: int, names: list[str]) -> list[str]:
        if self.reloader is None:
            return []
        failed = []
        pods = {p["metadata"]["name"]: p for p in self._pods()}
        for name in names:
            if self.control.reloaded(rollout_id, name):
                continue
            address = ((pods.get(name) or {}).get("status") or {}).get("podIP")
            result = self.reloader.reload(name, address)
            self.control.reload_result(rollout_id, name, ok=result.ok, attempts=result.attempts,
                                       detail=result.detail)
            log.info("rollout.reload", server=name, ok=result.ok, attempts=result.attempts,
                     detail=result.detail)
            if not result.ok:
                failed.append(name)
        return failed

    def run(self, deployment: str, to_ref: str, image: str) -> RolloutOutcome:
        rec = self.control.start(deployment, to_ref, image)
        if rec.state in ("aborted", "paused", "succeeded"):
            return RolloutOutcome(rec.state, message=rec.message or "")
        rid = rec.id
        self.bus.publish(RolloutStarted(deployment=deployment, to_ref=to_ref, rollout_id=rid))
        try:
            out = self._run(rid, deployment, to_ref, image)
        except Exception as exc:
            now = self.control.by_id(rid)
            if now.state in ("failed", "aborted", "paused"):   # not an interruption resumed next cycle
                self.bus.publish(RolloutStopped(deployment=deployment, to_ref=to_ref, state=now.state,
                                                message=now.message or str(exc), step=now.step,
                                                rollout_id=rid))
            raise
        if out.state == "succeeded":
            self.bus.publish(RolloutFinished(deployment=deployment, to_ref=to_ref, rollout_id=rid))
        elif out.state in ("paused", "aborted"):
            now = self.control.by_id(rid)
            self.bus.publish(RolloutStopped(deployment=deployment, to_ref=to_ref, state=out.state,
                                            message=out.message, step=now.step, rollout_id=rid))
        return out

    def _run(self, rid: int, deployment: str, to_ref: str, image: str) -> RolloutOutcome:
        busy_deadline = time.monotonic() + self.cfg.busy_wait
        pods = self._pods()
        total = len(pods)
        targets = step_targets(self.cfg.steps, total)
        max_unavailable = max(1, resolve(self.cfg.max_unavailable, total, round_up=False) or 1)
        done_now: list[str] = []
        # servers already on the new image (an earlier run) still need their reload
        already = [s.name for s in self._servers(pods, image) if s.updated]
        if already:
            self._gate(already, image)
            self._reload(rid, already)
        for step_no, target in enumerate(targets, start=1):
            while True:
                state = self.control.by_id(rid).state
                if state in ("paused", "aborted"):
                    return RolloutOutcome(state, done_now, f"{state} at step {step_no}")
                servers = self._servers(self._pods(), image)
                updated = sum(1 for s in servers if s.updated)
                if updated >= target:
                    break
                batch = next_batch(servers, want=target - updated, max_unavailable=max_unavailable,
                                   skip_busy=self.cfg.restart, high_first=self.cfg.priority_order == "high-first")
                if not batch:
                    if time.monotonic() >= busy_deadline:
                        msg = f"step {step_no}: waiting for busy servers to free up"
                        self.control.set_state(rid, "running", message=msg, step=step_no)
                        return RolloutOutcome("waiting", done_now, msg)
                    self._wait(self.cfg.poll)
                    continue
                names = [s.name for s in batch]
                by_name = {p["metadata"]["name"]: p for p in self._pods()}
                for name in names:
                    self._patch(by_name[name], image)
                    self.control.server_updated(rid, name, step_no)
                log.info("rollout.batch", deployment=deployment, step=step_no, servers=",".join(names))
                self.bus.publish(RolloutProgress(deployment=deployment, to_ref=to_ref, rollout_id=rid,
                                                 done=min(total, updated + len(names)), total=total))
                try:
                    self._gate(names, image)
                except TargetError as exc:
                    self.control.set_state(rid, "failed", message=str(exc), step=step_no)
                    raise
                failed = self._reload(rid, names)
                done_now.extend(names)
                if failed:
                    msg = f"reload failed on {', '.join(failed)}"
                    self.control.set_state(rid, "failed", message=msg, step=step_no)
                    raise TargetError(msg)
            self.control.set_step(rid, step_no)
        self.control.set_state(rid, "succeeded", message=f"{total} servers on {to_ref}",
                               step=len(targets))
        return RolloutOutcome("succeeded", done_now, f"{total} servers on {to_ref}")
