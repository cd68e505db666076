"""Containers on a machine's own Docker engine (no Kubernetes).

Pull the new image, then replace the container with the same configuration: name, command,
environment, labels, volumes/mounts, port bindings, restart policy and networks. The old
container is renamed aside first and removed only once the new one runs (and is healthy when
it has a health check); if the new one exits, turns unhealthy or is not healthy by the
deadline, it is removed and the old one is put back. With ``apply(wait=False)`` the new
container is started and its health judged by later :meth:`DockerContainer.health` calls
(one inspect each), so nobody waits on a container that takes long to become healthy.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from poller.targets.base import Applied, ImageRef, TargetError

_KEEP_HOST = ("Binds", "PortBindings", "RestartPolicy", "NetworkMode", "Privileged", "CapAdd",
              "CapDrop", "Devices", "ExtraHosts", "LogConfig", "Mounts", "Tmpfs", "ShmSize",
              "Init", "Memory", "NanoCpus", "VolumesFrom", "Dns", "SecurityOpt", "Ulimits")


class DockerContainer:
    def __init__(self, client_factory: Callable, *, container: str, timeout: float = 120.0,
                 poll: float = 0.5):
        self._client_factory = client_factory
        self.container = container
        self.timeout, self.poll = timeout, poll
        self._swap: dict | None = None   # the replacement started by the last apply, until judged
        self.description = f"docker container {container}"

    def _client(self):
        return self._client_factory()

    def current(self) -> ImageRef | None:
        import docker

        client = self._client()
        try:
            c = client.containers.get(self.container)
        except docker.errors.NotFound as exc:
            raise TargetError(f"{self.description} does not exist") from exc
        ref = ImageRef.parse(c.attrs["Config"]["Image"])
        # ``Config.Image`` is the string the container was created with (``repo:staging``
        # carries no digest); what it runs is its image id, known to the engine under the
        # manifest digests in that image's ``RepoDigests``.
        try:
            repo_digests = client.api.inspect_image(c.attrs["Image"]).get("RepoDigests") or []
        except docker.errors.NotFound:
            repo_digests = []
        digests = tuple(sorted(d for name, _, d in (r.partition("@") for r in repo_digests)
                               if name == ref.repository and d))
        if ref.digest and ref.digest not in digests:
            digests = (ref.digest, *digests)
        return ImageRef(ref.repository, ref.tag, ref.digest, digests)

    def _create_args(self, attrs: dict, image_ref: str, image_attrs: dict) -> dict:
        cfg, host = attrs["Config"], attrs["HostConfig"]
        # Keep only what the container set itself, not what the old image defaulted.
        old_image_cfg = image_attrs.get("old", {}) or {}
        env = [e for e in cfg.get("Env") or [] if e not in (old_image_cfg.get("Env") or [])]
        labels = {k: v for k, v in (cfg.get("Labels") or {}).items()
                  if (old_image_cfg.get("Labels") or {}).get(k) != v}
        cmd = cfg.get("Cmd") if cfg.get("Cmd") != old_image_cfg.get("Cmd") else None
        entrypoint = cfg.get("Entrypoint") if cfg.get("Entrypoint") != old_image_cfg.get("Entrypoint") else None
        return {"image": image_ref, "name": attrs["Name"].lstrip("/"), "command": cmd,
                "entrypoint": entrypoint, "environment": env, "labels": labels,
                "user": cfg.get("User") or None, "working_dir": cfg.get("WorkingDir") or None,
                "hostname": cfg.get("Hostname") if host.get("NetworkMode") not in ("host",) else None,
                "ports": [tuple(p.split("/", 1)) for p in cfg.get("ExposedPorts") or {}] or None, "healthcheck": cfg.get("Healthcheck"),
                "tty": cfg.get("Tty", False), "stdin_open": cfg.get("OpenStdin", False),
                "host_config": {k: host[k] for k in _KEEP_HOST if host.get(k) not in (None, [], {}, "")}}

    def _judge(self, state: dict) -> tuple[bool, str]:
        """(running and healthy, status) of the new container; :class:`TargetError` once it failed."""
        health = (state.get("Health") or {}).get("Status")
        if state.get("Status") == "exited" or state.get("Restarting") and state.get("ExitCode"):
            raise TargetError(f"{self.description}: new container exited with code {state.get('ExitCode')}")
        if state.get("Running") and health in (None, "healthy"):
            return True, health or "running"
        if health == "unhealthy":
            raise TargetError(f"{self.description}: new container is unhealthy")
        return False, f"status {state.get('Status')}, health {health}"

    def health(self, generation: int | None = None) -> tuple[bool, str]:
        """Judge the container the last ``apply(wait=False)`` started: once it runs (healthy, when
        it has a health check) the old one is removed; once it failed the old one is put back."""
        import docker

        swap = self._swap
        if swap is None:
            return True, "nothing rolling"
        api = swap["client"].api
        try:
            done, why = self._judge(api.inspect_container(swap["new_id"])["State"])
        except TargetError:
            self._restore(api, swap)
            raise
        except docker.errors.NotFound as exc:
            self._restore(api, swap)
            raise TargetError(f"{self.description}: the new container was removed") from exc
        except docker.errors.APIError as exc:
            raise TargetError(f"{self.description}: {exc.explanation or exc}") from exc
        if done:
            try:
                api.remove_container(swap["old_id"], force=True, v=False)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                raise TargetError(f"{self.description}: removing the old container: "
                                  f"{exc.explanation or exc}") from exc
            self._swap = None
            swap["detail"]["health"] = why
        return done, why

    def expire(self) -> None:
        """Not healthy by the deadline: the new container goes, the old one comes back."""
        swap, self._swap = self._swap, None
        if swap is not None:
            self._restore(swap["client"].api, swap)

    def _restore(self, api, swap: dict) -> None:
        self._swap = None
        try:
            _put_back(api, swap["new_id"], swap["old_id"], swap["name"], swap["was_running"])
        except Exception as exc:   # the engine's errors are reported as this target's
            raise TargetError(f"{self.description}: putting the old container back failed: {exc}") from exc

    def apply(self, image: ImageRef, *, wait: bool = True) -> Applied:
        """Replace the container. ``wait=False``: return once the new one is started; then
        :meth:`health` on later calls (and :meth:`expire` past :attr:`timeout`)."""
        applied = self._start(image)
        if not wait:
            return applied
        deadline = time.monotonic() + self.timeout
        while True:
            done, why = self.health()
            if done:
                return applied
            if time.monotonic() >= deadline:
                self.expire()
                raise TargetError(f"{self.description}: not running/healthy after {self.timeout:.0f}s ({why})")
            time.sleep(self.poll)

    def _start(self, image: ImageRef) -> Applied:
        import docker

        client = self._client()
        api = client.api
        ref = str(image)
        try:
            pull_ref = f"{image.repository}@{image.digest}" if image.digest else ref
            output = api.pull(pull_ref if image.digest else image.repository,
                              tag=None if image.digest else image.tag)
            if '"errorDetail"' in (output or ""):
                raise TargetError(f"{self.description}: pulling {ref} failed: {output.strip()[-300:]}")
            if image.digest and image.tag:
                api.tag(pull_ref, image.repository, image.tag)
            old = api.inspect_container(self.container)
        except docker.errors.APIError as exc:
            raise TargetError(f"{self.description}: {exc.explanation or exc}") from exc
        try:
            old_image_cfg = api.inspect_image(old["Image"]).get("Config") or {}
        except docker.errors.NotFound:
            old_image_cfg = {}
        args = self._create_args(old, ref, {"old": old_image_cfg})
        name = args.pop("name")
        host = args.pop("host_config")
        # Anonymous volumes (VOLUME in the image, ``-v /data``) are carried over by name.
        binds = list(host.get("Binds") or [])
        bound = {b.split(":")[1] for b in binds if ":" in b}
        bound |= {m.get("Target") for m in host.get("Mounts") or []}
        for m in old.get("Mounts") or []:
            if m.get("Type") == "volume" and m.get("Name") and m["Destination"] not in bound:
                binds.append(f"{m['Name']}:{m['Destination']}" + ("" if m.get("RW", True) else ":ro"))
        if binds:
            host["Binds"] = binds
        # A port published on a random host port keeps the one it got: players know it.
        live = (old.get("NetworkSettings") or {}).get("Ports") or {}
        if host.get("PortBindings"):
            host["PortBindings"] = {
                port: [b if b.get("HostPort") else {**b, "HostPort": _live_port(live, port, i)}
                       for i, b in enumerate(bindings or [])]
                for port, bindings in host["PortBindings"].items()}
        host_config = api.create_host_config(**_host_kwargs(host))
        networks = old.get("NetworkSettings", {}).get("Networks") or {}
        aside = f"{name}-slipway-old"
        api.rename(old["Id"], aside)
        was_running = old["State"].get("Running")
        new_id = None
        try:
            if was_running:
                api.stop(old["Id"], timeout=10)
            new_id = api.create_container(name=name, host_config=host_config,
                                          **{k: v for k, v in args.items() if v is not None})["Id"]
            mode = (old["HostConfig"].get("NetworkMode") or "")
            for net, conf in networks.items():
                if net in ("bridge", "host", "none") or net == mode:
                    continue
                api.connect_container_to_network(new_id, net, aliases=conf.get("Aliases"))
            api.start(new_id)
        except Exception as exc:
            _put_back(api, new_id, old["Id"], name, was_running)
            raise TargetError(f"{self.description}: {exc}") from exc
        detail = {"container": name, "from_image": old["Config"]["Image"], "to_image": ref,
                  "old_id": old["Id"][:12], "new_id": new_id[:12]}
        self._swap = {"client": client, "new_id": new_id, "old_id": old["Id"], "name": name,
                      "was_running": was_running, "detail": detail}
        return Applied(detail)


def _put_back(api, new_id: str | None, old_id: str, name: str, was_running: bool) -> None:
    """Remove the new container (if any) and give the old one its name (and start) back."""
    if new_id:
        api.remove_container(new_id, force=True)
    api.rename(old_id, name)
    if was_running:
        api.start(old_id)




def _live_port(live: dict, port: str, index: int) -> str:
    bindings = live.get(port) or []
    return bindings[index].get("HostPort", "") if index < len(bindings) else ""


def _host_kwargs(host: dict) -> dict:
    """``HostConfig`` as returned by inspect -> ``create_host_config`` keyword arguments."""
    out: dict = {}
    if "Binds" in host:
        out["binds"] = host["Binds"]
    if "PortBindings" in host:
        out["port_bindings"] = {
            port: [(b.get("HostIp") or "0.0.0.0", int(b["HostPort"])) if b.get("HostPort")
                   else (b.get("HostIp") or "0.0.0.0",) for b in bindings or []] for port, bindings in (host["PortBindings"] or {}).items()}
    if "RestartPolicy" in host and host["RestartPolicy"].get("Name"):
        out["restart_policy"] = host["RestartPolicy"]
    if host.get("NetworkMode"):
        out["network_mode"] = host["NetworkMode"]
    if "Mounts" in host:
        import docker.types

        out["mounts"] = [docker.types.Mount(target=m["Target"], source=m.get("Source"),
                                            type=m.get("Type", "volume"),
                                            read_only=m.get("ReadOnly", False)) for m in host["Mounts"]]
    simple = {"Privileged": "privileged", "CapAdd": "cap_add", "CapDrop": "cap_drop",
              "ExtraHosts": "extra_hosts", "Tmpfs": "tmpfs", "ShmSize": "shm_size", "Init": "init",
              "Memory": "mem_limit", "NanoCpus": "nano_cpus", "VolumesFrom": "volumes_from",
              "Dns": "dns", "SecurityOpt": "security_opt"}
    for key, kw in simple.items():
        if key in host:
            out[kw] = host[key]
    return out


def container_servers(target: DockerContainer) -> list[tuple[str, str | None]]:
    """``[(name, ip)]`` of the container now running (for a reload after the replacement)."""
    attrs = target._client().api.inspect_container(target.container)
    nets = attrs.get("NetworkSettings") or {}
    ip = nets.get("IPAddress") or next((n.get("IPAddress") for n in (nets.get("Networks") or {}).values()
                                        if n.get("IPAddress")), None)
    if attrs["HostConfig"].get("NetworkMode") == "host":
        ip = "127.0.0.1"
    return [(target.container, ip)]
