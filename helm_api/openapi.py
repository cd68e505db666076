"""The OpenAPI 3.1 document of the helm API, served at ``GET /openapi.json``.

Schemas are generated from the pydantic models in :mod:`helm_api.models` (the same models
validate ``POST /apply`` bodies and shape the answers); only the configured environments are
filled in at run time. ``tests/unit/test_helm_api_openapi.py`` and
``tests/cluster/test_helm_api.py`` run schemathesis against it, so a drift between the
document and the routes fails the build.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from helm_api import models as m

_REF = "#/components/schemas/{model}"


@cache
def _schemas() -> dict[str, Any]:
    _, top = models_json_schema([(x, "validation") for x in m.REQUESTS]
                                + [(x, "serialization") for x in m.RESPONSES], ref_template=_REF)
    return top["$defs"]


def schemas(environments: list[str], default_environment: str | None) -> dict[str, Any]:
    """The component schemas, with ``ApplyRequest.environment`` limited to ``environments``
    and required when there is no default environment."""
    out = copy.deepcopy(_schemas())
    apply_request = out["ApplyRequest"]
    # documented as one of the names (an explicit null, accepted as "the default", is not)
    env = apply_request["properties"]["environment"] = {
        "type": "string", "enum": list(environments),
        "description": apply_request["properties"]["environment"]["description"]}
    if default_environment:
        env["description"] += f" (default: {default_environment})"
    else:
        apply_request["required"] = ["environment"]
    return out


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


# Statuses of cluster errors come from poller.httpapi.STATUS, the table both Flask apps share.
_CLUSTER = {"403": _err("the API server refused the helm API's credentials (RBAC): cluster_refused"),
            "409": _err("the API server refused the call as made: cluster_refused"),
            "503": _err("the API server is unreachable or unavailable: cluster_unavailable")}


def openapi_document(environments: list[str], default_environment: str | None = None
                     ) -> dict[str, Any]:
    """``default_environment`` None: the body must name the environment."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Slipway helm API",
            "version": "1.0.0",
            "description": "Start helmsman runs (Jobs made from the helmsman CronJob) and follow "
                           "them. Runs for one environment never overlap: an apply during a run "
                           "queues exactly one follow-up.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(environments, default_environment),
        },
        "paths": {
            "/apply": {"post": {
                "summary": "Start a helmsman run for an environment",
                "security": [{"bearer": []}],
                "requestBody": {"required": default_environment is None,
                                "content": {"application/json": {"schema": _ref("ApplyRequest")}}},
                "responses": {
                    "202": {**_json(_ref("ApplyResponse"), "run created, or follow-up queued "
                                    "behind the running one"),
                            "headers": {"Location": {"schema": {"type": "string"}}}},
                    "400": _err("bad JSON, unknown field, missing or unknown environment"),
                    "401": _err("no bearer token"),
                    **_CLUSTER,
                    "403": _err("wrong bearer token, or the API server refused the helm API's "
                                "credentials (RBAC: cluster_refused)"),
                    "404": _err("the helmsman CronJob does not exist"),
                    "413": _err("body too large"),
                    "422": _err("the CronJob has no usable job template"),
                },
            }},
            "/jobs": {"get": {
                "summary": "Recent runs, newest first, and queued follow-ups",
                "parameters": [{"name": "limit", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 500}}],
                "responses": {"200": _json(_ref("JobList"), "runs"),
                              "400": _err("bad limit"), **_CLUSTER},
            }},
            "/jobs/{name}": {"get": {
                "summary": "One run: phase, times and the tail of its log",
                "parameters": [{"name": "name", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"200": _json(_ref("JobDetail"), "the run"),
                              "404": _err("no such run"), **_CLUSTER},
            }},
            "/healthz": {"get": {"summary": "Liveness",
                                 "responses": {"200": _json(_ref("Status"), "alive")}}},
            "/readyz": {"get": {"summary": "Readiness: the API server answers", "responses": {
                "200": _json(_ref("Status"), "ready"),
                "503": _err("the API server is not reachable")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                "description": "text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {
                "200": _json({"type": "object"}, "OpenAPI 3.1")}}},
        },
    }
