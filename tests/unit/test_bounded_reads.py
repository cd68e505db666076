"""Every body read through the counted session is bounded: size, named upstream, typed error."""

from __future__ import annotations

import pytest

from poller.errors import ResponseTooLarge
from poller.http import make_session, request
from poller.sources.git import parse_ls_remote
from tests.doubles.hostile import WireServer, endless


@pytest.fixture
def wire():
    server = WireServer()
    yield server
    server.stop()


def test_an_endless_body_is_cut_at_the_limit_with_an_error_naming_the_upstream(wire):
    wire.answer(r"^/endless$", lambda: endless(b"[", b"1,"))
    session = make_session("registry:example", max_body=100_000)
    with pytest.raises(ResponseTooLarge, match=r"^registry:example: GET .*/endless: response larger"):
        request(session, "GET", f"{wire.url}/endless", upstream="registry:example")


def test_a_declared_length_over_the_limit_is_refused_before_reading(wire):
    wire.answer(r"^/big$", b"x" * 200_000)
    session = make_session("github:example", max_body=100_000)
    with pytest.raises(ResponseTooLarge, match="response of 200000 bytes"):
        session.get(f"{wire.url}/big")
    wire.answer(r"^/small$", b"[1, 2]")
    assert session.get(f"{wire.url}/small").json() == [1, 2]


def test_a_redirect_with_an_endless_body_is_not_read_to_the_end(wire):
    wire.answer(r"^/hop$", lambda: endless(b"", b"z"), status=302,
                headers={"Location": f"{wire.url}/small"})
    wire.answer(r"^/small$", b"ok", content_type="text/plain")
    with pytest.raises(ResponseTooLarge):
        make_session("gitlab:example").get(f"{wire.url}/hop")


def test_a_streamed_body_is_left_to_the_caller(wire):
    wire.answer(r"^/archive$", lambda: (b"x" * 65536 for _ in range(4)),
                content_type="application/octet-stream")
    resp = make_session("github:example", max_body=1000).get(f"{wire.url}/archive", stream=True)
    assert sum(len(c) for c in resp.iter_content(65536)) == 4 * 65536


def test_ls_remote_output_drops_undecodable_and_malformed_refs():
    sha = "a" * 40
    out = (f"{sha}\trefs/heads/master\n"
           f"{sha}\trefs/tags/v1.0.0\ufffd\n"       # was not UTF-8
           f"-oops\trefs/tags/v2.0.0\n"              # not a sha
           f"{sha}\trefs/tags/v3.0.0\n")
    snap = parse_ls_remote(out, "master")
    assert snap.head == sha and snap.tags == {"v3.0.0": sha}


def test_more_refs_than_the_limit_is_the_sources_failure():
    out = "".join(f"{'b' * 40}\trefs/tags/t{i}\n" for i in range(50_001))
    with pytest.raises(ResponseTooLarge, match="git ls-remote x: more than 50000 tags"):
        parse_ls_remote(out, "master", upstream="git ls-remote x")


def test_registry_tag_pages_that_never_end_are_refused(wire):
    from poller.config import RegistryConfig
    from poller.registry.client import RegistryClient

    wire.answer(r"^/v2/paged/tags/list$", b'{"name": "paged", "tags": []}',
                headers={"Link": '</v2/paged/tags/list?n=1000&last=x>; rel="next"'})
    client = RegistryClient(RegistryConfig(url=wire.url))
    with pytest.raises(ResponseTooLarge, match="paged tags: more than 110 pages"):
        client.list_tags("paged")


def test_registry_tag_list_of_the_wrong_type_is_an_upstream_error(wire):
    from poller.config import RegistryConfig
    from poller.errors import UpstreamError
    from poller.registry.client import RegistryClient

    wire.answer(r"^/v2/typed/tags/list$", b'{"name": "typed", "tags": {"1.0.0": true}}')
    with pytest.raises(UpstreamError, match="expected a list of strings"):
        RegistryClient(RegistryConfig(url=wire.url)).list_tags("typed")
