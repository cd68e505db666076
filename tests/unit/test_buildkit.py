"""The BuildKit engine's pure parts: settings, buildctl arguments, progress rendering, the pool."""

from __future__ import annotations

import base64

import pytest

from poller.builds.builder import BuildPlan
from poller.builds.buildkit import (
    BuilderPool,
    ProgressRenderer,
    build_args,
    connection_args,
)
from poller.config import parse_config
from poller.errors import ConfigError, UpstreamError
from poller.settings.buildkit import BuildKitEndpoint

BASE = {"registry": {"url": "127.0.0.1:5000"}}


def cfg(build: dict):
    return parse_config({**BASE, "build": build}, file="slipway.yaml")


def test_docker_stays_the_default_engine():
    assert cfg({}).build.engine == "docker"


@pytest.mark.parametrize("build, key, words", [
    ({"engine": "buildkit"}, "build", "needs at least one address"),
    ({"engine": "kaniko"}, "build.engine", "'docker' or 'buildkit'"),
    ({"engine": "buildkit", "buildkit": {"addresses": ["tcp://bk:1234"]}}, "build.buildkit.addresses[0]",
     "needs TLS"),
    ({"engine": "buildkit", "buildkit": {"addresses": ["http://bk:1234"]}},
     "build.buildkit.addresses[0].address", "unix:// or tcp://"),
    ({"engine": "buildkit", "buildkit": {"addresses": ["unix://relative.sock"]}},
     "build.buildkit.addresses[0].address", "absolute socket path"),
    ({"engine": "buildkit", "buildkit": {"addresses": [{"address": "tcp://bk:1", "ca_cert": "/ca",
                                                        "cert": "/c"}]}},
     "build.buildkit.addresses[0]", "both cert and key"),
    ({"engine": "buildkit", "buildkit": {"addresses": ["unix:///a.sock", "unix:///a.sock"]}},
     "build.buildkit", "listed twice"),
    ({"engine": "buildkit", "buildkit": {"addresses": ["unix:///a.sock"], "cache_ref": "{image}"}},
     "build.buildkit.cache_ref", "give a tag"),
])
def test_bad_buildkit_settings_name_the_key(build, key, words):
    with pytest.raises(ConfigError) as err:
        cfg(build)
    assert err.value.key == key and words in err.value.reason and err.value.file == "slipway.yaml"


def test_buildkit_settings_accept_strings_and_tls_mappings():
    bk = cfg({"engine": "buildkit", "buildkit": {"addresses": [
        "unix:///run/buildkit/buildkitd.sock",
        {"address": "tcp://bk-1.bk:1234", "ca_cert": "/tls/ca.pem", "cert": "/tls/cert.pem",
         "key": "/tls/key.pem", "server_name": "bk"}]}}).build.buildkit
    assert [e.address for e in bk.addresses] == ["unix:///run/buildkit/buildkitd.sock", "tcp://bk-1.bk:1234"]
    assert bk.cache_for("reg:5000/game") == "reg:5000/game:buildcache"
    assert connection_args(bk.addresses[1], 5) == [
        "--addr", "tcp://bk-1.bk:1234", "--timeout", "5", "--tlscacert", "/tls/ca.pem",
        "--tlscert", "/tls/cert.pem", "--tlskey", "/tls/key.pem", "--tlsservername", "bk"]


def test_build_arguments_push_every_tag_with_labels_and_the_registry_cache():
    plan = BuildPlan(source="s", image="127.0.0.1:5000/game", ref="branch:master", kind="staging",
                     sha="a" * 40, version="sha-aaaaaaaaaaaa", tags=("sha-aaaaaaaaaaaa", "staging"))
    args = build_args(plan=plan, labels={"org.opencontainers.image.revision": "a" * 40},
                      build_args={"MODE": "release"}, context_dir="/ctx", dockerfile="docker/Dockerfile",
                      metadata_file="/m.json", cache_ref="127.0.0.1:5000/game:buildcache", cache_mode="max",
                      insecure=True)
    joined = " ".join(args)
    assert "--frontend dockerfile.v0 --local context=/ctx --local dockerfile=/ctx" in joined
    assert "--opt filename=docker/Dockerfile" in joined
    assert f"--opt label:org.opencontainers.image.revision={'a' * 40}" in joined
    assert "--opt build-arg:MODE=release" in joined
    out = args[args.index("--output") + 1]
    assert out == ('type=image,"name=127.0.0.1:5000/game:sha-aaaaaaaaaaaa,127.0.0.1:5000/game:staging",'
                   'push=true,oci-mediatypes=false,registry.insecure=true')
    assert args[args.index("--export-cache") + 1] == (
        "type=registry,ref=127.0.0.1:5000/game:buildcache,mode=max,ignore-error=true,registry.insecure=true")
    assert args[args.index("--import-cache") + 1] == (
        "type=registry,ref=127.0.0.1:5000/game:buildcache,registry.insecure=true")
    assert args[-4:] == ["--metadata-file", "/m.json", "--progress", "rawjson"]


def test_rawjson_progress_becomes_a_readable_log():
    r = ProgressRenderer()
    run = {"digest": "sha256:1", "name": "[app 2/2] RUN make", "started": "2026-01-01T10:00:00.5Z"}
    text = r.feed({"vertexes": [run, {"digest": "sha256:2", "name": "[tools 1/1] COPY busybox",
                                      "started": "2026-01-01T10:00:00Z", "cached": True,
                                      "completed": "2026-01-01T10:00:00Z"}]})
    text += r.feed({"logs": [{"vertex": "sha256:1", "stream": 1,
                              "data": base64.b64encode(b"compiling\nlinking\n").decode()}]})
    text += r.feed({"vertexes": [{**run, "completed": "2026-01-01T10:00:02.75Z"}]})
    text += r.feed({"vertexes": [{**run, "completed": "2026-01-01T10:00:02.75Z"}]})  # repeated: shown once
    assert text == ("#1 [app 2/2] RUN make\n#2 [tools 1/1] COPY busybox\n#2 CACHED\n"
                    "#1 compiling\n#1 linking\n#1 DONE 2.2s\n")
    failed = r.feed({"vertexes": [{"digest": "sha256:3", "name": "RUN false", "started": "2026-01-01T10:00:03Z",
                                   "completed": "2026-01-01T10:00:04Z", "error": "exit code: 1"}]})
    assert failed == "#3 RUN false\n#3 ERROR: exit code: 1\n" and r.errors == ["RUN false: exit code: 1"]
    missing = r.feed({"vertexes": [{"digest": "sha256:4", "name": "importing cache manifest from reg/game:buildcache",
                                    "started": "2026-01-01T10:00:00Z", "completed": "2026-01-01T10:00:00Z",
                                    "error": "failed to configure registry cache importer: reg/game:buildcache: not found"}]})
    assert missing.endswith("#4 no registry cache yet: this build starts one\n") and len(r.errors) == 1


def endpoints(*names):
    return [BuildKitEndpoint(address=f"unix:///run/{n}.sock") for n in names]


def test_pool_keeps_a_source_on_one_builder_and_spreads_sources():
    pool = BuilderPool(endpoints("a", "b", "c"), probe=lambda ep: None)
    choices = {f"source-{i}": pool.choose(f"source-{i}").address for i in range(30)}
    assert all(pool.choose(k).address == v for k, v in choices.items())  # sticky
    assert len(set(choices.values())) == 3  # spread over the pool
    reordered = BuilderPool(list(reversed(endpoints("a", "b", "c"))), probe=lambda ep: None)
    assert all(reordered.choose(k).address == v for k, v in choices.items())  # order in config is irrelevant


def test_pool_moves_a_source_off_an_unhealthy_builder_and_back_when_it_recovers():
    now = [0.0]
    down = {"unix:///run/a.sock"}
    probes = []

    def probe(ep):
        probes.append(ep.address)
        return "connection refused" if ep.address in down else None

    pool = BuilderPool(endpoints("a", "b"), probe=probe, retry_unhealthy=30, clock=lambda: now[0])
    key = next(k for k in (f"s{i}" for i in range(100)) if pool.ranked(k)[0].address == "unix:///run/a.sock")
    assert pool.choose(key).address == "unix:///run/b.sock"
    probes.clear()
    assert pool.choose(key).address == "unix:///run/b.sock"
    assert probes == ["unix:///run/b.sock"]  # a is not asked again within retry_unhealthy
    down.clear()
    now[0] = 31
    assert pool.choose(key).address == "unix:///run/a.sock"  # back to its own builder


def test_pool_with_no_healthy_builder_is_an_upstream_error_naming_each():
    pool = BuilderPool(endpoints("a", "b"), probe=lambda ep: "no such file or directory")
    with pytest.raises(UpstreamError) as err:
        pool.choose("s")
    assert err.value.upstream == "buildkit"
    assert "unix:///run/a.sock: no such file" in str(err.value) and "unix:///run/b.sock" in str(err.value)
