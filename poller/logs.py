"""Structured logging, configured once at the entry point.

One event per line with ``key=value`` context (``source=``, ``image=``, ``build_id=``):
readable on a terminal, JSON otherwise. Anything that looks like a secret is masked on the
way out, and registered secrets (tokens from the config) are replaced wherever they appear.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import threading
import time
from typing import Any, Iterator

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
_PATTERNS = [
    re.compile(r"(?i)(private-token|authorization|x-gitlab-token|password|token|secret)"
               r"(\"?\s*[:=]\s*\"?)(bearer\s+|basic\s+)?([^\s\"',&}]+)"),
    re.compile(r"(://)([^/@\s:]+):([^/@\s]+)@"),
]


def register_secret(value: str | None) -> None:
    """Make sure ``value`` never appears in a log line."""
    if value and len(value) >= 4:
        with _SECRETS_LOCK:
            _SECRETS.add(value)


def mask(text: str) -> str:
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for s in secrets:
        text = text.replace(s, "***")
    text = _PATTERNS[0].sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}***", text)
    text = _PATTERNS[1].sub(r"\1\2:***@", text)
    return text


#: The build or rollout the current thread works for (``build-12``, ``rollout-game-prod-3``):
#: every log line written meanwhile carries it as ``cid=``, whichever module writes it.
CORRELATION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("slipway_cid", default=None)


@contextlib.contextmanager
def correlation(cid: str | None) -> Iterator[str | None]:
    """Tag every log line written inside the block with ``cid``."""
    token = CORRELATION_ID.set(cid)
    try:
        yield cid
    finally:
        CORRELATION_ID.reset(token)


def correlation_listener(event: str, fields: dict[str, Any]) -> None:
    """A ``Pipeline.listeners`` hook: builds run in their own thread and emit ``build.started``
    from it, so the rest of that build's lines (builder, registry) carry ``cid=build-<id>``."""
    if event == "build.started" and fields.get("build_id") is not None:
        CORRELATION_ID.set(f"build-{fields['build_id']}")
    elif event in ("build.succeeded", "build.failed"):
        CORRELATION_ID.set(None)
    elif event == "rollout.started" and fields.get("deployment"):
        CORRELATION_ID.set(str(fields.get("rollout_id") or f"rollout-{fields['deployment']}"))
    elif event in ("rollout.finished", "rollout.stopped"):
        CORRELATION_ID.set(None)


def _with_cid(fields: dict[str, Any]) -> dict[str, Any]:
    cid = CORRELATION_ID.get()
    if cid and "cid" not in fields:
        return {**fields, "cid": cid}
    return fields


def get_logger(name: str) -> "EventLogger":
    return EventLogger(logging.getLogger(name))


class EventLogger:
    """``log.info("build.started", source="x", build_id=3)``: an event name plus context."""

    def __init__(self, logger: logging.Logger):
        self._logger = logger

    def _log(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            exc_info = fields.pop("exc_info", None)
            self._logger.log(level, event, extra={"fields": _with_cid(fields)}, exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def bind(self, **fields: Any) -> "BoundLogger":
        return BoundLogger(self, fields)


class BoundLogger:
    def __init__(self, parent: EventLogger, fields: dict[str, Any]):
        self._parent, self._fields = parent, fields

    def __getattr__(self, level: str):
        method = getattr(self._parent, level)
        return lambda event, **f: method(event, **{**self._fields, **f})


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
             + f".{int(record.msecs):03d}Z",
             "level": record.levelname.lower(), "logger": record.name, "event": record.getMessage()}
        d.update(_with_cid(getattr(record, "fields", {}) or {}))
        if record.exc_info:
            d["exception"] = self.formatException(record.exc_info)
        return mask(json.dumps(d, default=str))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _with_cid(getattr(record, "fields", {}) or {})
        ctx = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        line = (f"{time.strftime('%H:%M:%S', time.localtime(record.created))} "
                f"{record.levelname.lower():7} {record.getMessage()}" + (f"  {ctx}" if ctx else ""))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return mask(line)


def _fmt(v: Any) -> str:
    s = str(v)
    return json.dumps(s) if (" " in s or not s) else s


def setup_logging(*, level: str = "info", fmt: str = "auto", stream=None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if getattr(stream, "isatty", lambda: False)() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("urllib3", "docker", "apscheduler", "gitlab"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
