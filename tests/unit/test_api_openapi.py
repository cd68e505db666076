"""schemathesis against the poller API's own ``/openapi.json`` (WSGI, no network).

Every operation is called with the right token, a wrong one and none, with ``public_read`` on
and off; every answer must match the document (status, content type, body schema) and none
may be a 5xx. The live server (waitress, ``poller run``) gets the same run in
``tests/integration/test_api_live.py``.
"""

from __future__ import annotations

import re

import pytest

schemathesis = pytest.importorskip("schemathesis")
from poller.api import create_app
from poller.config import parse_config
from poller.runtime import Runtime
from poller.store import Store
from tests.fixtures.fuzz import run_all

TOKEN = "t0ken-for-fuzz"
HEADERS = {"token": {"Authorization": f"Bearer {TOKEN}"},
           "wrong": {"Authorization": "Bearer not-the-token"},
           "none": {}}


def make_app(tmp_path, *, public_read: bool):
    cfg = parse_config({
        "registry": {"url": "127.0.0.1:1"},
        "api": {"token": TOKEN, "public_read": public_read, "gitlab_webhook_token": "gl-secret",
                "github_webhook_secret": "gh-secret", "registry_webhook_token": "reg-secret"},
        "sources": [{"name": "gs", "git": {"url": "file:///nonexistent"}, "branch": "master",
                     "image": "127.0.0.1:1/gs"}],
    }, env={})
    return create_app(Runtime(config=cfg, store=Store(tmp_path / "s.db")))


@pytest.mark.parametrize("public_read", [True, False])
@pytest.mark.parametrize("who", sorted(HEADERS))
def test_every_operation_matches_the_document_and_never_answers_5xx(tmp_path, public_read, who):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", make_app(tmp_path, public_read=public_read))
    failures = run_all(schema, HEADERS[who])
    assert not failures, "\n\n".join(failures)


def test_document_lists_every_route(tmp_path):
    app = make_app(tmp_path, public_read=True)
    doc = app.test_client().get("/openapi.json").json
    assert doc["openapi"] == "3.1.0"
    routes = {re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
              for rule in app.url_map.iter_rules()}
    assert routes == set(doc["paths"])
