"""Whether a process of this machine still runs: the one check behind every claim, lease and
build record that names a pid (the pipeline's build claims, the queue's stalled-job sweep, the
store's interrupted builds)."""

from __future__ import annotations

import os


def pid_alive(pid: int | None) -> bool:
    """True while ``pid`` exists on this machine (also when it is someone else's process)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
