"""Helm releases through pyhelm3: upgrade a release with a new image value, keeping the rest.

The release's own user-supplied values are read back (``helm get values``) and only the
value at ``value_path`` changes; the chart is the configured reference at the deployed chart
version unless one is given. ``--wait`` makes helm itself wait until the release is healthy;
with ``apply(wait=False)`` it waits on a thread of its own, never the caller's.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from concurrent.futures import Future
from typing import Any

from poller.targets.base import Applied, ImageRef, TargetError


def get_path(values: dict, path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_path(values: dict, path: str, value: Any) -> dict:
    out = copy.deepcopy(values)
    node = out
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise TargetError(f"value {path}: {part} is not a mapping")
    node[parts[-1]] = value
    return out


class HelmRelease:
    def __init__(self, *, release: str, namespace: str, chart: str, repository: str,
                 value_path: str, value_format: str = "tag", repo: str | None = None,
                 version: str | None = None, executable: str = "helm", kubeconfig: str | None = None,
                 timeout: float = 300.0):
        self.release, self.namespace, self.chart = release, namespace, chart
        self.repository, self.value_path, self.value_format = repository, value_path, value_format
        self.repo, self.version, self.timeout = repo, version, timeout
        self.executable, self.kubeconfig = executable, kubeconfig
        self._upgrading: tuple[Future, dict] | None = None   # the upgrade apply(wait=False) started
        self.description = f"helm release {namespace}/{release} ({value_path})"

    def _client(self):
        from pathlib import Path

        from pyhelm3 import Client

        return Client(executable=self.executable,
                      kubeconfig=Path(self.kubeconfig) if self.kubeconfig else None)

    def _value(self, image: ImageRef) -> str:
        if self.value_format == "reference":
            return str(image)
        return image.ref

    def _parse(self, value: Any) -> ImageRef | None:
        if not isinstance(value, str) or not value:
            return None
        if self.value_format == "reference":
            return ImageRef.parse(value)
        tag, _, digest = value.partition("@")
        return ImageRef(self.repository, tag or None, digest or None)

    async def _current(self):
        client = self._client()
        revision = await client.get_current_revision(self.release, namespace=self.namespace)
        return client, revision, await revision.values()

    def _run(self, coro):
        try:
            return asyncio.run(coro)
        except TargetError:
            raise
        except Exception as exc:  # pyhelm3 raises its own errors for helm's failures
            raise TargetError(f"{self.description}: {type(exc).__name__}: {str(exc)[:500]}") from exc

    def current(self) -> ImageRef | None:
        _, _, values = self._run(self._current())
        return self._parse(get_path(values or {}, self.value_path))

    def apply(self, image: ImageRef, *, wait: bool = True) -> Applied:
        """``helm upgrade --wait``. ``wait=False``: the upgrade runs on its own thread (helm
        waits there, bounded by :attr:`timeout`) and :meth:`health` tells when it ended."""
        detail: dict = {"release": self.release, "namespace": self.namespace, "value": self._value(image)}
        if wait:
            self._upgraded(detail, self._run(self._upgrade(image)))
            return Applied(detail)
        fut: Future = Future()

        def upgrade() -> None:
            try:
                fut.set_result(self._run(self._upgrade(image)))
            except BaseException as exc:  # noqa: BLE001 - handed to health()
                fut.set_exception(exc)
        threading.Thread(target=upgrade, daemon=True, name=f"helm-upgrade-{self.release}").start()
        self._upgrading = (fut, detail)
        return Applied(detail)

    def health(self, generation: int | None = None) -> tuple[bool, str]:
        """Whether the upgrade the last ``apply(wait=False)`` started has ended, without waiting."""
        if self._upgrading is None:
            return True, "nothing rolling"
        fut, detail = self._upgrading
        if not fut.done():
            return False, "helm upgrade --wait still running"
        self._upgrading = None
        self._upgraded(detail, fut.result())
        return True, f"revision {detail['to_revision']} deployed"

    def expire(self) -> None:
        """Past the deadline: helm's own ``--timeout`` (the same) ends its wait and marks the
        revision failed; nothing to undo here."""
        self._upgrading = None

    async def _upgrade(self, image: ImageRef) -> tuple[int, int, str, str]:
        client, revision, values = await self._current()
        version = self.version or (await revision.chart_metadata()).version
        chart = await client.get_chart(self.chart, repo=self.repo, version=version)
        new_values = set_path(values or {}, self.value_path, self._value(image))
        new = await client.install_or_upgrade_release(
            self.release, chart, new_values, namespace=self.namespace, wait=True,
            atomic=False, timeout=f"{int(self.timeout)}s", create_namespace=False,
            description=f"slipway: {self.value_path}={self._value(image)}")
        return revision.revision, new.revision, str(new.status), version

    def _upgraded(self, detail: dict, result: tuple[int, int, str, str]) -> None:
        before, after, status, version = result
        if status.lower().rsplit(".", 1)[-1] != "deployed":
            raise TargetError(f"{self.description}: revision {after} is {status}")
        detail.update({"chart_version": version, "from_revision": before, "to_revision": after})
