"""Build and push progress for the terminal, parsed from the build log as it streams.

On a terminal one status line is kept at the bottom and rewritten in place, with one entry
per running build (``game-server tag:v1.4.0 step 3/7``, ``... pushing 1.4.0 (1/2)``); log
lines written meanwhile (through :meth:`ProgressDisplay.write`, which the logging handler
is pointed at) appear above it. Off a terminal the same progress is one structured log event
(``build.progress source=... ref=... step=3/7``) each time a build moves to a new step, so a
JSON log stays JSON and CI logs stay grep-able.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from poller.events import BuildFinished, EventBus
from poller.logs import get_logger

log = get_logger("poller.progress")

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_PUSHING = re.compile(r"^--> pushing (\S+):(\S+)$")


@dataclass
class BuildProgress:
    """What one build is doing, from its log lines."""

    source: str
    ref: str
    tags: int = 1
    phase: str = "queued"
    step: int = 0
    steps: int = 0
    detail: str = ""
    pushed: int = 0
    started: float = field(default_factory=time.monotonic)

    def feed(self, line: str) -> bool:
        """Take one log line; True when the visible state changed."""
        line = line.rstrip()
        if line.startswith("--> fetching"):
            self.phase, self.detail = "fetching", ""
            return True
        m = _STEP.match(line)
        if m:
            self.phase = "building"
            self.step, self.steps, self.detail = int(m.group(1)), int(m.group(2)), m.group(3)
            return True
        m = _PUSHING.match(line)
        if m:
            self.phase, self.pushed, self.detail = "pushing", self.pushed + 1, m.group(2)
            return True
        if line.startswith("--> pushed"):
            self.phase, self.detail = "pushed", ""
            return True
        if line.startswith("ERROR:"):
            self.phase, self.detail = "failed", line[len("ERROR:"):].strip()
            return True
        return False

    def short(self) -> str:
        if self.phase == "building" and self.steps:
            return f"step {self.step}/{self.steps}"
        if self.phase == "pushing":
            return f"pushing {self.detail} ({self.pushed}/{self.tags})"
        return self.phase

    def line(self) -> str:
        text = f"[{self.source} {self.ref}] {self.short()}"
        if self.phase == "building" and self.detail or self.phase == "failed" and self.detail:
            text += f": {self.detail}"
        return text


class ProgressDisplay:
    """``on_log(plan, text)`` for the pipeline, ``subscribe`` for its events, ``write`` for logs."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None, width: int | None = None):
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.width = width
        self._builds: dict[tuple[str, str], BuildProgress] = {}
        self._partial: dict[tuple[str, str], str] = {}
        self._lock = threading.RLock()
        self._status_shown = False

    # -- feeding --------------------------------------------------------------------------
    def on_log(self, plan: Any, text: str) -> None:
        key = (plan.source, plan.ref)
        with self._lock:
            prog = self._builds.get(key)
            if prog is None or prog.phase in ("pushed", "failed"):
                prog = self._builds[key] = BuildProgress(plan.source, plan.ref,
                                                         tags=len(getattr(plan, "tags", ()) or ()) or 1)
            buf = self._partial.get(key, "") + text
            *lines, rest = buf.split("\n")
            self._partial[key] = rest
            for line in lines:
                if prog.feed(line):
                    self._changed(prog)

    __call__ = on_log

    def subscribe(self, bus: EventBus) -> None:
        bus.subscribe(BuildFinished, self.on_finished)

    def on_finished(self, e: BuildFinished) -> None:
        key = (e.source, e.ref)
        with self._lock:
            prog = self._builds.pop(key, None) or BuildProgress(*key)
            self._partial.pop(key, None)
            if not self.tty:
                return  # the pipeline's own build.succeeded / build.failed line says it
            took = e.duration
            if e.ok:
                done = f"[{prog.source} {prog.ref}] done" + (f" in {took:.1f}s" if took else "")
            else:
                done = f"[{prog.source} {prog.ref}] FAILED: {e.error or prog.detail}"
            self._emit_line(done)

    # -- output ---------------------------------------------------------------------------
    def _changed(self, prog: BuildProgress) -> None:
        if self.tty:
            self._redraw()
        else:
            fields = {"source": prog.source, "ref": prog.ref, "phase": prog.phase}
            if prog.phase == "building":
                fields.update(step=f"{prog.step}/{prog.steps}", detail=prog.detail)
            elif prog.phase == "pushing":
                fields.update(tag=prog.detail, push=f"{prog.pushed}/{prog.tags}")
            elif prog.detail:
                fields["detail"] = prog.detail
            log.info("build.progress", **fields)

    def status_line(self) -> str:
        parts = [f"{p.source} {p.ref} {p.short()}" for p in self._builds.values()
                 if p.phase not in ("pushed", "failed")]
        text = " | ".join(parts)
        width = self.width or shutil.get_terminal_size((100, 20)).columns
        return text if len(text) < width else text[:max(0, width - 2)] + "…"

    def _clear(self) -> None:
        if self.tty and self._status_shown:
            self.stream.write("\r\x1b[K")
            self._status_shown = False

    def _redraw(self) -> None:
        self._clear()
        text = self.status_line()
        if text:
            self.stream.write(text)
            self._status_shown = True
        self.stream.flush()

    def _emit_line(self, text: str) -> None:
        self._clear()
        self.stream.write(text + "\n")
        if self.tty:
            self._redraw()
        else:
            self.stream.flush()

    def write(self, text: str) -> int:
        """Log lines pass through here so they land above the status line, never inside it."""
        with self._lock:
            self._clear()
            self.stream.write(text)
            if self.tty and text.endswith("\n"):
                self._redraw()
            return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.tty
