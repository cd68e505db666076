"""Build the policy a deployment's settings name. An unknown name is a config error upstream
(the settings only accept known names), so there is no silent no-op policy here."""

from __future__ import annotations

from typing import cast

from poller.policy.base import Policy
from poller.policy.digest import DigestPolicy
from poller.policy.glob import GlobPolicy
from poller.policy.regex import RegexPolicy
from poller.policy.semver import Level, SemverPolicy


def make_policy(name: str, *, tag: str | None = None, pattern: str | None = None,
                prereleases: bool = False) -> Policy:
    if name == "digest":
        return DigestPolicy(tag=tag or "latest")
    if name in ("patch", "minor", "major", "all"):
        return SemverPolicy(level=cast(Level, name), prereleases=prereleases)
    if name == "glob":
        return GlobPolicy(pattern=pattern or "*", prereleases=prereleases)
    if name == "regex":
        return RegexPolicy(pattern=pattern or ".*", prereleases=prereleases)
    raise ValueError(f"unknown policy {name!r}")
