"""Publish a plugin build over HTTP: ``POST /api/v1/artifacts/<plugin>?version=V`` (body: the .jar),
or ``?env=E`` for the fast track (refused in production). Needs the API token."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from poller.api import error, require_token, run_now, runtime
from poller.names import InvalidName, check_plugin_name, check_tag

blueprint = Blueprint("artifacts", __name__)


@blueprint.before_request
def _upload_limit() -> None:
    # Plugin jars may be larger than JSON bodies; the server's own limit is the larger one.
    request.max_content_length = runtime().config.api.max_upload_bytes


@blueprint.post("/api/v1/artifacts/<plugin>")
@require_token
def publish_plugin(plugin: str):
    from poller.artifacts.publish import publish

    cfg = runtime().config
    try:
        check_plugin_name(plugin)
        for key in ("version", "env"):
            if request.args.get(key) is not None:
                check_tag(request.args[key], key)
    except InvalidName as exc:
        return error(400, "bad_request", str(exc))
    if not request.data:
        return error(400, "bad_request", "the body must be the plugin .jar")
    artifact = publish(runtime().artifacts, cfg.plugins, plugin, request.get_data(),
                       version=request.args.get("version"), env=request.args.get("env"))
    runtime().store.record_event("plugins.published", plugin, version=artifact.version,
                                  digest=artifact.digest, env=request.args.get("env"))
    # The plugin cycles roll it out now (on the leader), not at their next interval.
    env = request.args.get("env")
    run_now(*(f"plugins:{e}" for e in cfg.plugins.environments if env in (None, e)))
    return jsonify({"plugin": plugin, "version": artifact.version, "digest": artifact.digest}), 201
