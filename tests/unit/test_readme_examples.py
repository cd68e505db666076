"""The README's configuration examples are loaded verbatim by the real config loader, so an
example that drifts from the code fails CI.

Every ```yaml block of README.md is taken as written (``yaml.safe_load`` of the block's text)
and handed to :func:`poller.config.parse_config`. How a block is completed, and nothing else:

* a block without a top-level ``registry:`` (the sections that show one part of a config) gets
  :data:`STUB_REGISTRY`, the one key a config cannot do without;
* ``${VAR}`` references are given a value through the loader's ``env`` (every variable a
  block names gets :data:`SECRET`);
* ``${file:PATH}`` references are pointed at a file holding :data:`SECRET` under the test's
  temporary directory (the README's paths, such as ``/run/secrets/…``, do not exist here).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from poller.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
STUB_REGISTRY = {"url": "127.0.0.1:5000", "insecure": True}
SECRET = "readme-example-secret"
_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.DOTALL | re.MULTILINE)
_ENV_REF = re.compile(r"\$\{(?!file:)([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")
_FILE_REF = re.compile(r"\$\{file:([^}]+)\}")


def readme_blocks() -> list[tuple[int, str]]:
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def _complete_file_refs(value, secret_file: Path):
    if isinstance(value, dict):
        return {k: _complete_file_refs(v, secret_file) for k, v in value.items()}
    if isinstance(value, list):
        return [_complete_file_refs(v, secret_file) for v in value]
    if isinstance(value, str):
        return _FILE_REF.sub(f"${{file:{secret_file}}}", value)
    return value


def test_the_readme_has_configuration_examples():
    blocks = readme_blocks()
    assert len(blocks) >= 5, "the README's ```yaml blocks were not found"
    keys = set().union(*(yaml.safe_load(b).keys() for _, b in blocks))
    assert {"registry", "sources", "updates", "fleet", "plugins", "charts"} <= keys


@pytest.mark.parametrize("line,block", readme_blocks(), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_readme_example_loads(line, block, tmp_path):
    data = yaml.safe_load(block)
    assert isinstance(data, dict), f"README.md line {line}: not a YAML mapping"
    if "registry" not in data:
        data = {"registry": STUB_REGISTRY, **data}
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    data = _complete_file_refs(data, secret_file)
    env = {name: SECRET for name in _ENV_REF.findall(block)}
    parse_config(data, file=f"README.md:{line}", env=env)
