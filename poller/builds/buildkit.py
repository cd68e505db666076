"""Build with BuildKit: ``buildctl`` against a pool of ``buildkitd`` builders.

The same :class:`~poller.builds.builder.Builder` contract as the docker engine: the exact
commit as context, the OCI labels, every tag pushed with the registry's credentials, the log
streamed as it comes. BuildKit adds parallel stages, ``RUN --mount=type=cache`` and a build
cache kept in the registry (``<image>:buildcache``) that any builder can import.

``buildctl`` runs as a subprocess with ``--progress rawjson``; each JSON status is rendered
into the build log (``#3 [build 2/4] RUN make``, the step's output, ``#3 DONE 2.1s``). The
image digest comes from ``--metadata-file``. Registry credentials reach buildctl through a
private ``DOCKER_CONFIG`` directory (0700, config.json 0600) removed after the build; they
never appear on a command line or in the log.

A source sticks to one builder of the pool (rendezvous hashing over the healthy builders),
so its local cache stays warm; a builder failing its health check (``buildctl debug
workers``) is skipped for ``retry_unhealthy`` seconds and the source moves to the next one.
A builder that dies mid-build fails the build with an :class:`UpstreamError`; a build that
goes quiet is health-checked every ``stall_check`` seconds, so it never hangs.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from poller.builds.builder import (
    LABEL_CREATED,
    LABEL_REF,
    LABEL_REVISION,
    LABEL_SOURCE,
    LABEL_VERSION,
    BuildPlan,
    BuildResult,
)
from poller.builds.context import make_context
from poller.config import RegistryConfig, SourceConfig
from poller.errors import BuildError, PushError, UpstreamError
from poller.logs import get_logger
from poller.settings.buildkit import BuildKitConfig, BuildKitEndpoint
from poller.sources.base import Source

log = get_logger(__name__)

_PUSH_FAILURE = re.compile(r"failed to push|push access denied|unexpected status from (PUT|POST|HEAD|PATCH)"
                           r"|failed to export cache|error writing (layer|manifest)", re.IGNORECASE)


# --------------------------------------------------------------------------------------
# buildctl command lines
# --------------------------------------------------------------------------------------

def connection_args(ep: BuildKitEndpoint, connect_timeout: float) -> list[str]:
    args = ["--addr", ep.address, "--timeout", str(max(1, round(connect_timeout)))]
    if ep.ca_cert:
        args += ["--tlscacert", ep.ca_cert]
    if ep.cert and ep.key:
        args += ["--tlscert", ep.cert, "--tlskey", ep.key]
    if ep.server_name:
        args += ["--tlsservername", ep.server_name]
    return args


def _csv_field(text: str) -> str:
    """One field of buildctl's comma-separated attribute lists, quoted when it must be."""
    if any(c in text for c in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def build_args(*, plan: BuildPlan, labels: dict[str, str], build_args: dict[str, str], context_dir: str,
               dockerfile: str, metadata_file: str, cache_ref: str | None, cache_mode: str,
               insecure: bool) -> list[str]:
    """The ``buildctl build`` arguments (after the connection arguments)."""
    insecure_opt = ",registry.insecure=true" if insecure else ""
    names = ",".join(f"{plan.image}:{t}" for t in plan.tags)
    args = ["build", "--frontend", "dockerfile.v0",
            "--local", f"context={context_dir}", "--local", f"dockerfile={context_dir}",
            "--opt", f"filename={dockerfile}"]
    for k, v in labels.items():
        args += ["--opt", f"label:{k}={v}"]
    for k, v in build_args.items():
        args += ["--opt", f"build-arg:{k}={v}"]
    # Docker media types, as the docker engine pushes: the registry client, re-tagging and the
    # updaters see the same kind of manifest whichever engine built it.
    args += ["--output", "type=image," + _csv_field(f"name={names}") + ",push=true,oci-mediatypes=false"
             + insecure_opt]
    if cache_ref:
        # A cache that cannot be exported costs the next build time, not this build its image.
        export = f"type=registry,ref={cache_ref},mode={cache_mode},ignore-error=true{insecure_opt}"
        args += ["--export-cache", export,
                 "--import-cache", f"type=registry,ref={cache_ref}{insecure_opt}"]
    args += ["--metadata-file", metadata_file, "--progress", "rawjson"]
    return args


# --------------------------------------------------------------------------------------
# Progress: rawjson statuses -> build log text
# --------------------------------------------------------------------------------------

def _ts(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", value)
    if not m:
        return None
    frac = (m.group(2) or ".0")[:7]
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    try:
        return dt.datetime.fromisoformat(m.group(1) + frac + tz)
    except ValueError:
        return None


@dataclass
class ProgressRenderer:
    """Turns buildctl's ``--progress rawjson`` lines into plain build-log text."""

    numbers: dict[str, int] = field(default_factory=dict)
    shown: set[tuple[str, str]] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def _n(self, digest: str) -> int:
        if digest not in self.numbers:
            self.numbers[digest] = len(self.numbers) + 1
        return self.numbers[digest]

    def _once(self, digest: str, what: str) -> bool:
        if (digest, what) in self.shown:
            return False
        self.shown.add((digest, what))
        return True

    def feed(self, status: dict) -> str:
        out: list[str] = []
        for v in status.get("vertexes") or []:
            d = v.get("digest") or ""
            n = self._n(d)
            if v.get("started") and self._once(d, "start"):
                out.append(f"#{n} {v.get('name', '')}\n")
            if v.get("cached") and self._once(d, "cached"):
                out.append(f"#{n} CACHED\n")
            if v.get("completed") and self._once(d, "done"):
                if v.get("error") and str(v.get("name", "")).startswith("importing cache manifest") \
                        and "not found" in v["error"]:
                    out.append(f"#{n} no registry cache yet: this build starts one\n")
                elif v.get("error"):
                    self.errors.append(f"{v.get('name', '')}: {v['error']}")
                    out.append(f"#{n} ERROR: {v['error']}\n")
                elif not v.get("cached"):
                    start, end = _ts(v.get("started")), _ts(v.get("completed"))
                    took = f" {(end - start).total_seconds():.1f}s" if start and end else ""
                    out.append(f"#{n} DONE{took}\n")
        for s in status.get("statuses") or []:
            d = s.get("vertex") or ""
            if s.get("completed") and self._once(d, "status:" + str(s.get("id"))):
                out.append(f"#{self._n(d)} {s.get('name') or s.get('id')} done\n")
        for entry in status.get("logs") or []:
            try:
                data = base64.b64decode(entry.get("data") or "").decode("utf-8", "replace")
            except (ValueError, TypeError):
                continue
            n = self._n(entry.get("vertex") or "")
            for line in data.splitlines():
                out.append(f"#{n} {line}\n")
        for w in status.get("warnings") or []:
            try:
                short = base64.b64decode(w.get("short") or "").decode("utf-8", "replace")
            except (ValueError, TypeError):
                short = ""
            out.append(f"#{self._n(w.get('vertex') or '')} WARNING: {short}\n")
        return "".join(out)


# --------------------------------------------------------------------------------------
# The pool
# --------------------------------------------------------------------------------------

class BuilderPool:
    """Which builder a source uses: the first healthy one in the source's own stable order."""

    def __init__(self, endpoints: list[BuildKitEndpoint], probe: Callable[[BuildKitEndpoint], str | None],
                 *, retry_unhealthy: float = 30.0, clock: Callable[[], float] = time.monotonic):
        if not endpoints:
            raise ValueError("a builder pool needs at least one builder")
        self.endpoints = list(endpoints)
        self.probe = probe
        self.retry_unhealthy = retry_unhealthy
        self.clock = clock
        self._down: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def ranked(self, key: str) -> list[BuildKitEndpoint]:
        """Rendezvous hashing: each source has its own order of the pool, stable across
        restarts and config reordering; removing a builder moves only its sources."""
        def weight(ep: BuildKitEndpoint) -> bytes:
            return hashlib.sha256(f"{key}\0{ep.address}".encode()).digest()
        return sorted(self.endpoints, key=weight, reverse=True)

    def mark_down(self, ep: BuildKitEndpoint, reason: str) -> None:
        with self._lock:
            self._down[ep.address] = (self.clock() + self.retry_unhealthy, reason)
        log.warning("buildkit.builder_unhealthy", builder=ep.address, reason=reason,
                    retry_in=self.retry_unhealthy)

    def down_reason(self, ep: BuildKitEndpoint) -> str | None:
        with self._lock:
            entry = self._down.get(ep.address)
            if entry and entry[0] > self.clock():
                return entry[1]
            return None

    def choose(self, key: str) -> BuildKitEndpoint:
        problems = []
        for ep in self.ranked(key):
            reason = self.down_reason(ep)
            if reason is not None:
                problems.append(f"{ep.address}: {reason}")
                continue
            reason = self.probe(ep)
            if reason is None:
                with self._lock:
                    self._down.pop(ep.address, None)
                return ep
            self.mark_down(ep, reason)
            problems.append(f"{ep.address}: {reason}")
        raise UpstreamError("no BuildKit builder is healthy (" + "; ".join(problems) + ")",
                            upstream="buildkit")


# --------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------

def _last_lines(text: str, n: int = 5) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


class BuildKitBuilder:
    """The BuildKit engine: ``buildctl`` against the healthiest sticky builder of the pool."""

    def __init__(self, settings: BuildKitConfig, registry: RegistryConfig, *, workdir: str | None = None,
                 timeout: float = 3600.0, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.registry = registry
        self.workdir = workdir
        self.timeout = timeout
        self.buildctl = shutil.which(settings.buildctl) or settings.buildctl
        self.pool = BuilderPool(settings.addresses, self.probe, retry_unhealthy=settings.retry_unhealthy,
                                clock=clock)

    # -- health -----------------------------------------------------------------------
    def probe(self, ep: BuildKitEndpoint) -> str | None:
        """``None`` when the builder answers ``debug workers`` with a worker; else why not."""
        cmd = [self.buildctl, *connection_args(ep, self.settings.connect_timeout), "debug", "workers"]
        try:
            res = subprocess.run(cmd, check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                 timeout=self.settings.connect_timeout + 5)
        except subprocess.TimeoutExpired:
            return f"no answer within {self.settings.connect_timeout + 5:.0f}s"
        except OSError as exc:
            raise BuildError(f"cannot run buildctl ({self.buildctl}): {exc.strerror}") from exc
        if res.returncode != 0:
            return _last_lines(res.stderr, 2) or f"buildctl exited with {res.returncode}"
        if len([ln for ln in res.stdout.splitlines() if ln.strip()]) < 2:
            return "no workers"
        return None

    # -- the build --------------------------------------------------------------------
    def _insecure(self) -> bool:
        return self.registry.insecure or self.registry.url.startswith("http://")

    def _docker_config(self, directory: Path) -> None:
        directory.chmod(0o700)
        auths = {}
        if self.registry.username and self.registry.password and self.registry.password.get_secret_value():
            token = base64.b64encode(
                f"{self.registry.username}:{self.registry.password.get_secret_value()}".encode()).decode()
            auths[self.registry.host] = {"auth": token}
        path = directory / "config.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"auths": auths}, fh)

    def build(self, plan: BuildPlan, source: Source, source_cfg: SourceConfig,
              on_log: Callable[[str], None]) -> BuildResult:
        started = time.monotonic()
        lines: list[str] = []

        def emit(text: str) -> None:
            if text:
                lines.append(text)
                on_log(text)

        with tempfile.TemporaryDirectory(dir=self.workdir, prefix="slipway-buildkit-") as tmp:
            tmpdir = Path(tmp)
            ctxdir = tmpdir / "context"
            ctxdir.mkdir()
            emit(f"--> fetching {plan.sha[:12]} from {source.web_url()}\n")
            with tempfile.TemporaryFile(dir=tmpdir) as archive, tempfile.TemporaryFile(dir=tmpdir) as ctx:
                source.write_archive(plan.sha, archive)
                archive.seek(0)
                dockerfile = make_context(archive, ctx, context=source_cfg.context,
                                          dockerfile=source_cfg.dockerfile)
                ctx.seek(0)
                try:
                    with tarfile.open(fileobj=ctx, mode="r|") as tar:
                        tar.extractall(ctxdir, filter="tar")
                except (tarfile.TarError, OSError) as exc:
                    raise BuildError(f"cannot unpack the build context of {plan.sha[:12]}: {exc}") from exc
            ep = self.pool.choose(plan.source)
            labels = {
                LABEL_REVISION: plan.sha,
                LABEL_SOURCE: source.web_url(),
                LABEL_VERSION: plan.version,
                LABEL_CREATED: dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                LABEL_REF: plan.ref,
            }
            metadata = tmpdir / "metadata.json"
            dockercfg = tmpdir / "docker-config"
            dockercfg.mkdir()
            try:
                self._docker_config(dockercfg)
                cmd = [self.buildctl, *connection_args(ep, self.settings.connect_timeout),
                       *build_args(plan=plan, labels=labels, build_args=dict(source_cfg.build_args),
                                   context_dir=str(ctxdir), dockerfile=dockerfile,
                                   metadata_file=str(metadata),
                                   cache_ref=self.settings.cache_for(plan.image),
                                   cache_mode=self.settings.cache_mode, insecure=self._insecure())]
                first = f"{plan.image}:{plan.tags[0]}"
                emit(f"--> building {first} ({plan.ref} at {plan.sha[:12]}) on BuildKit {ep.address}\n")
                self._run(cmd, ep, first, emit, started, env={**os.environ, "DOCKER_CONFIG": str(dockercfg)})
            finally:
                shutil.rmtree(dockercfg, ignore_errors=True)
            try:
                meta = json.loads(metadata.read_text())
            except (OSError, ValueError) as exc:
                raise BuildError(f"build of {plan.image} finished without a result (metadata: {exc})") from exc
        digest = meta.get("containerimage.digest", "")
        image_id = meta.get("containerimage.config.digest", "")
        if not digest:
            raise BuildError(f"build of {plan.image} pushed no image digest (metadata: {sorted(meta)})")
        for tag in plan.tags:
            emit(f"--> pushed {plan.image}:{tag}\n")
        emit(f"--> pushed {plan.image}@{digest}\n")
        return BuildResult(image_id=image_id, digest=digest, log="".join(lines),
                           duration=time.monotonic() - started)

    def _run(self, cmd: list[str], ep: BuildKitEndpoint, what: str, emit: Callable[[str], None],
             started: float, env: dict[str, str]) -> None:
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        except OSError as exc:
            raise BuildError(f"cannot run buildctl ({self.buildctl}): {exc.strerror}") from exc
        lines: queue.Queue = queue.Queue()

        def pump(stream, name: str) -> None:
            for raw in iter(stream.readline, b""):
                lines.put((name, raw.decode("utf-8", "replace")))
            lines.put((name, None))

        threads = [threading.Thread(target=pump, args=(s, n), daemon=True, name=f"buildctl-{n}")
                   for s, n in ((proc.stdout, "out"), (proc.stderr, "err"))]
        for t in threads:
            t.start()
        renderer = ProgressRenderer()
        plain: list[str] = []
        open_streams = 2
        try:
            while open_streams:
                left = self.timeout - (time.monotonic() - started)
                if left <= 0:
                    raise BuildError(f"build of {what} took longer than {self.timeout:.0f}s")
                try:
                    _, text = lines.get(timeout=min(self.settings.stall_check, left))
                except queue.Empty:
                    reason = self.probe(ep)
                    if reason is not None:
                        self.pool.mark_down(ep, reason)
                        raise UpstreamError(f"BuildKit builder {ep.address} stopped answering during the "
                                            f"build of {what}: {reason}", upstream="buildkit")
                    continue
                if text is None:
                    open_streams -= 1
                    continue
                stripped = text.strip()
                if stripped.startswith("{"):
                    try:
                        status = json.loads(stripped)
                    except ValueError:
                        status = None
                    if isinstance(status, dict):
                        emit(renderer.feed(status))
                        continue
                if stripped:
                    plain.append(stripped)
                    emit(text if text.endswith("\n") else text + "\n")
            try:
                rc = proc.wait(timeout=max(1.0, self.timeout - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                raise BuildError(f"build of {what} took longer than {self.timeout:.0f}s") from None
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            for t in threads:
                t.join(timeout=5)
        if rc == 0:
            return
        errors = [ln for ln in plain if ln.startswith("error:")]
        message = (errors[-1][len("error:"):].strip() if errors else _last_lines("\n".join(plain), 3)) \
            or (renderer.errors[-1] if renderer.errors else "")
        if not message:
            message = f"buildctl exited with {rc}"
        reason = self.probe(ep)
        if reason is not None:
            self.pool.mark_down(ep, reason)
            emit(f"ERROR: BuildKit builder {ep.address} is gone: {reason}\n")
            raise UpstreamError(f"BuildKit builder {ep.address} failed during the build of {what}: {message}",
                                upstream="buildkit")
        emit(f"ERROR: {message}\n")
        if _PUSH_FAILURE.search(message):
            raise PushError(f"push of {what} failed: {message}", upstream="registry")
        raise BuildError(f"build of {what} failed: {message}")

