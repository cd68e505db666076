"""Image references are parsed by one class (poller.imageref.ImageRef), also where the code
used to split them by hand: the fleet's version, the settings validators, the terminal board."""

from __future__ import annotations

import pytest

from poller.commands.releases import _image
from poller.errors import PermanentError
from poller.fleet.containers import version_of
from poller.imageref import ImageRef
from poller.names import check_image_repository

DIGEST = "sha256:" + "ab" * 32


def test_fleet_version_of_a_pinned_reference_is_its_tag_without_the_digest():
    assert version_of(f"127.0.0.1:5000/game:1.2.0@{DIGEST}") == "1.2.0"
    assert version_of("127.0.0.1:5000/game:1.2.0") == "1.2.0"
    assert version_of(f"127.0.0.1:5000/game@{DIGEST}") is None
    assert version_of("127.0.0.1:5000/game") is None


@pytest.mark.parametrize("text", ["127.0.0.1:5000/game:1.0", "127.0.0.1:5000/game:",
                                  f"127.0.0.1:5000/game@{DIGEST}", "127.0.0.1:5000/game@"])
def test_a_repository_setting_refuses_any_tag_or_digest(text):
    with pytest.raises(PermanentError):
        check_image_repository(text)


def test_a_repository_with_a_registry_port_is_no_tag():
    assert check_image_repository("127.0.0.1:5000/team/game") == "127.0.0.1:5000/team/game"


def test_the_terminal_board_shortens_references_through_imageref():
    assert _image(f"127.0.0.1:5000/team/game:1.4.0@{DIGEST}") == "game:1.4.0@" + "ab" * 6
    assert _image("127.0.0.1:5000/game") == "game"


def test_imageref_round_trips_and_names_the_last_component():
    ref = ImageRef.parse(f"127.0.0.1:5000/team/game:1.4.0@{DIGEST}")
    assert (ref.repository, ref.tag, ref.digest, ref.name) == (
        "127.0.0.1:5000/team/game", "1.4.0", DIGEST, "game")
    assert str(ref) == f"127.0.0.1:5000/team/game:1.4.0@{DIGEST}"
