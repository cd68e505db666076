"""One way to talk HTTP to upstreams: counted, timed out, and mapped onto Slipway errors.

Every upstream client (registry, GitHub, GitLab through python-gitlab's ``session=``,
the helm API) uses a session from :func:`make_session`, so requests are counted per
upstream and status (tests and ``/metrics`` read the same numbers), and failures become
:class:`~poller.errors.UpstreamError` (retry later, with ``retry_after``) or a permanent
error.

Every body is read through :func:`read_bounded`: at most ``max_body`` bytes (after content
decoding, so a gzip bomb counts at its real size) within ``read_deadline`` seconds, else a
:class:`~poller.errors.ResponseTooLarge` naming the upstream. A caller that streams a body
itself (archives) passes ``stream=True`` and bounds what it keeps.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections import Counter
from collections.abc import Callable

import requests
from prometheus_client import Counter as PromCounter

from poller.errors import AuthError, NotFound, ResponseTooLarge, UpstreamError

DEFAULT_TIMEOUT = (5.0, 60.0)
#: Largest response body read from any upstream (a registry tag page, a GitHub ref page and a
#: git ref advertisement of tens of thousands of refs all fit many times over).
MAX_BODY = 16 * 1024 * 1024
#: Longest time reading one body may take, however slowly the upstream trickles it.
READ_DEADLINE = 300.0
#: A redirect's own body is never used; this much of it is drained at most.
_MAX_REDIRECT_BODY = 64 * 1024
_CHUNK = 64 * 1024

UPSTREAM_REQUESTS = PromCounter(
    "slipway_upstream_requests_total", "HTTP requests Slipway made, by upstream and status",
    ["upstream", "status"],
)


class RequestCounter:
    """Thread-safe tally of requests by (upstream, status)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, int]] = Counter()

    def add(self, upstream: str, status: int) -> None:
        with self._lock:
            self._counts[(upstream, status)] += 1

    def total(self, upstream: str | None = None) -> int:
        with self._lock:
            return sum(n for (u, _), n in self._counts.items() if upstream in (None, u))

    def snapshot(self) -> dict[tuple[str, int], int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


#: The process-wide tally; tests may pass their own to :func:`make_session`.
REQUESTS = RequestCounter()


def read_bounded(resp: requests.Response, upstream: str, *, max_body: int = MAX_BODY,
                 deadline: float = READ_DEADLINE) -> bytes:
    """Read ``resp``'s whole body, refusing more than ``max_body`` bytes or ``deadline`` seconds.

    The body is kept as ``resp.content`` (so ``.json()`` and ``.text`` work as usual).
    """
    # already read (or streamed away) by someone else
    if resp._content_consumed:  # type: ignore[attr-defined]
        return resp.content
    what = f"{upstream}: {resp.request.method} {_redact(resp.url)}"
    declared = resp.headers.get("Content-Length", "")
    if resp.request.method != "HEAD" and declared.isdigit() and int(declared) > max_body:
        resp.close()
        raise ResponseTooLarge(f"{what}: response of {int(declared)} bytes is larger than the "
                               f"{max_body} bytes read from an upstream", upstream=upstream)
    chunks: list[bytes] = []
    size, started = 0, time.monotonic()
    try:
        for chunk in resp.iter_content(_CHUNK):
            size += len(chunk)
            if size > max_body:
                resp.close()
                raise ResponseTooLarge(f"{what}: response larger than the {max_body} bytes read "
                                       "from an upstream", upstream=upstream)
            if time.monotonic() - started > deadline:
                resp.close()
                raise UpstreamError(f"{what}: response took longer than {deadline:.0f}s to read",
                                    upstream=upstream)
            chunks.append(chunk)
    except requests.RequestException as exc:
        resp.close()
        raise UpstreamError(f"{what}: reading the response failed: {type(exc).__name__}",
                            upstream=upstream) from exc
    resp._content = b"".join(chunks)
    resp._content_consumed = True  # type: ignore[attr-defined]
    return resp._content


class _BoundedSession(requests.Session):
    """Default timeout, and every body read through :func:`read_bounded` unless streamed.

    The environment's proxy and CA-bundle settings (``HTTPS_PROXY``, ``NO_PROXY``,
    ``REQUESTS_CA_BUNDLE``...) are honoured as by any ``requests`` session, but read once per
    session and host instead of on every request (scanning the environment twice per request
    was a large part of an update cycle's CPU time at a thousand images)."""

    _ENV_HOSTS = 256   #: hosts whose environment settings are kept, per session

    def __init__(self, timeout, upstream: str, max_body: int) -> None:
        super().__init__()
        self._default_timeout = timeout
        self.upstream = upstream
        self.max_body = max_body
        self._env_settings: dict[tuple, dict] = {}

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        if not self.trust_env or proxies:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        scheme, _, rest = url.partition("://")
        key = (scheme.lower(), rest.split("/", 1)[0].split("?", 1)[0], stream, verify, cert,
               self.stream, self.verify, self.cert, tuple(sorted(self.proxies.items())))
        settings = self._env_settings.get(key)
        if settings is None:
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if len(self._env_settings) >= self._ENV_HOSTS:
                self._env_settings.clear()
            self._env_settings[key] = settings
        return {**settings, "proxies": dict(settings["proxies"])}

    def request(self, method, url, **kwargs):
        kwargs.setdefault("timeout", self._default_timeout)
        streamed = bool(kwargs.get("stream"))
        kwargs["stream"] = True
        resp = super().request(method, url, **kwargs)
        if not streamed:
            read_bounded(resp, self.upstream, max_body=self.max_body)
        return resp


def make_session(upstream: str, *, counter: RequestCounter | None = None,
                 timeout=DEFAULT_TIMEOUT, verify: bool | str = True,
                 max_body: int = MAX_BODY) -> requests.Session:
    """A ``requests.Session`` that counts every response under ``upstream`` and reads at most
    ``max_body`` bytes of any body it is not asked to stream."""
    tally = counter or REQUESTS
    session = _BoundedSession(timeout, upstream, max_body)
    session.verify = verify
    session.headers["User-Agent"] = "slipway/0.1"

    def _count(resp: requests.Response, *args, **kwargs):
        tally.add(upstream, resp.status_code)
        UPSTREAM_REQUESTS.labels(upstream, str(resp.status_code)).inc()

    def _drain_redirect(resp: requests.Response, *args, **kwargs):
        # requests reads a redirect's body before following it: never an endless one.
        if resp.is_redirect:
            read_bounded(resp, upstream, max_body=_MAX_REDIRECT_BODY)

    session.hooks["response"].extend([_count, _drain_redirect])
    return session


def backoff_delay(failures: int, *, initial: float, maximum: float, retry_after: float | None = None) -> float:
    """The one back-off formula: doubling from ``initial`` per consecutive failure, at least an
    upstream's ``Retry-After``, never more than ``maximum`` (a hostile or absurd ``Retry-After``
    cannot park a source or an image for longer than the configured maximum)."""
    delay = initial * 2 ** max(0, min(failures - 1, 64))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(maximum, delay)


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """``Retry-After`` as seconds from now: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())


def check_response(resp: requests.Response, upstream: str) -> requests.Response:
    """Map a response onto Slipway errors; return it when it is a success (or 304)."""
    status = resp.status_code
    if status < 400:
        return resp
    what = f"{upstream}: {resp.request.method} {_redact(resp.url)} -> {status}"
    if status == 429 or status >= 500:
        raise UpstreamError(what, upstream=upstream, status=status,
                            retry_after=parse_retry_after(resp.headers.get("Retry-After")))
    if status in (401, 403):
        raise AuthError(what)
    if status == 404:
        raise NotFound(what)
    raise UpstreamError(f"{what}: {resp.text[:200]}", upstream=upstream, status=status)


def request(session: requests.Session, method: str, url: str, *, upstream: str,
            **kwargs) -> requests.Response:
    """``session.request`` with connection failures and bad statuses as Slipway errors."""
    try:
        resp = session.request(method, url, **kwargs)
    except requests.RequestException as exc:
        raise UpstreamError(f"{upstream}: {method} {_redact(url)} failed: {type(exc).__name__}",
                            upstream=upstream) from exc
    return check_response(resp, upstream)


def _redact(url: str) -> str:
    """Drop credentials from a URL before it reaches a log line or an error."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        parts = parts._replace(netloc="***@" + netloc)
    return urlunsplit(parts)


redact_url = _redact
