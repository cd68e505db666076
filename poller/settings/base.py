"""The base every settings model derives from: unknown keys are errors, values frozen."""

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SettingsModel = _Model


# One validator per kind of name lives in poller.names; settings models import them from here.
from poller.names import check_image_repository, check_name  # noqa: F401


def split_url_credentials(data: object, *, key: str = "url") -> object:
    """A ``model_validator(mode="before")`` for registry-like settings: credentials written
    inline (``https://user:PW@host``) are moved into ``username`` / ``password`` so that only
    the bare URL is ever shown, logged, stored or used as a metric label."""
    if not isinstance(data, dict) or not isinstance(data.get(key), str):
        return data
    url: str = data[key]
    scheme, sep, rest = url.rpartition("://")
    netloc, slash, path = rest.partition("/")
    if "@" not in netloc:
        return data
    from urllib.parse import unquote

    userinfo, _, host = netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if data.get("username") or data.get("password"):
        raise ValueError(f"{key}: credentials are given both in the URL and as username/password; "
                         "keep only the username/password keys")
    out = {**data, key: f"{scheme}{sep}{host}{slash}{path}"}
    if user:
        out["username"] = unquote(user)
    if colon:
        out["password"] = unquote(password)
    return out



def one_of(model: BaseModel, kinds: tuple[str, ...]) -> str:
    """The one field of ``kinds`` that is set on ``model`` (a source's git/gitlab/github, a
    target's kubernetes/helm/docker); any other count is a ValueError saying which."""
    given = [k for k in kinds if getattr(model, k) is not None]
    if len(given) != 1:
        names = ", ".join(f"'{k}'" for k in kinds[:-1]) + f" or '{kinds[-1]}'"
        raise ValueError(f"give exactly one of {names}" + (f" (got {', '.join(given)})" if given else ""))
    return given[0]
