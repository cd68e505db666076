"""The shipped fetch-plugins.sh (run by busybox alone, as in a FROM scratch server image)
installs a jar only when its sha256 matches the manifest's layer digest."""

from __future__ import annotations

import io
import os
import subprocess
import zipfile

import pytest

from poller.artifacts import FETCH_SCRIPT
from poller.artifacts.store import ArtifactStore
from poller.config import RegistryConfig
from poller.registry.client import RegistryClient

pytestmark = pytest.mark.integration


def _jar(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("plugin.yml", text)
    return buf.getvalue()


def _fetch(tmp_path, registry, dest) -> subprocess.CompletedProcess:
    bindir = tmp_path / "bin"  # busybox and nothing else, like the server image
    bindir.mkdir(exist_ok=True)
    if not (bindir / "busybox").exists():
        os.symlink("/bin/busybox", bindir / "busybox")
    script = tmp_path / "fetch-plugins.sh"
    script.write_text(FETCH_SCRIPT.read_text())
    env = {"PATH": str(bindir), "SLIPWAY_REGISTRY": registry.url, "SLIPWAY_PLUGINS": "chat",
           "SLIPWAY_CHANNEL": "dev-lobby", "SLIPWAY_PLUGIN_DIR": str(dest)}
    return subprocess.run(["/bin/busybox", "sh", str(script)], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_a_jar_whose_digest_does_not_match_the_manifest_is_not_installed(tmp_path, registry):
    store = ArtifactStore(RegistryClient(RegistryConfig(url=registry.addr, insecure=True)))
    old = store.push("chat", _jar("v1"), "1.0.0", also_tag=("dev-lobby",))
    dest = tmp_path / "plugins"
    first = _fetch(tmp_path, registry, dest)
    assert first.returncode == 0, first.stderr
    assert (dest / "plugins.txt").read_text() == f"chat 1.0.0 {old.digest}\n"
    old_jar = (dest / "chat.jar").read_bytes()

    new = store.push("chat", _jar("v2 with more bytes"), "1.1.0", also_tag=("dev-lobby",))
    hexdigest = new.digest.split(":", 1)[1]
    blob = registry.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
    blob.write_bytes(_jar("tampered on the way"))  # what the server now downloads

    second = _fetch(tmp_path, registry, dest)
    assert second.returncode != 0
    assert "does not match" in second.stderr and new.digest in second.stderr
    assert (dest / "chat.jar").read_bytes() == old_jar
    assert (dest / "plugins.txt").read_text() == f"chat 1.0.0 {old.digest}\n"
    assert not (dest / "chat.jar.tmp").exists()
