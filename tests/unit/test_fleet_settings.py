"""The ``fleet:`` and ``plugins:`` sections: validated once, mistakes named by key."""

import pytest

from poller.artifacts import uses_fleet
from poller.artifacts.publish import plugin_name, publish
from poller.artifacts.servers import parse_report
from poller.artifacts.store import ArtifactError, valid_version
from poller.config import parse_config
from poller.errors import ConfigError
from poller.fleet.jobs import newest_release
from poller.settings.fleet import dependencies, order_services
from poller.settings.plugins import channel_tag, type_order


def cfg(**sections):
    return parse_config({"registry": {"url": "r:5000"}, **sections}, env={})


FLEET = {"services": {"db": {"image": "r:5000/db"},
                      "api": {"image": "r:5000/api", "depends_on": ["db"]},
                      "web": {"image": "r:5000/web", "depends_on": ["api"], "max_unavailable": 2}}}


def test_services_are_ordered_dependencies_first():
    fleet = cfg(fleet=FLEET).fleet
    assert order_services(fleet.services) == ["db", "api", "web"]
    assert order_services(fleet.services, only=["web", "db"]) == ["db", "web"]
    assert dependencies(fleet.services, "web") == {"api", "db"}
    assert fleet.etcd.prefix == "/dc" and fleet.etcd.endpoints == ["http://127.0.0.1:2379"]


@pytest.mark.parametrize("fleet, key, reason", [
    ({"services": {"a": {"image": "r/a", "depends_on": ["b"]}}}, "fleet", "no service named 'b'"),
    ({"services": {"a": {"image": "r/a", "depends_on": ["b"]}, "b": {"image": "r/b", "depends_on": ["a"]}}},
     "fleet", "cycle"),
    ({"services": {"a": {"image": "r/a:1.0"}}}, "fleet.services.a.image", "repository only"),
    ({"services": {"a": {"image": "r/a", "max_unavailable": 0}}}, "fleet.services.a.max_unavailable", ""),
    ({"services": {"a": {"image": "r/a", "health": {"kind": "http"}}}}, "fleet.services.a.health", "port"),
    ({"services": {"a": {"image": "r/a"}}, "agent": {"machine": "m1", "containers": {"b": "b"}}},
     "fleet", "agent.containers.b"),
    ({"etcd": {"prefix": "/"}}, "fleet.etcd.prefix", "must not be empty"),
])
def test_fleet_mistakes_name_the_key(fleet, key, reason):
    with pytest.raises(ConfigError) as exc:
        cfg(fleet=fleet)
    assert exc.value.key == key and reason in exc.value.reason


PLUGINS = {"server_types": {"lobby": {"plugins": {"chat": "latest", "perms": "1.x"}},
                            "survival": {"plugins": {"perms": "1.2.x"}, "depends_on": ["lobby"]}},
           "environments": {"dev": {"fast_track": True}, "production": {}, "eu": {"production": True}}}


def test_plugins_section_and_order():
    plugins = cfg(plugins=PLUGINS).plugins
    assert type_order(plugins) == ["lobby", "survival"]
    assert plugins.is_production("production") and plugins.is_production("eu")
    assert not plugins.is_production("dev")
    assert channel_tag("dev", "lobby") == "dev-lobby"


@pytest.mark.parametrize("plugins, reason", [
    ({"environments": {"production": {"fast_track": True}}}, "production refuses the fast track"),
    ({"environments": {"live": {"production": True, "fast_track": True}}}, "production refuses"),
    ({"server_types": {"a": {"plugins": {"chat": ">=1"}}}}, "rule '>=1'"),
    ({"server_types": {"a": {"plugins": {}, "depends_on": ["b"]}}}, "no server type 'b'"),
])
def test_plugins_mistakes_are_explained(plugins, reason):
    with pytest.raises(ConfigError) as exc:
        cfg(plugins=plugins)
    assert reason in str(exc.value)


def test_plugin_restarts_share_a_fleet_services_quorum_only_when_a_type_names_one():
    lobby = {"server_types": {"lobby": {"plugins": {"chat": "latest"}}}}
    assert not uses_fleet(cfg(plugins=lobby))
    assert uses_fleet(cfg(plugins=lobby, fleet={"services": {"lobby": {"image": "r:5000/lobby"}}}))
    typo = cfg(plugins={"server_types": {"lobby": {"plugins": {}, "fleet_service": "lobbby"}}},
               fleet={"services": {"lobby": {"image": "r:5000/lobby"}}})
    with pytest.raises(ConfigError, match=r"plugins.server_types.lobby.fleet_service: no service 'lobbby'"):
        uses_fleet(typo)


def test_fast_track_is_refused_before_anything_is_pushed():
    plugins = cfg(plugins=PLUGINS).plugins
    jar = b"PK\x03\x04"
    for env, reason in (("production", "refuses the fast track"), ("eu", "refuses the fast track"),
                        ("nowhere", "no environment")):
        with pytest.raises(ArtifactError, match=reason):
            publish(None, plugins, "chat", jar, env=env)  # never reaches the store
    with pytest.raises(ArtifactError, match="no server type uses"):
        publish(None, plugins, "unknown", jar, env="dev")
    with pytest.raises(ArtifactError, match="give a version"):
        publish(None, plugins, "chat", jar)


def test_small_parsers():
    assert plugin_name(__import__("pathlib").Path("Chat-1.2.3-SNAPSHOT.jar")) == "chat"
    assert plugin_name(__import__("pathlib").Path("perms.jar")) == "perms"
    assert valid_version("staging") and valid_version("1.2.3") and not valid_version("latest")
    assert parse_report("chat 1.0.0 sha256:aa\nbroken line\nperms 2.0.0 sha256:bb\n") == \
        {"chat": "sha256:aa", "perms": "sha256:bb"}
    assert newest_release(["1.2.0", "1.10.0", "2.0.0-rc.1", "latest", "staging"]) == "1.10.0"
    assert newest_release(["staging"]) is None
