"""From a source's refs to the images that should exist (the desired state).

* The branch head is a staging build: tags ``sha-<12 hex>`` then ``staging``.
* ``vX.Y.Z`` / ``X.Y.Z`` tags are releases, tagged ``X.Y.Z``; prereleases
  (``1.4.0-rc.1``) are built and tagged too, but their kind says they are not stable.
* Anything else is ignored with one debug line.
"""

from __future__ import annotations

from poller.builds.builder import BuildPlan
from poller.config import SourceConfig
from poller.logs import get_logger
from poller.sources.base import RefSnapshot
from poller.versions import TagKind, classify_tag

log = get_logger(__name__)

STAGING_TAG = "staging"


def sha_tag(sha: str) -> str:
    return f"sha-{sha[:12]}"


def staging_plan(cfg: SourceConfig, head: str) -> BuildPlan:
    return BuildPlan(source=cfg.name, image=cfg.image, ref=f"branch:{cfg.branch}", kind="staging",
                     sha=head, version=sha_tag(head), tags=(sha_tag(head), STAGING_TAG))


def release_plans(cfg: SourceConfig, tags: dict[str, str]) -> list[BuildPlan]:
    """One plan per distinct version, newest first. Odd tags never raise."""
    by_image_tag: dict[str, tuple] = {}
    for name in sorted(tags):
        kind, version = classify_tag(name)
        if kind is TagKind.IGNORED or version is None:
            log.debug("tag.ignored", source=cfg.name, tag=name, reason="not semver X.Y.Z")
            continue
        image_tag = version.image_tag
        sha = tags[name]
        if image_tag in by_image_tag and by_image_tag[image_tag][2] != sha:
            other = by_image_tag[image_tag][1]
            log.warning("tag.conflict", source=cfg.name, tags=f"{other},{name}", image_tag=image_tag,
                        reason="two git tags name the same version at different commits; "
                               f"keeping {other}")
            continue
        by_image_tag.setdefault(image_tag, (version, name, sha, kind))
    plans = []
    for image_tag, (version, name, sha, kind) in sorted(by_image_tag.items(),
                                                        key=lambda kv: kv[1][0], reverse=True):
        plans.append(BuildPlan(source=cfg.name, image=cfg.image, ref=f"tag:{name}",
                               kind="prerelease" if kind is TagKind.PRERELEASE else "release",
                               sha=sha, version=str(version), tags=(image_tag,)))
    return plans


def desired_plans(cfg: SourceConfig, snap: RefSnapshot) -> list[BuildPlan]:
    plans = [staging_plan(cfg, snap.head)] if snap.head else []
    if cfg.tags:
        plans.extend(release_plans(cfg, snap.tags))
    return plans
