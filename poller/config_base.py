"""The base every settings model derives from: unknown keys are errors, values frozen."""

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SettingsModel = _Model


import re as _re

_NAME = _re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62})$")


def check_name(v: str) -> str:
    """A name used in keys, labels and job ids."""
    if not _NAME.match(v):
        raise ValueError("must be lowercase letters, digits, '.', '_' or '-' (at most 63)")
    return v


def check_image_repository(v: str) -> str:
    """An image repository with its registry host and no tag or digest."""
    if ":" in v.rsplit("/", 1)[-1] or "@" in v:
        raise ValueError("give the repository only, without a tag or digest")
    if "/" not in v:
        raise ValueError("must include the registry host, e.g. 127.0.0.1:5000/name")
    return v
