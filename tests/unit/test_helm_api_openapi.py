"""schemathesis against the helm API's own ``/openapi.json`` (WSGI, no network).

The cluster side is a real ``kubernetes`` client aimed at a closed port, so calls that pass
auth answer 503 (documented); the point is that every answer matches the document and none
is a 500.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from helm_api import create_app
from helm_api.config import HelmApiConfig
from tests.unit.test_helm_api_auth import TOKEN, unreachable_kube

app = create_app(HelmApiConfig(token=TOKEN), kube=unreachable_kube())
schema = schemathesis.openapi.from_wsgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_api_matches_its_openapi_document(case):
    # 503 "cluster_unavailable" is the documented, correct answer without a cluster, so the
    # generic "no 5xx" check is off here; status codes and bodies are still checked against
    # the document. tests/cluster/test_helm_api.py runs every check against a real cluster.
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"},
                           excluded_checks=[not_a_server_error])


def test_the_document_schemas_are_the_models_schemas():
    from helm_api import models
    from helm_api.openapi import openapi_document

    doc = openapi_document(["production", "staging"], "staging")
    schemas = doc["components"]["schemas"]
    for model in (models.JobSummary, models.JobDetail, models.ApplyResponse, models.JobList):
        generated = model.model_json_schema(mode="serialization",
                                            ref_template="#/components/schemas/{model}")
        generated.pop("$defs", None)
        assert schemas[model.__name__] == generated, model.__name__
    apply_request = schemas["ApplyRequest"]
    assert apply_request["additionalProperties"] is False
    assert set(apply_request["properties"]) == set(models.ApplyRequest.model_fields)
    assert apply_request["properties"]["reason"]["maxLength"] == models.MAX_REASON
    # the queued follow-ups are typed, not a bare object
    assert schemas["JobList"]["properties"]["queued"]["additionalProperties"] == {
        "$ref": "#/components/schemas/FollowUp"}
