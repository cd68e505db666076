"""Typed configuration: one YAML file, loaded once, validated, passed in.

:func:`load_config` is the only place that reads the file and the environment. Secrets are
written as ``${VAR}`` (from the environment) or ``${file:/path}`` (from a file, trailing
newline stripped), never required inline, and kept as :class:`pydantic.SecretStr` so they
never print. Every mistake is a :class:`~poller.errors.ConfigError` naming the file, the key
path (``sources[2].branch``) and the reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import unquote

import yaml
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from poller.errors import ConfigError
from poller.logs import register_secret
from poller.names import check_git_ref, check_git_url, check_project_path
from poller.settings.base import (
    _Model,
    check_image_repository,
    check_name,
    one_of,
    split_url_credentials,
)
from poller.settings.buildkit import BuildKitConfig
from poller.settings.fleet import FleetConfig
from poller.settings.notify import NotifyConfig
from poller.settings.plugins import PluginsConfig
from poller.settings.updates import UpdatesConfig

_REF = re.compile(r"\$\{([^}]+)\}")
_SOURCE_KINDS = ("git", "gitlab", "github")


class RegistryConfig(_Model):
    """The registry images are pushed to and watched in. Credentials written inline in ``url``
    (``https://user:PW@host``) are moved to ``username`` / ``password`` at load."""

    url: str = Field(description="host[:port], optionally with http:// or https://")
    insecure: bool = Field(False, description="talk plain HTTP instead of HTTPS")
    username: str | None = None
    password: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _inline(cls, data: Any) -> Any:
        return split_url_credentials(data)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not v:
            raise ValueError("must not be empty")
        return v

    @property
    def host(self) -> str:
        return re.sub(r"^https?://", "", self.url)

    @property
    def base_url(self) -> str:
        if self.url.startswith(("http://", "https://")):
            return self.url
        return ("http://" if self.insecure else "https://") + self.url


class GitRemote(_Model):
    url: str = Field(description="any URL git understands: file://, https://, ssh://, git://")

    _url = field_validator("url")(classmethod(lambda cls, v: check_git_url(v)))


class GitLabRemote(_Model):
    url: str = Field(description="GitLab base URL, e.g. https://gitlab.example.com")
    project: str = Field(description="project path (group/name) or numeric id")
    token: SecretStr | None = None
    ssl_verify: bool = True

    _project = field_validator("project")(
        classmethod(lambda cls, v: v if str(v).isdigit() else check_project_path(v, "project")))


class GitHubRemote(_Model):
    repo: str = Field(description="owner/name")
    api_url: str = "https://api.github.com"
    token: SecretStr | None = None

    _repo = field_validator("repo")(classmethod(lambda cls, v: check_project_path(v, "repo", parts=2)))


class SourceConfig(_Model):
    name: str
    git: GitRemote | None = None
    gitlab: GitLabRemote | None = None
    github: GitHubRemote | None = None
    branch: str = Field(description="the branch whose head is built as 'staging'")
    image: str = Field(description="repository to push to, e.g. 127.0.0.1:5000/game-server")
    dockerfile: str = "Dockerfile"
    context: str = "."
    build_args: dict[str, str] = Field(default_factory=dict)
    interval: float | None = Field(None, gt=0, description="poll interval in seconds (default: poll.interval)")
    tags: bool = Field(True, description="build semver git tags as releases")

    _name = field_validator("name")(classmethod(lambda cls, v: check_name(v)))
    _image = field_validator("image")(classmethod(lambda cls, v: check_image_repository(v)))
    _branch = field_validator("branch")(classmethod(lambda cls, v: check_git_ref(v, "branch")))

    @field_validator("dockerfile", "context")
    @classmethod
    def _relative(cls, v: str) -> str:
        if v.startswith("/") or ".." in Path(v).parts:
            raise ValueError("must be a path inside the repository")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> SourceConfig:
        one_of(self, _SOURCE_KINDS)
        return self

    @property
    def kind(self) -> str:
        return one_of(self, _SOURCE_KINDS)

    @property
    def image_host(self) -> str:
        return self.image.split("/", 1)[0]

    @property
    def image_repository(self) -> str:
        return self.image.split("/", 1)[1]


class BuildConfig(_Model):
    concurrency: int = Field(2, ge=1, le=64, description="builds running at once, all sources")
    log_limit_kb: int = Field(256, ge=1, description="build log kept per build in the store")
    retry_initial: float = Field(30.0, ge=0, description="first back-off after a failed build, s")
    retry_max: float = Field(3600.0, ge=0, description="longest back-off after failed builds, s")
    timeout: float = Field(3600.0, gt=0, description="a build running longer is failed")
    max_per_cycle: int = Field(50, ge=1, description="builds one source may start in one cycle; "
                               "the rest (newest first) wait for the next cycle")
    engine: Literal["docker", "buildkit"] = Field("docker", description="docker: the engine's classic "
                                                  "builder; buildkit: the build.buildkit pool")
    buildkit: BuildKitConfig = BuildKitConfig()

    @model_validator(mode="after")
    def _pool(self) -> BuildConfig:
        if self.engine == "buildkit" and not self.buildkit.addresses:
            raise ValueError("engine 'buildkit' needs at least one address in build.buildkit.addresses")
        return self


class PollConfig(_Model):
    interval: float = Field(60.0, gt=0, description="default seconds between polls of a source")
    jitter: float = Field(0.1, ge=0, le=1, description="fraction of the interval added at random")
    resync: float = Field(600.0, ge=0, description="seconds between full registry checks of an "
                          "unchanged source (0: every cycle)")
    backoff_max: float = Field(900.0, gt=0, description="longest wait after upstream failures, s")


class QueueConfig(_Model):
    name: str = Field("builds", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
                      description="the build queue poller run enqueues to (PostgreSQL store only)")
    lease: float = Field(30.0, ge=2, le=3600, description="seconds without a worker heartbeat "
                         "after which its build job is retried (once) by another worker")


class StoreConfig(_Model):
    queue: QueueConfig = QueueConfig()
    leader_interval: float = Field(2.0, ge=0.2, le=60, description="seconds between a replica's "
                                   "tries for leadership (PostgreSQL store); takeover within ~2x")
    path: str = Field("~/.local/state/slipway/slipway.db", description="SQLite file")
    url: str | None = Field(None, description="the store: a SQLite file path, or "
                            "postgresql://user[:password]@host[:port]/db for several replicas and "
                            "build workers; default: path")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and "://" in v and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a SQLite file path or a postgresql:// URL")
        return v or None


class DockerConfig(_Model):
    base_url: str | None = Field(None, description="Docker engine URL; default: DOCKER_HOST (with "
                                    "DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), else the local socket")


class ChartRepoConfig(_Model):
    name: str
    url: str = Field(description="Helm repository URL (serves index.yaml)")
    username: str | None = None
    password: SecretStr | None = None
    charts: list[str] | None = Field(None, description="charts to watch; default: all")
    staging_pattern: str = Field(r"^v?\d+\.\d+\.\d+-",
                                 description="regex on a chart version that marks a staging build; "
                                             "default: every prerelease, which is what the staging "
                                             "DSS range deploys")
    interval: float | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _inline(cls, data: Any) -> Any:
        return split_url_credentials(data)

    @field_validator("staging_pattern")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return v


class HelmApiClientConfig(_Model):
    url: str = Field(description="base URL of the helm API, e.g. http://helm-api:8080")
    token: SecretStr | None = None


class ChartsConfig(_Model):
    repos: list[ChartRepoConfig] = Field(default_factory=list)
    helm_api: HelmApiClientConfig | None = None
    approval: Literal["none", "major", "all"] = "major"
    environments: dict[str, str] = Field(
        default_factory=lambda: {"staging": "staging", "release": "production"},
        description="which environment a staging / release chart version applies to")


class ApiConfig(_Model):
    """The poller's own HTTP API (status, approvals, webhooks, dashboard)."""

    listen: str | None = Field("127.0.0.1:8081", description="host:port; null disables the API")
    token: SecretStr | None = Field(None, description="bearer token for every call that changes something")
    public_read: bool = Field(True, description="allow read-only calls without the token")
    gitlab_webhook_token: SecretStr | None = Field(
        None, description="secret GitLab sends in X-Gitlab-Token; null disables POST /hooks/gitlab")
    github_webhook_secret: SecretStr | None = Field(
        None, description="HMAC secret for X-Hub-Signature-256; null disables POST /hooks/github")
    registry_webhook_token: SecretStr | None = Field(
        None, description="bearer token the registry's notification endpoint sends; null disables "
                          "POST /hooks/registry")
    max_body_bytes: int = Field(
        5 * 1024 * 1024, ge=1024, le=1024**3,
        description="largest request body (JSON calls and webhooks); larger ones are answered 413")
    max_upload_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, le=4 * 1024**3,
        description="largest plugin upload (POST /api/v1/artifacts/<plugin>); the server refuses "
                    "any larger body before reading it")
    threads: int = Field(8, ge=1, le=64, description="requests served at once")
    _empty_secrets: tuple[str, ...] = PrivateAttr(default=())

    #: The settings that are secrets: an empty value ("" from ``${VAR}`` or ``${file:...}``)
    #: is treated as unset (the call or receiver it guards stays closed) and logged at load.
    SECRET_KEYS: ClassVar[tuple[str, ...]] = (
        "token", "gitlab_webhook_token", "github_webhook_secret", "registry_webhook_token")

    @model_validator(mode="wrap")
    @classmethod
    def _empty_secrets_are_unset(cls, data: Any, handler: Any) -> ApiConfig:
        empty: list[str] = []
        if isinstance(data, dict):
            data = dict(data)
            for key in cls.SECRET_KEYS:
                value = data.get(key)
                if isinstance(value, SecretStr):
                    value = value.get_secret_value()
                if isinstance(value, str) and not value.strip():
                    data[key] = None
                    empty.append(key)
        model = handler(data)
        model._empty_secrets = tuple(empty)
        return model

    @property
    def empty_secrets(self) -> tuple[str, ...]:
        """The secret settings that were given but empty (and are therefore unset)."""
        return self._empty_secrets

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, e.g. 127.0.0.1:8081")
        return v


# Docker Hub answers under several names; any of them in an image means the same registry.
_DOCKER_HUB = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}


def _registry_host(host: str) -> str:
    host = host.lower()
    host = host.removesuffix(":443")
    return "docker.io" if host in _DOCKER_HUB else host


class Config(_Model):
    registry: RegistryConfig | None = Field(
        None, description="where images are pushed and watched; needed by sources, fleet and "
                          "plugins, not by a charts-only configuration")
    sources: list[SourceConfig] = Field(default_factory=list)
    build: BuildConfig = BuildConfig()
    poll: PollConfig = PollConfig()
    store: StoreConfig = StoreConfig()
    docker: DockerConfig = DockerConfig()
    charts: ChartsConfig = ChartsConfig()
    api: ApiConfig = ApiConfig()
    updates: UpdatesConfig = UpdatesConfig()
    fleet: FleetConfig = FleetConfig()
    plugins: PluginsConfig = PluginsConfig()
    notify: NotifyConfig = NotifyConfig()
    state_dir: str = Field("~/.local/state/slipway", description="git mirrors and other caches")
    path: str | None = Field(None, exclude=True, description="the file this was loaded from")

    @model_validator(mode="after")
    def _unique(self) -> Config:
        if self.registry is None:
            needs = [what for what, used in (
                ("sources", bool(self.sources)),
                ("fleet.services", bool(self.fleet.services)),
                ("plugins.server_types", bool(self.plugins.server_types))) if used]
            if needs:
                raise ValueError(f"registry: field required when {needs[0]} is set (images are "
                                 "pushed and read there)")
        if self.registry is not None:
            for where, image in [*((f"sources[{i}].image", s.image) for i, s in enumerate(self.sources)),
                                 *((f"fleet.services.{n}.image", svc.image)
                                   for n, svc in self.fleet.services.items())]:
                host = image.partition("/")[0]
                if _registry_host(host) != _registry_host(self.registry.host):
                    raise ValueError(
                        f"{where}: '{image}' is on registry {host}, but registry.url is "
                        f"{self.registry.host}: images are pushed to and read from registry.url, "
                        f"so name them {self.registry.host}/{image.partition('/')[2]}")
        seen: dict[str, int] = {}
        for i, s in enumerate(self.sources):
            if s.name in seen:
                raise ValueError(f"sources[{i}].name: '{s.name}' is already used by sources[{seen[s.name]}]")
            seen[s.name] = i
        pairs: dict[tuple[str, str], str] = {}
        for s in self.sources:
            key = (s.image, s.branch)
            if key in pairs:
                raise ValueError(f"sources '{pairs[key]}' and '{s.name}' both push {s.image} from "
                                 f"branch {s.branch}")
            pairs[key] = s.name
        return self

    def source(self, name: str) -> SourceConfig:
        for s in self.sources:
            if s.name == name:
                return s
        raise ConfigError(f"no source named '{name}'", file=self.path, key="sources")

    @property
    def store_path(self) -> Path:
        return Path(os.path.expanduser(self.store.path))

    @property
    def store_target(self) -> str:
        """What :class:`poller.store.Store` opens: the PostgreSQL URL, else the SQLite path."""
        if self.store.url and "://" in self.store.url:
            return self.store.url
        return str(Path(os.path.expanduser(self.store.url or self.store.path)))

    @property
    def state_path(self) -> Path:
        return Path(os.path.expanduser(self.state_dir))


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # pydantic puts the tag of a function validator in the path; drop it.
            if str(part).startswith(("function-", "model-")):
                continue
            out += ("." if out else "") + str(part)
    return out


def _expand(value: Any, env: Mapping[str, str], path: str, file: str,
            seen: list[tuple[str, str]] | None = None) -> Any:
    """Replace ``${VAR}`` and ``${file:/path}`` in every string of the raw YAML tree; every
    substituted value is appended to ``seen`` as ``(key path, value)``."""
    if isinstance(value, dict):
        return {k: _expand(v, env, f"{path}.{k}" if path else str(k), file, seen)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, f"{path}[{i}]", file, seen) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(m: re.Match) -> str:
        out = _sub(m)
        if seen is not None:
            seen.append((path, out))
        return out

    def _sub(m: re.Match) -> str:
        ref = m.group(1).strip()
        if ref.startswith("file:"):
            fpath = Path(os.path.expanduser(ref[5:]))
            try:
                return fpath.read_text().rstrip("\n")
            except OSError as exc:
                raise ConfigError(f"cannot read secret file {fpath}: {exc.strerror}", file=file,
                                  key=path) from None
        name, _, default = ref.partition(":-")
        if name in env:
            return env[name]
        if _ != "":
            return default
        raise ConfigError(f"environment variable {name} is not set", file=file, key=path)

    return _REF.sub(sub, value)


def parse_config(data: Any, *, file: str = "<config>", env: Mapping[str, str] | None = None) -> Config:
    """Validate an already-parsed YAML tree. ``env`` defaults to ``os.environ``."""
    env = os.environ if env is None else env
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping (registry:, sources:, ...)", file=file)
    substituted: list[tuple[str, str]] = []
    data = _expand(data, env, "", file, substituted)
    try:
        cfg = Config.model_validate({**data, "path": file} if "path" not in data else data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = _format_loc(tuple(err["loc"]))
            msg = err["msg"]
            if err["type"] == "missing":
                msg = "field required"
            elif err["type"] == "extra_forbidden":
                msg = "unknown key"
            msg = re.sub(r"^(Value error|Assertion failed), ", "", msg)
            problems.append((key, msg))
        key, msg = problems[0]
        more = "".join(f"\n  {k}: {m}" for k, m in problems[1:])
        raise ConfigError(msg + more, file=file, key=key or None) from None
    for value in secret_values(cfg, substituted):
        register_secret(value)
    if cfg.api.empty_secrets:
        from poller.logs import get_logger

        for key in cfg.api.empty_secrets:
            get_logger("poller.config").warning(
                "config.empty_secret", file=file, key=f"api.{key}",
                effect="treated as unset: an empty secret never authenticates")
    _warn_unauthenticated_github(cfg, file)
    return cfg


_BUILD_ARG = re.compile(r"sources\[\d+\]\.build_args\.")


def _secrets_in(model: Any) -> Iterator[str]:
    if isinstance(model, SecretStr):
        yield model.get_secret_value()
    elif isinstance(model, BaseModel):
        for name in type(model).model_fields:
            yield from _secrets_in(getattr(model, name))
    elif isinstance(model, dict):
        for v in model.values():
            yield from _secrets_in(v)
    elif isinstance(model, (list, tuple)):
        for v in model:
            yield from _secrets_in(v)


def secret_values(cfg: Config, substituted: Sequence[tuple[str, str]] = ()) -> list[str]:
    """Every real secret of ``cfg``: each ``SecretStr`` setting, a password written inline in
    a git URL, and each ``build_args`` value taken from ``${VAR}`` or ``${file:}``. Empty values
    are not secrets (and are never masked)."""
    out = list(_secrets_in(cfg))
    urls = [u for s in cfg.sources for u in (s.git and s.git.url, s.gitlab and s.gitlab.url,
                                              s.github and s.github.api_url) if u]
    urls += [cfg.charts.helm_api.url] if cfg.charts.helm_api else []
    for url in urls:  # passwords written inline in remote URLs (shown redacted, never in full)
        userinfo = url.partition("://")[2].partition("/")[0].rpartition("@")[0]
        if ":" in userinfo:
            out += [userinfo.partition(":")[2], unquote(userinfo.partition(":")[2])]
    out += [v for path, v in substituted if _BUILD_ARG.match(path)]
    return [v for v in dict.fromkeys(out) if v and v.strip()]


#: conditional requests one poll of a GitHub source makes (see poller.sources.github)
GITHUB_REQUESTS_PER_POLL = 2
GITHUB_ANONYMOUS_LIMIT = 60   # requests per hour and address, 304s included


def _warn_unauthenticated_github(cfg: Config, file: str) -> None:
    """Without a token GitHub counts every poll, 304s included, against 60 requests an hour."""
    from poller.logs import get_logger

    for i, s in enumerate(cfg.sources):
        if s.github is None or (s.github.token is not None and s.github.token.get_secret_value()):
            continue
        interval = s.interval or cfg.poll.interval
        per_hour = GITHUB_REQUESTS_PER_POLL * 3600 / interval
        get_logger(__name__).warning(
            "config.github_unauthenticated", file=file, key=f"sources[{i}].github.token", source=s.name,
            reason=f"unauthenticated, GitHub counts every request of a poll, 304s "
                   f"included, against {GITHUB_ANONYMOUS_LIMIT} per hour; polling every {interval:g}s "
                   f"spends {per_hour:.0f} per hour on this source alone; set github.token")


def load_config(path: str | os.PathLike, *, env: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate the YAML config at ``path``."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except IsADirectoryError:
        raise ConfigError("is a directory; give the path of the YAML config file", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=file) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"is not UTF-8 text (byte {exc.start}); save it as UTF-8", file=file) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"not valid YAML: {where}{getattr(exc, 'problem', exc)}", file=file) from None
    return parse_config(data, file=file, env=env)
