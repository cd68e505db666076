"""Rollbacks in one command, for both channels.

**Staging** (:meth:`Rollbacks.staging`): ``staging`` in the registry is re-pointed to an
earlier build's digest (a manifest PUT, no rebuild), and the source is *held* there: the
pipeline leaves ``staging`` alone while the branch head is still the commit it was at when
the rollback was made. The next merge (a new head) releases the hold and is built as usual;
:meth:`Rollbacks.unpin` releases it by hand. Deployments that follow ``staging`` by digest
move to the rolled-back image on their own.

**Production** (:meth:`Rollbacks.production`): the seeds' procedure — tag the old commit
with a newer version. The next patch after the newest release of X.Y.Z's major line is
created on X.Y.Z's commit through the source (GitLab API, GitHub REST, ``git push``), and
the normal pipeline builds and deploys it. Refused when that tag exists.

Both return a :class:`RollbackPlan` that says what will be (or was) done; ``dry_run`` stops
before changing anything. Both are recorded in the audit log (``events``, kind
``rollback``) with who and why, and notified (``rollback.staging``, ``rollback.production``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from poller.builds.builder import LABEL_REVISION
from poller.builds.plans import STAGING_TAG, sha_tag
from poller.config import Config, SourceConfig
from poller.errors import ConfigError, NotFound, RollbackRefused
from poller.logs import get_logger
from poller.registry.client import RegistryClient
from poller.sources.base import Source
from poller.store import Store
from poller.versions import parse_version

log = get_logger(__name__)

STAGING, PRODUCTION = "staging", "production"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS staging_holds (
    source      TEXT PRIMARY KEY,
    digest      TEXT NOT NULL,      -- what staging was re-pointed to
    sha         TEXT,               -- that image's commit
    head        TEXT,               -- the branch head when it was made: a new head releases it
    by          TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    at          REAL NOT NULL
);
"""


@dataclass
class RollbackPlan:
    service: str
    env: str
    image: str
    steps: list[str] = field(default_factory=list)
    from_digest: str | None = None
    to_digest: str | None = None
    to_sha: str | None = None
    to_build: int | None = None
    from_version: str | None = None   # production: the release being gone back to
    tag: str | None = None            # production: the tag created
    dry_run: bool = False
    done: bool = False
    by: str = "cli"
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- holds (read by the pipeline) ------------------------------------------------------------
def ensure_schema(store: Store) -> None:
    store.ensure_schema(_SCHEMA)


def staging_hold(store: Store, source: str) -> dict[str, Any] | None:
    ensure_schema(store)
    row = store.execute("SELECT * FROM staging_holds WHERE source=?", (source,)).fetchone()
    return dict(row) if row else None


def staging_holds(store: Store) -> list[dict[str, Any]]:
    ensure_schema(store)
    return [dict(r) for r in store.execute("SELECT * FROM staging_holds ORDER BY source").fetchall()]


def release_hold(store: Store, source: str, *, by: str, why: str) -> bool:
    ensure_schema(store)
    cur = store.execute("DELETE FROM staging_holds WHERE source=?", (source,))
    if cur.rowcount:
        store.record_event("rollback.released", source, env=STAGING, by=by, reason=why)
        log.info("rollback.released", source=source, by=by, reason=why)
    return bool(cur.rowcount)


def _short(digest: str | None) -> str:
    return (digest or "-")[:19]


class Rollbacks:
    def __init__(self, cfg: Config, store: Store, *, registry: RegistryClient | None,
                 sources: dict[str, Source], notify: Callable[..., Any] | None = None,
                 clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.store = store
        self.registry = registry
        self.sources = sources
        self.notify = notify
        self.clock = clock
        ensure_schema(store)

    def _source(self, service: str) -> SourceConfig:
        for s in self.cfg.sources:
            if s.name == service:
                return s
        raise NotFound(f"no source named {service!r} (rollbacks take a sources[].name)")

    # -- staging ---------------------------------------------------------------------------
    def _staging_target(self, src: SourceConfig, to: str | None, current: str | None
                        ) -> tuple[str, str | None, int | None]:
        """(digest, sha, build id) of the image ``to`` names, or of the previous staging build."""
        repo = src.image_repository
        if to is None:
            for b in self.store.builds(source=src.name, limit=500):
                if (b.kind == STAGING and b.status == "succeeded" and b.digest
                        and b.digest != current):
                    return b.digest, b.sha, b.id
            raise RollbackRefused(f"{src.name}: no earlier staging build to roll back to "
                                  f"(staging is {_short(current)}); name one with --to")
        if to.isascii() and to.isdigit():
            rec = self.store.get_build(int(to)) if len(to) <= 18 else None
            if rec is None or rec.source != src.name:
                raise NotFound(f"{src.name}: no build {to} of this source")
            if rec.status != "succeeded" or not rec.digest:
                raise RollbackRefused(f"{src.name}: build {to} did not push an image "
                                      f"(status {rec.status})")
            return rec.digest, rec.sha, rec.id
        if to.startswith("sha-") and 5 <= len(to) <= 68 and self.registry is not None:
            digest = self.registry.head_manifest(repo, to)
            if digest is None:
                raise NotFound(f"{src.name}: no image {src.image}:{to} in the registry")
            sha = self.registry.labels(repo, digest).get(LABEL_REVISION)
            return digest, sha, None
        raise RollbackRefused(f"--to {to!r}: give a build id (poller status) or an image tag "
                              "sha-<commit>")

    def staging(self, service: str, *, to: str | None = None, reason: str = "",
                by: str = "cli", dry_run: bool = False) -> RollbackPlan:
        src = self._source(service)
        if self.registry is None:
            raise ConfigError("registry: needed to roll back staging", key="registry")
        repo = src.image_repository
        current = self.registry.head_manifest(repo, STAGING_TAG)
        digest, sha, build_id = self._staging_target(src, to, current)
        plan = RollbackPlan(service, STAGING, src.image, from_digest=current, to_digest=digest,
                            to_sha=sha, to_build=build_id, dry_run=dry_run, by=by, reason=reason)
        what = f"build {build_id}" if build_id else (sha_tag(sha) if sha else digest)
        if digest == current:
            plan.steps.append(f"staging of {src.image} is already {_short(digest)} ({what})")
        else:
            plan.steps.append(f"re-point {src.image}:staging from {_short(current)} to "
                              f"{_short(digest)} ({what}; no rebuild)")
        plan.steps.append(f"hold staging there until the next merge to {src.branch} "
                          f"(or: poller rollback {service} --env staging --unpin)")
        if dry_run:
            return plan
        head = self.sources[service].poll().head if service in self.sources else None
        if digest != current:
            manifest = self.registry.get_manifest(repo, digest)
            self.registry.put_manifest(repo, STAGING_TAG, manifest)
        self.store.execute(
            "INSERT INTO staging_holds (source, digest, sha, head, \"by\", reason, at) VALUES"
            " (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(source) DO UPDATE SET digest=excluded.digest,"
            " sha=excluded.sha, head=excluded.head, \"by\"=excluded.\"by\", reason=excluded.reason,"
            " at=excluded.at", (service, digest, sha, head, by, reason, self.clock()))
        plan.done = True
        self._record(plan)
        return plan

    def unpin(self, service: str, *, by: str = "cli") -> bool:
        self._source(service)
        return release_hold(self.store, service, by=by, why="unpinned")

    # -- production ------------------------------------------------------------------------
    def production(self, service: str, *, to: str, reason: str = "", by: str = "cli",
                   dry_run: bool = False) -> RollbackPlan:
        src = self._source(service)
        wanted = parse_version(to or "")
        if wanted is None or wanted.is_prerelease:
            raise RollbackRefused(f"--to {to!r}: give the release to go back to, X.Y.Z")
        source = self.sources.get(service)
        if source is None:
            raise NotFound(f"{service}: source not available")
        tags = source.poll().tags
        releases = {}
        for name, sha in tags.items():
            v = parse_version(name)
            if v is not None and not v.is_prerelease:
                releases[name] = (v, sha)
        match = [(name, sha) for name, (v, sha) in releases.items() if v == wanted]
        if not match:
            raise NotFound(f"{service}: no release tag {to} in {source.web_url()}")
        old_name, old_sha = match[0]
        line = [v for v, _ in releases.values() if v.major == wanted.major]
        newest = max(line)
        prefix = "v" if old_name.startswith("v") else ""
        new_name = f"{prefix}{newest.major}.{newest.minor}.{newest.patch + 1}"
        if any(parse_version(n) == parse_version(new_name) for n in tags):
            raise RollbackRefused(f"{service}: tag {new_name} already exists; "
                                  "refusing to create it again")
        plan = RollbackPlan(service, PRODUCTION, src.image, to_sha=old_sha,
                            from_version=str(wanted), tag=new_name, dry_run=dry_run, by=by,
                            reason=reason)
        plan.steps += [
            f"newest release of the {newest.major}.x line is {newest}",
            (f"create tag {new_name} on {old_sha[:12]} (the commit of {old_name}) in "
             f"{source.web_url()}"),
            (f"the pipeline then builds {src.image}:{new_name.lstrip('v')} and deployments "
             "that follow releases move to it"),
        ]
        if dry_run:
            return plan
        source.create_tag(new_name, old_sha)
        plan.done = True
        self._record(plan)
        return plan

    # -- audit and notification --------------------------------------------------------------
    def _record(self, plan: RollbackPlan) -> None:
        detail = {k: v for k, v in plan.as_dict().items()
                  if k not in ("service", "steps", "dry_run", "done")}
        self.store.record_event("rollback", plan.service, **detail)
        log.info("rollback.done", service=plan.service, env=plan.env, by=plan.by,
                 to=plan.tag or _short(plan.to_digest))
        if self.notify is not None:
            target = plan.tag if plan.env == PRODUCTION else _short(plan.to_digest)
            self.notify(f"rollback.{plan.env}",
                        f"{plan.service} {plan.env} rolled back to {target} by {plan.by}"
                        + (f": {plan.reason}" if plan.reason else ""),
                        service=plan.service, env=plan.env, by=plan.by, reason=plan.reason,
                        digest=plan.to_digest, tag=plan.tag, sha=plan.to_sha)
