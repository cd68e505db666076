"""Build an image from one exact commit with the Docker SDK, tag it, push it.

The build context comes from the source's archive of that commit (never a checkout of
the branch), the image carries the OCI labels (revision, source, version, created), and
the log is streamed to a callback as it arrives.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import docker
import docker.errors
import requests

from poller.builds.context import make_context
from poller.config import RegistryConfig, SourceConfig
from poller.errors import BuildError, PushError, UpstreamError
from poller.logs import mask
from poller.sources.base import Source

LABEL_REVISION = "org.opencontainers.image.revision"
LABEL_SOURCE = "org.opencontainers.image.source"
LABEL_VERSION = "org.opencontainers.image.version"
LABEL_CREATED = "org.opencontainers.image.created"
LABEL_REF = "io.slipway.ref"


@dataclass(frozen=True)
class BuildPlan:
    """One image to make: which commit, under which tags, and why."""

    source: str
    image: str            # repository with host, e.g. 127.0.0.1:5000/game-server
    ref: str              # 'branch:master' or 'tag:v1.2.3'
    kind: str             # staging | release | prerelease
    sha: str
    version: str          # label value: '1.2.3' for releases, 'sha-<12>' for branch builds
    tags: tuple[str, ...] = field(default=())  # pushed in this order; the moving tag last

    @property
    def key(self) -> tuple[str, str]:
        return (self.image, self.ref)


@dataclass
class BuildResult:
    image_id: str
    digest: str
    log: str
    duration: float


class Builder(Protocol):
    def build(self, plan: BuildPlan, source: Source, source_cfg: SourceConfig,
              on_log: Callable[[str], None]) -> BuildResult: ...


class DockerBuilder:
    """The real builder: a Docker engine through the docker SDK."""

    def __init__(self, client_factory: Callable[[], docker.DockerClient], registry: RegistryConfig,
                 *, workdir: str | None = None, timeout: float = 3600.0, engine: str = "docker"):
        self._client_factory = client_factory
        self.engine = engine  # its URL, for error messages
        self.registry = registry
        self.workdir = workdir
        self.timeout = timeout

    def _auth(self) -> dict | None:
        if self.registry.username and self.registry.password:
            return {"username": self.registry.username,
                    "password": self.registry.password.get_secret_value()}
        return None

    def build(self, plan: BuildPlan, source: Source, source_cfg: SourceConfig,
              on_log: Callable[[str], None]) -> BuildResult:
        started = time.monotonic()
        lines: list[str] = []

        def log(text: str) -> None:
            # Masked as it arrives: a build that prints a secret (a build arg, a password)
            # shows *** in the live view, the stored log and every error made from it.
            text = mask(text)
            lines.append(text)
            on_log(text)

        client = self._client_factory()
        try:
            with tempfile.TemporaryFile(dir=self.workdir) as archive, \
                    tempfile.TemporaryFile(dir=self.workdir) as ctx:
                log(f"--> fetching {plan.sha[:12]} from {source.web_url()}\n")
                source.write_archive(plan.sha, archive)
                archive.seek(0)
                dockerfile = make_context(archive, ctx, context=source_cfg.context,
                                          dockerfile=source_cfg.dockerfile)
                ctx.seek(0)
                image_id = self._build(client, plan, source, source_cfg, ctx, dockerfile, log, started)
            digest = self._push(client, plan, image_id, log)
        finally:
            client.close()
        return BuildResult(image_id=image_id, digest=digest, log="".join(lines),
                           duration=time.monotonic() - started)

    def _build(self, client, plan, source, source_cfg, ctx, dockerfile, log, started) -> str:
        labels = {
            LABEL_REVISION: plan.sha,
            LABEL_SOURCE: source.web_url(),
            LABEL_VERSION: plan.version,
            LABEL_CREATED: dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            LABEL_REF: plan.ref,
        }
        first = f"{plan.image}:{plan.tags[0]}"
        log(f"--> building {first} ({plan.ref} at {plan.sha[:12]})\n")
        image_id = None
        try:
            stream = client.api.build(fileobj=ctx, custom_context=True, encoding=None,
                                      dockerfile=dockerfile, tag=first, labels=labels,
                                      buildargs=dict(source_cfg.build_args) or None, rm=True,
                                      forcerm=True, pull=False, decode=True)
            for chunk in stream:
                if "stream" in chunk:
                    log(chunk["stream"])
                if "error" in chunk or "errorDetail" in chunk:
                    message = chunk.get("error") or chunk["errorDetail"].get("message", "")
                    log(f"ERROR: {message}\n")
                    raise BuildError(mask(f"build of {first} failed: {message.strip()}"))
                aux = chunk.get("aux") or {}
                if "ID" in aux:
                    image_id = aux["ID"]
                if time.monotonic() - started > self.timeout:
                    raise BuildError(f"build of {first} took longer than {self.timeout:.0f}s")
        except docker.errors.APIError as exc:
            if exc.status_code and exc.status_code >= 500:
                raise UpstreamError(mask(f"docker engine: {exc.explanation}"), upstream="docker") from exc
            raise BuildError(mask(f"build of {first} failed: {exc.explanation}")) from exc
        except (requests.ConnectionError, docker.errors.DockerException) as exc:
            raise UpstreamError(mask(f"docker engine {self.engine} unreachable: {exc}"),
                                upstream="docker") from exc
        if image_id is None:
            image_id = client.api.inspect_image(first)["Id"]
        for tag in plan.tags[1:]:
            client.api.tag(image_id, plan.image, tag)
        return image_id

    def _push(self, client, plan: BuildPlan, image_id: str, log) -> str:
        digest = ""
        for tag in plan.tags:
            log(f"--> pushing {plan.image}:{tag}\n")
            try:
                for chunk in client.api.push(plan.image, tag=tag, stream=True, decode=True,
                                             auth_config=self._auth()):
                    if "error" in chunk or "errorDetail" in chunk:
                        message = chunk.get("error") or chunk["errorDetail"].get("message", "")
                        raise PushError(mask(f"push of {plan.image}:{tag} failed: {message}"),
                                        upstream="registry")
                    status = chunk.get("status")
                    if status and chunk.get("id") is None:
                        log(status + "\n")
                    aux = chunk.get("aux") or {}
                    if aux.get("Digest"):
                        digest = aux["Digest"]
            except (docker.errors.APIError, requests.ConnectionError) as exc:
                raise PushError(mask(f"push of {plan.image}:{tag} failed: {exc}"), upstream="registry") from exc
        log(f"--> pushed {plan.image}@{digest}\n")
        return digest
