"""The one way Slipway reaches a Docker engine, and finds a container's address on it.

Which engine: the first of

1. the URL a setting names (``docker.base_url``; a more specific key such as a deployment's
   ``target.docker.base_url``, ``plugins.docker_url`` or ``fleet.agent.docker_url`` wins
   over it for its own part),
2. the environment the Docker SDK reads (``DOCKER_HOST``, ``DOCKER_TLS_VERIFY``,
   ``DOCKER_CERT_PATH``), exactly as ``docker`` the CLI would,
3. the local socket (``unix:///var/run/docker.sock``).

Timeout policy: every engine request (one HTTP call to the engine, or one read of a streamed
answer such as a build or pull) gives up after :data:`ENGINE_TIMEOUT` seconds. Longer
operations bound themselves (``build.timeout``, health-check and rollout deadlines).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from poller.errors import UpstreamError
from poller.http import redact_url

ENGINE_TIMEOUT = 600.0
LOCAL_SOCKET = "unix:///var/run/docker.sock"


def engine_url(base_url: str | None = None, environment: Mapping[str, str] | None = None) -> str:
    """The address :func:`docker_client` connects to (for messages; credentials redacted)."""
    if not base_url:
        import docker.errors
        import docker.utils

        try:
            base_url = docker.utils.kwargs_from_env(
                environment=dict(os.environ if environment is None else environment)).get("base_url")
        except docker.errors.DockerException:
            base_url = None
    return redact_url(base_url or LOCAL_SOCKET)


def docker_client(base_url: str | None = None, *, environment: Mapping[str, str] | None = None,
                  timeout: float = ENGINE_TIMEOUT):
    """A ``docker.DockerClient`` for ``base_url``, else for what the environment (default: this
    process's) says. An engine that cannot be reached is an :class:`UpstreamError` naming it,
    and a socket this process may not open says which fix applies."""
    import docker
    import docker.errors
    import docker.utils

    env = dict(os.environ if environment is None else environment)
    try:
        if base_url:
            return docker.DockerClient(base_url=base_url, timeout=timeout)
        kwargs = docker.utils.kwargs_from_env(environment=env)
        kwargs.setdefault("base_url", LOCAL_SOCKET)
        return docker.DockerClient(timeout=timeout, **kwargs)
    except docker.errors.DockerException as exc:
        raise UpstreamError(explain(exc, base_url or env.get("DOCKER_HOST") or LOCAL_SOCKET),
                            upstream="docker") from exc


def _reason(exc: BaseException) -> str:
    """The innermost cause of a docker SDK error, one line (not the whole urllib3 chain)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def explain(exc: BaseException, base_url: str) -> str:
    """One line: which engine failed and why; for a socket permission error (the usual first
    failure in a container: the socket is ``root:docker 0660``, the image runs as uid 10001),
    the socket's group and the ``--group-add`` that fixes it, or the TCP/TLS alternative."""
    text = f"{exc} {_reason(exc)}"
    if "PermissionError" not in text and "Permission denied" not in text:
        return f"docker engine {redact_url(base_url)} unreachable: {_reason(exc)}"
    path = base_url.split("://", 1)[-1] if "unix://" in base_url else base_url
    try:
        st = os.stat(path)
        gid: int | None = st.st_gid
        seen = f"{path} is gid {gid}, mode {st.st_mode & 0o777:o}"
    except OSError:
        gid = None
        seen = f"{path} cannot be inspected"
    group = gid if gid is not None else f"$(stat -c %g {path})"
    return (f"docker engine: permission denied on {path}: {seen}; this process runs as uid "
            f"{os.getuid()} with groups {sorted(set(os.getgroups()) | {os.getgid()})}. "
            f"Add the socket's group to the container (docker run --group-add {group} "
            f"-v {path}:{path} ...), or use the engine over TCP with TLS "
            "(DOCKER_HOST=tcp://HOST:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=/certs)")


def client_factory(*urls: str | None) -> Callable:
    """A zero-argument factory for the first configured URL in ``urls`` (see the module doc)."""
    url = next((u for u in urls if u), None)
    return lambda: docker_client(url)


def http_address(attrs: dict, port: int) -> tuple[str, int] | None:
    """Where this host reaches ``port`` of a container (``docker inspect`` ``attrs``).

    * host network: the container listens on the host itself: ``127.0.0.1``, and its
      ``slipway.port`` label, when set, names the port it really listens on;
    * a published binding of ``port/tcp``: that host address and port;
    * otherwise the container's own address on its network (reachable from the engine's host).
    ``None`` when there is no way yet (a container still starting has no address).
    """
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    if ((attrs.get("HostConfig") or {}).get("NetworkMode") or "") == "host":
        return "127.0.0.1", int(labels.get(PORT_LABEL) or port)
    nets = attrs.get("NetworkSettings") or {}
    bindings = (nets.get("Ports") or {}).get(f"{port}/tcp") or []
    if bindings:
        host = bindings[0].get("HostIp") or "127.0.0.1"
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        return host, int(bindings[0]["HostPort"])
    ip = nets.get("IPAddress") or next((n.get("IPAddress") for n in (nets.get("Networks") or {}).values()
                                        if n.get("IPAddress")), None)
    return (ip, port) if ip else None


PORT_LABEL = "slipway.port"  # host-network containers: the port they answer on
