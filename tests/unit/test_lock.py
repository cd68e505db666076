"""The lock files cover pyproject.toml: a dependency added without `scripts/lock` would be
missing from the image (which installs exactly requirements.lock) and from CI."""

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _locked(lock: str) -> dict[str, str]:
    text = (ROOT / lock).read_text()
    pins = {}
    for m in re.finditer(r"^([A-Za-z0-9._-]+)==(\S+) \\\n((?:\s+--hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", text, re.MULTILINE):
        pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    assert pins, f"{lock}: no pinned, hashed requirements"
    unhashed = [ln for ln in text.splitlines() if "==" in ln and not ln.startswith("#")
                and ln.split("==")[0].lower().replace("_", "-") not in pins]
    assert not unhashed, f"{lock}: pins without hashes: {unhashed}"
    return pins


@pytest.mark.parametrize("lock,extras", [("requirements.lock", []),
                                         ("requirements-test.lock", ["test"])])
def test_every_dependency_of_pyproject_is_pinned_with_hashes(lock, extras):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    pins = _locked(lock)
    missing = sorted({_name(r) for r in wanted} - set(pins))
    assert not missing, f"{lock} lacks {missing}: run scripts/lock"
    assert {"setuptools", "wheel"} <= set(pins), "the build backend is locked too (image, CI)"
