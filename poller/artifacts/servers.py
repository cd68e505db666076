"""Game servers on a Docker host, as the plugin rollout sees them.

A server is a container labelled ``slipway.server-type=<type>`` and ``slipway.env=<env>``.
It reports the plugins it fetched at start (``plugins.txt`` from ``fetch-plugins.sh``) and
whether players are on it (``busy_path`` answers 2xx) over its probe port, found by
:func:`poller.docker_engine.http_address`: the host binding of ``probe.port``; for a
host-network server 127.0.0.1 and the port in its ``slipway.port`` label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests

from poller.docker_engine import http_address
from poller.logs import get_logger
from poller.settings.plugins import ServerProbe

log = get_logger(__name__)

TYPE_LABEL = "slipway.server-type"
ENV_LABEL = "slipway.env"
MACHINE_LABEL = "slipway.machine"  # fleet machines: the machine the server runs on


def parse_report(text: str) -> dict[str, str]:
    """``plugins.txt`` lines ``<plugin> <version> <digest>`` -> plugin -> digest."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            out[parts[0]] = parts[2]
    return out


@dataclass
class Server:
    container: Any   # a docker SDK Container
    probe: ServerProbe

    def __post_init__(self) -> None:
        # The server's identity is the name it was found under. A fleet agent switching its
        # image renames the running container to ``<name>-old`` for a moment, so the
        # container object's own name can drift; lookups always use this one.
        self._name = self.container.name

    @property
    def name(self) -> str:
        return self._name

    @property
    def server_type(self) -> str:
        return self.container.labels[TYPE_LABEL]

    @property
    def machine(self) -> str:
        """The fleet machine it runs on (label ``slipway.machine``), else its container name."""
        return self.container.labels.get(MACHINE_LABEL) or self._name

    def _reload(self) -> bool:
        """Refresh; a container replaced under the same name (a fleet agent's image switch) is
        followed by name. False when there is no container of that name right now."""
        try:
            self.container.reload()
            if self.container.name == self._name:
                return True
        except docker.errors.NotFound:
            pass
        try:
            self.container = self.container.client.containers.get(self._name)
            return True
        except docker.errors.NotFound:
            return False

    def healthy(self) -> bool:
        """Running, and healthy when the image has a HEALTHCHECK."""
        if not self._reload() or self.container.status != "running":
            return False
        health = self.container.attrs["State"].get("Health")
        return health is None or health.get("Status") == "healthy"

    def _url(self, path: str) -> str | None:
        if not self._reload():
            return None
        if self.container.status != "running":
            return None
        address = http_address(self.container.attrs, self.probe.port)
        return f"http://{address[0]}:{address[1]}{path}" if address else None

    def report(self) -> dict[str, str] | None:
        """plugin -> digest the server runs; ``None`` while it is down or has not fetched yet."""
        url = self._url(self.probe.report_path)
        if url is None:
            return None
        try:
            resp = requests.get(url, timeout=3)
        except requests.RequestException:
            return None
        return parse_report(resp.text) if resp.ok else None

    def busy(self) -> bool:
        url = self._url(self.probe.busy_path)
        if url is None:
            return False
        try:
            return requests.get(url, timeout=3).ok
        except requests.RequestException:
            return True  # cannot tell: treat as having players

    def run(self, command: list[str]) -> None:
        """Run ``command`` in the server's container. A container that is not running right now
        (a fleet agent's image switch stopped or replaced it) has no players to drain and starts
        undrained: nothing to do, so it is skipped rather than failing the cycle."""
        if not self._reload() or self.container.status != "running":
            log.info("plugins.exec_skipped", server=self._name, reason="not running")
            return
        try:
            result = self.container.exec_run(command)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: stopped or restarting since the reload above
                raise
            log.info("plugins.exec_skipped", server=self._name, reason="stopped meanwhile")
            return
        if result.exit_code != 0:
            raise docker.errors.APIError(f"{command!r} exited {result.exit_code}: {result.output!r}")

    def restart(self) -> None:
        """Restart it; a container replaced under the same name meanwhile is followed by name."""
        for attempt in range(3):
            self._reload()
            try:
                self.container.restart(timeout=self.probe.stop_timeout)
                return
            except docker.errors.NotFound:
                if attempt == 2:
                    raise


def find_servers(client: docker.DockerClient, probe: ServerProbe, env: str) -> dict[str, list[Server]]:
    """server type -> its servers in ``env`` (running or not), by name."""
    out: dict[str, list[Server]] = {}
    for c in sorted(client.containers.list(all=True, filters={"label": [f"{ENV_LABEL}={env}", TYPE_LABEL]}),
                    key=lambda c: c.name):
        out.setdefault(c.labels[TYPE_LABEL], []).append(Server(c, probe))
    return out
