"""Times for people, written once: the CLI tables and the dashboard use the same words."""

from __future__ import annotations

import time


def ago(ts: float | None, now: float | None = None) -> str:
    """``"never"``, ``"42s ago"``, ``"5m ago"``, ``"3h ago"``, ``"2d ago"``."""
    if not ts:
        return "never"
    s = max(0, int((now or time.time()) - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def took(seconds: float | None) -> str:
    """``"-"``, ``"12.5s"``, ``"3m07s"``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
