"""Pure rollout planning: order servers, size steps and batches. No I/O, tested with values."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Server:
    name: str
    priority: int = 0
    busy: bool = False
    ready: bool = True
    updated: bool = False     # already runs the new image


def resolve(value: int | str, total: int, *, round_up: bool = True) -> int:
    """``3`` -> 3, ``"25%"`` of ``total`` (rounded up, at least 1 when total > 0), capped at total."""
    if isinstance(value, str) and value.endswith("%"):
        share = int(value[:-1]) * total / 100
        n = math.ceil(share) if round_up else math.floor(share)
        n = max(n, 1 if total and int(value[:-1]) > 0 else 0)
    else:
        n = int(value)
    return min(n, total)


def step_targets(steps: list[int | str], total: int) -> list[int]:
    """Cumulative updated-server counts after each step, non-decreasing, ending at ``total``."""
    out: list[int] = []
    for s in steps:
        n = max(resolve(s, total), out[-1] if out else 0)
        if not out or n > out[-1]:
            out.append(n)
    if not out or out[-1] < total:
        out.append(total)
    return out


def order(servers: list[Server], *, high_first: bool) -> list[Server]:
    """Update order: by priority (``high_first`` as OpenKruiseGame's updatePriority), then name."""
    return sorted(servers, key=lambda s: (-s.priority if high_first else s.priority, s.name))


def next_batch(servers: list[Server], *, want: int, max_unavailable: int, skip_busy: bool,
               high_first: bool) -> list[Server]:
    """Who to update now: at most ``want`` more, never more than ``max_unavailable`` down at once."""
    down = sum(1 for s in servers if not s.ready)
    room = max(0, max_unavailable - down)
    candidates = [s for s in order(servers, high_first=high_first)
                  if not s.updated and s.ready and not (skip_busy and s.busy)]
    return candidates[:max(0, min(want, room))]
