"""One validator per kind of name.

Every name that becomes a path, a URL segment, a Kubernetes name, a git argument or a file
name is checked here, at the edge where it enters (config load, CLI argument, HTTP path),
and again where it is used as the last guard. Each ``check_*`` returns the value unchanged
or raises :class:`InvalidName` (a ``ValueError``, so pydantic validators can call them and
report the config key) with a reason that names what is allowed.
"""

from __future__ import annotations

import re

from poller.errors import InvalidInput
from poller.imageref import ImageRef


class InvalidName(InvalidInput, ValueError):
    """A name, tag, ref or path that is not allowed where it was given."""


def _fail(what: str, value: str, reason: str) -> InvalidName:
    shown = value if len(value) <= 80 else value[:77] + "..."
    return InvalidName(f"{what} {shown!r}: {reason}")


# -- names of our own things (sources, plugins, environments, server types, fleets) ------
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def valid_name(v: object) -> bool:
    return isinstance(v, str) and _NAME.fullmatch(v) is not None


def check_name(v: str, what: str = "name") -> str:
    """A name used in keys, labels, job ids and as one path segment."""
    if not valid_name(v):
        raise _fail(what, str(v), "must be lowercase letters, digits, '.', '_' or '-', "
                    "start with a letter or digit (at most 63)")
    return v


# -- registry (distribution spec) ----------------------------------------------------------
#: One path component of a repository name, as the distribution spec defines it.
_REPO_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"(?::[0-9]{1,5})?|\[[0-9A-Fa-f:]+\](?::[0-9]{1,5})?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


#: JSON-schema forms of the plugin-name and tag rules (for API documents).
PLUGIN_NAME_SCHEMA = {"type": "string", "maxLength": 63, "pattern": "^" + _REPO_COMPONENT.pattern + "$"}
TAG_SCHEMA = {"type": "string", "pattern": "^" + _TAG.pattern + "$"}


def check_repository_path(v: str, what: str = "repository path") -> str:
    """A registry repository path without its host (``plugins/chat``, ``game/server``)."""
    if not isinstance(v, str) or not v or len(v) > 255 or not all(
            _REPO_COMPONENT.fullmatch(p) for p in v.split("/")):
        raise _fail(what, str(v), "must be lowercase letters and digits, components separated by "
                    "'/', words by '.', '_', '__' or '-' (no spaces, no uppercase)")
    return v


def check_plugin_name(v: str) -> str:
    """A plugin: one repository component (``chat``, ``anti-cheat``) and a ``<name>.jar`` file."""
    check_name(v, "plugin name")
    if not _REPO_COMPONENT.fullmatch(v):
        raise _fail("plugin name", v, "must start and end with a letter or digit, words separated "
                    "by '.', '_', '__' or '-'")
    return v


def check_image_repository(v: str, what: str = "image") -> str:
    """An image repository with its registry host and no tag or digest
    (``127.0.0.1:5000/game-server``)."""
    if not isinstance(v, str):
        raise _fail(what, str(v), "must be a string")
    if ImageRef.parse(v).repository != v:   # a tag or a digest (even an empty one)
        raise _fail(what, v, "give the repository only, without a tag or digest")
    host, sep, path = v.partition("/")
    if not sep:
        raise _fail(what, v, "must include the registry host, e.g. 127.0.0.1:5000/name")
    if not _HOST.fullmatch(host):
        raise _fail(what, v, f"registry host {host!r} is not a host[:port]")
    try:
        check_repository_path(path)
    except InvalidName:
        raise _fail(what, v, "the repository must be lowercase letters and digits, components "
                    "separated by '/', words by '.', '_', '__' or '-' (no spaces, no uppercase)") from None
    return v


def check_tag(v: str, what: str = "tag") -> str:
    """An image or artifact tag (``1.4.0``, ``staging``, ``dev-lobby``)."""
    if not isinstance(v, str) or not _TAG.fullmatch(v):
        raise _fail(what, str(v), "must be letters, digits, '_', '.' or '-', not start with '.' "
                    "or '-' (at most 128)")
    return v


# -- Kubernetes ----------------------------------------------------------------------------
_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")


def valid_dns_label(v: object) -> bool:
    return isinstance(v, str) and _DNS_LABEL.fullmatch(v) is not None


def check_dns_label(v: str, what: str = "Kubernetes name") -> str:
    """An RFC 1123 label: namespaces, services, most object names."""
    if not isinstance(v, str) or not _DNS_LABEL.fullmatch(v):
        raise _fail(what, str(v), "must be lowercase letters, digits and '-', start and end with a "
                    "letter or digit (at most 63)")
    return v


def check_dns_subdomain(v: str, what: str = "Kubernetes name") -> str:
    """An RFC 1123 subdomain: Deployments, ConfigMaps, Jobs..."""
    if not isinstance(v, str) or len(v) > 253 or not _DNS_SUBDOMAIN.fullmatch(v):
        raise _fail(what, str(v), "must be lowercase letters, digits, '-' and '.', start and end "
                    "with a letter or digit (at most 253)")
    return v


# -- Helm charts ---------------------------------------------------------------------------
_CHART = re.compile(r"[a-z0-9](?:[a-z0-9_-]|\.(?=[a-z0-9_-])){0,62}")


def check_chart_name(v: str) -> str:
    """A chart name: it becomes the archive's top directory and ``<name>-<version>.tgz``."""
    if not isinstance(v, str) or not _CHART.fullmatch(v) or v.endswith("."):
        raise _fail("chart name", str(v), "must be lowercase letters, digits, '-', '_' or '.', start "
                    "with a letter or digit, no '/' or '..' (at most 63)")
    return v


# -- git -----------------------------------------------------------------------------------
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def check_git_ref(v: str, what: str = "git ref") -> str:
    """A branch or tag name as ``git check-ref-format`` allows it, and never an option."""
    if not isinstance(v, str) or not v:
        raise _fail(what, str(v), "must not be empty")
    reason = None
    if v.startswith("-"):
        reason = "must not start with '-'"
    elif _REF_FORBIDDEN.search(v):
        reason = "must not contain spaces, control characters or any of ~ ^ : ? * [ \\"
    elif ".." in v or "@{" in v or "//" in v or v == "@":
        reason = "must not contain '..', '@{' or '//'"
    elif v.startswith("/") or v.endswith(("/", ".", ".lock")):
        reason = "must not start with '/' or end with '/', '.' or '.lock'"
    elif any(p.startswith(".") or p.endswith(".lock") for p in v.split("/")):
        reason = "no path component may start with '.' or end with '.lock'"
    elif len(v) > 255:
        reason = "is too long (at most 255)"
    if reason:
        raise _fail(what, v, reason)
    return v


_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def check_commit(v: str, what: str = "commit") -> str:
    """A full git object id (SHA-1 or SHA-256, lowercase hex), as ls-remote prints it."""
    if not isinstance(v, str) or not _OBJECT_ID.fullmatch(v):
        raise _fail(what, str(v), "must be a full commit id (40 or 64 lowercase hex digits)")
    return v


def check_git_url(v: str, what: str = "git URL") -> str:
    """A git remote URL: never something git would read as an option."""
    if not isinstance(v, str) or not v.strip():
        raise _fail(what, str(v), "must not be empty")
    if v.startswith("-"):
        raise _fail(what, v, "must not start with '-' (git would read it as an option)")
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in v):
        raise _fail(what, v, "must not contain control characters")
    return v


# -- hosted projects (GitHub owner/name, GitLab group/.../name) --------------------------------
_PROJECT_PART = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def check_project_path(v: str, what: str = "project", *, parts: int | None = None) -> str:
    """``owner/name`` (``parts=2``) or ``group/sub/name``: URL path segments of a hosted API,
    so no empty, '.' or '..' segment and nothing but letters, digits, '_', '.' and '-'."""
    segs = v.split("/") if isinstance(v, str) else []
    if (not segs or (parts is not None and len(segs) != parts)
            or any(s in (".", "..") or not _PROJECT_PART.fullmatch(s) for s in segs)):
        shape = "'owner/name'" if parts == 2 else "'group/name' (subgroups allowed) or a numeric id"
        raise _fail(what, str(v), f"must be {shape}: letters, digits, '_', '.' or '-', no '..'")
    return v


# -- files ---------------------------------------------------------------------------------
def check_file_name(v: str, what: str = "file name") -> str:
    """One path segment: no '/', no '..', no control characters, no leading '-' or '.'."""
    if (not isinstance(v, str) or not v or len(v) > 255 or "/" in v or "\\" in v
            or v.startswith(("-", ".")) or any(ord(c) < 0x20 or ord(c) == 0x7f for c in v)):
        raise _fail(what, str(v), "must be a single file name: no '/', '\\', control characters, "
                    "and not starting with '.' or '-'")
    return v
