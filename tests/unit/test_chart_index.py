"""Reading a Helm repository index: channels, ordering, filtering, garbage."""

from __future__ import annotations

import pytest

from poller.charts.index import parse_index
from poller.errors import UpstreamError

PATTERN = r"^\d+\.\d+\.\d+-staging(\.|$)"

INDEX = """
apiVersion: v1
entries:
  game-server:
    - {name: game-server, version: 1.10.0}
    - {name: game-server, version: 1.9.0}
    - {name: game-server, version: 1.10.0-staging.20261122.2}
    - {name: game-server, version: 1.10.0-staging.20261122.10}
    - {name: game-server, version: 1.11.0-rc.1}
    - {name: game-server, version: latest}
  other:
    - {name: other, version: 0.1.0}
"""


def test_versions_newest_first_with_channels():
    charts = parse_index(INDEX, staging_pattern=PATTERN)
    gs = [(v.version, v.channel) for v in charts["game-server"]]
    assert gs == [("1.10.0", "release"),
                  ("1.10.0-staging.20261122.10", "staging"),
                  ("1.10.0-staging.20261122.2", "staging"),
                  ("1.9.0", "release")]


def test_only_watched_charts():
    assert set(parse_index(INDEX, staging_pattern=PATTERN, charts=["other"])) == {"other"}


def test_custom_channel_rule():
    charts = parse_index(INDEX, staging_pattern=r"-rc\.")
    assert [v.version for v in charts["game-server"] if v.channel == "staging"] == ["1.11.0-rc.1"]


@pytest.mark.parametrize("text", ["entries: [1, 2]", ":\n  - : -", "just a string"])
def test_garbage_is_an_upstream_error(text):
    with pytest.raises(UpstreamError):
        parse_index(text, staging_pattern=PATTERN)


def test_empty_index_is_fine():
    assert parse_index("apiVersion: v1\nentries: {}\n", staging_pattern=PATTERN) == {}
