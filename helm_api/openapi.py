"""The hand-written OpenAPI 3 description of the helm API (served at ``/openapi.json``).

Kept next to the routes it describes; ``tests/unit/test_helm_api_openapi.py`` runs
schemathesis against it, so a drift between the two fails the build.
"""

from __future__ import annotations

from typing import Any

_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "machine-readable code, e.g. unknown_environment"},
        "message": {"type": "string"},
        "known": {"type": "array", "items": {"type": "string"}},
    },
}

_NULLABLE_STR = {"type": ["string", "null"]}

_JOB_SUMMARY = {
    "type": "object",
    "required": ["name", "environment", "phase", "created_at", "started_at", "finished_at"],
    "properties": {
        "name": {"type": "string"},
        "environment": _NULLABLE_STR,
        "phase": {"type": "string", "enum": ["pending", "running", "succeeded", "failed"]},
        "created_at": {**_NULLABLE_STR, "description": "RFC 3339"},
        "started_at": _NULLABLE_STR,
        "finished_at": _NULLABLE_STR,
        "reason": _NULLABLE_STR,
        "follows": {**_NULLABLE_STR, "description": "the run this follow-up was queued behind"},
    },
}


def _err(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def openapi_document(environments: list[str], default_environment: str | None = None
                     ) -> dict[str, Any]:
    """``default_environment`` None: the body must name the environment."""
    apply_request: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "environment": {"type": "string", "enum": environments,
                            "description": "selects the desired-state file"
                            + (f" (default: {default_environment})" if default_environment else "")},
            "reason": {"type": "string", "maxLength": 1000},
        },
    }
    if default_environment is None:
        apply_request["required"] = ["environment"]
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
            "schemas": {
                "Error": _ERROR,
                "ApplyRequest": apply_request,
                "ApplyResponse": {
                    "type": "object",
                    "required": ["job", "environment", "created", "follow_up_queued", "status_url"],
                    "properties": {
                        "job": {"type": "string", "description": "the run created, or the one "
                                "already running"},
                        "environment": {"type": "string"},
                        "created": {"type": "boolean"},
                        "follow_up_queued": {"type": "boolean"},
                        "status_url": {"type": "string"},
                    },
                },
                "JobSummary": _JOB_SUMMARY,
                "JobDetail": {
                    "allOf": [{"$ref": "#/components/schemas/JobSummary"}, {
                        "type": "object",
                        "required": ["log", "pod"],
                        "properties": {
                            "pod": _NULLABLE_STR,
                            "log": {**_NULLABLE_STR, "description": "tail of the pod's log"},
                            "log_error": _NULLABLE_STR,
                        },
                    }],
                },
                "Status": {"type": "object", "required": ["status"],
                           "properties": {"status": {"type": "string"}}},
            },
        },
        "paths": {
            "/apply": {
                "post": {
                    "summary": "Start a helmsman run for an environment",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": default_environment is None,
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/ApplyRequest"}}},
                    },
                    "responses": {
                        "202": {"description": "run created, or follow-up queued behind the "
                                               "running one",
                                "headers": {"Location": {"schema": {"type": "string"}}},
                                "content": {"application/json": {"schema": {
                                    "$ref": "#/components/schemas/ApplyResponse"}}}},
                        "400": _err("bad JSON, unknown field, missing or unknown environment"),
                        "401": _err("no bearer token"),
                        "403": _err("wrong bearer token"),
                        "404": _err("the helmsman CronJob does not exist"),
                        "413": _err("body too large"),
                        "422": _err("the CronJob has no usable job template"),
                        "502": _err("the API server refused the call"),
                        "503": _err("the API server is unreachable"),
                    },
                },
            },
            "/jobs": {
                "get": {
                    "summary": "Recent runs, newest first, and queued follow-ups",
                    "parameters": [{"name": "limit", "in": "query", "required": False,
                                    "schema": {"type": "integer", "minimum": 1, "maximum": 500}}],
                    "responses": {
                        "200": {"description": "runs", "content": {"application/json": {"schema": {
                            "type": "object", "required": ["jobs", "queued"],
                            "properties": {
                                "jobs": {"type": "array",
                                         "items": {"$ref": "#/components/schemas/JobSummary"}},
                                "queued": {"type": "object"},
                            }}}}},
                        "400": _err("bad limit"),
                        "502": _err("the API server refused the call"),
                        "503": _err("the API server is unreachable"),
                    },
                },
            },
            "/jobs/{name}": {
                "get": {
                    "summary": "One run: phase, times and the tail of its log",
                    "parameters": [{"name": "name", "in": "path", "required": True,
                                    "schema": {"type": "string"}}],
                    "responses": {
                        "200": {"description": "the run", "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/JobDetail"}}}},
                        "404": _err("no such run"),
                        "502": _err("the API server refused the call"),
                        "503": _err("the API server is unreachable"),
                    },
                },
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {
                "description": "alive", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Status"}}}}}}},
            "/readyz": {"get": {"summary": "Readiness: the API server answers", "responses": {
                "200": {"description": "ready", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Status"}}}},
                "503": _err("the API server is not reachable")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                "description": "text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {
                "description": "OpenAPI 3.1", "content": {"application/json": {
                    "schema": {"type": "object"}}}}}}},
        },
    }
