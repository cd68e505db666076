"""The OpenAPI 3.1 document of the poller's API, served at ``GET /openapi.json``.

Schemas are generated from the pydantic models in :mod:`poller.api.models` (the same models
validate the request bodies); the paths list every route of every blueprint with every status
it can answer. ``tests/unit/test_api_openapi.py`` runs schemathesis against it (authenticated
and not), so a drift between the document and the routes fails the build.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from pydantic.json_schema import models_json_schema

from poller.api import models as m
from poller.approvals import STATUSES
from poller.names import PLUGIN_NAME_SCHEMA, TAG_SCHEMA

blueprint = Blueprint("openapi", __name__)

_REF = "#/components/schemas/{model}"
_REQUESTS = (m.Decision, m.Actor, m.Pin, m.FleetRollout, m.RollbackRequest)
_RESPONSES = (m.Error, m.Health, m.Build, m.BuildWithLog, m.Approval, m.Status, m.Queued,
              m.Published, m.Deployment, m.WebhookAnswer, m.Rollback, m.Rollbacks)
_ID = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
_LIMIT = {"type": "integer", "minimum": 1, "maximum": 500}


def _schemas() -> dict[str, Any]:
    _, top = models_json_schema([(x, "validation") for x in _REQUESTS]
                                + [(x, "serialization") for x in _RESPONSES], ref_template=_REF)
    return top["$defs"]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(model=name)}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> Any:
    """An error response (typed ``Any`` so a ``**{"404": _err(..)}`` fits ``**more``)."""
    return _json(_ref("Error"), description)


_READ = {"401": _err("api.public_read is off and no bearer token was sent"),
         "403": _err("api.public_read is off and the bearer token is wrong")}
_WRITE = {"400": _err("bad JSON, wrong types or unknown fields"),
          "401": _err("no bearer token, or a malformed Authorization header"),
          "403": _err("wrong bearer token, or no api.token configured"),
          "413": _err("body larger than api.max_body_bytes")}


def _path(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string"}}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _get(summary: str, ok: dict[str, Any], *, read: bool = True, params: list | None = None,
         **more: Any) -> dict[str, Any]:
    responses = {"200": ok, **(_READ if read else {}), **more}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if read:
        op["security"] = [{}, {"bearer": []}]
    if params:
        op["parameters"] = params
    return {"get": op}


def _post(summary: str, ok_status: str, ok: dict[str, Any], *, body: str | None = None,
          body_required: bool = False, params: list | None = None,
          **more: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "security": [{"bearer": []}],
                          "responses": {ok_status: ok, **_WRITE, **more}}
    if body:
        op["requestBody"] = {"required": body_required,
                             "content": {"application/json": {"schema": _ref(body)}}}
    if params:
        op["parameters"] = params
    return {"post": op}


def _hook(summary: str, headers: list[dict[str, Any]]) -> dict[str, Any]:
    body = {"type": "object"}
    return {"post": {
        "summary": summary,
        "parameters": headers,
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": _json(_ref("WebhookAnswer"), "ping answered, or a replayed delivery"),
            "202": _json(_ref("WebhookAnswer"), "accepted: the matching sources/images"),
            "400": _err("the body is not a JSON object of the expected shape"),
            "401": _err("wrong or missing secret / signature"),
            "403": _err("this receiver is not configured (no or an empty secret)"),
            "413": _err("body larger than api.max_body_bytes"),
        }}}


def _header(name: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}


def openapi_document() -> dict[str, Any]:
    obj = {"type": "object"}
    any_json = {"description": "OK", "content": {"application/json": {"schema": {}}}}
    not_found = {"404": _err("no such thing")}
    conflict = {"409": _err("refused in the current state")}
    upstream = {"503": _err("an upstream (store, etcd, registry) is unavailable")}
    # (errors of the tree get their status from poller.httpapi.STATUS, as on the helm API)
    html = {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
    paths: dict[str, Any] = {
        "/healthz": _get("Liveness", _json(_ref("Health")), read=False),
        "/metrics": _get("Prometheus metrics", {"description": "text exposition format",
                         "content": {"text/plain": {"schema": {"type": "string"}}}}, read=False),
        "/openapi.json": _get("This document", _json(obj), read=False),
        "/api/v1/status": _get("Sources, recent builds, pending approvals", _json(_ref("Status"))),
        "/api/v1/builds": _get(
            "Recent builds, newest first", _json({"type": "array", "items": _ref("Build")}),
            params=[_query("limit", _LIMIT), _query("source", {"type": "string"})],
            **{"400": _err("bad limit")}),
        "/api/v1/builds/{build_id}": _get(
            "One build with its (masked) log", _json(_ref("BuildWithLog")),
            params=[_path("build_id", _ID)], **not_found),
        "/api/v1/approvals": _get(
            "Approvals", _json({"type": "array", "items": _ref("Approval")}),
            params=[_query("status", {"enum": [*STATUSES, "all"]})], **{"400": _err("bad status")}),
        "/api/v1/approvals/{approval_id}/{decision}": _post(
            "Approve or reject a pending approval", "200", _json(_ref("Approval")),
            body="Decision", params=[_path("approval_id", _ID),
                                     _path("decision", {"enum": ["approve", "reject"]})],
            **not_found, **conflict),
        "/api/v1/sources/{name}/reconcile": _post(
            "Reconcile a source now", "202", _json(_ref("Queued")), params=[_path("name")],
            **not_found, **conflict, **upstream),
        "/api/v1/updates": _get(
            "Tracked deployments and recent updates", _json(obj), params=[_query("limit", _LIMIT)],
            **{"400": _err("bad limit")}),
        "/api/v1/updates/history": _get(
            "Update history", _json({"type": "array", "items": obj}),
            params=[_query("limit", _LIMIT), _query("deployment", {"type": "string"})],
            **{"400": _err("bad limit")}),
        "/api/v1/updates/deployments/{name}/pin": _post(
            "Hold a deployment at a version", "200", _json(_ref("Deployment")), body="Pin", body_required=True,
            params=[_path("name")], **not_found),
        "/api/v1/updates/deployments/{name}/unpin": _post(
            "Release a pin", "200", _json(_ref("Deployment")), body="Actor",
            params=[_path("name")], **not_found),
        "/api/v1/updates/deployments/{name}/rollout/{action}": _post(
            "Pause, resume or abort the deployment's rollout", "200", _json(obj), body="Actor",
            params=[_path("name"), _path("action", {"enum": ["pause", "resume", "abort"]})],
            **not_found, **conflict),
        "/api/v1/fleet": _get("Fleet views and rollouts", _json(obj),
                              **{"404": _err("no fleet configured")}, **upstream),
        "/api/v1/fleet/{view}": _get(
            "One fleet view", any_json,
            params=[_path("view", {"enum": ["current", "staging", "deploy"]})],
            **{"404": _err("no such view, or no fleet configured")}, **upstream),
        "/api/v1/fleet/rollouts": _post(
            "Start rollouts", "201", _json(obj), body="FleetRollout", body_required=True,
            **{"404": _err("no fleet configured")}, **conflict, **upstream),
        "/api/v1/fleet/rollouts/{service}/{action}": _post(
            "Pause, resume or abort a fleet rollout", "200", _json(obj),
            params=[_path("service"), _path("action", {"enum": ["pause", "resume", "abort"]})],
            **{"404": _err("no fleet configured")}, **conflict, **upstream),
        "/api/v1/releases": _get(
            "The release board: per service newest builds, what runs where, approvals, pins",
            _json({"type": "array", "items": obj}), **upstream),
        "/dashboard/releases": {"get": {"summary": "The release board page",
                                        "responses": {"200": html}}},
        "/api/v1/rollbacks": _get("Staging holds and recent rollbacks", _json(_ref("Rollbacks"))),
        "/api/v1/rollbacks/{service}": _post(
            "Roll a source back: staging to an earlier build, production to an earlier release "
            "(dry_run: only say what would be done)", "200", _json(_ref("Rollback")),
            body="RollbackRequest", body_required=True, params=[_path("service")],
            **{"404": _err("no such source, build or release")},
            **{"409": _err("refused: nothing to go back to, or the tag exists")}, **upstream),
        "/api/v1/rollbacks/{service}/unpin": _post(
            "Release a staging rollback's hold now", "200", _json(obj), body="Actor",
            params=[_path("service")], **not_found),
        "/api/v1/artifacts/{plugin}": {"post": {
            "summary": "Publish a plugin .jar (?version=V, or ?env=E for the fast track)",
            "security": [{"bearer": []}],
            "parameters": [_path("plugin", PLUGIN_NAME_SCHEMA), _query("version", TAG_SCHEMA),
                           _query("env", TAG_SCHEMA)],
            "requestBody": {"required": True, "content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary", "minLength": 1}}}},
            "responses": {"201": _json(_ref("Published")), **_WRITE,
                          "413": _err("body larger than api.max_upload_bytes"),
                          "403": _err("wrong bearer token, or the registry refused the "
                                      "poller's credentials"),
                          **conflict, **upstream}}},
        "/hooks/gitlab": _hook("GitLab push / tag push events (X-Gitlab-Token)",
                               [_header("X-Gitlab-Token"), _header("X-Gitlab-Event-UUID")]),
        "/hooks/github": _hook("GitHub push / create / ping events (X-Hub-Signature-256)",
                               [_header("X-Hub-Signature-256"), _header("X-GitHub-Event"),
                                _header("X-GitHub-Delivery")]),
        "/hooks/registry": _hook("Registry notifications (Authorization: Bearer)", []),
        "/": {"get": {"summary": "Redirect to the dashboard", "responses": {"302": {
            "description": "to /dashboard",
            "headers": {"Location": {"schema": {"type": "string"}}}}}}},
        "/dashboard": {"get": {"summary": "The dashboard page (an empty shell that asks for "
                                          "the token when api.public_read is off)",
                               "responses": {"200": html}}},
        "/dashboard/sections": _get("The dashboard's sections", html),
        "/dashboard/builds/{build_id}/log": _get(
            "A build's (masked) log, live while it runs",
            {"description": "text", "content": {"text/plain": {"schema": {"type": "string"}}}},
            params=[_path("build_id", _ID)], **not_found),
        "/dashboard/static/{filename}": {"get": {
            "summary": "The dashboard's stylesheet and script (always public)",
            "parameters": [_path("filename")],
            "responses": {"200": {"description": "the file", "content": {
                "text/css": {"schema": {"type": "string"}},
                "text/javascript": {"schema": {"type": "string"}}}},
                **not_found}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Slipway poller API", "version": "1.0.0",
                 "description": "Status, builds, approvals, updates, fleet, plugin uploads, "
                                "webhooks and the dashboard of the Slipway poller. Calls that "
                                "change something need 'Authorization: Bearer <api.token>'; "
                                "reads are open when api.public_read is true."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": _schemas()},
        "paths": paths,
    }


@blueprint.get("/openapi.json")
def openapi():
    return jsonify(openapi_document())
