import pytest

from poller.versions import TagKind, classify_tag, parse_version


@pytest.mark.parametrize("tag, kind, text", [
    ("v1.2.3", TagKind.RELEASE, "1.2.3"),
    ("1.2.3", TagKind.RELEASE, "1.2.3"),
    ("1.4.0-rc.1", TagKind.PRERELEASE, "1.4.0-rc.1"),
    ("v2.0.0-staging.20261122.3", TagKind.PRERELEASE, "2.0.0-staging.20261122.3"),
    ("1.0.0+build.5", TagKind.RELEASE, "1.0.0+build.5"),
    ("latest", TagKind.IGNORED, None),
    ("v1.2", TagKind.IGNORED, None),
    ("release-3", TagKind.IGNORED, None),
    ("01.2.3", TagKind.IGNORED, None),
    ("", TagKind.IGNORED, None),
    ("v1.2.3.4", TagKind.IGNORED, None),
])
def test_classify(tag, kind, text):
    k, v = classify_tag(tag)
    assert k is kind
    assert (str(v) if v else None) == text


def test_semver_precedence():
    order = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
             "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1.0", "2.0.0"]
    parsed = [parse_version(s) for s in order]
    assert sorted(reversed(parsed)) == parsed


def test_image_tag_has_no_plus():
    assert parse_version("1.0.0+b1").image_tag == "1.0.0_b1"


@pytest.mark.parametrize("tag", [
    "1" * 5000 + ".0.0",                       # beyond int()'s digit limit
    "v1.2.3-" + "9" * 5000,                    # a numeric prerelease of thousands of digits
    "1.2.3-rc." + "a" * 100_000,               # a long tag is not a version
    "1.2.3+" + "b" * 100_000,
    "123456789012345678901.0.0",               # more digits than any real version has
])
def test_absurd_versions_are_ignored_not_raised(tag):
    assert classify_tag(tag) == (TagKind.IGNORED, None)
