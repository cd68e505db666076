"""The poller's Docker engine client: an explicit URL (``docker.base_url``), else ``DOCKER_HOST``
(``tcp://`` with ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH`` for TLS), else the local socket.

A socket the process may not open is the usual first failure in a container (the socket is
``root:docker 0660``, the image runs as uid 10001): the error names the socket, its group and the
``--group-add`` that fixes it, or the TCP/TLS alternative.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import docker
import docker.errors

from poller.errors import UpstreamError
from poller.http import redact_url

LOCAL_SOCKET = "unix:///var/run/docker.sock"


def engine_url(base_url: str | None, environment: Mapping[str, str] | None = None) -> str:
    """The engine used: the given URL, else DOCKER_HOST, else the local socket."""
    return base_url or (environment or {}).get("DOCKER_HOST") or LOCAL_SOCKET


def engine_client(base_url: str | None, *, environment: Mapping[str, str] | None = None,
                  timeout: float = 600) -> docker.DockerClient:
    """Connect (the library asks the engine for its API version). Raises UpstreamError."""
    url = engine_url(base_url, environment)
    try:
        kwargs = docker.utils.kwargs_from_env(environment=dict(environment or {}))
        kwargs["base_url"] = url
        return docker.DockerClient(timeout=timeout, **kwargs)
    except docker.errors.DockerException as exc:
        raise UpstreamError(explain(exc, url), upstream="docker") from exc


def _reason(exc: BaseException) -> str:
    """The innermost cause of a docker SDK error, one line (not the whole urllib3 chain)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def explain(exc: BaseException, base_url: str) -> str:
    """One line: what failed and, for a socket permission error, which fix applies."""
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
