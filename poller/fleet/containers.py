"""One service's container on this machine's Docker engine: its version, pre-pull, switch.

A switch replaces the container with one of the same configuration on the new image: the
settings the old container had on top of its image (command, env, labels, ports, mounts,
restart policy) are carried over, the rest comes from the new image. The old container is
kept (renamed ``<name>-old``) until the new one is healthy, so a failed health check puts it
straight back, and the switch returns only once it is healthy again (the rollback is part of the
machine's unavailability); :meth:`ServiceContainer.recover` finishes a switch a killed agent left
halfway.
"""

from __future__ import annotations

import threading
import time

import docker
import docker.errors
import requests

from poller.docker_engine import http_address
from poller.errors import UpstreamError
from poller.imageref import ImageRef
from poller.logs import get_logger
from poller.settings.fleet import HealthCheck

log = get_logger("poller.fleet")


def version_of(image_ref: str) -> str | None:
    """The tag of ``image_ref`` (``host:5000/game:1.2.0@sha256:..`` → ``1.2.0``)."""
    return ImageRef.parse(image_ref).tag


class ServiceContainer:
    def __init__(self, client: docker.DockerClient, name: str, repository: str, health: HealthCheck,
                 *, stop: threading.Event | None = None, stop_timeout: int = 10):
        self.client = client
        self.name = name
        self.repository = repository
        self.health = health
        self.stop = stop or threading.Event()
        self.stop_timeout = stop_timeout

    # -- reading --------------------------------------------------------------------
    def _get(self, name: str):
        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None

    def exists(self) -> bool:
        return self._get(self.name) is not None or self._get(self.name + "-old") is not None

    def version(self) -> str | None:
        """The version the container runs (its image tag), ``None`` when it is not running."""
        c = self._get(self.name)
        if c is None or c.status != "running":
            return None
        return version_of(c.attrs["Config"]["Image"])

    def recover(self) -> None:
        """Finish a switch that stopped halfway (agent killed, engine error) with the same health
        gate: keep the new container once it is healthy, else put ``<name>-old`` back and wait
        for it. The agent frees a slot such a switch left only after this."""
        old = self._get(self.name + "-old")
        if old is None or self.stop.is_set():
            return
        new = self._get(self.name)
        if new is not None and new.status == "running":
            ok, why = self.wait_healthy(new)
            if ok:
                old.remove(force=True)
                log.warning("fleet.recovered", container=self.name, kept="new")
                return
            if self.stop.is_set():
                return  # shutting down: the next start finishes it
        if new is not None:
            new.remove(force=True)
        old.rename(self.name)
        old.start()
        ok, why = self.wait_healthy(old)
        log.warning("fleet.recovered", container=self.name, kept="old", healthy=ok, reason=why)

    # -- pulling --------------------------------------------------------------------
    def has_image(self, version: str) -> bool:
        try:
            self.client.images.get(f"{self.repository}:{version}")
            return True
        except docker.errors.ImageNotFound:
            return False

    def pull(self, version: str) -> None:
        if self.has_image(version):
            return
        try:
            self.client.images.pull(self.repository, tag=version)
        except docker.errors.APIError as exc:
            raise UpstreamError(f"pull {self.repository}:{version} failed: {exc.explanation or exc}",
                                upstream="docker") from exc

    # -- switching ------------------------------------------------------------------
    def _create_like(self, old, image: str):
        cfg = old.attrs["Config"]
        base = self.client.images.get(old.attrs["Image"]).attrs.get("Config") or {}

        def own(key):
            value = cfg.get(key)
            return value if value != base.get(key) else None

        env = [e for e in (cfg.get("Env") or []) if e not in (base.get("Env") or [])]
        labels = {k: v for k, v in (cfg.get("Labels") or {}).items()
                  if (base.get("Labels") or {}).get(k) != v}
        ports = [(int(p.split("/")[0]), p.split("/")[1]) for p in (cfg.get("ExposedPorts") or {})]
        return self.client.api.create_container(
            image=image, name=self.name, command=own("Cmd"), entrypoint=own("Entrypoint"),
            environment=env or None, labels=labels, ports=ports or None,
            healthcheck=own("Healthcheck"), working_dir=own("WorkingDir"), user=own("User"),
            host_config=old.attrs["HostConfig"])

    def switch(self, version: str) -> tuple[bool, str]:
        """Replace the container with ``version``; returns (healthy, reason). Rolls back on failure."""
        old = self._get(self.name)
        if old is None:
            return False, f"container {self.name} does not exist"
        image = f"{self.repository}:{version}"
        old.stop(timeout=self.stop_timeout)
        old.rename(self.name + "-old")
        try:
            created = self._create_like(old, image)
            new = self.client.containers.get(created["Id"])
            new.start()
            ok, reason = self.wait_healthy(new)
        except docker.errors.APIError as exc:
            ok, reason = False, f"docker: {exc.explanation or exc}"
        if ok:
            old.remove(force=True)
            return True, "healthy"
        new = self._get(self.name)
        if new is not None:
            new.remove(force=True)
        old.rename(self.name)
        old.start()
        # The machine is still unavailable until the old version answers again: the caller holds
        # its quorum slot until this returns, so wait for the rolled-back container's health too.
        back, why = self.wait_healthy(old)
        if not back:
            log.error("fleet.rollback_unhealthy", container=self.name, reason=why)
            reason = f"{reason}; the old version did not come back healthy: {why}"
        return False, reason

    def wait_healthy(self, container) -> tuple[bool, str]:
        deadline = time.monotonic() + self.health.timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            container.reload()
            state = container.attrs["State"]
            if state.get("Status") in ("exited", "dead"):
                return False, f"container exited with {state.get('ExitCode')}"
            ok = self._probe(container)
            if ok is not None:
                return ok, "healthy" if ok else "health check reported unhealthy"
            self.stop.wait(0.2)
        return False, f"not healthy within {self.health.timeout:g}s"

    def _probe(self, container) -> bool | None:
        """True healthy, False unhealthy for good, None not decided yet."""
        state = container.attrs["State"]
        if self.health.kind == "docker":
            health = state.get("Health")
            if health is None:  # the image has no HEALTHCHECK: running is all we can know
                return True if state.get("Running") else None
            return {"healthy": True, "unhealthy": False}.get(health.get("Status"))
        address = http_address(container.attrs, self.health.port)  # type: ignore[arg-type]
        if address is None:
            return None
        try:
            resp = requests.get(f"http://{address[0]}:{address[1]}{self.health.path}",
                                timeout=self.health.request_timeout)
        except requests.RequestException:
            return None
        return True if resp.ok else None
