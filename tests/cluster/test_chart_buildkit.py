"""charts/slipway's optional BuildKit builders: off by default; when on, a buildkitd
StatefulSet behind a headless Service, and a poller configured to use every replica over TLS."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cluster

SLIPWAY = str(Path(__file__).resolve().parents[2] / "charts" / "slipway")
TOKEN = ["--set", "apiToken.value=test-api-token"]
ON = [*TOKEN, "--set", "buildkit.enabled=true", "--set", "buildkit.tls.serverSecret=bk-server",
      "--set", "buildkit.tls.clientSecret=bk-client", "--set", "buildkit.replicas=3"]


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_buildkit_is_off_by_default(helm):
    rendered = docs(helm.run("template", "slipway", SLIPWAY, "--namespace", "ci", *TOKEN).stdout)
    assert not [d for d in rendered if d["kind"] == "StatefulSet"]
    config = yaml.safe_load(next(d for d in rendered if d["kind"] == "ConfigMap")["data"]["config.yaml"])
    assert "build" not in config or "engine" not in config["build"]


def test_buildkit_builders_and_the_poller_config_that_uses_them(helm, kube, namespace):
    assert "0 chart(s) failed" in helm.run("lint", "--strict", SLIPWAY, *ON).stdout
    text = helm.run("template", "slipway", SLIPWAY, "--namespace", namespace, *ON).stdout
    rendered = docs(text)
    [sts] = [d for d in rendered if d["kind"] == "StatefulSet"]
    assert sts["metadata"]["name"] == "slipway-buildkitd" and sts["spec"]["replicas"] == 3
    svc = next(d for d in rendered if d["kind"] == "Service" and d["metadata"]["name"] == "slipway-buildkitd")
    assert svc["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == "slipway-buildkitd"
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert "tcp://0.0.0.0:1234" in c["args"] and "--tlscacert" in c["args"]
    assert c["readinessProbe"]["exec"]["command"][-2:] == ["debug", "workers"]

    config = yaml.safe_load(next(d for d in rendered if d["kind"] == "ConfigMap")["data"]["config.yaml"])
    from poller.config import parse_config

    build = parse_config(config, file="configmap", env={"HELM_API_TOKEN": "t"}).build
    assert build.engine == "buildkit" and build.buildkit.buildctl == "/opt/buildkit/bin/buildctl"
    assert [e.address for e in build.buildkit.addresses] == [
        f"tcp://slipway-buildkitd-{i}.slipway-buildkitd.{namespace}.svc:1234" for i in range(3)]
    assert all(e.ca_cert and e.cert and e.key for e in build.buildkit.addresses)
    poller = next(d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == "slipway-poller")
    pod = poller["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["command"][-1] == "/opt/buildkit/bin/buildctl"
    assert {"name": "buildkit-client", "secret": {"secretName": "bk-client"}} in pod["volumes"]

    # The real API server accepts every object as rendered.
    kube.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=text)

    bad = helm.run("template", "slipway", SLIPWAY, *TOKEN, "--set", "buildkit.enabled=true", check=False)
    assert bad.returncode != 0 and "buildkit.tls" in bad.stderr
