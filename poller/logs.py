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
from collections.abc import Iterator
from typing import Any

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
_PATTERNS = [
    re.compile(r"(?i)(private-token|authorization|x-gitlab-token|password|token|secret)"
               r"(\"?\s*[:=]\s*\"?)(bearer\s+|basic\s+)?([^\s\"',&}]+)"),
    re.compile(r"(://)([^/@\s:]+):([^/@\s]+)@"),
]


def _forms(value: str) -> set[str]:
    """``value`` as it may appear in text: raw, JSON-escaped (ASCII or not), repr'd, URL-quoted."""
    from urllib.parse import quote

    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1],
             repr(value)[1:-1], quote(value, safe=""), quote(value)}
    return {f for f in forms if f}


def register_secret(value: str | None) -> None:
    """Make sure ``value`` never appears in a log line or a stored build log. Only real
    secrets belong here: empty or blank values are ignored, so are values shorter than 4
    characters (masking them would garble every line)."""
    if value and value.strip() and len(value) >= 4:
        with _SECRETS_LOCK:
            _SECRETS.update(_forms(value))


def mask_known(text: str) -> str:
    """``text`` with every registered secret replaced (no pattern matching: fast on big logs)."""
    if not text:
        return text
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, "***")
    return text


def mask(text: str) -> str:
    """``text`` with every registered secret, credential header and URL password replaced."""
    if not text:
        return text
    text = mask_known(text)
    text = _PATTERNS[0].sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}***", text)
    text = _PATTERNS[1].sub(r"\1\2:***@", text)
    return text


def mask_value(value: Any) -> Any:
    """:func:`mask` applied to every string in a JSON-like value (before it is serialised,
    so escaping can never hide a secret from the masker)."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: mask_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [mask_value(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return mask(str(value))


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


def _with_cid(fields: dict[str, Any]) -> dict[str, Any]:
    cid = CORRELATION_ID.get()
    if cid and "cid" not in fields:
        return {**fields, "cid": cid}
    return fields


def get_logger(name: str) -> EventLogger:
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

    def bind(self, **fields: Any) -> BoundLogger:
        return BoundLogger(self, fields)


class BoundLogger:
    def __init__(self, parent: EventLogger, fields: dict[str, Any]):
        self._parent, self._fields = parent, fields

    def __getattr__(self, level: str):
        method = getattr(self._parent, level)
        return lambda event, **f: method(event, **{**self._fields, **f})


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "event": record.getMessage()}
        d.update(_with_cid(getattr(record, "fields", {}) or {}))
        if record.exc_info:
            d["exception"] = self.formatException(record.exc_info)
        return json.dumps(mask_value(d))


class _TextFormatter(logging.Formatter):
    """One line per event: field values with spaces, quotes or control characters are quoted
    and escaped, so no value can start a line of its own (no log injection)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = mask_value(_with_cid(getattr(record, "fields", {}) or {}))
        ctx = " ".join(f"{_fmt(k)}={_fmt(v)}" for k, v in fields.items())
        line = (f"{time.strftime('%H:%M:%S', time.localtime(record.created))} "
                f"{record.levelname.lower():7} {_fmt(mask(record.getMessage()))}"
                + (f"  {ctx}" if ctx else ""))
        if record.exc_info:
            # Indented, each line: an exception message cannot pass for a log line.
            trace = mask(self.formatException(record.exc_info))
            line += "".join("\n    | " + _escape(t) for t in trace.splitlines())
        return line


_UNSAFE = re.compile(r"[\s\"\\\x00-\x1f\x7f\u0085\u2028\u2029]")


def _escape(s: str) -> str:
    """Control characters (newlines first of all) as visible escapes."""
    return json.dumps(s, ensure_ascii=False)[1:-1] if _CONTROL.search(s) else s


_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")


def _fmt(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)
    return json.dumps(s, ensure_ascii=False) if (not s or _UNSAFE.search(s)) else s


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
