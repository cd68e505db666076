"""One validator per kind of name, inline credentials, and the log masker."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from poller.charts.push import package_chart
from poller.config import parse_config
from poller.errors import ConfigError
from poller.logs import get_logger, mask, register_secret, setup_logging

ROOT = Path(__file__).resolve().parents[2]


# -- validators ---------------------------------------------------------------------------------
@pytest.mark.parametrize("check,good,bad", [
    ("check_plugin_name", ["chat", "anti-cheat", "perms2", "a.b"], ["../gs", "Chat", "chat\n", "-x", "a?b",
                                                                  "a#b", "a/b", "", "a-", "a..b"]),
    ("check_chart_name", ["game-server", "lobby_2"], ["../evil", "a/b", "Evil", "a..b", "", ".x", "x."]),
    ("check_image_repository", ["127.0.0.1:5000/game-server", "reg.example/team/lobby"],
     ["127.0.0.1:5000/Game", "127.0.0.1:5000/game server", "game", "r:5000/x:1", "r/x@sha256:ab",
      "r:5000/a//b", "bad host/x"]),
    ("check_tag", ["1.4.0", "staging", "dev-lobby"], ["-x", ".x", "a b", "a\n", "", "x" * 129]),
    ("check_git_ref", ["master", "release/1.x", "v1.0.0"], ["-x", "a..b", "a b", "a~1", "a:b", "x.lock",
                                                           "/x", "x/", "a@{1}", "a\\b", "a\nb"]),
    ("check_dns_label", ["game-prod"], ["Game", "a_b", "-a", "a" * 64, "job\n"]),
    ("check_file_name", ["chat.jar"], ["../x", "a/b", ".hidden", "-x", "a\nb", ""]),
])
def test_each_kind_of_name_has_one_validator(check, good, bad):
    import poller.names

    check, InvalidName = getattr(poller.names, check), poller.names.InvalidName
    for v in good:
        assert check(v) == v
    for v in bad:
        with pytest.raises(InvalidName):
            check(v)


@pytest.mark.parametrize("image", ["127.0.0.1:5000/Game-Server", "127.0.0.1:5000/game server"])
def test_an_image_with_uppercase_or_spaces_fails_at_config_load_with_file_and_key(image):
    data = {"registry": {"url": "127.0.0.1:5000"},
            "sources": [{"name": "gs", "git": {"url": "file:///srv/gs.git"}, "branch": "master", "image": image}]}
    with pytest.raises(ConfigError) as err:
        parse_config(data, file="slipway.yaml")
    assert (err.value.file, err.value.key) == ("slipway.yaml", "sources[0].image")
    assert "no spaces, no uppercase" in err.value.reason


# -- charts -------------------------------------------------------------------------------------
def _chart(tmp_path: Path, name: str = "demo") -> Path:
    d = tmp_path / "chart"
    (d / "templates").mkdir(parents=True)
    (d / "Chart.yaml").write_text(yaml.safe_dump({"apiVersion": "v2", "name": name, "version": "1.0.0"}))
    (d / "templates" / "cm.yaml").write_text("kind: ConfigMap\n")
    return d


def test_chart_packaging_refuses_a_symlink_out_of_the_chart(tmp_path):
    secret = tmp_path / "outside.txt"
    secret.write_text("not part of the chart")
    d = _chart(tmp_path)
    os.symlink(secret, d / "templates" / "leak.yaml")
    with pytest.raises(ConfigError, match="outside the chart directory") as err:
        package_chart(d)
    assert err.value.file == str(d / "templates" / "leak.yaml")


def test_chart_packaging_refuses_a_symlinked_directory_out_of_the_chart(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    d = _chart(tmp_path)
    os.symlink(tmp_path / "elsewhere", d / "files")
    with pytest.raises(ConfigError, match="outside the chart directory"):
        package_chart(d)


def test_a_symlink_inside_the_chart_is_packaged(tmp_path):
    d = _chart(tmp_path)
    os.symlink(d / "templates" / "cm.yaml", d / "templates" / "alias.yaml")
    assert package_chart(d).name == "demo"


@pytest.mark.parametrize("name", ["../evil", "a/b", "Evil Chart"])
def test_chart_names_that_would_leave_the_archive_are_refused(tmp_path, name):
    with pytest.raises(ConfigError) as err:
        package_chart(_chart(tmp_path, name))
    assert err.value.key == "name" and "chart name" in err.value.reason


# -- inline registry credentials ----------------------------------------------------------------
def _cfg_with_inline_password(tmp_path, password="pä$$w0rd-inline-✓") -> Path:
    from urllib.parse import quote

    path = tmp_path / "slipway.yaml"
    path.write_text(yaml.safe_dump({
        "registry": {"url": f"https://robot:{quote(password, safe='')}@registry.example:5000"},
        "store": {"path": str(tmp_path / "s.db")}, "api": {"listen": None},
        "sources": [{"name": "gs", "git": {"url": "file:///srv/gs.git"}, "branch": "master",
                     "image": "registry.example:5000/gs"}]}, allow_unicode=True))
    return path


def test_inline_registry_credentials_become_username_and_password(tmp_path):
    cfg = parse_config(yaml.safe_load(_cfg_with_inline_password(tmp_path).read_text()), env={})
    assert cfg.registry.url == "https://registry.example:5000" and cfg.registry.host == "registry.example:5000"
    assert cfg.registry.username == "robot"
    assert cfg.registry.password.get_secret_value() == "pä$$w0rd-inline-✓"


def test_inline_and_separate_registry_credentials_together_are_refused():
    with pytest.raises(ConfigError) as err:
        parse_config({"registry": {"url": "https://u:p@r.example", "password": "x"}}, file="s.yaml")
    assert err.value.key == "registry" and "username/password" in err.value.reason


def test_check_config_never_prints_inline_registry_credentials(tmp_path):
    res = subprocess.run([sys.executable, "-m", "poller", "check-config", str(_cfg_with_inline_password(tmp_path))],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert "registry registry.example:5000" in res.stdout
    assert "robot" not in res.stdout + res.stderr and "w0rd" not in res.stdout + res.stderr


# -- the masker ---------------------------------------------------------------------------------
@pytest.mark.parametrize("secret", ['pässwörd-ü-✓', 'with"quote"s', 'back\\slash\\es', 'all-ö"\\-mixed'])
def test_json_log_masks_secrets_with_non_ascii_quotes_and_backslashes(secret):
    register_secret(secret)
    stream = io.StringIO()
    setup_logging(level="info", fmt="json", stream=stream)
    get_logger("t").info("registry.login", detail=f"using {secret} now", nested={"a": [secret]})
    get_logger("t").info(f"event with {secret}")
    out = stream.getvalue()
    for form in (secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]):
        assert form not in out
    assert json.loads(out.splitlines()[0])["detail"] == "using *** now"


def test_text_log_lines_cannot_be_forged_with_newlines():
    stream = io.StringIO()
    setup_logging(level="info", fmt="text", stream=stream)
    get_logger("t").info("source.polled", source="gs", error="boom\n12:00:00|error|approval.approved")
    get_logger("t").info("tag\r\n12:00:00 info forged")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\\n12:00:00" in lines[0] and "\\r\\n12:00:00" in lines[1]


def test_text_log_exception_lines_are_indented(tmp_path):
    stream = io.StringIO()
    setup_logging(level="info", fmt="text", stream=stream)
    try:
        raise ValueError("bad\n12:00:00 info    forged.event")
    except ValueError:
        get_logger("t").error("crash", exc_info=True)
    lines = stream.getvalue().splitlines()
    assert all(line.startswith("    | ") for line in lines[1:]) and len(lines) > 2


def test_api_listening_shows_none_read_only_not_a_mask():
    # Issue 17: the field *name* 'token' made the pattern masker hide its value 'none'.
    for fmt in ("json", "text"):
        stream = io.StringIO()
        setup_logging(level="info", fmt=fmt, stream=stream)
        get_logger("poller.api").info("api.listening", listen="127.0.0.1:8081", token="none (read-only)")
        assert "none (read-only)" in stream.getvalue() and "***" not in stream.getvalue()


def test_only_real_secret_values_are_registered(tmp_path):
    cfg = parse_config({"registry": {"url": "127.0.0.1:5000", "password": ""},
                        "api": {"token": None},
                        "sources": [{"name": "gs", "git": {"url": "file:///x.git"}, "branch": "master",
                                     "image": "127.0.0.1:5000/gs",
                                     "build_args": {"MODE": "release", "KEY": "${BUILD_KEY}"}}]},
                       env={"BUILD_KEY": "bk-secret-value"})
    from poller.config import secret_values

    assert mask("key bk-secret-value") == "key ***"       # a build arg from ${VAR} is a secret
    assert mask("mode release") == "mode release"         # a literal build arg is not
    assert "" not in secret_values(cfg) and "none" not in secret_values(cfg)
    assert mask("none (read-only)") == "none (read-only)"


@pytest.mark.parametrize("target,key", [
    ({"kubernetes": {"kind": "Deployment", "name": "-x", "container": "c"}}, "target.kubernetes.name"),
    ({"kubernetes": {"kind": "Deployment", "name": "gs", "namespace": "Prod", "container": "c"}},
     "target.kubernetes.namespace"),
    ({"kubernetes": {"kind": "Deployment", "name": "gs", "container": "c/../x"}}, "target.kubernetes.container"),
    ({"helm": {"release": "--post-renderer=/bin/sh", "chart": "c"}}, "target.helm.release"),
])
def test_kubernetes_and_helm_names_are_checked_at_config_load(target, key):
    with pytest.raises(ConfigError) as err:
        parse_config({"registry": {"url": "r:5000"}, "updates": {"deployments": [
            {"name": "d", "image": "r:5000/x", "policy": "minor", "target": target}]}}, file="s.yaml")
    assert err.value.key == f"updates.deployments[0].{key}"


def test_build_logs_and_errors_are_stored_and_served_masked(tmp_path):
    from poller.store import Store

    register_secret("build-arg-sëcret\\1")
    store = Store(tmp_path / "s.db")
    bid = store.start_build(source="gs", image="r:5000/gs", ref="branch:master", kind="staging", sha="a" * 40,
                            tags=["staging"])
    store.finish_build(bid, status="failed", error="RUN printed build-arg-sëcret\\1",
                       log="Step 5/5 : RUN echo $ARG\nbuild-arg-sëcret\\1\n")
    raw = store.execute("SELECT log, error FROM builds WHERE id=?", (bid,)).fetchone()
    assert "sëcret" not in raw["log"] + raw["error"] and "***" in raw["log"]
    # A row kept before the secret was configured is still served masked.
    store.execute("UPDATE builds SET log=?, error=? WHERE id=?", ("old build-arg-sëcret\\1", "x build-arg-sëcret\\1", bid))
    rec = store.get_build(bid)
    assert (rec.log, rec.error) == ("old ***", "x ***")
    assert store.builds()[0].log == "old ***"


@pytest.mark.parametrize("remote,key", [
    ({"github": {"repo": "../admin"}}, "sources[0].github.repo"),
    ({"github": {"repo": "o/.."}}, "sources[0].github.repo"),
    ({"github": {"repo": "o/n?x=1"}}, "sources[0].github.repo"),
    ({"gitlab": {"url": "https://gl.example", "project": "games/../admin"}}, "sources[0].gitlab.project"),
    ({"gitlab": {"url": "https://gl.example", "project": "games/lobby#x"}}, "sources[0].gitlab.project"),
])
def test_hosted_project_paths_cannot_walk_the_api(remote, key):
    with pytest.raises(ConfigError) as err:
        parse_config({"registry": {"url": "r:5000"}, "sources": [
            {"name": "s", "branch": "master", "image": "r:5000/s", **remote}]}, file="s.yaml")
    assert err.value.key == key
