"""``GET /dashboard/releases`` (the release board page) and ``GET /api/v1/releases`` (its data)."""

from __future__ import annotations

from flask import Blueprint, jsonify, render_template

from poller.api import can_read, read_access, runtime
from poller.humanize import ago
from poller.releases import progress_svg, release_board, timeline_svg

blueprint = Blueprint("releases", __name__, template_folder="templates")


def _short(digest: str | None) -> str:
    return (digest or "-").replace("sha256:", "")[:12]


def _targets():
    return runtime().targets


@blueprint.get("/dashboard/releases")
def page():
    svc = runtime()
    boards = release_board(svc.config, svc.store, targets=_targets()) if can_read() else None
    return render_template("releases.html", boards=boards, ago=ago, short=_short,
                           timeline=lambda b: timeline_svg(b.timeline),
                           progress=lambda r: progress_svg(r.done, r.total))


@blueprint.get("/api/v1/releases")
@read_access
def data():
    svc = runtime()
    return jsonify([b.as_dict() for b in release_board(svc.config, svc.store, targets=_targets())])
