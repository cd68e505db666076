"""The release board: ``poller releases`` and ``/dashboard/releases`` in headless Chromium,
over real builds (registry, git, dockerd) and a real container that the board reads."""

from __future__ import annotations

import json
import secrets

import pytest

from poller.api import create_app, serve_in_thread
from poller.approvals import ApprovalQueue
from poller.config import parse_config
from poller.releases import progress_svg, timeline_svg
from poller.runtime import Runtime
from poller.store import Store
from tests.fixtures.services import free_port, wait_until
from tests.integration.test_dashboard_browser import browser  # noqa: F401 - fixture
from tests.integration.test_pipeline import REPO, make_config, poller, write_config

pytestmark = pytest.mark.integration
TOKEN = "board-token"


def test_svg_drawings_are_well_formed_and_escape_labels():
    import xml.etree.ElementTree as ET

    svg = timeline_svg([{"at": 1000.0, "kind": "build", "ok": True, "label": "#1 <staging>"},
                        {"at": 1100.0, "kind": "deploy", "ok": False, "label": "a → b"}], now=1200)
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and "&lt;staging&gt;" in svg
    assert ET.fromstring(progress_svg(3, 4)).get("aria-valuenow") == "3"


@pytest.fixture
def board(tmp_path, registry, git_repo, docker_host, docker_client):
    """Two staging builds and a release, a container running the first staging image, a
    deployment following it by digest, and a pending approval for a production deployment."""
    first = git_repo.seed_scratch_app("v1\n")
    git_repo.tag("v1.0.0")
    data = make_config(tmp_path, registry, git_repo)
    data["docker"] = {"base_url": docker_host}
    cfg_path = write_config(tmp_path, data)
    env = {"DOCKER_HOST": docker_host}
    assert poller("once", "--config", str(cfg_path), env_extra=env, timeout=300).returncode == 0
    first_digest = registry.digest(REPO, "staging")
    git_repo.commit("merge", {"app.txt": "v2\n"})
    assert poller("once", "--config", str(cfg_path), env_extra=env, timeout=300).returncode == 0
    name = f"slipway-board-{secrets.token_hex(3)}"
    docker_client.images.pull(f"{registry.addr}/{REPO}@{first_digest}")
    docker_client.containers.create(f"{registry.addr}/{REPO}:staging@{first_digest}", name=name)
    data["api"] = {"token": TOKEN, "listen": None}
    data["updates"] = {"deployments": [
        {"name": "game-staging", "image": f"{registry.addr}/{REPO}", "policy": "digest",
         "tag": "staging", "target": {"docker": {"container": name}}},
        {"name": "game-prod", "image": f"{registry.addr}/{REPO}", "policy": "major",
         "approval": "major", "target": {"docker": {"container": f"{name}-prod"}}}]}
    cfg_path = write_config(tmp_path, data)
    store = Store(tmp_path / "slipway.db")
    appr = ApprovalQueue(store).request(kind="deployment", subject="game-prod", from_version="1.0.0",
                                        to_version="2.0.0", reason="major bump")
    yield {"cfg": cfg_path, "data": data, "store": store, "first": first,
           "first_digest": first_digest, "container": name, "approval": appr}
    docker_client.containers.get(name).remove(force=True)


def test_releases_cli_shows_channels_what_runs_and_what_waits(board, docker_host):
    res = poller("releases", "--config", str(board["cfg"]), env_extra={"DOCKER_HOST": docker_host},
                 timeout=60)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "== game-server" in out and "staging" in out and "1.0.0" in out
    assert board["first_digest"].replace("sha256:", "")[:12] in out     # read from the container
    assert "game-prod" in out and "does not exist" in out                 # a target it cannot read
    assert f"waiting for approval #{board['approval'].id}" in out
    data = json.loads(poller("releases", "--config", str(board["cfg"]), "--json",
                             env_extra={"DOCKER_HOST": docker_host}, timeout=60).stdout)
    [svc] = data
    assert {c["channel"] for c in svc["channels"]} == {"staging", "release"}
    running = {r["deployment"]: r for r in svc["running"]}
    assert running["game-staging"]["digest"] == board["first_digest"]


def test_release_board_in_chromium_approves_and_rolls_back_staging(
        board, registry, browser, tmp_path):  # noqa: F811 - the imported fixture
    from selenium.webdriver.common.by import By

    cfg = parse_config(board["data"], file="test.yaml")
    app = create_app(Runtime(config=cfg, store=board["store"]))
    port = free_port()
    served = serve_in_thread(app, f"127.0.0.1:{port}")
    try:
        browser.get(f"http://127.0.0.1:{port}/dashboard/releases")
        body = lambda: browser.find_element(By.TAG_NAME, "body").text
        wait_until(lambda: "game-server" in body(), timeout=15, what="the board to render")
        section = browser.find_element(By.CSS_SELECTOR, 'section[data-service="game-server"]')
        assert section.find_element(By.CSS_SELECTOR, 'tr[data-channel="staging"]')
        assert section.find_element(By.CSS_SELECTOR, 'tr[data-channel="release"]').text.startswith("release 1.0.0")
        staging_row = section.find_element(By.CSS_SELECTOR, 'tr[data-deployment="game-staging"]').text
        assert board["first_digest"].replace("sha256:", "")[:12] in staging_row
        assert section.find_elements(By.CSS_SELECTOR, "svg.timeline circle")
        browser.save_screenshot(str(tmp_path / "release-board.png"))

        # acting needs the token
        browser.find_element(By.CSS_SELECTOR, "button.approve").click()
        wait_until(lambda: "Enter the API token" in browser.find_element(By.ID, "flash").text,
                   timeout=5, what="the token hint")
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
        browser.find_element(By.CSS_SELECTOR, "button.approve").click()
        appr = board["approval"].id
        wait_until(lambda: ApprovalQueue(board["store"]).get(appr).status == "approved",
                   timeout=10, what="the approval in the store")

        # roll back staging: first says what it will do, the second click does it
        wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, 'button[data-rollback="staging"]'),
                   timeout=10, what="the page to reload")
        browser.find_element(By.CSS_SELECTOR, 'button[data-rollback="staging"]').click()
        wait_until(lambda: "Will: re-point" in browser.find_element(By.ID, "flash").text,
                   timeout=10, what="the dry run")
        assert registry.labels(REPO, "staging")["org.opencontainers.image.revision"] != board["first"]
        browser.find_element(By.CSS_SELECTOR, 'button[data-rollback="staging"]').click()
        wait_until(lambda: registry.labels(REPO, "staging")["org.opencontainers.image.revision"]
                   == board["first"], timeout=15, what="staging to be rolled back")
        wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "[data-hold]"), timeout=10,
                   what="the hold on the reloaded board")
        browser.save_screenshot(str(tmp_path / "release-board-rolled-back.png"))
        [event] = board["store"].events(kind="rollback")
        assert event["detail"]["by"] == "release board"
    finally:
        served.close()


def test_board_page_draws_a_rollout_in_progress_as_a_bar(tmp_path):
    from poller.rollout.control import RolloutControl

    cfg = parse_config({
        "registry": {"url": "r:5000"}, "api": {"token": TOKEN},
        "sources": [{"name": "gs", "git": {"url": "file:///x"}, "branch": "master",
                     "image": "r:5000/gs"}],
        "updates": {"deployments": [{"name": "gs-prod", "image": "r:5000/gs", "policy": "minor",
                                     "target": {"docker": {"container": "nope",
                                                           "base_url": "unix:///nonexistent.sock"}}}]},
    }, env={})
    store = Store(tmp_path / "s.db")
    control = RolloutControl(store)
    rec = control.start("gs-prod", "1.2.0", "r:5000/gs:1.2.0")
    for i, server in enumerate(("gs-0", "gs-1", "gs-2")):
        control.server_updated(rec.id, server, i)
    html = create_app(Runtime(config=cfg, store=store)).test_client().get(
        "/dashboard/releases").get_data(as_text=True)
    assert f'data-rollout="{rec.id}"' in html and 'role="progressbar"' in html
    assert 'aria-valuenow="3"' in html
    assert "gs-prod" in html and "Error" in html   # an unreadable target says why


def test_private_board_loads_in_chromium_once_the_token_is_given(tmp_path, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    cfg = parse_config({
        "registry": {"url": "r:5000"}, "api": {"token": TOKEN, "public_read": False},
        "sources": [{"name": "gs", "git": {"url": "file:///x"}, "branch": "master",
                     "image": "r:5000/gs"}]}, env={})
    app = create_app(Runtime(config=cfg, store=Store(tmp_path / "s.db")))
    port = free_port()
    served = serve_in_thread(app, f"127.0.0.1:{port}")
    try:
        browser.get(f"http://127.0.0.1:{port}/dashboard/releases")
        assert browser.find_element(By.ID, "needs-token")
        assert not browser.find_elements(By.CSS_SELECTOR, 'section[data-service="gs"]')
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
        wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, 'section[data-service="gs"]'),
                   timeout=10, what="the board loaded with the token")
        assert "no builds yet" in browser.find_element(By.ID, "releases").text
    finally:
        served.close()
