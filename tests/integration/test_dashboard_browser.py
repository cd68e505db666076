"""The dashboard in a real headless Chromium against a real ``poller run``: real builds in the
store, a running build's live log on the page, and an Approve click that changes the store.

Needs Debian's ``chromium`` and ``chromium-driver`` and PyPI's ``selenium``. The first tests
here render the page with Flask's test client only (no browser, no services).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import requests

from poller.api import create_app
from poller.api.dashboard import LiveLogs
from poller.approvals import ApprovalQueue
from poller.config import parse_config
from poller.events import BuildStarted
from poller.runtime import Runtime
from poller.store import Store
from tests.fixtures.services import free_port, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

#: A build that stays running for a while and says so in its log (the workload, not a test
#: wait). ``{nonce}`` keeps Docker's layer cache from skipping the step on a second run.
SLOW_DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "echo compiling assets {nonce}; /bin/busybox sleep 10; echo assets compiled"]
COPY app.txt /app.txt
CMD ["/bin/busybox", "cat", "/app.txt"]
"""


# -- without a browser ------------------------------------------------------------------------
def _app(tmp_path, *, public_read=True, token="dash-token"):
    cfg = parse_config({"registry": {"url": "r:5000"},
                        "api": {"token": token, "public_read": public_read},
                        "sources": [{"name": "gs", "git": {"url": "file:///x"}, "branch": "master",
                                     "image": "r:5000/gs"}]}, env={})
    store = Store(tmp_path / "s.db")
    live = LiveLogs()
    return create_app(Runtime(config=cfg, store=store, live_logs=live)), store, live


class _Plan:
    source, ref = "gs", "tag:v1.0.0"


def test_page_renders_builds_images_approvals_and_live_log(tmp_path):
    app, store, live = _app(tmp_path)
    done = store.start_build(source="gs", image="r:5000/gs", ref="branch:master", kind="staging",
                             sha="a" * 40, tags=["sha-aaaaaaaaaaaa", "staging"])
    store.finish_build(done, status="succeeded", digest="sha256:" + "d" * 64, log="Step 1/2 : FROM scratch\n")
    running = store.start_build(source="gs", image="r:5000/gs", ref="tag:v1.0.0", kind="release",
                                sha="b" * 40, tags=["1.0.0"])
    live.on_started(BuildStarted(build_id=running, source="gs", image="r:5000/gs", ref="tag:v1.0.0",
                                 kind="release", sha="b" * 40))
    live.on_log(_Plan(), "Step 1/3 : FROM scratch\n")
    appr = ApprovalQueue(store).request(kind="deployment", subject="prod/gs", to_version="2.0.0")
    c = app.test_client()
    assert c.get("/").status_code == 302
    html = c.get("/dashboard").get_data(as_text=True)
    assert f'data-build-id="{running}"' in html and "live-log" in html
    assert "sha256:ddddddddddd" in html and ">staging<" in html
    assert f'data-approval-id="{appr.id}"' in html and "Approve" in html
    assert c.get("/dashboard/static/dashboard.js").status_code == 200
    log = c.get(f"/dashboard/builds/{running}/log")
    assert log.headers["X-Build-Status"] == "running" and log.get_data(as_text=True) == "Step 1/3 : FROM scratch\n"
    assert c.get(f"/dashboard/builds/{done}/log").get_data(as_text=True).startswith("Step 1/2")
    assert c.get("/dashboard/builds/999/log").status_code == 404


def test_private_dashboard_is_a_shell_until_the_token_is_given(tmp_path):
    app, store, _ = _app(tmp_path, public_read=False)
    store.start_build(source="gs", image="r:5000/gs", ref="branch:master", kind="staging", sha="c" * 40,
                      tags=["staging"])
    c = app.test_client()
    html = c.get("/dashboard").get_data(as_text=True)
    assert "needs-token" in html and "branch:master" not in html
    assert c.get("/dashboard/sections").status_code == 401
    ok = c.get("/dashboard/sections", headers={"Authorization": "Bearer dash-token"})
    assert ok.status_code == 200 and "branch:master" in ok.get_data(as_text=True)


def test_helm_api_down_is_shown_not_fatal(tmp_path):
    port = free_port()  # nothing listens there
    cfg = parse_config({"registry": {"url": "r:5000"}, "charts": {"helm_api": {"url": f"http://127.0.0.1:{port}"}},
                        "sources": []}, env={})
    app = create_app(Runtime(config=cfg, store=Store(tmp_path / "s.db")))
    html = app.test_client().get("/dashboard").get_data(as_text=True)
    assert 'id="helmsman"' in html and "helm API unreachable" in html


# -- in a real browser ------------------------------------------------------------------------
@pytest.fixture
def browser(tmp_path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium / chromium-driver are not installed: apt-get install -y chromium chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install selenium")
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", "--window-size=1400,1800", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.integration
def test_dashboard_in_chromium_shows_live_log_and_approves(tmp_path, registry, git_repo, docker_host, browser):
    from selenium.webdriver.common.by import By

    from tests.integration.test_webhooks_e2e import API_TOKEN, start_poller

    git_repo.seed_scratch_app("v1\n")
    run = start_poller(tmp_path, git_repo.url, registry.addr, docker_host, api_port=free_port())
    store = Store(run.store_path)
    try:
        wait_until(lambda: (b := run.build_for("branch:master")) and b["status"] == "succeeded",
                   timeout=120, what="the start-up staging build")
        first = run.build_for("branch:master")
        appr = ApprovalQueue(store).request(kind="deployment", subject="prod/game-server",
                                            from_version="1.0.0", to_version="2.0.0", reason="major")

        browser.get(f"{run.api}/dashboard")
        text = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731
        wait_until(lambda: "game-server" in text(), timeout=15, what="the page to render")
        recent = browser.find_element(By.CSS_SELECTOR, f'#recent tr[data-build-id="{first["id"]}"]')
        assert "succeeded" in recent.text and "branch:master" in recent.text
        images = browser.find_element(By.ID, "images").text
        assert "staging" in images and first["digest"][:19] in images

        # A slow build starts: its log shows up on the open page while it runs.
        git_repo.write("Dockerfile", SLOW_DOCKERFILE.format(nonce=uuid.uuid4().hex))
        git_repo.commit("slow build", {"app.txt": "v2\n"})
        r = requests.post(f"{run.api}/api/v1/sources/game-server/reconcile",
                          headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10)
        assert r.status_code == 202, r.text
        wait_until(lambda: "compiling assets" in "".join(
            p.text for p in browser.find_elements(By.CSS_SELECTOR, "pre.live-log")),
            timeout=12, interval=0.1, what="the running build's live log in the page")
        running = [b for b in run.builds() if b["status"] == "running"]
        assert running, "the build finished before the page was checked"
        assert browser.find_element(By.CSS_SELECTOR, f'article[data-build-id="{running[0]["id"]}"]')
        browser.save_screenshot(str(tmp_path / "dashboard-running.png"))

        # Approve without the token: refused in the page, nothing changes.
        approve = f'button.approve[data-approval-id="{appr.id}"]'
        browser.find_element(By.CSS_SELECTOR, approve).click()
        wait_until(lambda: "Enter the API token" in browser.find_element(By.ID, "flash").text,
                   timeout=5, what="the token hint")
        assert ApprovalQueue(store).get(appr.id).status == "pending"
        # Enter the token once, then approve.
        browser.find_element(By.ID, "token").send_keys(API_TOKEN)
        browser.find_element(By.ID, "token-save").click()
        wait_until(lambda: "token set" in browser.find_element(By.ID, "token-state").text, timeout=5,
                   what="the token to be kept")
        wait_until(lambda: browser.find_element(By.CSS_SELECTOR, approve).is_enabled(), timeout=10,
                   what="the approve button")
        browser.find_element(By.CSS_SELECTOR, approve).click()
        wait_until(lambda: ApprovalQueue(store).get(appr.id).status == "approved", timeout=10,
                   what="the approval to be approved in the store")
        assert ApprovalQueue(store).get(appr.id).decided_by == "dashboard"
        wait_until(lambda: f"Approval #{appr.id} approved" in browser.find_element(By.ID, "flash").text,
                   timeout=10, what="the confirmation in the page")
        wait_until(lambda: not browser.find_elements(By.CSS_SELECTOR, approve), timeout=10,
                   what="the approved row to leave the pending list")
        browser.save_screenshot(str(tmp_path / "dashboard-approved.png"))
    finally:
        text_log = run.stop()
    assert run.proc.returncode == 0, text_log[-3000:]


def test_deployments_section_renders_from_the_updater_status(tmp_path):
    cfg = parse_config({"registry": {"url": "r:5000"}, "api": {"token": "t", "public_read": True},
                        "updates": {"deployments": [{
                            "name": "game-prod", "image": "r:5000/game-server", "policy": "minor",
                            "approval": "major",
                            "target": {"kubernetes": {"kind": "Deployment", "name": "game",
                                                      "namespace": "prod", "container": "engine"}}}]}},
                       env={})
    app = create_app(Runtime(config=cfg, store=Store(tmp_path / "s.db")))
    html = app.test_client().get("/dashboard").get_data(as_text=True)
    assert 'data-deployment="game-prod"' in html and "Deployments unavailable" not in html
