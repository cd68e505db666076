"""helmsman: the release tool the helm API runs as a job.

Recipe: ``github.com/mkubaczyk/helmsman`` HELMSMAN_VERSION (its tags lack the /v4 suffix, so two
module queries are tried); when the module proxy refuses it (403), the stand-in
``toolchain/helmsman_compat.py`` is installed under that name and listed in
``substitutes.json``. Not a service: the helm API's job runs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import (
    HERE,
    ToolchainError,
    _go_install,
    _go_mod_download,
    _install_script_substitute,
    _log,
    _record_substitute,
)

if TYPE_CHECKING:
    from .cache import Toolchain

HELMSMAN_VERSION = "4.0.5"
BINARIES = ("helmsman",)


def helmsman_module_query() -> list[str]:
    """Module queries tried for helmsman v4.0.5 (its tags lack the /v4 suffix)."""
    return [
        f"github.com/mkubaczyk/helmsman@v{HELMSMAN_VERSION}",
        f"github.com/mkubaczyk/helmsman@v{HELMSMAN_VERSION}+incompatible",
    ]


def _build_helmsman(tc: Toolchain) -> None:
    log = tc.logdir / "build-helmsman.log"
    tc.logdir.mkdir(parents=True, exist_ok=True)
    errors = []
    for query in helmsman_module_query():
        try:
            info = _go_mod_download(query, log)
        except ToolchainError as exc:
            errors.append(str(exc))
            continue
        version = info["Version"]
        _go_install(tc, "helmsman", f"github.com/mkubaczyk/helmsman/cmd/helmsman@{version}",
                    f"-s -w -X main.version=v{HELMSMAN_VERSION}")
        return
    why = ("github.com/mkubaczyk/helmsman is refused by the module proxy (403): "
           + " | ".join(e.splitlines()[0] for e in errors)
           + "; installed toolchain/helmsman_compat.py (helmsman DSS subset driving the real helm)")
    if not (HERE / "helmsman_compat.py").exists():
        raise ToolchainError(why)
    _log("WARNING: " + why)
    _install_script_substitute(tc, "helmsman", HERE / "helmsman_compat.py")
    _record_substitute(tc, "helmsman", why)


