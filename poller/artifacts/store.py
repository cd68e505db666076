"""Plugin .jar files as OCI artifacts in the registry (plain registry API v2).

One artifact = an OCI image manifest with ``artifactType`` :data:`ARTIFACT_TYPE`, the empty
config ``{}`` and one layer, the jar. The version is the tag and the
``org.opencontainers.image.version`` annotation, so the fetch script can report it. Tags move
with :meth:`RegistryClient.put_manifest` (no blob moves). The ``oras`` client would do the
same; this keeps Slipway on the registry client it already has (auth, counting, errors).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from poller.errors import NotFound, PermanentError, UpstreamError
from poller.http import check_response
from poller.names import check_plugin_name, check_tag
from poller.registry.client import Manifest, RegistryClient
from poller.versions import parse_version

ARTIFACT_TYPE = "application/vnd.slipway.plugin.v1"
LAYER_TYPE = "application/java-archive"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
EMPTY_CONFIG = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
VERSION_KEY = "org.opencontainers.image.version"


class ArtifactError(PermanentError):
    """A plugin artifact that cannot be published or resolved as asked."""


@dataclass(frozen=True)
class Artifact:
    plugin: str
    tag: str
    version: str
    digest: str  # of the jar layer: what a server reports, whatever tag it came from
    manifest: Manifest


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def valid_version(version: str) -> bool:
    return version == "staging" or parse_version(version) is not None


class ArtifactStore:
    def __init__(self, registry: RegistryClient, repository: str = "plugins"):
        self.registry = registry
        self.repository = repository

    def repo(self, plugin: str) -> str:
        """The plugin's repository; the last guard before a name becomes a registry URL."""
        return f"{self.repository}/{check_plugin_name(plugin)}"

    # -- publishing -----------------------------------------------------------------
    def _upload(self, repo: str, data: bytes) -> str:
        digest = _sha(data)
        scope = f"repository:{repo}:pull,push"
        head = self.registry._send("HEAD", f"/v2/{repo}/blobs/{digest}", scope=scope)
        if head.status_code == 200:
            return digest
        start = check_response(self.registry._send("POST", f"/v2/{repo}/blobs/uploads/", scope=scope),
                               self.registry.upstream)
        location = start.headers.get("Location")
        if not location:
            raise UpstreamError("registry gave no upload location", upstream=self.registry.upstream)
        sep = "&" if "?" in location else "?"
        check_response(self.registry._send("PUT", f"{location}{sep}{urlencode({'digest': digest})}",
                                           scope=scope, data=data,
                                           headers={"Content-Type": "application/octet-stream"}),
                       self.registry.upstream)
        return digest

    def push(self, plugin: str, jar: bytes, version: str, *, also_tag: tuple[str, ...] = ()) -> Artifact:
        """Publish ``jar`` as ``plugin:version`` (and every tag in ``also_tag``)."""
        if not valid_version(version):
            raise ArtifactError(f"version '{version}' is neither semver (X.Y.Z) nor 'staging'")
        for tag in (version, *also_tag):
            check_tag(tag)
        if not jar.startswith(b"PK"):
            raise ArtifactError(f"{plugin}: not a .jar (zip) file")
        repo = self.repo(plugin)
        layer = self._upload(repo, jar)
        config = self._upload(repo, EMPTY_CONFIG)
        body = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "artifactType": ARTIFACT_TYPE,
                "config": {"mediaType": EMPTY_TYPE, "digest": config, "size": len(EMPTY_CONFIG)},
                "layers": [{"mediaType": LAYER_TYPE, "digest": layer, "size": len(jar),
                            "annotations": {"org.opencontainers.image.title": f"{plugin}.jar"}}],
                "annotations": {VERSION_KEY: version,
                                "org.opencontainers.image.created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                  time.gmtime())}}
        raw = json.dumps(body, separators=(",", ":")).encode()
        manifest = Manifest(digest=_sha(raw), media_type=MANIFEST_TYPE, raw=raw)
        for tag in (version, *also_tag):
            self.registry.put_manifest(repo, tag, manifest)
        return Artifact(plugin, version, version, layer, manifest)

    def tag(self, artifact: Artifact, tag: str) -> None:
        self.registry.put_manifest(self.repo(artifact.plugin), tag, artifact.manifest)

    # -- reading --------------------------------------------------------------------
    def get(self, plugin: str, tag: str) -> Artifact | None:
        try:
            manifest = self.registry.get_manifest(self.repo(plugin), tag)
        except NotFound:
            return None
        body = manifest.body
        layers = body.get("layers") or []
        if body.get("artifactType") != ARTIFACT_TYPE or len(layers) != 1:
            raise ArtifactError(f"{self.repo(plugin)}:{tag} is not a Slipway plugin artifact")
        version = (body.get("annotations") or {}).get(VERSION_KEY, tag)
        return Artifact(plugin, tag, version, layers[0]["digest"], manifest)

    def resolve(self, plugin: str, rule: str) -> Artifact | None:
        """The artifact a version rule selects now, ``None`` when nothing matches yet."""
        if rule == "staging" or parse_version(rule) is not None:
            return self.get(plugin, rule)
        releases = [(v, t) for t in self.registry.list_tags(self.repo(plugin))
                    if (v := parse_version(t)) is not None and not v.is_prerelease]
        if rule != "latest":
            parts = rule.split(".")[:-1]  # '1.x' -> ['1'], '1.2.x' -> ['1', '2']
            releases = [(v, t) for v, t in releases
                        if [str(v.major), str(v.minor)][:len(parts)] == parts]
        if not releases:
            return None
        return self.get(plugin, max(releases)[1])

    def download(self, artifact: Artifact, dest: Path) -> Path:
        repo = self.repo(artifact.plugin)
        resp = check_response(self.registry._send("GET", f"/v2/{repo}/blobs/{artifact.digest}",
                                                  scope=f"repository:{repo}:pull"), self.registry.upstream)
        if _sha(resp.content) != artifact.digest:
            raise UpstreamError(f"{repo}: blob {artifact.digest} arrived corrupted",
                                upstream=self.registry.upstream)
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / f"{artifact.plugin}.jar"
        tmp = path.with_suffix(".jar.tmp")
        tmp.write_bytes(resp.content)
        tmp.replace(path)
        return path
