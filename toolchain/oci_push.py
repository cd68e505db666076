"""Write a FROM-scratch OCI image from a few files and push it to a plain-HTTP registry.

The cluster lane's node pulls only from the project's local registry; the images it
needs that the project makes itself (the pod sandbox "pause" image, the OKG manager)
are a static binary or two in an otherwise empty image.  Building them here keeps
the digest stable (fixed mtimes, no build engine involved) and needs nothing beyond
the standard library.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


class ImagePushError(RuntimeError):
    pass


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, Path]) -> bytes:
    """An uncompressed layer: ``files`` maps the path in the image to a file on disk;
    owner root, mode 0755, mtime 0, so the same inputs give the same digest."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for dest in sorted(files):
            parts = dest.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
            data = Path(files[dest]).read_bytes()
            info = tarfile.TarInfo("/".join(parts))
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image_blobs(files: dict[str, Path], entrypoint: list[str], user: str = "0:0",
                env: list[str] | None = None) -> tuple[bytes, bytes, bytes]:
    """(config, layer.tar.gz, manifest) of a one-layer image."""
    tar = layer_tar(files)
    gz = gzip.compress(tar, mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "User": user, "Env": env or []},
        "rootfs": {"type": "layers", "diff_ids": [_digest(tar)]},
        "history": [{"created_by": "toolchain/oci_push.py"}],
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": LAYER_TYPE, "digest": _digest(gz), "size": len(gz)}],
    }, sort_keys=True).encode()
    return config, gz, manifest


def _request(method: str, url: str, data: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        base = url.split("/v2/", 1)[0]
        raise ImagePushError(f"registry {base} does not answer ({reason}); the local one is started "
                             "by `scripts/services up registry` (address: SLIPWAY_REGISTRY_ADDR)") from None


def _push_blob(base: str, repo: str, data: bytes) -> None:
    digest = _digest(data)
    code, _ = _request("HEAD", f"{base}/v2/{repo}/blobs/{digest}")
    if code == 200:
        return
    code, headers = _request("POST", f"{base}/v2/{repo}/blobs/uploads/")
    location = headers.get("Location") or headers.get("location")
    if code != 202 or not location:
        raise ImagePushError(f"registry {base}: starting a blob upload to {repo} answered {code}")
    url = urllib.parse.urljoin(base + "/", location)
    url += ("&" if "?" in url else "?") + "digest=" + urllib.parse.quote(digest)
    code, _ = _request("PUT", url, data, {"Content-Type": "application/octet-stream"})
    if code != 201:
        raise ImagePushError(f"registry {base}: uploading blob {digest} to {repo} answered {code}")


def push_image(registry: str, repo: str, tag: str, files: dict[str, Path], entrypoint: list[str],
               user: str = "0:0", env: list[str] | None = None) -> str:
    """Push a one-layer FROM-scratch image to ``registry`` (host:port, plain HTTP);
    returns ``registry/repo@sha256:...``."""
    config, layer, manifest = image_blobs(files, entrypoint, user, env)
    base = f"http://{registry}"
    _push_blob(base, repo, config)
    _push_blob(base, repo, layer)
    code, _ = _request("PUT", f"{base}/v2/{repo}/manifests/{tag}", manifest, {"Content-Type": MANIFEST_TYPE})
    if code != 201:
        raise ImagePushError(f"registry {base}: pushing manifest {repo}:{tag} answered {code}")
    return f"{registry}/{repo}@{_digest(manifest)}"
